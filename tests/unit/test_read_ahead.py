"""The consume loop polls and classifies the next batch while one is in flight, and never
lets that read-ahead reorder, skip or repeat a record: not when the batch in flight fails,
not when partitions move, not when the worker stops.

The consumer here is an in-memory partitioned log with aiokafka's positions, seek and
commit; it has no database fence, so a record handed to the processor twice shows up
twice. The real consumer and database run the same loop in the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError

from service.application.errors import TransientError
from service.application.process_batch import BatchProcessor, ClassifiedRecord
from service.domain.batch import Decision
from service.domain.inbound import InboundRecord, Poison
from service.entrypoints.kafka_consumer import CommandWorker, WorkerConfig
from service.infrastructure.metrics import Metrics

TOPIC = "commands"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
#: A guard against a test that would otherwise hang, not a wait for anything.
WITHIN = 5.0


class PartitionedLog:
    """A topic's records and one consumer's positions on them, with the calls of
    ``AIOKafkaConsumer`` that the worker makes."""

    def __init__(self, sizes: dict[TopicPartition, int]) -> None:
        self.settled = asyncio.Event()  # no rebalance under way
        self.settled.set()
        self.changed = asyncio.Event()  # wakes a poll waiting for records
        self.records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {
            tp: [] for tp in sizes
        }
        for tp, size in sizes.items():
            self.append(tp, size)
        self.positions = dict.fromkeys(sizes, 0)
        self.committed: dict[TopicPartition, int] = {}
        self.listener: ConsumerRebalanceListener | None = None
        self.polls = 0
        self.failing_poll: int | None = None

    def append(self, tp: TopicPartition, count: int) -> None:
        for _ in range(count):
            offset = len(self.records[tp])
            record = ConsumerRecord(TOPIC, tp.partition, offset, 0, 0, None, b"{}", None, 0, 2, [])
            self.records[tp].append(record)
        self.changed.set()

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records[tp])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.polls += 1
        if self.polls == self.failing_poll:
            raise KafkaConnectionError("the broker went away")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            # As aiokafka's does, a poll during a rebalance waits for the new assignment.
            await self.settled.wait()
            batch = self._take(max_records)
            if batch or loop.time() >= deadline:
                return batch
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - loop.time())

    def _take(self, max_records: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        room = max_records
        for tp in sorted(self.positions):
            taken = self.records[tp][self.positions[tp] :][:room]
            if taken:
                batch[tp] = taken
                self.positions[tp] += len(taken)
                room -= len(taken)
        return batch

    async def rebalance(self) -> None:
        """What aiokafka does to a member that keeps its partitions: revoke, then assign
        them again from the committed offsets."""
        self.begin_rebalance()
        await self.finish_rebalance()

    def begin_rebalance(self) -> None:
        self.settled.clear()
        self.changed.set()

    async def finish_rebalance(self) -> None:
        assert self.listener is not None
        partitions = sorted(self.positions)
        await self.listener.on_partitions_revoked(partitions)
        self.positions = {tp: self.committed.get(tp, 0) for tp in partitions}
        self.settled.set()
        await self.listener.on_partitions_assigned(partitions)


Hook = Callable[[int], Awaitable[None]]


class RecordingProcessor:
    """Stands in for ``BatchProcessor``: records what it classified and what it processed
    (a batch counts as processed only when ``process_classified`` returns), and runs
    ``on_batch(n)`` at the start of the n-th call."""

    def __init__(self, on_batch: Hook) -> None:
        self.on_batch = on_batch
        self.classified: list[list[tuple[int, int]]] = []
        self.processed: list[tuple[int, int]] = []
        self.batches: list[list[tuple[int, int]]] = []
        self.calls = 0
        self.changed = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()

    def classify(self, records: Sequence[InboundRecord]) -> list[ClassifiedRecord]:
        self.classified.append([(record.partition, record.offset) for record in records])
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)
        return [(record, Poison("unreadable", "not a command")) for record in records]

    async def process_classified(self, items: Sequence[ClassifiedRecord]) -> list[Decision]:
        call, self.calls = self.calls, self.calls + 1
        await self.on_batch(call)
        self.batches.append([(record.partition, record.offset) for record, _ in items])
        self.processed.extend(self.batches[-1])
        await self._notify()
        return []

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), WITHIN)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


def _worker(
    log: PartitionedLog, processor: RecordingProcessor, *, poll_timeout_ms: int = 1
) -> CommandWorker:
    worker = CommandWorker(
        cast(AIOKafkaConsumer, log),
        cast(BatchProcessor, processor),
        WorkerConfig(
            topic=TOPIC,
            batch_max_records=3,
            poll_timeout_ms=poll_timeout_ms,
            retry_initial_delay=0.001,
        ),
        metrics=Metrics(),
    )
    worker.subscribe()
    return worker


async def _run_until(
    log: PartitionedLog, processor: RecordingProcessor, done: Callable[[], bool]
) -> None:
    stopping = asyncio.Event()
    worker = asyncio.create_task(_worker(log, processor).run(stopping))
    try:
        await processor.until(lambda: done() or worker.done())
    finally:
        stopping.set()
        await asyncio.wait_for(worker, WITHIN)


def _all(log: PartitionedLog) -> list[tuple[int, int]]:
    return [
        (tp.partition, offset)
        for tp in sorted(log.records)
        for offset in range(len(log.records[tp]))
    ]


def _in_partition_order(processed: list[tuple[int, int]]) -> dict[int, list[int]]:
    by_partition: dict[int, list[int]] = {}
    for partition, offset in processed:
        by_partition.setdefault(partition, []).append(offset)
    return by_partition


async def test_the_next_batch_is_polled_and_classified_while_one_is_in_flight() -> None:
    log = PartitionedLog({P0: 9})
    seen_while_first_in_flight: list[list[tuple[int, int]]] = []

    async def first_waits_for_the_next(call: int) -> None:
        if call == 0:
            await processor.until(lambda: len(processor.classified) == 2)
            seen_while_first_in_flight.extend(processor.classified)

    processor = RecordingProcessor(first_waits_for_the_next)
    await _run_until(log, processor, lambda: len(processor.processed) == 9)

    assert seen_while_first_in_flight == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4), (0, 5)]]
    assert processor.processed == _all(log)


async def test_a_partial_batch_reads_nothing_ahead() -> None:
    """Caught up, the poll after the batch gets everything that arrived during it."""
    log = PartitionedLog({P0: 2})
    polling_ahead: list[bool] = []

    async def look_for_a_poll_ahead(call: int) -> None:
        polling_ahead.append(any(task.get_name() == "read-ahead" for task in asyncio.all_tasks()))

    processor = RecordingProcessor(look_for_a_poll_ahead)
    await _run_until(log, processor, lambda: len(processor.processed) == 2)

    assert polling_ahead == [False]
    assert processor.classified == [[(0, 0), (0, 1)]]


async def test_records_arriving_after_the_poll_ahead_join_its_batch() -> None:
    log = PartitionedLog({P0: 3})

    async def records_arrive_during_the_first(call: int) -> None:
        if call == 0:
            log.append(P0, 1)
            await processor.until(lambda: len(processor.classified) == 2)
            log.append(P0, 2)  # after the poll ahead returned offset 3 alone

    processor = RecordingProcessor(records_arrive_during_the_first)
    await _run_until(log, processor, lambda: len(processor.processed) == 6)

    assert processor.classified[1] == [(0, 3)]
    assert processor.batches == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4), (0, 5)]]
    assert log.committed == {P0: 6}


async def test_a_failed_batch_is_retried_before_the_batch_read_ahead_of_it() -> None:
    log = PartitionedLog({P0: 10, P1: 2})

    async def second_fails_once_the_third_is_read(call: int) -> None:
        if call == 1:
            await processor.until(lambda: len(processor.classified) == 3)
            raise TransientError("the database went away")

    processor = RecordingProcessor(second_fails_once_the_third_is_read)
    await _run_until(log, processor, lambda: len(processor.processed) == 12)

    assert processor.calls > 4  # the failed batch, and the one read ahead, were polled again
    assert sorted(processor.processed) == _all(log)
    assert _in_partition_order(processor.processed) == {0: list(range(10)), 1: [0, 1]}
    assert log.committed == {P0: 10, P1: 2}


async def test_a_failed_batch_rewinds_a_partition_only_the_batch_read_ahead_holds() -> None:
    log = PartitionedLog({P0: 3, P1: 3})

    async def first_fails_once_the_second_is_read(call: int) -> None:
        if call == 0:
            await processor.until(lambda: len(processor.classified) == 2)
            raise TransientError("the database went away")

    processor = RecordingProcessor(first_fails_once_the_second_is_read)
    await _run_until(log, processor, lambda: len(processor.processed) == 6)

    assert processor.classified[1] == [(1, 0), (1, 1), (1, 2)]  # read ahead, then dropped
    assert processor.processed == _all(log)
    assert log.committed == {P0: 3, P1: 3}


async def test_a_batch_read_ahead_before_a_rebalance_is_polled_again_after_it() -> None:
    log = PartitionedLog({P0: 9})
    rebalancing: list[asyncio.Task[None]] = []

    async def rebalance_during_the_first(call: int) -> None:
        if call == 0:
            await processor.until(lambda: len(processor.classified) == 2)
            # The revocation waits for this batch to finish, as aiokafka's does.
            rebalancing.append(asyncio.create_task(log.rebalance()))

    processor = RecordingProcessor(rebalance_during_the_first)
    await _run_until(log, processor, lambda: len(processor.processed) == 9)
    await asyncio.wait_for(rebalancing[0], WITHIN)

    assert processor.processed == _all(log)  # once each: nothing repeated, nothing skipped
    assert log.committed == {P0: 9}


async def test_a_batch_failing_during_a_rebalance_is_retried_after_it() -> None:
    """The poll read ahead waits for the rebalance's new assignment, the rebalance waits
    for the failed batch to let go of its partitions: the failed batch must not wait for
    the poll."""
    log = PartitionedLog({P0: 3})
    rebalancing: list[asyncio.Task[None]] = []

    async def first_fails_during_a_rebalance(call: int) -> None:
        if call == 0:
            log.begin_rebalance()
            rebalancing.append(asyncio.create_task(log.finish_rebalance()))
            raise TransientError("the database went away")

    processor = RecordingProcessor(first_fails_during_a_rebalance)
    await _run_until(log, processor, lambda: len(processor.processed) == 3)
    await asyncio.wait_for(rebalancing[0], WITHIN)

    assert processor.calls == 2
    assert processor.processed == _all(log)
    assert log.committed == {P0: 3}


async def test_stopping_drops_the_batch_read_ahead_unprocessed_and_uncommitted() -> None:
    log = PartitionedLog({P0: 9})
    stopping = asyncio.Event()

    async def stop_during_the_first(call: int) -> None:
        if call == 0:
            await processor.until(lambda: len(processor.classified) == 2)
            stopping.set()

    processor = RecordingProcessor(stop_during_the_first)
    await asyncio.wait_for(_worker(log, processor).run(stopping), WITHIN)

    assert processor.classified[1] == [(0, 3), (0, 4), (0, 5)]
    assert processor.processed == [(0, 0), (0, 1), (0, 2)]
    assert log.committed == {P0: 3}


async def test_stopping_ends_a_poll_read_ahead_without_waiting_for_it() -> None:
    log = PartitionedLog({P0: 3})
    stopping = asyncio.Event()
    polling_ahead: list[bool] = []

    async def stop_during_the_only_batch(call: int) -> None:
        # Nothing follows this batch, so the poll read ahead waits out its long timeout.
        polling_ahead.append(any(task.get_name() == "read-ahead" for task in asyncio.all_tasks()))
        stopping.set()

    processor = RecordingProcessor(stop_during_the_only_batch)
    worker = _worker(log, processor, poll_timeout_ms=600_000)
    await asyncio.wait_for(worker.run(stopping), WITHIN)

    assert polling_ahead == [True]
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "read-ahead"]
    assert log.committed == {P0: 3}


async def test_a_failed_poll_read_ahead_does_not_fail_a_clean_stop() -> None:
    log = PartitionedLog({P0: 9})
    log.failing_poll = 2  # the poll read ahead during the first batch
    stopping = asyncio.Event()

    async def stop_once_the_poll_ahead_failed(call: int) -> None:
        ahead = [task for task in asyncio.all_tasks() if task.get_name() == "read-ahead"]
        await asyncio.wait(ahead, timeout=WITHIN)
        assert all(isinstance(task.exception(), KafkaConnectionError) for task in ahead)
        stopping.set()

    processor = RecordingProcessor(stop_once_the_poll_ahead_failed)
    await asyncio.wait_for(_worker(log, processor).run(stopping), WITHIN)

    assert processor.processed == [(0, 0), (0, 1), (0, 2)]
    assert log.committed == {P0: 3}
