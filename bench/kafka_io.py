"""The benchmark's own Kafka clients: producing the load, reading the outputs, and
watching the worker's consumer group to see when it starts consuming."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.load import Command
from bench.outputs import OutcomeLog, parse_output
from service.adapters.kafka.clients import connection_options, partitions_of, read_range, reader
from service.infrastructure.settings import Settings


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says why."""


def _producer(settings: Settings, *, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )


class _Failures:
    """Collects the first delivery error of many un-awaited sends."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def check(self, future: asyncio.Future[object]) -> None:
        if self.error is None and not future.cancelled() and future.exception() is not None:
            self.error = future.exception()

    def raise_if_any(self, what: str) -> None:
        if self.error is not None:
            raise BenchmarkError(f"{what} failed: {self.error!r}") from self.error


@dataclass(frozen=True)
class Produced:
    count: int
    started_at: float
    finished_at: float

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


async def produce_all(settings: Settings, commands: Iterable[Command]) -> Produced:
    """Send every command to the command topic as fast as the producer goes and wait
    until all are acknowledged."""
    producer = _producer(settings, linger_ms=5)
    failures = _Failures()
    started = time.time()
    count = 0
    await producer.start()
    try:
        for command in commands:
            future = await producer.send(
                settings.topic_commands,
                command.value,
                key=command.key,
                headers=list(command.headers),
            )
            future.add_done_callback(failures.check)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    failures.raise_if_any("producing the commands")
    return Produced(count, started, time.time())


@dataclass(frozen=True)
class Paced:
    count: int
    #: When the first command was due, and when the last one was handed to the producer.
    started_at: float
    finished_at: float
    #: How late the producer handed commands over compared with their schedule.
    max_lag_ms: float

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


async def produce_paced(
    settings: Settings,
    commands: Iterable[Command],
    *,
    rate: float,
    sent_at: array[float],
) -> Paced:
    """Send commands at ``rate`` per second, command ``i`` due at ``start + i / rate``.

    ``sent_at[i]`` gets command ``i``'s due time, which is also its record timestamp: a
    producer that falls behind its schedule does not hide the delay from the latency
    (no coordinated omission); ``max_lag_ms`` shows whether it fell behind.
    """
    producer = _producer(settings, linger_ms=0)
    failures = _Failures()
    await producer.start()
    count = 0
    max_lag = 0.0
    started = time.time() + 0.1
    try:
        for index, command in enumerate(commands):
            due = started + index / rate
            delay = due - time.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            sent_at[index] = due
            future = await producer.send(
                settings.topic_commands,
                command.value,
                key=command.key,
                headers=list(command.headers),
                timestamp_ms=int(due * 1000),
            )
            future.add_done_callback(failures.check)
            count += 1
            if index % 1000 == 0:
                failures.raise_if_any("producing the commands")
        finished = time.time()
        await producer.flush()
    finally:
        await producer.stop()
    failures.raise_if_any("producing the commands")
    return Paced(count, started, finished, max_lag * 1000)


class OutputReader:
    """A ``read_committed`` consumer of the event, rejection and dead-letter topics,
    from their beginning, filling an ``OutcomeLog``."""

    def __init__(self, settings: Settings, log: OutcomeLog) -> None:
        self._settings = settings
        self._log = log
        self._outcomes = {
            settings.topic_events: "applied",
            settings.topic_rejections: "rejected",
            settings.topic_dead_letters: "dead_lettered",
        }
        self._consumer: AIOKafkaConsumer | None = None
        #: Output records read so far, and their bytes (keys, values, headers).
        self.records = 0
        self.bytes = 0

    async def __aenter__(self) -> OutputReader:
        consumer = AIOKafkaConsumer(
            **connection_options(self._settings),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Answer soon after a transaction commits rather than after the default
            # half second, which would add to every measured latency.
            fetch_max_wait_ms=25,
        )
        partitions = await partitions_of(self._settings, list(self._outcomes))
        if {tp.topic for tp in partitions} != set(self._outcomes):
            raise BenchmarkError(f"missing output topics: {sorted(self._outcomes)}")
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 100) -> int:
        """Read what is there (waiting up to ``timeout_ms``); return how many records."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        now = time.time()
        count = 0
        log = self._log
        size = 0
        for tp, records in batch.items():
            outcome = self._outcomes[tp.topic]
            for record in records:
                size += record_bytes(record.key, record.value, record.headers)
                log.add(
                    parse_output(
                        outcome,  # type: ignore[arg-type]
                        record.value,
                        record.headers,
                        prefix=log.prefix,
                    ),
                    now,
                )
            count += len(records)
        self.records += count
        self.bytes += size
        return count


def record_bytes(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> int:
    """A record's payload: its key, value and headers' names and values, in bytes."""
    size = len(key or b"") + len(value or b"")
    for name, header in headers:
        size += len(name.encode()) + len(header or b"")
    return size


async def topic_contents(settings: Settings, topic: str) -> dict[str, Any]:
    """What ``topic`` holds now, read committed from its beginning to its end: whether it
    exists, its records, and their bytes (``record_bytes``)."""
    partitions = await partitions_of(settings, [topic])
    if not partitions:
        return {"exists": False, "records": 0, "bytes": 0}
    consumer = reader(settings)
    await consumer.start()
    records = size = 0
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        async for record in read_range(consumer, starts, ends):
            records += 1
            size += record_bytes(record.key, record.value, record.headers)
    finally:
        await consumer.stop()
    return {"exists": True, "records": records, "bytes": size}


async def wait_until_consuming(
    settings: Settings, *, alive: Callable[[], None], within: float = 120.0
) -> float:
    """The time the worker's consumer group first becomes ``Stable``: it has its
    partitions and starts fetching. ``alive`` raises if the worker died meanwhile."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    deadline = time.monotonic() + within
    try:
        while True:
            alive()
            try:
                responses = await admin.describe_consumer_groups([settings.kafka_consumer_group])
            except KafkaError:
                responses = []
            for response in responses:
                for group in response.to_object().get("groups", []):
                    if group.get("state") == "Stable" and group.get("members"):
                        return time.time()
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"consumer group {settings.kafka_consumer_group} not stable after {within:.0f}s"
                )
            await asyncio.sleep(0.02)
    finally:
        await admin.close()


async def create_topics(settings: Settings, partitions: int) -> None:
    from service.adapters.kafka.clients import create_topics as create

    await create(settings, partitions=partitions)


async def delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
