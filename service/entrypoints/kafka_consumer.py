"""The consume loop: poll a batch, process it in one transaction, then commit offsets.

Offsets are committed to Kafka only after the database transaction that holds the
batch's effects (and the partition positions, which are the real fence against applying
a record twice). Since those positions, not Kafka's offsets, decide what is skipped, the
Kafka commit runs in the background while the next batch is polled and processed; it is
finished before partitions move and before the worker stops. A transient failure rolls
the batch back, rewinds the partitions to the batch's first offsets and polls again after
a capped, jittered backoff; polling again keeps the consumer inside
``max_poll_interval_ms`` however long the outage lasts.

While a full batch's statements run (a backlog), the next batch is polled and classified
(pure work that would otherwise wait for the database); records that arrive meanwhile
join it before it runs. It is only read ahead, never processed early: batches still run
one at a time, in order. When the batch in flight fails, or partitions move before the
one read ahead has its turn, that one is unread (its partitions sought back to its first
offsets) and polled again.
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
from service.application.process_batch import BatchProcessor, ClassifiedRecord
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


#: Records classified between two turns of the event loop while a batch is in flight:
#: about a millisecond of work, so that the batch's statements are answered promptly.
_CLASSIFY_CHUNK = 16


@dataclass(frozen=True)
class _Polled:
    """A batch as polled and classified, with the rebalance generation it was polled in."""

    generation: int
    items: list[ClassifiedRecord]
    #: Per partition, the first offset polled and the one after the last.
    first_offsets: dict[TopicPartition, int]
    next_offsets: dict[TopicPartition, int]

    def followed_by(self, more: _Polled) -> _Polled:
        """This batch and the records polled after it, as one batch."""
        return _Polled(
            # A batch that straddles a rebalance counts as polled before it: read again.
            generation=self.generation if more.generation == self.generation else -1,
            items=self.items + more.items,
            first_offsets={**more.first_offsets, **self.first_offsets},
            next_offsets={**self.next_offsets, **more.next_offsets},
        )


class _ReadAhead:
    """The poll of the next batch, run while the one in flight waits on the database."""

    def __init__(self) -> None:
        self.task: asyncio.Task[_Polled] | None = None
        #: The first offsets of the records its poll took, set in the same step as the
        #: poll returned them; ``None`` while the poll still waits (having taken nothing).
        self.took: dict[TopicPartition, int] | None = None

    async def take(self) -> _Polled:
        assert self.task is not None
        return await self.task

    async def drop(self) -> dict[TopicPartition, int]:
        """Cancel it; return the first offsets of the records it took (to be read again).

        Never waits for the poll to finish: during a rebalance aiokafka's ``getmany``
        waits for the new assignment, which waits for the revocation, which waits for the
        batch in flight, which would be waiting here. Cancelling a poll that still waits
        loses nothing: aiokafka hands records over in the step that returns them.
        """
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            # Its error would come again on the next poll; it must not replace the
            # batch's own error, nor fail a clean stop.
            log.warning("read_ahead_failed", error=repr(exc))
        return self.took or {}


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
        #: Counts rebalances: a batch polled in an earlier generation is polled again.
        self._generation = 0
        #: The next batch, polled and classified while the one in flight runs.
        self._ahead: _ReadAhead | None = None

    @property
    def assignment(self) -> set[TopicPartition]:
        assigned: set[TopicPartition] = self._consumer.assignment()
        return assigned

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self._config.topic],
            listener=_FinishBeforeRevoke(self._in_flight, self._commits, self._rebalanced),
        )

    def _rebalanced(self) -> None:
        self._generation += 1

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; the batch in flight then finishes first."""
        try:
            await self._consume(stopping)
        finally:
            # A batch read ahead is dropped unprocessed: its offsets were never committed.
            ahead, self._ahead = self._ahead, None
            if ahead is not None:
                await ahead.drop()
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
        polled = await self._next_batch()
        self._on_poll()
        if not polled.items:
            self._update_lag({})
            return
        started = time.monotonic()
        async with self._in_flight:
            if polled.generation != self._generation:
                # Partitions moved while this batch waited for the lock: poll again.
                self._unread(polled)
                return
            if len(polled.items) >= self._config.batch_max_records:
                # A backlog: the next batch is waiting already. (Caught up, the loop stays
                # serial: a poll after the batch gets everything that arrived during it.)
                self._read_ahead()
            self._rewind_to = polled.first_offsets
            try:
                async with asyncio.timeout(self._config.batch_timeout):
                    decisions = await self._processor.process_classified(polled.items)
            except TimeoutError:
                # Rolled back by the cancellation; tried again like any lost connection.
                await self._rewind_ahead_too()
                raise TransientError(
                    f"the batch took longer than {self._config.batch_timeout}s"
                ) from None
            except TransientError:
                await self._rewind_ahead_too()
                raise
            failpoints.reached(failpoints.AFTER_BATCH_COMMIT)
            self._rewind_to = {}
            self._on_committed()
            self._commits.submit(polled.next_offsets)
        seconds = time.monotonic() - started
        self._metrics.record_batch(decisions, seconds=seconds, now_ms=time.time() * 1000)
        self._update_lag(polled.next_offsets)
        log_outcomes(decisions, duration_ms=seconds * 1000)

    async def _next_batch(self) -> _Polled:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            polled = await ahead.take()
            room = self._config.batch_max_records - len(polled.items)
            if polled.items:
                # The poll ahead returned what had arrived when the batch before began;
                # what arrived since joins it now rather than wait a whole batch more.
                if not room:
                    return polled
                return polled.followed_by(await self._poll(timeout_ms=0, max_records=room))
            # Empty then is not empty now: poll again rather than report an idle partition.
        return await self._poll()

    def _read_ahead(self) -> None:
        ahead = _ReadAhead()
        ahead.task = asyncio.create_task(self._poll(ahead), name="read-ahead")
        self._ahead = ahead

    async def _poll(
        self,
        ahead: _ReadAhead | None = None,
        *,
        timeout_ms: int | None = None,
        max_records: int | None = None,
    ) -> _Polled:
        generation = self._generation
        batch = await self._consumer.getmany(
            timeout_ms=self._config.poll_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=max_records or self._config.batch_max_records,
        )
        first_offsets = {tp: records[0].offset for tp, records in batch.items()}
        if ahead is not None:
            ahead.took = first_offsets
        records = [inbound(record) for records in batch.values() for record in records]
        items: list[ClassifiedRecord] = []
        for start in range(0, len(records), _CLASSIFY_CHUNK):
            items += self._processor.classify(records[start : start + _CLASSIFY_CHUNK])
            # Hand the loop back between chunks: the batch in flight goes on as soon as a
            # statement of its returns, rather than after the whole next batch.
            await asyncio.sleep(0)
        return _Polled(
            generation=generation,
            items=items,
            first_offsets=first_offsets,
            next_offsets={tp: records[-1].offset + 1 for tp, records in batch.items()},
        )

    async def _rewind_ahead_too(self) -> None:
        """The batch in flight failed: what was read ahead is read again with it, from
        the lower of the two offsets of each partition (the failed batch's)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._rewind_to = {**(await ahead.drop()), **self._rewind_to}

    def _unread(self, polled: _Polled) -> None:
        """Seek back to the batch's first offsets, so that the next poll returns it again.
        Nothing below them is unprocessed: they follow the last batch that committed."""
        assigned = self._consumer.assignment()
        for tp, offset in polled.first_offsets.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

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
    def __init__(
        self, in_flight: asyncio.Lock, commits: OffsetCommits, rebalanced: Callable[[], None]
    ) -> None:
        self._in_flight = in_flight
        self._commits = commits
        self._rebalanced = rebalanced

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Waiting for the lock lets the batch in flight commit (database, then offsets)
        # before another member may take its partitions.
        async with self._in_flight:
            self._rebalanced()
            await self._commits.flush()
            log.info("partitions_revoked", partitions=_names(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._rebalanced()
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
