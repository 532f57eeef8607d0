"""The outbox relay: publishes outbox rows to Kafka in id order, then deletes them.

Order. One relay publishes at a time: the leader holds a PostgreSQL advisory lock on
its own connection; the others wait for it. The leader reads the oldest rows, publishes
them in one Kafka transaction and deletes them after the commit. Rows of one customer
are inserted in version order (each update holds the customer's row lock until its
commit), so publishing in id order publishes each customer's events in version order.

Atomicity. A batch becomes visible to ``read_committed`` consumers all at once or not
at all; when publishing fails the transaction is aborted and the rows, still in the
outbox, are published again in the same order. The shared ``transactional_id`` also
fences off a former leader that lost its lock but still runs.

Crash recovery. If the relay dies after the Kafka commit but before deleting the rows,
the next leader reads the tail of the topics back (``outbox-id`` header) and deletes the
rows already published before publishing the rest, so no event is published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from tenacity import RetryCallState

from schemas.headers import OUTBOX_ID
from service import failpoints
from service.adapters.kafka import read_range
from service.adapters.postgres import OUTBOX_CHANNEL, TRANSIENT_ERRORS, decode_headers
from service.metrics import Metrics
from service.retrying import retrying

log = structlog.get_logger(__name__)

PartitionsOf = Callable[[Sequence[str]], Awaitable[list[TopicPartition]]]

#: Seconds between two counts of the outbox for the backlog gauge.
BACKLOG_INTERVAL = 1.0
# Advisory lock key of the relay leader; any constant shared by all instances.
_LEADER_LOCK = 0x6375_7374_7265_6C
# How far before the oldest pending row the recovery scan starts, for clock skew between
# the database and the relay.
_RECOVERY_MARGIN_MS = 60_000


@dataclass(frozen=True)
class RelayConfig:
    database_url: str
    topics: Sequence[str]
    batch_size: int = 2000
    idle_interval: float = 1.0
    retry_initial_delay: float = 0.1
    retry_max_delay: float = 30.0
    #: Seconds a shutdown keeps retrying to publish what is left before giving up.
    drain_timeout: float = 30.0


class OutboxRelay:
    def __init__(
        self,
        config: RelayConfig,
        producer_factory: Callable[[], AIOKafkaProducer],
        consumer_factory: Callable[[], AIOKafkaConsumer],
        partitions_of: PartitionsOf,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._backlog_measured = 0.0
        self._producer_factory = producer_factory
        self._consumer_factory = consumer_factory
        self._partitions_of = partitions_of
        self._wakeup = asyncio.Event()
        #: "starting", then "standby" while another instance leads, or "leading".
        self.state: Literal["starting", "standby", "leading"] = "starting"
        self.published = 0

    def wake(self) -> None:
        """Tell the relay there is new work (called after a batch commits)."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until ``stopping`` is set, then drain what is left and return.

        A drain that keeps failing (Kafka or PostgreSQL down during shutdown) is abandoned
        after ``drain_timeout`` seconds: the rows stay in the outbox for the next leader.
        """
        stopped_at: list[float] = []

        def give_up() -> bool:
            if not stopping.is_set():
                return False
            if not stopped_at:
                stopped_at.append(time.monotonic())
            return time.monotonic() - stopped_at[0] > self._config.drain_timeout

        attempts = retrying(
            on=(*TRANSIENT_ERRORS, KafkaError),
            initial_delay=self._config.retry_initial_delay,
            max_delay=self._config.retry_max_delay,
            stopping=stopping,
            before_sleep=self._retrying,
            give_up=give_up,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    await self._lead(stopping)
        except (*TRANSIENT_ERRORS, KafkaError) as exc:
            if not stopping.is_set():
                raise
            log.warning("relay_drain_abandoned", error=repr(exc))

    def _retrying(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("relay_retrying", attempt=state.attempt_number, error=repr(error))
        self._metrics.retries.labels("relay").inc()

    async def _lead(self, stopping: asyncio.Event) -> None:
        async with self._leadership(stopping) as connection:
            if connection is None:
                return
            producer = self._producer_factory()
            try:
                # Inside the try: a producer whose start failed still holds a client.
                await producer.start()
                await self._recover(connection)
                while True:
                    # Cleared before reading the outbox, not when going idle: a batch
                    # committed while this one is read or published must still wake
                    # the wait below.
                    self._wakeup.clear()
                    published = await self._publish_batch(connection, producer)
                    await self._measure_backlog(connection)
                    if published:
                        continue
                    if stopping.is_set():
                        return  # drained: the outbox is empty
                    await self._idle(stopping)
            finally:
                self.state = "starting"
                await producer.stop()

    @contextlib.asynccontextmanager
    async def _leadership(
        self, stopping: asyncio.Event
    ) -> AsyncIterator[asyncpg.Connection | None]:
        """A connection holding the leader lock, or None if stopping before getting it."""
        connection: asyncpg.Connection = await asyncpg.connect(self._config.database_url)
        try:
            while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK):
                self.state = "standby"
                if stopping.is_set():
                    yield None
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._config.idle_interval)
            await connection.add_listener(OUTBOX_CHANNEL, lambda *_: self._wakeup.set())
            self.state = "leading"
            log.info("relay_leading")
            yield connection
        finally:
            # Closing the session releases the advisory lock.
            await connection.close(timeout=5)

    async def _idle(self, stopping: asyncio.Event) -> None:
        waiters = [
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self._config.idle_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _publish_batch(
        self, connection: asyncpg.Connection, producer: AIOKafkaProducer
    ) -> int:
        rows = await connection.fetch(
            "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1",
            self._config.batch_size,
        )
        if not rows:
            return 0
        await producer.begin_transaction()
        try:
            await asyncio.gather(*await _send_in_batches(producer, rows))
        except BaseException:
            with contextlib.suppress(KafkaError):
                await producer.abort_transaction()
            raise
        await producer.commit_transaction()
        failpoints.reached(failpoints.AFTER_RELAY_PUBLISH)
        await self._forget(connection, [row["id"] for row in rows])
        self.published += len(rows)
        for topic, count in Counter(row["topic"] for row in rows).items():
            self._metrics.published.labels(topic).inc(count)
        return len(rows)

    async def _measure_backlog(self, connection: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now - self._backlog_measured >= BACKLOG_INTERVAL:
            self._backlog_measured = now
            self._metrics.outbox_backlog.set(
                await connection.fetchval("SELECT count(*) FROM outbox")
            )

    async def _forget(self, connection: asyncpg.Connection, ids: list[int]) -> None:
        """Delete rows that are published."""
        await connection.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)

    async def _recover(self, connection: asyncpg.Connection) -> None:
        """Delete pending rows that a previous leader published but did not delete."""
        oldest = await connection.fetchval(
            "SELECT (extract(epoch FROM min(created)) * 1000)::bigint FROM outbox"
        )
        if oldest is None:
            return
        published = await published_outbox_ids(
            self._consumer_factory,
            await self._partitions_of(self._config.topics),
            since_ms=oldest - _RECOVERY_MARGIN_MS,
        )
        if not published:
            return
        result = await connection.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", sorted(published)
        )
        removed = int(result.split()[-1])
        if removed:
            log.warning("relay_recovered", already_published=removed)


async def _send_in_batches(
    producer: AIOKafkaProducer, rows: Sequence[asyncpg.Record]
) -> list[asyncio.Future[Any]]:
    """Queue ``rows``, in order, as one record batch per partition (a new one when full).

    Building the batches here instead of calling ``send`` per message saves a future and
    a partitioner call per message: the relay's main cost. A partition's records keep
    their id order, since its batches are queued in the order they fill up.
    """
    deliveries: list[asyncio.Future[Any]] = []
    builders: dict[tuple[str, int], Any] = {}
    for row in rows:
        topic, key, value = row["topic"], row["key"], row["value"]
        partition = _partition(key, len(await producer.partitions_for(topic)))
        headers = [*decode_headers(row["headers"]), (OUTBOX_ID, str(row["id"]).encode())]
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
            continue
        # Full: queue it and start the next one for this partition.
        deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        builder = builders[(topic, partition)] = producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            raise ValueError(f"outbox row {row['id']} is larger than the producer's batch size")
    for (topic, partition), builder in builders.items():
        deliveries.append(await producer.send_batch(builder, topic, partition=partition))
    return deliveries


def _partition(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) picks for ``key``:
    murmur2, so that subscribers and other producers agree on where a customer lives; a
    record without a key (a dead letter) goes anywhere."""
    if key is None:
        return random.randrange(partitions)
    return _keyed_partition(key, partitions)


@functools.lru_cache(maxsize=65536)
def _keyed_partition(key: bytes, partitions: int) -> int:
    # Cached: customer ids repeat, and murmur2 is pure Python.
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def published_outbox_ids(
    consumer_factory: Callable[[], AIOKafkaConsumer],
    partitions: Sequence[TopicPartition],
    *,
    since_ms: int,
) -> set[int]:
    """The ``outbox-id`` of every committed record in ``partitions`` published at or
    after ``since_ms``."""
    if not partitions:
        return set()
    consumer = consumer_factory()
    try:
        await consumer.start()
        consumer.assign(list(partitions))
        found = await consumer.offsets_for_times({tp: max(since_ms, 0) for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        starts = {
            tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions
        }
        ids: set[int] = set()
        async for record in read_range(consumer, starts, ends):
            for name, value in record.headers:
                if name == OUTBOX_ID:
                    ids.add(int(value))
        return ids
    finally:
        await consumer.stop()
