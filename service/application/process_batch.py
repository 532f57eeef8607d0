"""Processing a batch of consumed records: one transaction, set-based, exactly once.

For a batch the processor

1. classifies every record (pure): poison, invalid, or a valid command;
2. in one unit of work: claims the partitions' stored positions and drops records below
   them (already processed), loads and locks the customers, folds the commands in
   partition order, and writes the customers, the idempotency rows, the outbox messages
   and the new positions;
3. when the unit of work fails for a reason that retrying will not cure, processes the
   records one by one so that one bad record cannot hold back the rest.

A ``TransientError`` propagates: the caller rewinds and retries the batch. Nothing of the
batch's own unit of work was committed; records already isolated and committed one by one
are below their stored positions by then, so the retry skips them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from schemas.topics import Topics
from service.application.errors import ClaimConflictError, TransientError
from service.application.ports import BatchUnitOfWork, BeginBatch, Clock, NewId, Tracing
from service.domain.authorization import Authorizer
from service.domain.batch import BatchState, Decision, decide_batch, requested_prefixes
from service.domain.binary_mode import ContentMode
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES, EventContext
from service.domain.inbound import Classified, InboundRecord, Limits, Poison, Valid, classify
from service.domain.messages import BatchMessages, expanding_subscriptions, messages_for
from service.infrastructure.ids import RandomUuids

log = structlog.get_logger(__name__)

#: How much of a database error a ``processing_failed`` dead letter quotes.
_FAILURE_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class ProcessorConfig:
    consumer_group: str
    source: str
    topics: Topics = field(default_factory=Topics)
    limits: Limits = field(default_factory=Limits)
    #: The dead-letter topic's ``max.message.bytes``: a larger dead letter is cut to fit.
    dead_letter_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    content_mode: ContentMode = "structured"
    publish_state: bool = True


class BatchProcessor:
    def __init__(
        self,
        begin: BeginBatch,
        config: ProcessorConfig,
        authorizer: Authorizer,
        *,
        clock: Clock = lambda: datetime.now(UTC),
        new_id: NewId | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._begin = begin
        self._config = config
        self._authorizer = authorizer
        self._tracing = tracing
        self._clock = clock
        self._new_id = new_id if new_id is not None else RandomUuids()

    async def process(self, records: Sequence[InboundRecord]) -> list[Decision]:
        """Process ``records`` (in partition order) and return a decision for each one
        not processed before. Raises ``TransientError`` when the whole batch
        should be retried."""
        if not records:
            return []
        items = [
            (record, classify(record, self._config.limits, self._authorizer)) for record in records
        ]
        try:
            return await self._in_transaction(items)
        except TransientError:
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
        except TransientError:
            raise
        except Exception as exc:
            return await self._process_alone(item, exc)

    async def _process_alone(
        self, item: tuple[InboundRecord, Classified], error: Exception
    ) -> list[Decision]:
        record, _ = item
        if isinstance(error, ClaimConflictError):
            # Another worker took the same invoice prefix (or command id) between our
            # read and our write; it has committed now, so a second try sees it.
            try:
                return await self._in_transaction([item])
            except TransientError:
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
        except TransientError:
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

        async with self._begin() as store:
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
            built = await self._messages(decided.decisions, store, started_ns)
            await store.save_outbox(built.messages)
            await store.save_dead_letter_originals(config.consumer_group, built.partial)
            next_offsets = dict(positions)
            for record, _ in fresh:
                next_offsets[(record.topic, record.partition)] = record.offset + 1
            await store.save_positions(config.consumer_group, next_offsets)
            await store.commit()
        return decided.decisions

    async def _messages(
        self, decisions: Sequence[Decision], store: BatchUnitOfWork, started_ns: int
    ) -> BatchMessages:
        config = self._config
        return messages_for(
            decisions,
            context=EventContext(
                source=config.source,
                time=self._clock(),
                topics=config.topics,
                content_mode=config.content_mode,
                publish_state=config.publish_state,
            ),
            consumer_group=config.consumer_group,
            dead_letter_max_bytes=config.dead_letter_max_bytes,
            subscriptions=await store.subscriptions(expanding_subscriptions(decisions)),
            traceparents=[self._traceparent(decision, started_ns) for decision in decisions],
            new_id=self._new_id,
        )

    def _traceparent(self, decision: Decision, started_ns: int) -> str | None:
        """The trace context the decision's message carries: a span of its own when
        tracing is on. A dead letter carries none (its original's headers stay as sent)."""
        if decision.outcome not in ("applied", "rejected"):
            return None
        if self._tracing is None:
            return decision.traceparent
        return self._tracing.command_span(
            decision.traceparent,
            name=f"{self._config.topics.commands} process",
            attributes={
                "messaging.message.id": decision.command_id or "",
                "customer.id": decision.customer_id or "",
                "customer_service.outcome": decision.outcome,
            },
            start_ns=started_ns,
        )
