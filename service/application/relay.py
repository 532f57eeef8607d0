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
rows already published before publishing the rest, so no event is published twice. A
row is deleted only when the record read back is that row (same topic, key, value and
headers): anyone who may write to a topic can write an ``outbox-id`` header, and a row
deleted on a forged one would be an event lost.

Unknown outcomes. A transaction commit or abort that does not answer within
``transaction_timeout`` may or may not have happened. The producer is then closed and a
new one started with the same ``transactional.id`` (which completes or aborts what the
old one left), and recovery decides from what the topics hold; aiokafka has no KIP-890,
so reusing the old producer's transaction state is not safe.

Refused rows. A row that Kafka refuses for good (larger than its topic's
``max.message.bytes``, or refused by the broker with an error that names the record
rather than the connection) is *parked* with the reason instead of being retried
forever, and the relay goes on. Later rows of the same topic and key wait behind it, so
a customer's events never go out of order; other customers flow. ``customer-service
outbox retry`` unparks a row, ``outbox discard`` drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownError,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from tenacity import RetryCallState

from schemas.headers import OUTBOX_ID
from service.adapters.kafka.clients import read_range
from service.adapters.postgres.outbox import OUTBOX_CHANNEL, OutboxRow, OutboxStore
from service.adapters.postgres.pool import TRANSIENT_ERRORS
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES, record_size
from service.infrastructure import failpoints
from service.infrastructure.metrics import Metrics
from service.infrastructure.retrying import retrying

log = structlog.get_logger(__name__)

PartitionsOf = Callable[[Sequence[str]], Awaitable[list[TopicPartition]]]
TopicLimits = Callable[[Sequence[str]], Awaitable[dict[str, int]]]

#: Broker answers that refuse one record for good, whatever the connection: such a row is
#: parked. Any other error (authorization, a fenced producer, the network) is about the
#: relay, not the row, and is retried with the whole batch.
RECORD_REFUSED: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    # What aiokafka makes of an error code it has no class for; on a produce that is
    # above all INVALID_RECORD (87: a null key on a compacted topic, say).
    UnknownError,
)
#: An ``outbox-id`` header of ours: a decimal row id (a bigint).
_OUTBOX_ID_VALUE = re.compile(rb"[0-9]{1,19}")
_MAX_ROW_ID = 2**63 - 1
#: Room for the ``outbox-id`` header the relay adds to every row.
_OUTBOX_HEADER_BYTES = 40
#: The largest record batch the relay builds (the producer's ``max_batch_size``).
RELAY_BATCH_BYTES = 256 * 1024
#: What a record batch's own header takes out of ``max.message.bytes``, with some room.
_BATCH_MARGIN = 128

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
    #: Seconds a transaction commit or abort may take before its outcome counts as
    #: unknown and the producer is replaced.
    transaction_timeout: float = 30.0


class _ProducerSpoiledError(Exception):
    """The producer must be replaced before anything else is sent."""


