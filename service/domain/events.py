"""The messages the service publishes, built from decisions. Pure: ids and time are given."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.command import CustomerUpdateCommand
from schemas.customer import SubscriptionList
from schemas.errors import ErrorObject
from schemas.event import REJECTED_TYPE, UPDATED_TYPE, format_sequence
from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_ORIGINAL_CONSUMER_GROUP,
    DLT_ORIGINAL_OFFSET,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_TIMESTAMP,
    DLT_ORIGINAL_TIMESTAMP_TYPE,
    DLT_ORIGINAL_TOPIC,
    TRACEPARENT,
)
from schemas.topics import Topics
from service.domain.inbound import InboundRecord, Poison
from service.domain.update import Applied

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class EventContext:
    """What every event of one batch shares."""

    source: str
    time: datetime
    topics: Topics


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
    result against the model and the published JSON Schema)."""
    after = applied.after
    event = _envelope(event_id, context, after.id, command.correlationid, traceparent)
    event["type"] = UPDATED_TYPE
    event["sequence"] = format_sequence(after.version)
    event["causationid"] = command.id
    event["data"] = {
        "object": after.to_object(
            None if subscriptions is None else subscriptions.model_dump(mode="json")
        ),
        "previous_attributes": applied.previous_attributes,
    }
    return OutboundMessage(
        context.topics.events,
        after.id.encode(),
        orjson.dumps(event, option=orjson.OPT_UTC_Z),
        _trace_headers(traceparent),
    )


def rejected_message(
    error: ErrorObject,
    *,
    customer_id: str,
    command_id: str | None,
    correlationid: str | None,
    event_id: str,
    context: EventContext,
    traceparent: str | None = None,
) -> OutboundMessage:
    """A ``customer.update.rejected`` event (``schemas.event.CustomerUpdateRejectedEvent``)."""
    event = _envelope(event_id, context, customer_id, correlationid, traceparent)
    event["type"] = REJECTED_TYPE
    if command_id is not None:
        event["causationid"] = command_id
    event["data"] = {
        "command_id": command_id,
        "customer_id": customer_id,
        "error": error.model_dump(mode="json"),
    }
    return OutboundMessage(
        context.topics.rejections,
        customer_id.encode(),
        orjson.dumps(event, option=orjson.OPT_UTC_Z),
        _trace_headers(traceparent),
    )


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


def _trace_headers(traceparent: str | None) -> Headers:
    # Also as a record header, where Kafka instrumentations of subscribers look for it.
    return () if traceparent is None else ((TRACEPARENT, traceparent.encode()),)


def dead_letter_message(
    record: InboundRecord, poison: Poison, *, consumer_group: str, topic: str
) -> OutboundMessage:
    """The original record, bytes untouched, with headers saying where it came from and why."""
    provenance = (
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
    )
    headers = record.headers + tuple((name, value.encode()) for name, value in provenance)
    return OutboundMessage(topic, record.key, record.value, headers)
