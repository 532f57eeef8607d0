"""Synthetic histories for the checker's tests: what a flawless service would leave behind.

``HistoryBuilder`` logs records as a producer would, then plays a perfect worker over
them with the service's own pure code (``classify``, ``decide_batch`` and the message
builders), so the outputs have the exact shape of real ones. Tests then damage the
history the way a fault would.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from faults.checker import ConsumedRecord, History, envelope
from faults.model import ProducedCommand, inbound_record, produced_command
from schemas.command import AUTHORIZATION_ACTION
from schemas.customer import SubscriptionList
from schemas.headers import OUTBOX_ID
from schemas.topics import Topics
from service.domain.authorization import UnsignedAuthorizer
from service.domain.batch import BatchState, decide_batch
from service.domain.binary_mode import ContentMode
from service.domain.customer import CustomerState
from service.domain.events import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EventContext,
    OutboundMessage,
    dead_letter_message,
    rejected_message,
    state_message,
    updated_message,
)
from service.domain.inbound import Limits, classify
from tests.unit.builders import customer as stored_customer

TOPICS = Topics()
GROUP = "checker-tests"
#: Which partition each key goes to, on every topic (as a key hash would place it).
PARTITIONS = {"cus_1": 0, "cus_2": 1, None: 2}
NO_SUBSCRIPTIONS = SubscriptionList(data=[], has_more=False, url="/v1/customers/x/subscriptions")


def customer(customer_id: str, **changes: Any) -> CustomerState:
    return stored_customer(
        **{"id": customer_id, "invoice_prefix": f"PFX{customer_id[-1]}", **changes}
    )


def document(
    customer_id: str, command_id: str | None, data: dict[str, Any], **attributes: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "source": "tests",
        "type": "customer.update",
        "subject": customer_id,
        "principal": "svc-tests",
        "permissions": AUTHORIZATION_ACTION,
        "data": data,
        **attributes,
    }
    if command_id is not None:
        body["id"] = command_id
    return body


@dataclasses.dataclass
class HistoryBuilder:
    seeded: dict[str, CustomerState]
    produced: list[ProducedCommand] = dataclasses.field(default_factory=list)

    def send(
        self,
        key: str | None,
        value: bytes | dict[str, Any] | None,
        *,
        headers: tuple[tuple[str, bytes | None], ...] = (),
    ) -> ProducedCommand:
        partition = PARTITIONS[key]
        offset = sum(1 for command in self.produced if command.partition == partition)
        raw = orjson.dumps(value) if isinstance(value, dict) else value
        command = produced_command(partition, offset, key.encode() if key else None, raw, headers)
        self.produced.append(command)
        return command

    def history(
        self,
        *,
        order: Sequence[ProducedCommand] | None = None,
        dead_letter_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        content_mode: ContentMode = "structured",
        backfill: bool = True,
    ) -> History:
        """What a perfect worker leaves after processing the records in ``order``
        (partition order unless told otherwise), with dead letters cut to fit
        ``dead_letter_max_bytes``. Every output carries an ``outbox-id`` header, as the
        relay adds it. Events and rejections are in ``content_mode``. Each event's
        ``customer.state`` record goes out with it, under its ``outbox-id``; with
        ``backfill``, a backfill first published every seeded customer's state (each in
        an outbox row of its own, before the first command's)."""
        processing = order or sorted(self.produced, key=lambda command: command.position)
        customers = dict(self.seeded)
        seen: dict[str, bytes] = {}
        ids = (f"evt-{n}" for n in itertools.count(1))
        context = EventContext(
            source="tests",
            time=datetime(2026, 1, 1, tzinfo=UTC),
            topics=TOPICS,
            content_mode=content_mode,
        )
        messages: list[OutboundMessage] = []
        if backfill:
            messages.extend(
                state_message(state, event_id=f"state-{n}", context=context)
                for n, state in enumerate(self.seeded.values(), start=1)
            )
        for command in processing:
            record = inbound_record(command, TOPICS.commands)
            item = classify(record, Limits(), UnsignedAuthorizer())
            owners = {c.invoice_prefix: c.id for c in customers.values() if c.invoice_prefix}
            decided = decide_batch(
                [(record, item)],
                BatchState(customers=customers, prefix_owners=owners, known_commands=seen),
            )
            customers.update(decided.changed)
            seen.update({row.command_id: row.fingerprint for row in decided.processed})
            [decision] = decided.decisions
            if decision.applied is not None and decision.command is not None:
                messages.append(
                    updated_message(
                        decision.applied,
                        decision.command,
                        event_id=next(ids),
                        context=context,
                        # As the store answers for a customer without subscriptions.
                        subscriptions=NO_SUBSCRIPTIONS
                        if decision.command.data.expands("subscriptions")
                        else None,
                        traceparent=decision.traceparent,
                    )
                )
            elif decision.error is not None and decision.customer_id is not None:
                messages.append(
                    rejected_message(
                        decision.error,
                        customer_id=decision.customer_id,
                        command_id=decision.command_id,
                        correlationid=decision.correlationid,
                        event_id=next(ids),
                        context=context,
                        record=record.position,
                        traceparent=decision.traceparent,
                    )
                )
            elif decision.poison is not None:
                messages.append(
                    dead_letter_message(
                        record,
                        decision.poison,
                        consumer_group=GROUP,
                        topic=TOPICS.dead_letters,
                        max_bytes=dead_letter_max_bytes,
                    )
                )
        outputs: dict[str, list[ConsumedRecord]] = {
            TOPICS.events: [],
            TOPICS.rejections: [],
            TOPICS.dead_letters: [],
            TOPICS.state: [],
        }
        for row_id, message in enumerate(messages, start=1):
            outputs[message.topic].append(_consumed(message, outputs[message.topic], row_id))
            if message.state is not None:
                state = OutboundMessage(
                    message.state.topic, message.key, message.state.value, message.state.headers
                )
                outputs[state.topic].append(_consumed(state, outputs[state.topic], row_id))
        return History(
            commands_topic=TOPICS.commands,
            produced=list(self.produced),
            seeded=dict(self.seeded),
            final=customers,
            updated=outputs[TOPICS.events],
            rejected=outputs[TOPICS.rejections],
            dead_letters=outputs[TOPICS.dead_letters],
            dead_letter_max_bytes=dead_letter_max_bytes,
            event_content_mode=content_mode,
            state=outputs[TOPICS.state],
        )


