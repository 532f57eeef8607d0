"""Processing a batch of consumed records: one transaction, set-based, exactly once.

For a batch the processor

1. classifies every record (pure): poison, invalid, or a valid command;
2. in one transaction: claims the partitions' stored positions and drops records below
   them (already processed), loads and locks the customers, folds the commands in
   partition order, and writes the customers, the idempotency rows, the outbox messages
   and the new positions;
3. when the transaction fails for a reason that retrying will not cure, processes the
   records one by one so that one bad record cannot hold back the rest.

Transient failures (see ``TRANSIENT_ERRORS``) propagate: the caller rewinds and retries
the batch, and nothing of it was committed.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog

from schemas.topics import Topics
from service.adapters.postgres.batch_store import BatchStore, batch_transaction
from service.adapters.postgres.pool import TRANSIENT_ERRORS
from service.domain.authorization import Authorizer
from service.domain.batch import BatchState, Decision, decide_batch, requested_prefixes
from service.domain.events import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EventContext,
    OutboundMessage,
    dead_letter_message,
    is_partial_copy,
    rejected_message,
    updated_message,
)
from service.domain.inbound import Classified, InboundRecord, Limits, Poison, Valid, classify
from service.infrastructure.tracing import PassThrough, Tracing

log = structlog.get_logger(__name__)

#: How much of a database error a ``processing_failed`` dead letter quotes.
_FAILURE_MESSAGE_CHARS = 1000
#: The most of a dead letter's original value kept in PostgreSQL. A compressed record
#: can unpack to far more than it took on the wire; the dead letter's headers still give
#: the whole value's size and SHA-256.
MAX_KEPT_ORIGINAL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ProcessorConfig:
    consumer_group: str
    source: str
    topics: Topics = field(default_factory=Topics)
    limits: Limits = field(default_factory=Limits)
    #: The dead-letter topic's ``max.message.bytes``: a larger dead letter is cut to fit.
    dead_letter_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class BatchProcessor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ProcessorConfig,
        authorizer: Authorizer,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        tracing: Tracing | None = None,
    ) -> None:
        self._pool = pool
        self._config = config
        self._authorizer = authorizer
        self._tracing = tracing or PassThrough()
        self._clock = clock
        self._new_id = new_id

    async def process(self, records: Sequence[InboundRecord]) -> list[Decision]:
        """Process ``records`` (in partition order) and return a decision for each one
        not processed before. Raises one of ``TRANSIENT_ERRORS`` when the whole batch
        should be retried."""
        if not records:
            return []
        items = [
            (record, classify(record, self._config.limits, self._authorizer)) for record in records
        ]
        try:
            return await self._in_transaction(items)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            if len(items) == 1:
                return await self._process_alone(items[0], exc)
            log.warning("batch_isolating", records=len(items), error=repr(exc))
            decisions: list[Decision] = []
            for item in items:
                decisions.extend(await self._process_one(item))
            return decisions

    async def _process_one(self, item: tuple[InboundRecord, Classified]) -> list[Decision]:
        try:
            return await self._in_transaction([item])
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            return await self._process_alone(item, exc)

    async def _process_alone(
        self, item: tuple[InboundRecord, Classified], error: Exception
    ) -> list[Decision]:
        record, _ = item
        if isinstance(error, asyncpg.UniqueViolationError):
            # Another worker took the same invoice prefix (or command id) between our
            # read and our write; it has committed now, so a second try sees it.
            try:
                return await self._in_transaction([item])
            except TRANSIENT_ERRORS:
                raise
            except Exception as second:
                error = second
        # Not curable by retrying: park the record in the dead-letter topic, with the
        # reason, rather than stop the partition.
        log.error(
            "record_failed",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=repr(error),
        )
        reason = f"{type(error).__name__}: {error}"[:_FAILURE_MESSAGE_CHARS]
        poison = Poison("processing_failed", reason.replace("\x00", "\\x00"))
        try:
            return await self._in_transaction([(record, poison)])
        except TRANSIENT_ERRORS:
            raise
        except Exception as third:
            # Even the dead letter failed: last, one that carries nothing of the record
            # but where it was, so that the partition still moves on.
            log.error("dead_letter_failed", offset=record.offset, error=repr(third))
            bare = dataclasses.replace(record, key=None, value=None, headers=())
            message = f"{reason}; its dead letter failed too: {type(third).__name__}"
            return await self._in_transaction([(bare, Poison("processing_failed", message))])

    async def _in_transaction(
        self, items: Sequence[tuple[InboundRecord, Classified]]
    ) -> list[Decision]:
        config = self._config
        started_ns = time.time_ns()
        first_offsets: dict[tuple[str, int], int] = {}
        for record, _ in items:
            first_offsets.setdefault((record.topic, record.partition), record.offset)

        async with batch_transaction(self._pool) as store:
            positions = await store.claim_positions(config.consumer_group, first_offsets)
            fresh = [
                (record, item)
                for record, item in items
                if record.offset >= positions[(record.topic, record.partition)]
            ]
            valid = [item for _, item in fresh if isinstance(item, Valid)]
            state = BatchState(
                customers=await store.lock_customers(item.command.subject for item in valid),
                prefix_owners=await store.prefix_owners(requested_prefixes(valid)),
                known_commands=await store.known_commands([item.command.id for item in valid]),
            )
            decided = decide_batch(fresh, state)
            await store.save_customers(list(decided.changed.values()))
            await store.save_processed(decided.processed)
            messages, partial = await self._messages(decided.decisions, store, started_ns)
            await store.save_outbox(messages)
            await store.save_dead_letter_originals(config.consumer_group, partial)
            next_offsets = dict(positions)
            for record, _ in fresh:
                next_offsets[(record.topic, record.partition)] = record.offset + 1
            await store.save_positions(config.consumer_group, next_offsets)
            await store.commit()
        return decided.decisions

    async def _messages(
        self, decisions: Sequence[Decision], store: BatchStore, started_ns: int
    ) -> tuple[list[OutboundMessage], list[InboundRecord]]:
        """The outbox messages of ``decisions``, and the records whose dead letters are
        only partial copies (to be kept whole)."""
        config = self._config
        context = EventContext(source=config.source, time=self._clock(), topics=config.topics)
        expanded = await store.subscriptions(
            decision.applied.after.id
            for decision in decisions
            if decision.applied is not None
            and decision.command is not None
            and decision.command.data.expands("subscriptions")
        )
        messages = []
        partial = []
        for decision in decisions:
            # A duplicate has none of applied, error or poison: it publishes nothing new.
            traceparent = None
            if decision.outcome in ("applied", "rejected"):
                traceparent = self._tracing.command_span(
                    decision.traceparent,
                    name=f"{config.topics.commands} process",
                    attributes={
                        "messaging.message.id": decision.command_id or "",
                        "customer.id": decision.customer_id or "",
                        "customer_service.outcome": decision.outcome,
                    },
                    start_ns=started_ns,
                )
            if decision.applied is not None and decision.command is not None:
                after = decision.applied.after
                messages.append(
                    updated_message(
                        decision.applied,
                        decision.command,
                        event_id=self._new_id(),
                        context=context,
                        subscriptions=expanded.get(after.id)
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
                        event_id=self._new_id(),
                        context=context,
                        traceparent=traceparent,
                    )
                )
            elif decision.poison is not None:
                dead_letter = dead_letter_message(
                    decision.record,
                    decision.poison,
                    consumer_group=config.consumer_group,
                    topic=config.topics.dead_letters,
                    max_bytes=config.dead_letter_max_bytes,
                )
                messages.append(dead_letter)
                if is_partial_copy(dead_letter):
                    partial.append(_bounded(decision.record))
        return messages, partial


def _bounded(record: InboundRecord) -> InboundRecord:
    if record.value is None or len(record.value) <= MAX_KEPT_ORIGINAL_BYTES:
        return record
    return dataclasses.replace(record, value=record.value[:MAX_KEPT_ORIGINAL_BYTES])
