"""The messages the service publishes, built from decisions. Pure: ids and time are given."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.command import CustomerUpdateCommand
from schemas.customer import SubscriptionList
from schemas.errors import ErrorObject
from schemas.event import REJECTED_TYPE, STATE_TYPE, UPDATED_TYPE, format_sequence
from schemas.headers import (
    CONTENT_TYPE,
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_HEADERS_DROPPED,
    DLT_ORIGINAL_CONSUMER_GROUP,
    DLT_ORIGINAL_KEY_SIZE,
    DLT_ORIGINAL_OFFSET,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_SHA256,
    DLT_ORIGINAL_TIMESTAMP,
    DLT_ORIGINAL_TIMESTAMP_TYPE,
    DLT_ORIGINAL_TOPIC,
    DLT_ORIGINAL_VALUE_SIZE,
    DLT_TRUNCATED,
    ORIGINAL_PREFIX,
    STRUCTURED_CONTENT_TYPE,
    TRACEPARENT,
    is_reserved,
)
from schemas.topics import Topics
from service.domain import binary_mode
from service.domain.binary_mode import ContentMode
from service.domain.customer import CustomerState
from service.domain.inbound import (
    UNREADABLE_BATCH_HEADER,
    Headers,
    InboundRecord,
    Poison,
    valid_header_name,
)
from service.domain.update import Applied

#: Kafka's default ``max.message.bytes`` of a topic (1 MiB and a batch header).
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: A record batch's own header (v2), and what one record costs beyond its key, value and
#: headers at most (length, attributes, timestamp and offset deltas, the lengths as varints).
_BATCH_OVERHEAD = 61
_RECORD_OVERHEAD = 36
_HEADER_OVERHEAD = 10
#: A truncated dead letter keeps at most this much of an over-long key.
_TRUNCATED_KEY_BYTES = 1024
#: Room kept free in a dead letter for the header the relay adds (``outbox-id``).
_RELAY_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A ``customer.state`` record that goes out with an event, under the event's key."""

    topic: str
    value: bytes
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    #: Published with this message in the same Kafka transaction, so that the state topic
    #: never disagrees with the events: one outbox row holds both.
    state: StateRecord | None = None


@dataclass(frozen=True, slots=True)
class EventContext:
    """What every event of one batch shares."""

    source: str
    time: datetime
    topics: Topics
    #: How events and rejections travel (``EVENT_CONTENT_MODE``).
    content_mode: ContentMode = "structured"
    #: Whether each ``customer.updated`` event carries its ``customer.state`` record.
    publish_state: bool = True


def updated_message(
    applied: Applied,
    command: CustomerUpdateCommand,
    *,
    event_id: str,
    context: EventContext,
    subscriptions: SubscriptionList | None,
    traceparent: str | None = None,
) -> OutboundMessage:
    """A ``customer.updated`` event: the shape of ``schemas.event.CustomerUpdatedEvent``,
    built as plain data because it runs for every command (the unit tests validate the
    result against the model and the published JSON Schema). With ``context.publish_state``
    it carries its ``customer.state`` record (``state_event_id`` of the event's id)."""
    after = applied.after
    # Serialised once for the event and its state (when nothing is expanded): orjson
    # embeds the fragment as it is.
    customer: Any = orjson.Fragment(orjson.dumps(after.to_object()))
    event = _envelope(event_id, context, after.id, command.correlationid, traceparent)
    event["type"] = UPDATED_TYPE
    event["sequence"] = format_sequence(after.version)
    event["causationid"] = command.id
    event["data"] = {
        "object": customer
        if subscriptions is None
        else after.to_object(subscriptions.model_dump(mode="json")),
        "previous_attributes": applied.previous_attributes,
    }
    state = None
    if context.publish_state:
        record = state_message(
            after,
            event_id=state_event_id(event_id),
            context=context,
            causationid=command.id,
            correlationid=command.correlationid,
            traceparent=traceparent,
            customer=customer,
        )
        assert record.value is not None
        state = StateRecord(record.topic, record.value, record.headers)
    return _message(context.topics.events, after.id, event, context, traceparent, state)


