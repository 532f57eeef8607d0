"""Publishing outbox rows to Kafka in transactions, and reading back what was published.

``KafkaOutboxPublisher`` wraps one transactional producer; ``KafkaOutboxTopics`` answers
the relay's questions about the topics (their limits, what a previous leader published).
aiokafka's errors come out as ``application.errors`` (``kafka.errors``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from schemas.headers import OUTBOX_ID
from service.adapters.kafka.clients import read_range
from service.adapters.kafka.errors import translated
from service.application.errors import TransientError
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES
from service.domain.outbox import OutboxRow, row_fingerprint
from service.infrastructure import failpoints

log = structlog.get_logger(__name__)

#: The largest record batch the publisher builds (the producer's ``max_batch_size``).
RELAY_BATCH_BYTES = 256 * 1024
#: What a record batch's own header takes out of ``max.message.bytes``, with some room.
_BATCH_MARGIN = 128
#: An ``outbox-id`` header of ours: a decimal row id (a bigint).
_OUTBOX_ID_VALUE = re.compile(rb"[0-9]{1,19}")
_MAX_ROW_ID = 2**63 - 1


class KafkaOutboxPublisher:
    """One transactional producer. Past ``transaction_timeout`` a commit's or an abort's
    outcome is unknown: ``TransientError`` is raised, and the caller must start a new publisher
    (with the same ``transactional.id``, which completes or aborts what this one left)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        transaction_timeout: float,
        starter: Callable[[AIOKafkaProducer], Awaitable[None]] = AIOKafkaProducer.start,
    ) -> None:
        """``starter`` starts the producer: ``clients.start``, bound to the settings, raises
        ``AccessRefusedError`` when the brokers refuse it for good."""
        self._producer = producer
        self._transaction_timeout = transaction_timeout
        self._starter = starter

    async def start(self) -> None:
        with translated():
            await self._starter(self._producer)

    async def stop(self) -> None:
        with translated():
            await self._producer.stop()

    async def publish(self, rows: Sequence[OutboxRow], limits: Mapping[str, int]) -> None:
        producer = self._producer
        deliveries: list[asyncio.Future[Any]] = []
        with translated(sending=True):
            try:
                await producer.begin_transaction()
            except AssertionError as exc:  # fenced before: see _end
                raise TransientError(f"the producer cannot begin a transaction: {exc}") from exc
            try:
                # Bounded too: aiokafka's transactional producer never expires a batch, so
                # a partition without a leader would hold the relay here for good.
                async with asyncio.timeout(self._transaction_timeout):
                    deliveries = await _send_in_batches(producer, rows, limits)
                    await asyncio.gather(*deliveries)
                failpoints.reached(failpoints.IN_RELAY_TRANSACTION)
            except BaseException:
                # The first failure propagates; the others (a fenced producer fails every
                # batch) are expected, not "never retrieved" errors for the log.
                for delivery in deliveries:
                    delivery.add_done_callback(_retrieve)
                await self._end(producer.abort_transaction(), "abort")
                raise
            await self._end(producer.commit_transaction(), "commit")

    async def _end(self, ending: Awaitable[None], what: str) -> None:
        try:
            async with asyncio.timeout(self._transaction_timeout):
                await ending
        except TimeoutError:
            log.warning("relay_transaction_outcome_unknown", ending=what)
            raise TransientError(f"the transaction {what} did not answer") from None
        except KafkaError:
            if what == "commit":
                raise
            # The abort of a failed batch: the batch's own error is what propagates.
        except AssertionError as exc:
            # aiokafka guards its transaction states with asserts: a producer that was
            # fenced (a newer leader started) is in FATAL_ERROR, which can neither commit
            # nor abort. It is done for; the relay starts over with a new one.
            if what == "commit":
                raise TransientError(f"the producer cannot commit any more: {exc}") from exc
            log.warning("relay_producer_cannot_abort", error=str(exc))


