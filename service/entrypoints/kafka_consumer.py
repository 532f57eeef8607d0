"""The consume loop: poll a batch, process it in one transaction, then commit offsets.

Offsets are committed to Kafka only after the database transaction that holds the
batch's effects (and the partition positions, which are the real fence against applying
a record twice). Since those positions, not Kafka's offsets, decide what is skipped, the
Kafka commit runs in the background while the next batch is polled and processed; it is
finished before partitions move and before the worker stops. A transient failure rolls
the batch back, rewinds the partitions to the batch's first offsets and polls again after
a capped, jittered backoff; polling again keeps the consumer inside
``max_poll_interval_ms`` however long the outage lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import RetryCallState

from service.adapters.kafka.clients import inbound
from service.application.errors import TransientError
from service.application.process_batch import BatchProcessor
from service.domain.batch import Decision
from service.infrastructure import failpoints
from service.infrastructure.metrics import Metrics
from service.infrastructure.retrying import retrying

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    topic: str
    batch_max_records: int = 500
    poll_timeout_ms: int = 200
    #: A batch that takes longer is rolled back and retried: well inside the consumer's
    #: max.poll.interval.ms, so a slow database never costs the worker its partitions.
    batch_timeout: float = 60.0
    retry_initial_delay: float = 0.1
    retry_max_delay: float = 30.0


class CommandWorker:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        processor: BatchProcessor,
        config: WorkerConfig,
        *,
        metrics: Metrics,
        on_committed: Callable[[], None] = lambda: None,
        on_poll: Callable[[], None] = lambda: None,
    ) -> None:
        self._consumer = consumer
        self._processor = processor
        self._config = config
        self._metrics = metrics
        self._on_committed = on_committed
        self._on_poll = on_poll
        # Held while a batch is in flight; a rebalance waits for it before partitions move.
        self._in_flight = asyncio.Lock()
        self._rewind_to: dict[TopicPartition, int] = {}
        self._commits = OffsetCommits(consumer)
        #: Partitions whose lag this worker exports.
        self._lag_shown: set[str] = set()

    @property
    def assignment(self) -> set[TopicPartition]:
        assigned: set[TopicPartition] = self._consumer.assignment()
        return assigned

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self._config.topic], listener=_FinishBeforeRevoke(self._in_flight, self._commits)
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; the batch in flight then finishes first."""
        try:
            await self._consume(stopping)
        finally:
            await self._commits.flush()

    async def _consume(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            attempts = retrying(
                on=(TransientError,),
                initial_delay=self._config.retry_initial_delay,
                max_delay=self._config.retry_max_delay,
                stopping=stopping,
                before_sleep=self._rewind,
            )
            async for attempt in attempts:
                with attempt:
                    if not stopping.is_set():
                        await self._poll_once()

    async def _poll_once(self) -> None:
        batch = await self._consumer.getmany(
            timeout_ms=self._config.poll_timeout_ms, max_records=self._config.batch_max_records
        )
        self._on_poll()
        if not batch:
            self._update_lag({})
            return
        started = time.monotonic()
        async with self._in_flight:
            self._rewind_to = {tp: records[0].offset for tp, records in batch.items()}
            records = [inbound(record) for records in batch.values() for record in records]
            try:
                async with asyncio.timeout(self._config.batch_timeout):
                    decisions = await self._processor.process(records)
            except TimeoutError:
                # Rolled back by the cancellation; tried again like any lost connection.
                raise TransientError(
                    f"the batch took longer than {self._config.batch_timeout}s"
                ) from None
            failpoints.reached(failpoints.AFTER_BATCH_COMMIT)
            self._rewind_to = {}
            self._on_committed()
            next_offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            self._commits.submit(next_offsets)
        seconds = time.monotonic() - started
        self._metrics.record_batch(decisions, seconds=seconds, now_ms=time.time() * 1000)
        self._update_lag(next_offsets)
        log_outcomes(decisions, duration_ms=seconds * 1000)

    def _update_lag(self, next_offsets: dict[TopicPartition, int]) -> None:
        lag = self._metrics.consumer_lag
        assigned = {str(tp.partition) for tp in self._consumer.assignment()}
        # A partition that moved to another worker is that worker's to report: a stale
        # figure here would count its lag twice in every sum over workers.
        for partition in self._lag_shown - assigned:
            lag.remove(partition)
        self._lag_shown &= assigned
        if not next_offsets:
            # An idle poll: nothing is waiting on any assigned partition.
            for partition in assigned:
                lag.labels(partition).set(0)
            self._lag_shown |= assigned
            return
        for tp, position in next_offsets.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None and str(tp.partition) in assigned:
                lag.labels(str(tp.partition)).set(max(0, highwater - position))
                self._lag_shown.add(str(tp.partition))

    def _rewind(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("batch_retrying", attempt=state.attempt_number, error=repr(error))
        self._metrics.retries.labels("worker").inc()
        assigned = self._consumer.assignment()
        for tp, offset in self._rewind_to.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        self._rewind_to = {}


class Committer(Protocol):
    """The one call of the consumer that ``OffsetCommits`` makes."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class OffsetCommits:
    """Kafka offset commits off the batch's critical path, one at a time and in order.

    A commit is a broker round trip that took about a third of a small batch's time. The
    database already holds the positions, so the next batch need not wait for it: offsets
    submitted meanwhile are merged and sent when the commit in flight returns. A failed
    commit (during a rebalance, say) only means some records are read again and skipped
    by position.
    """

    def __init__(self, consumer: Committer) -> None:
        self._consumer = consumer
        self._pending: dict[TopicPartition, int] = {}
        self._sending: asyncio.Task[None] | None = None

    def submit(self, offsets: dict[TopicPartition, int]) -> None:
        self._pending.update(offsets)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="offset-commits")

    async def flush(self) -> None:
        """Until everything submitted so far has been committed (or has failed)."""
        while self._sending is not None and not self._sending.done():
            await asyncio.shield(self._sending)

    async def _send(self) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                log.info("offset_commit_skipped", error=repr(exc))


class _FinishBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, in_flight: asyncio.Lock, commits: OffsetCommits) -> None:
        self._in_flight = in_flight
        self._commits = commits

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Waiting for the lock lets the batch in flight commit (database, then offsets)
        # before another member may take its partitions.
        async with self._in_flight:
            await self._commits.flush()
            log.info("partitions_revoked", partitions=_names(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=_names(assigned))


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def log_outcomes(decisions: Sequence[Decision], *, duration_ms: float) -> None:
    """One line per decision (``command_applied``, ``command_rejected``, ...), with its
    ids, position, timing and trace id; above INFO only dead letters are logged."""
    if not log.is_enabled_for(logging.INFO):
        _log_dead_letters(decisions)
        return
    now_ms = time.time() * 1000
    for decision in decisions:
        record = decision.record
        fields = {
            "command_id": decision.command_id,
            "customer_id": decision.customer_id,
            "partition": record.partition,
            "offset": record.offset,
            "outcome": decision.outcome,
            "duration_ms": round(duration_ms, 1),
            "lag_ms": round(now_ms - record.timestamp, 1),
        }
        if decision.applied is not None:
            fields["version"] = decision.applied.after.version
        if decision.traceparent is not None:
            fields["trace_id"] = decision.traceparent.split("-")[1]
        if decision.error is not None:
            fields["error_code"] = decision.error.code
            fields["error_param"] = decision.error.param
        if decision.poison is not None:
            fields["error_code"] = decision.poison.code
        match decision.outcome:
            case "applied":
                log.info("command_applied", **fields)
            case "rejected":
                log.info("command_rejected", **fields)
            case "duplicate":
                log.info("command_duplicate", **fields)
            case "dead_lettered":
                log.warning("command_dead_lettered", **fields)


def _log_dead_letters(decisions: Sequence[Decision]) -> None:
    # Above INFO only dead letters are worth a line (at WARNING); skip the rest cheaply.
    for decision in decisions:
        if decision.poison is not None:
            log.warning(
                "command_dead_lettered",
                partition=decision.record.partition,
                offset=decision.record.offset,
                error_code=decision.poison.code,
            )