#: Names the ``customer.state`` record of an event (UUID version 5 of the event's id).
_STATE_NAMESPACE = uuid.UUID("0b6c2f3e-8a4d-5e71-9c20-4f1d7a3b6e58")


_STATE_NAMESPACE_BYTES = _STATE_NAMESPACE.bytes


def state_event_id(event_id: str) -> str:
    """The id of the state record published with event ``event_id``: derived, not drawn,
    so that it costs no randomness and names the same record however often it is built.
    ``uuid.uuid5(_STATE_NAMESPACE, event_id)``, computed without the ``UUID`` object (a
    quarter of the time, on a path every command takes)."""
    digest = bytearray(hashlib.sha1(_STATE_NAMESPACE_BYTES + event_id.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def state_message(
    state: CustomerState,
    *,
    event_id: str,
    context: EventContext,
    causationid: str | None = None,
    correlationid: str | None = None,
    traceparent: str | None = None,
    customer: Any = None,
) -> OutboundMessage:
    """A ``customer.state`` record (``schemas.event.CustomerStateEvent``): the customer as
    it is at its version, without expanded fields (a state is the same whoever asked).
    Published with each update, and alone by a backfill (no ``causationid`` then).
    ``customer`` is its object when already built (``to_object()``, or its fragment)."""
    event = _envelope(event_id, context, state.id, correlationid, traceparent)
    event["type"] = STATE_TYPE
    event["sequence"] = format_sequence(state.version)
    if causationid is not None:
        event["causationid"] = causationid
    event["data"] = {"object": state.to_object() if customer is None else customer}
    return _message(context.topics.state, state.id, event, context, traceparent)


def rejected_message(
    error: ErrorObject,
    *,
    customer_id: str,
    command_id: str | None,
    correlationid: str | None,
    event_id: str,
    context: EventContext,
    record: tuple[str, int, int],
    traceparent: str | None = None,
) -> OutboundMessage:
    """A ``customer.update.rejected`` event (``schemas.event.CustomerUpdateRejectedEvent``).
    ``record`` is the command's topic, partition and offset: a producer can match on it
    whatever the command's ``id`` was."""
    event = _envelope(event_id, context, customer_id, correlationid, traceparent)
    event["type"] = REJECTED_TYPE
    if command_id is not None:
        event["causationid"] = command_id
    event["data"] = {
        "command_id": command_id,
        "customer_id": customer_id,
        "error": error.model_dump(mode="json"),
        "record": {"topic": record[0], "partition": record[1], "offset": record[2]},
    }
    return _message(context.topics.rejections, customer_id, event, context, traceparent)


def _envelope(
    event_id: str,
    context: EventContext,
    subject: str,
    correlationid: str | None,
    traceparent: str | None,
) -> dict[str, Any]:
    # Attribute order as the models declare it; optional ones are left out, not null.
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": context.source,
        "subject": subject,
        "time": context.time,
        "datacontenttype": "application/json",
    }
    if correlationid is not None:
        event["correlationid"] = correlationid
    if traceparent is not None:
        event["traceparent"] = traceparent
    return event


def _message(
    topic: str,
    customer_id: str,
    event: dict[str, Any],
    context: EventContext,
    traceparent: str | None,
    state: StateRecord | None = None,
) -> OutboundMessage:
    if context.content_mode == "binary":
        value, headers = binary_mode.encode(event)
    else:
        value = orjson.dumps(event, option=orjson.OPT_UTC_Z)
        headers = _STRUCTURED_HEADERS
    if traceparent is not None:
        # Also as a plain record header, where Kafka instrumentations of subscribers look.
        headers = (*headers, (TRACEPARENT, traceparent.encode()))
    return OutboundMessage(topic, customer_id.encode(), value, headers, state)


#: The Kafka binding's structured mode names its event format in ``content-type``.
_STRUCTURED_HEADERS: Headers = ((CONTENT_TYPE, STRUCTURED_CONTENT_TYPE.encode()),)


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> int:
    """An upper bound of the bytes a record takes alone in a record batch: what a topic's
    ``max.message.bytes`` is compared with."""
    size = _BATCH_OVERHEAD + _RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header_value in headers:
        size += _HEADER_OVERHEAD + len(name.encode("utf-8", "surrogateescape"))
        size += len(header_value or b"")
    return size


def dead_letter_message(
    record: InboundRecord,
    poison: Poison,
    *,
    consumer_group: str,
    topic: str,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> OutboundMessage:
    """The original record with headers saying where it came from and why.

    The key, value and headers are kept as they came, but for three things no dead letter
    may carry: a header of our own namespace (``schemas.headers.is_reserved``) is renamed
    with ``original-``, so that nothing on an output topic is forged; a header whose name
    is not UTF-8 or holds NUL is left out (counted in ``kafka_dlt-headers-dropped``); and a
    record that would not fit ``max_bytes`` (the dead-letter topic's ``max.message.bytes``)
    is cut to fit, its original headers left out, with its sizes and the value's SHA-256.
    A dead letter for which ``is_partial_copy`` holds must be stored whole elsewhere.
    """
    kept: list[tuple[str, bytes | None]] = []
    dropped = 0
    for name, value in record.headers:
        if name == UNREADABLE_BATCH_HEADER:
            continue  # made up by the adapter; the error headers say why
        if not valid_header_name(name):
            dropped += 1
        elif is_reserved(name):
            kept.append((ORIGINAL_PREFIX + name, value))
        else:
            kept.append((name, value))
    provenance = [
        (DLT_ORIGINAL_TOPIC, record.topic),
        (DLT_ORIGINAL_PARTITION, str(record.partition)),
        (DLT_ORIGINAL_OFFSET, str(record.offset)),
        (DLT_ORIGINAL_TIMESTAMP, str(record.timestamp)),
        (
            DLT_ORIGINAL_TIMESTAMP_TYPE,
            "CreateTime" if record.timestamp_type == 0 else "LogAppendTime",
        ),
        (DLT_ORIGINAL_CONSUMER_GROUP, consumer_group),
        (DLT_ERROR_CODE, poison.code),
        (DLT_ERROR_MESSAGE, poison.message),
    ]
    if dropped:
        provenance.append((DLT_HEADERS_DROPPED, str(dropped)))
    added = tuple((name, value.encode()) for name, value in provenance)
    headers = (*kept, *added)
    if record_size(record.key, record.value, headers) + _RELAY_HEADROOM <= max_bytes:
        return OutboundMessage(topic, record.key, record.value, headers)
    return _truncated(record, added, topic=topic, max_bytes=max_bytes)


def _truncated(
    record: InboundRecord, provenance: Headers, *, topic: str, max_bytes: int
) -> OutboundMessage:
    key = None if record.key is None else record.key[:_TRUNCATED_KEY_BYTES]
    value = record.value or b""
    headers = (
        *provenance,
        (DLT_TRUNCATED, b"true"),
        (DLT_ORIGINAL_KEY_SIZE, str(len(record.key or b"")).encode()),
        (DLT_ORIGINAL_VALUE_SIZE, str(len(value)).encode()),
        (DLT_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
    )
    room = max_bytes - _RELAY_HEADROOM - record_size(key, b"", headers)
    return OutboundMessage(
        topic, key, None if record.value is None else value[: max(room, 0)], headers
    )


def is_partial_copy(message: OutboundMessage) -> bool:
    """A dead letter that left out part of its original record."""
    return any(name in (DLT_TRUNCATED, DLT_HEADERS_DROPPED) for name, _ in message.headers)