def _retrieve(delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled():
        delivery.exception()


class KafkaOutboxTopics:
    def __init__(
        self,
        topics: Sequence[str],
        *,
        reader: Callable[[], AIOKafkaConsumer],
        partitions_of: Callable[[Sequence[str]], Awaitable[list[TopicPartition]]],
        max_message_bytes: Callable[[Sequence[str]], Awaitable[dict[str, int]]],
    ) -> None:
        self._topics = list(topics)
        self._reader = reader
        self._partitions_of = partitions_of
        self._max_message_bytes = max_message_bytes

    async def limits(self) -> dict[str, int]:
        with translated():
            return await self._max_message_bytes(self._topics)

    async def missing(self) -> list[str]:
        with translated():
            found = {partition.topic for partition in await self._partitions_of(self._topics)}
        return [topic for topic in self._topics if topic not in found]

    async def published_since(self, since_ms: int) -> dict[int, set[bytes]]:
        """The ``row_fingerprint`` of every committed record published at or after
        ``since_ms`` that carries one ``outbox-id`` header holding a row id, by that id (a
        set: a forged record may claim the id of a real one). A record with any other
        ``outbox-id`` is not one of ours and is left out."""
        with translated():
            partitions = await self._partitions_of(self._topics)
            if not partitions:
                return {}
            consumer = self._reader()
            try:
                await consumer.start()
                return await _published(consumer, partitions, since_ms)
            finally:
                await consumer.stop()


async def _published(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], since_ms: int
) -> dict[int, set[bytes]]:
    consumer.assign(list(partitions))
    found = await consumer.offsets_for_times({tp: max(since_ms, 0) for tp in partitions})
    ends = await consumer.end_offsets(partitions)
    starts = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}
    published: dict[int, set[bytes]] = {}
    async for record in read_range(consumer, starts, ends):
        ids = [value for name, value in record.headers if name == OUTBOX_ID]
        if len(ids) != 1 or ids[0] is None or not _OUTBOX_ID_VALUE.fullmatch(ids[0]):
            continue
        if int(ids[0]) > _MAX_ROW_ID:
            continue
        others = [(name, value) for name, value in record.headers if name != OUTBOX_ID]
        row = OutboxRow(int(ids[0]), record.topic, record.key, record.value, others)
        published.setdefault(row.id, set()).add(row_fingerprint(row))
    return published


async def _send_in_batches(
    producer: AIOKafkaProducer, rows: Sequence[OutboxRow], limits: Mapping[str, int]
) -> list[asyncio.Future[Any]]:
    """Queue ``rows``, in order, as one record batch per partition (a new one when full);
    a row's state record goes with it, under the same ``outbox-id``.

    Building the batches here instead of calling ``send`` per message saves a future and
    a partitioner call per message: the relay's main cost. A partition's records keep
    their id order, since its batches are queued in the order they fill up. A topic's
    ``max.message.bytes`` bounds a whole record batch, so no batch is built larger (but a
    batch of one row, which the relay has checked against it already).
    """
    deliveries: list[asyncio.Future[Any]] = []
    builders: dict[tuple[str, int], BatchBuilder] = {}

    def new_batch(topic: str) -> BatchBuilder:
        limit = limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES)
        return BatchBuilder(min(RELAY_BATCH_BYTES, limit - _BATCH_MARGIN), 0, is_transactional=True)

    async def append(
        topic: str, key: bytes | None, value: bytes | None, headers: list[Any], row_id: int
    ) -> None:
        partition = partition_for(key, len(await producer.partitions_for(topic)))
        headers = [*headers, (OUTBOX_ID, str(row_id).encode())]
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = new_batch(topic)
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
            return
        # Full: queue it and start the next one for this partition.
        deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        builder = builders[(topic, partition)] = new_batch(topic)
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            raise ValueError(f"outbox row {row_id} does not fit an empty record batch")

    for row in rows:
        await append(row.topic, row.key, row.value, row.headers, row.id)
        if row.state is not None:
            await append(row.state.topic, row.key, row.state.value, [*row.state.headers], row.id)
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