class OutboxRelay:
    def __init__(
        self,
        config: RelayConfig,
        producer_factory: Callable[[], AIOKafkaProducer],
        consumer_factory: Callable[[], AIOKafkaConsumer],
        partitions_of: PartitionsOf,
        metrics: Metrics,
        topic_limits: TopicLimits | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._producer_factory = producer_factory
        self._consumer_factory = consumer_factory
        self._partitions_of = partitions_of
        self._topic_limits = topic_limits
        self._limits: dict[str, int] = {}
        #: Rows of a batch that Kafka refused, to be published one at a time.
        self._suspects: set[int] = set()
        #: Whether any row may be parked. Only a leading relay parks rows, so it is read
        #: when taking the lead, set when parking, and read again whenever the outbox
        #: runs dry (an operator may have retried or discarded them).
        self._parked = True
        self._wakeup = asyncio.Event()
        #: "starting", then "standby" while another instance leads, or "leading".
        self.state: Literal["starting", "standby", "leading"] = "starting"

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
            if self._topic_limits is not None:
                self._limits = await self._topic_limits(self._config.topics)
            self._parked = await OutboxStore(connection).any_parked()
            recovered = False
            try:
                while True:
                    producer = self._producer_factory()
                    try:
                        # Inside the try: a producer whose start failed still holds a client.
                        await producer.start()
                        if not recovered:
                            await self._recover(connection)
                            recovered = True
                        await self._publish_until_drained(connection, producer, stopping)
                        return
                    except _ProducerSpoiledError:
                        continue  # a fresh producer, and on with the same leadership
                    finally:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._config.transaction_timeout):
                                await producer.stop()
            finally:
                self.state = "starting"

    async def _publish_until_drained(
        self, connection: asyncpg.Connection, producer: AIOKafkaProducer, stopping: asyncio.Event
    ) -> None:
        while True:
            # Cleared before reading the outbox, not when going idle: a batch committed
            # while this one is read or published must still wake the wait below.
            self._wakeup.clear()
            published = await self._publish_batch(connection, producer)
            if published:
                continue
            if stopping.is_set():
                return  # drained: nothing publishable is left
            await self._idle(stopping)

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
        """Publish the next rows; return how many rows were dealt with (published or
        parked), 0 when nothing is publishable.

        Raises:
            _ProducerSpoiledError: Kafka refused a record; the rows it may have been are
                published one at a time from now on, by a fresh producer.
        """
        store = OutboxStore(connection)
        size = 1 if self._suspects else self._config.batch_size
        rows = await store.publishable(size, parked=self._parked)
        if rows and self._suspects and rows[0].id > max(self._suspects):
            self._suspects.clear()
            rows = await store.publishable(self._config.batch_size, parked=self._parked)
        if not rows:
            self._suspects.clear()
            if self._parked:
                self._parked = await store.any_parked()
            return 0
        too_large = [row for row in rows if self._size(row) > self._limit(row.topic)]
        if too_large and self._topic_limits is not None:
            # Read the limits again first: an operator may have raised one since, and then
            # retried the rows parked under the old one.
            self._limits = await self._topic_limits(self._config.topics)
            too_large = [row for row in rows if self._size(row) > self._limit(row.topic)]
        if too_large:
            # Parked before anything is sent, the first of each topic and key only: the next
            # read leaves out the rows behind it, which wait for it whatever their size.
            firsts = {(row.topic, row.key): row for row in reversed(too_large)}
            for row in sorted(firsts.values(), key=lambda row: row.id):
                await self._park(
                    store,
                    row,
                    f"the record takes about {self._size(row)} bytes; max.message.bytes of "
                    f"{row.topic} is {self._limit(row.topic)}",
                )
            return len(firsts)
        try:
            await self._in_transaction(producer, rows)
        except RECORD_REFUSED as exc:
            # The idempotent producer's sequence numbers no longer match the broker's after
            # a refused batch, so it cannot go on; the next one finds the culprit alone.
            if len(rows) == 1:
                await self._park(store, rows[0], f"{type(exc).__name__}: {exc}")
                self._suspects.discard(rows[0].id)
            else:
                log.warning("relay_batch_refused", rows=len(rows), error=repr(exc))
                self._suspects = {row.id for row in rows}
            raise _ProducerSpoiledError from exc
        await self._published(store, rows)
        self._suspects.difference_update(row.id for row in rows)
        return len(rows)

    async def _in_transaction(self, producer: AIOKafkaProducer, rows: Sequence[OutboxRow]) -> None:
        await producer.begin_transaction()
        try:
            # Bounded too: aiokafka's transactional producer never expires a batch, so a
            # partition without a leader would hold the relay here for good.
            async with asyncio.timeout(self._config.transaction_timeout):
                await asyncio.gather(*await _send_in_batches(producer, rows, self._limit))
        except BaseException:
            await self._end_transaction(producer.abort_transaction(), "abort")
            raise
        await self._end_transaction(producer.commit_transaction(), "commit")
        failpoints.reached(failpoints.AFTER_RELAY_PUBLISH)

    async def _end_transaction(self, ending: Awaitable[None], what: str) -> None:
        """Commit or abort, bounded: past ``transaction_timeout`` the outcome is unknown, and
        the error raised makes ``_lead`` close this producer and start a new one."""
        try:
            async with asyncio.timeout(self._config.transaction_timeout):
                await ending
        except TimeoutError:
            log.warning("relay_transaction_outcome_unknown", ending=what)
            raise KafkaTimeoutError(f"transaction {what} did not answer") from None
        except KafkaError:
            if what == "commit":
                raise
            # The abort of a failed batch: the batch's own error is what propagates.

    async def _park(self, store: OutboxStore, row: OutboxRow, reason: str) -> None:
        log.error(
            "outbox_row_parked",
            outbox_id=row.id,
            topic=row.topic,
            key=shown_key(row.key),
            reason=reason,
        )
        await store.park(row.id, reason)
        self._parked = True

    async def _published(self, store: OutboxStore, rows: Sequence[OutboxRow]) -> None:
        await store.forget([row.id for row in rows])
        for topic, count in Counter(row.topic for row in rows).items():
            self._metrics.published.labels(topic).inc(count)

    def _limit(self, topic: str) -> int:
        return self._limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES)

    @staticmethod
    def _size(row: OutboxRow) -> int:
        return record_size(row.key, row.value, row.headers) + _OUTBOX_HEADER_BYTES

    async def _recover(self, connection: asyncpg.Connection) -> None:
        """Delete pending rows that a previous leader published but did not delete."""
        store = OutboxStore(connection)
        oldest = await store.oldest_created_ms()
        if oldest is None:
            return
        published = await published_outbox_records(
            self._consumer_factory,
            await self._partitions_of(self._config.topics),
            since_ms=oldest - _RECOVERY_MARGIN_MS,
        )
        if not published:
            return
        pending = await store.rows(sorted(published))
        matching = [row.id for row in pending if fingerprint(row) in published[row.id]]
        forged = len(pending) - len(matching)
        if forged:
            log.warning("relay_recovery_ignored_records", records=forged)
        removed = await store.forget(matching) if matching else 0
        if removed:
            log.warning("relay_recovered", already_published=removed)


