"""The consume loop on its own: offsets committed only after the batch, a failed or
timed-out batch rewound and tried again, a permanent error stopping the loop, and a
revocation waiting for the batch in flight. Kafka and the processor are fakes of the calls
the loop makes; tests/integration/test_worker_guarantees.py runs it against real ones."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from service.application.errors import TransientError
from service.application.process_batch import BatchProcessor
from service.domain.batch import Decision
from service.domain.inbound import InboundRecord
from service.entrypoints.kafka_consumer import CommandWorker, WorkerConfig
from service.infrastructure.metrics import Metrics

TOPIC = "customer.update"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 0, 0, b"cus_1", b"{}", None, 5, 2, []
    )  # fmt: skip


def batch() -> Batch:
    """Records 0-2 of partition 0 and 5 of partition 1."""
    return {P0: [record(P0, n) for n in range(3)], P1: [record(P1, 5)]}


class FakeConsumer:
    """The calls the loop makes of an ``AIOKafkaConsumer``: each poll returns the next
    scripted batch; when none is left, it asks the loop to stop and returns nothing."""

    def __init__(self, batches: Sequence[Batch], stopping: asyncio.Event) -> None:
        self.batches = deque(batches)
        self.stopping = stopping
        self.assigned = {P0, P1}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: ConsumerRebalanceListener | None = None

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Batch:
        if not self.batches:
            self.stopping.set()
            return {}
        return self.batches.popleft()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self.listener = listener


class ScriptedProcessor:
    """Stands in for ``BatchProcessor.process``: raises the scripted errors in turn, then
    succeeds; ``hold`` makes a call wait for it (the first call only, with ``hold_once``)."""

    def __init__(self, consumer: FakeConsumer, *errors: BaseException) -> None:
        self.consumer = consumer
        self.errors = list(errors)
        self.calls: list[list[tuple[int, int]]] = []
        #: How many offset commits had been made when each call began.
        self.commits_seen: list[int] = []
        self.started = asyncio.Event()
        self.hold: asyncio.Event | None = None
        self.hold_once = False
        self.cancelled = 0

    async def process(self, records: Sequence[InboundRecord]) -> list[Decision]:
        self.calls.append([(r.partition, r.offset) for r in records])
        self.commits_seen.append(len(self.consumer.commits))
        self.started.set()
        if self.hold is not None:
            hold = self.hold
            if self.hold_once:
                self.hold = None
            try:
                await hold.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.errors:
            raise self.errors.pop(0)
        return []


def worker(
    consumer: FakeConsumer, processor: ScriptedProcessor, **config: Any
) -> tuple[CommandWorker, Metrics]:
    metrics = Metrics()
    settings = {"retry_initial_delay": 0.001, "retry_max_delay": 0.001, **config}
    return (
        CommandWorker(
            cast(AIOKafkaConsumer, consumer),
            cast(BatchProcessor, processor),
            WorkerConfig(topic=TOPIC, **settings),
            metrics=metrics,
        ),
        metrics,
    )


def retries(metrics: Metrics) -> float:
    return metrics.retries.labels("worker")._value.get()  # type: ignore[no-any-return]


ALL_RECORDS = [(0, 0), (0, 1), (0, 2), (1, 5)]
ONE_PAST_THE_BATCH = {P0: 3, P1: 6}


async def test_offsets_are_committed_after_the_batch_one_past_its_last_records() -> None:
    stopping = asyncio.Event()
    consumer = FakeConsumer([batch()], stopping)
    processor = ScriptedProcessor(consumer)
    command_worker, _ = worker(consumer, processor)

    await command_worker.run(stopping)

    assert processor.calls == [ALL_RECORDS]
    assert processor.commits_seen == [0]
    assert consumer.commits == [ONE_PAST_THE_BATCH]
    assert consumer.seeks == []


async def test_a_transient_failure_rewinds_to_the_batchs_first_offsets_and_retries() -> None:
    stopping = asyncio.Event()
    # The second poll returns the records again, as Kafka does after the seeks.
    consumer = FakeConsumer([batch(), batch()], stopping)
    processor = ScriptedProcessor(consumer, TransientError("the database went away"))
    command_worker, metrics = worker(consumer, processor)

    await command_worker.run(stopping)

    assert consumer.seeks == [(P0, 0), (P1, 5)]
    assert processor.calls == [ALL_RECORDS, ALL_RECORDS]
    assert consumer.commits == [ONE_PAST_THE_BATCH]
    assert retries(metrics) == 1


async def test_a_rewind_leaves_alone_the_partitions_that_moved_away() -> None:
    stopping = asyncio.Event()
    consumer = FakeConsumer([batch(), {P1: [record(P1, 5)]}], stopping)

    class LosesPartitionZero(ScriptedProcessor):
        async def process(self, records: Sequence[InboundRecord]) -> list[Decision]:
            if not self.calls:
                # A rebalance during the failed batch gave partition 0 to another member.
                self.consumer.assigned = {P1}
            return await super().process(records)

    processor = LosesPartitionZero(consumer, TransientError("lost the connection"))
    command_worker, _ = worker(consumer, processor)

    await command_worker.run(stopping)

    assert consumer.seeks == [(P1, 5)]
    assert consumer.commits == [{P1: 6}]


async def test_a_batch_over_its_timeout_is_rolled_back_and_retried() -> None:
    stopping = asyncio.Event()
    consumer = FakeConsumer([batch(), batch()], stopping)
    processor = ScriptedProcessor(consumer)
    # The first attempt never finishes by itself.
    processor.hold, processor.hold_once = asyncio.Event(), True
    command_worker, metrics = worker(consumer, processor, batch_timeout=0.05)

    await command_worker.run(stopping)

    assert processor.cancelled == 1
    assert consumer.seeks == [(P0, 0), (P1, 5)]
    assert processor.calls == [ALL_RECORDS, ALL_RECORDS]
    assert consumer.commits == [ONE_PAST_THE_BATCH]
    assert retries(metrics) == 1


async def test_a_permanent_error_stops_the_loop_and_commits_nothing() -> None:
    stopping = asyncio.Event()
    consumer = FakeConsumer([batch(), batch()], stopping)
    processor = ScriptedProcessor(consumer, RuntimeError("a bug"))
    command_worker, metrics = worker(consumer, processor)

    with pytest.raises(RuntimeError, match="a bug"):
        await command_worker.run(stopping)

    assert processor.calls == [ALL_RECORDS]
    assert consumer.seeks == []
    assert consumer.commits == []
    assert retries(metrics) == 0


async def test_a_revocation_waits_for_the_batch_in_flight_and_its_offsets() -> None:
    stopping = asyncio.Event()
    consumer = FakeConsumer([batch()], stopping)
    processor = ScriptedProcessor(consumer)
    processor.hold = asyncio.Event()
    command_worker, _ = worker(consumer, processor)
    command_worker.subscribe()
    assert consumer.listener is not None

    running = asyncio.create_task(command_worker.run(stopping))
    await processor.started.wait()
    revoking = asyncio.create_task(consumer.listener.on_partitions_revoked([P0, P1]))
    await asyncio.sleep(0)  # one turn of the loop: the revocation runs up to its wait
    assert not revoking.done(), "partitions were given up with a batch in flight"

    processor.hold.set()
    await revoking
    # By the time the partitions go, the batch is committed and so are its offsets.
    assert consumer.commits == [ONE_PAST_THE_BATCH]
    await running
