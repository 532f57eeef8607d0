"""The messages the service publishes, built from decisions. Pure: ids and time are given."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.command import CustomerUpdateCommand
from schemas.customer import SubscriptionList
from schemas.errors import ErrorObject
from schemas.event import (
    CustomerUpdatedData,
    CustomerUpdatedEvent,
    CustomerUpdateRejectedEvent,
    RejectionData,
    format_sequence,
)
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
    event = CustomerUpdatedEvent(
        id=event_id,
        source=context.source,
        subject=applied.after.id,
        time=context.time,
        sequence=format_sequence(applied.after.version),
        causationid=command.id,
        correlationid=command.correlationid,
        traceparent=traceparent,
        data=CustomerUpdatedData(
            object=applied.after.to_object(subscriptions),
            previous_attributes=applied.previous_attributes,
        ),
    )
    return OutboundMessage(
        context.topics.events,
        applied.after.id.encode(),
        event.model_dump_json().encode(),
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
    event = CustomerUpdateRejectedEvent(
        id=event_id,
        source=context.source,
        subject=customer_id,
        time=context.time,
        causationid=command_id,
        correlationid=correlationid,
        traceparent=traceparent,
        data=RejectionData(command_id=command_id, customer_id=customer_id, error=error),
    )
    return OutboundMessage(
        context.topics.rejections,
        customer_id.encode(),
        event.model_dump_json().encode(),
        _trace_headers(traceparent),
    )


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
