"""The outbox messages of a decided batch: one event, rejection or dead letter per
decision (a duplicate publishes nothing new). Pure: ids, time and trace contexts are
given."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from schemas.customer import SubscriptionList
from service.domain.batch import Decision
from service.domain.events import (
    EventContext,
    OutboundMessage,
    dead_letter_message,
    is_partial_copy,
    rejected_message,
    updated_message,
)
from service.domain.inbound import InboundRecord

#: The most of a dead letter's original value kept in PostgreSQL. A compressed record
#: can unpack to far more than it took on the wire; the dead letter's headers still give
#: the whole value's size and SHA-256.
MAX_KEPT_ORIGINAL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchMessages:
    messages: list[OutboundMessage]
    #: The records whose dead letters are only partial copies, to be kept whole (up to
    #: ``MAX_KEPT_ORIGINAL_BYTES`` of their value).
    partial: list[InboundRecord]


def expanding_subscriptions(decisions: Sequence[Decision]) -> list[str]:
    """The customers whose events must carry their subscriptions (``expand``)."""
    return [
        decision.applied.after.id
        for decision in decisions
        if decision.applied is not None
        and decision.command is not None
        and decision.command.data.expands("subscriptions")
    ]


def messages_for(
    decisions: Sequence[Decision],
    *,
    context: EventContext,
    consumer_group: str,
    dead_letter_max_bytes: int,
    subscriptions: Mapping[str, SubscriptionList],
    traceparents: Sequence[str | None],
    new_id: Callable[[], str],
) -> BatchMessages:
    """``traceparents[i]`` is the trace context the message of ``decisions[i]`` carries;
    ``subscriptions`` holds those of ``expanding_subscriptions(decisions)``."""
    messages = []
    partial = []
    for decision, traceparent in zip(decisions, traceparents, strict=True):
        if decision.applied is not None and decision.command is not None:
            after = decision.applied.after
            messages.append(
                updated_message(
                    decision.applied,
                    decision.command,
                    event_id=new_id(),
                    context=context,
                    subscriptions=subscriptions.get(after.id)
                    if decision.command.data.expands("subscriptions")
                    else None,
                    traceparent=traceparent,
                )
            )
        elif decision.error is not None and decision.customer_id is not None:
            messages.append(
                rejected_message(
                    decision.error,
                    customer_id=decision.customer_id,
                    command_id=decision.command_id,
                    correlationid=decision.correlationid,
                    event_id=new_id(),
                    context=context,
                    record=decision.record.position,
                    traceparent=traceparent,
                )
            )
        elif decision.poison is not None:
            dead_letter = dead_letter_message(
                decision.record,
                decision.poison,
                consumer_group=consumer_group,
                topic=context.topics.dead_letters,
                max_bytes=dead_letter_max_bytes,
            )
            messages.append(dead_letter)
            if is_partial_copy(dead_letter):
                partial.append(_bounded(decision.record))
    return BatchMessages(messages, partial)


def _bounded(record: InboundRecord) -> InboundRecord:
    if record.value is None or len(record.value) <= MAX_KEPT_ORIGINAL_BYTES:
        return record
    return dataclasses.replace(record, value=record.value[:MAX_KEPT_ORIGINAL_BYTES])