def _consumed(
    message: OutboundMessage, earlier: Sequence[ConsumedRecord], row_id: int
) -> ConsumedRecord:
    key = message.key.decode() if message.key else None
    partition = PARTITIONS.get(key, 2)
    return ConsumedRecord(
        topic=message.topic,
        partition=partition,
        offset=sum(1 for record in earlier if record.partition == partition),
        key=message.key,
        value=message.value,
        headers=(*message.headers, (OUTBOX_ID, str(row_id).encode())),
    )


def event_of(history: History, command_id: str) -> ConsumedRecord:
    [event] = [
        record
        for record in history.updated
        if (envelope(record) or {})["causationid"] == command_id
    ]
    return event


def with_headers(
    record: ConsumedRecord, headers: Sequence[tuple[str, bytes | None]]
) -> ConsumedRecord:
    return dataclasses.replace(record, headers=tuple(headers))


def replaced(
    records: Sequence[ConsumedRecord], old: ConsumedRecord, new: ConsumedRecord
) -> list[ConsumedRecord]:
    """``records`` with ``old`` (that very record) replaced by ``new``."""
    return [new if record is old else record for record in records]


def with_body(record: ConsumedRecord, **changes: Any) -> ConsumedRecord:
    """``record`` with top-level attributes of its JSON body replaced."""
    body = orjson.loads(record.value or b"")
    body.update(changes)
    return dataclasses.replace(record, value=orjson.dumps(body))