def fingerprint(row: OutboxRow) -> bytes:
    """What makes a record read back the one published from ``row``: topic, key, value and
    headers (but the ``outbox-id`` one), each length-prefixed so that no two differ only
    in where one field ends."""
    digest = hashlib.sha256()

    def part(data: bytes | None) -> None:
        if data is None:
            digest.update(b"\xff" * 8)
        else:
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)

    part(row.topic.encode())
    part(row.key)
    part(row.value)
    for name, value in row.headers:
        part(name.encode("utf-8", "surrogateescape"))
        part(value)
    return digest.digest()


def shown_key(key: bytes | None) -> str | None:
    """A key for a log line or a health reason: short and printable."""
    if key is None:
        return None
    text = key[:64].decode("utf-8", "replace")
    return repr(text)[1:-1] + ("..." if len(key) > 64 else "")


async def _send_in_batches(
    producer: AIOKafkaProducer, rows: Sequence[OutboxRow], limit: Callable[[str], int]
) -> list[asyncio.Future[Any]]:
    """Queue ``rows``, in order, as one record batch per partition (a new one when full).

    Building the batches here instead of calling ``send`` per message saves a future and
    a partitioner call per message: the relay's main cost. A partition's records keep
    their id order, since its batches are queued in the order they fill up. A topic's
    ``max.message.bytes`` bounds a whole record batch, so no batch is built larger (but a
    batch of one row, which ``_publish_batch`` has checked against it already).
    """
    deliveries: list[asyncio.Future[Any]] = []
    builders: dict[tuple[str, int], BatchBuilder] = {}

    def new_batch(topic: str) -> BatchBuilder:
        size = min(RELAY_BATCH_BYTES, limit(topic) - _BATCH_MARGIN)
        return BatchBuilder(size, 0, is_transactional=True)

    for row in rows:
        topic, key, value = row.topic, row.key, row.value
        partition = partition_for(key, len(await producer.partitions_for(topic)))
        headers = [*row.headers, (OUTBOX_ID, str(row.id).encode())]
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = new_batch(topic)
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
            continue
        # Full: queue it and start the next one for this partition.
        deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        builder = builders[(topic, partition)] = new_batch(topic)
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            raise ValueError(f"outbox row {row.id} does not fit an empty record batch")
    for (topic, partition), builder in builders.items():
        deliveries.append(await producer.send_batch(builder, topic, partition=partition))
    return deliveries


def partition_for(key: bytes | None, partitions: int) -> int:
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


async def published_outbox_records(
    consumer_factory: Callable[[], AIOKafkaConsumer],
    partitions: Sequence[TopicPartition],
    *,
    since_ms: int,
) -> dict[int, set[bytes]]:
    """The ``fingerprint`` of every committed record in ``partitions`` published at or
    after ``since_ms`` that carries one ``outbox-id`` header holding a row id, by that id
    (a set: a forged record may claim the id of a real one). A record with any other
    ``outbox-id`` is not one of ours and is left out."""
    if not partitions:
        return {}
    consumer = consumer_factory()
    try:
        await consumer.start()
        consumer.assign(list(partitions))
        found = await consumer.offsets_for_times({tp: max(since_ms, 0) for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        starts = {
            tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions
        }
        published: dict[int, set[bytes]] = {}
        async for record in read_range(consumer, starts, ends):
            ids = [value for name, value in record.headers if name == OUTBOX_ID]
            if len(ids) != 1 or ids[0] is None or not _OUTBOX_ID_VALUE.fullmatch(ids[0]):
                continue
            if int(ids[0]) > _MAX_ROW_ID:
                continue
            others = [(name, value) for name, value in record.headers if name != OUTBOX_ID]
            row = OutboxRow(int(ids[0]), record.topic, record.key, record.value, others)
            published.setdefault(row.id, set()).add(fingerprint(row))
        return published
    finally:
        await consumer.stop()
