"""A subscriber that reads the output topics while a scenario runs, and what it must have
seen.

Kafka's own transaction system test (``tests/kafkatest/tests/core/transactions_test.py``)
runs a ``read_committed`` consumer concurrently with the transactional copier while
brokers and clients are bounced, and checks afterwards that it read exactly what the
output topic holds. The harness does the same for the relay's topics: ``ConcurrentReader``
reads them from the beginning for the whole scenario (through broker kills and pauses),
and ``compare`` then checks, partition by partition, that it read exactly the records the
topics hold at the end, in the same order, and nothing that the topics no longer hold: a
record it read that is gone afterwards was aborted, read before its transaction
committed, or removed, and a subscriber acted on it (``dirty_read``); a record it never
read, or read twice or out of order, is ``concurrent_read_mismatch``.

It keeps a digest per record, not the record, so a large dead letter costs 32 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from faults.checker import ConsumedRecord, Violation
from service.adapters.kafka import records as kafka_records

#: How many offsets of one partition a violation spells out.
_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Read:
    """One record as a reader saw it: its offset and a digest of key, value and headers."""

    offset: int
    digest: bytes


def digest(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]
) -> bytes:
    """Of key, value and headers, each part length-prefixed so no two records collide by
    where one part ends."""
    hashed = hashlib.sha256()

    def part(data: bytes | None) -> None:
        if data is None:
            hashed.update(b"\xff" * 8)
        else:
            hashed.update(len(data).to_bytes(8, "big"))
            hashed.update(data)

    part(key)
    part(value)
    for name, header_value in headers:
        part(name.encode("utf-8", "surrogateescape"))
        part(header_value)
    return hashed.digest()


def reads_of(records: Iterable[ConsumedRecord]) -> dict[TopicPartition, list[Read]]:
    """What a final read of the topics holds, per partition, in offset order."""
    found: dict[TopicPartition, list[Read]] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        tp = TopicPartition(record.topic, record.partition)
        found.setdefault(tp, []).append(
            Read(record.offset, digest(record.key, record.value, record.headers))
        )
    return found


class ConcurrentReader:
    """A ``read_committed`` consumer of ``partitions``, from their beginning, in the
    background from ``start`` to ``stop``."""

    def __init__(self, bootstrap_servers: str, partitions: Sequence[TopicPartition]) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._partitions = list(partitions)
        self.reads: dict[TopicPartition, list[Read]] = {tp: [] for tp in self._partitions}
        #: Fetches that failed while the broker was away (retried).
        self.errors = 0
        #: What ended the reader, if anything did before ``stop``.
        self.failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Output topics never hold a header name that is not UTF-8, but read as the
        # worker does all the same.
        kafka_records.install()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            client_id="faults-concurrent-reader",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Records removed before it read them it cannot have acted on.
            auto_offset_reset="earliest",
        )
        await consumer.start()
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="concurrent-reader")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=200)
                except KafkaError:
                    self.errors += 1
                    await asyncio.sleep(0.2)  # the broker is down on purpose; fetch again
                    continue
                for tp, records in batch.items():
                    self.reads[tp].extend(
                        Read(record.offset, digest(record.key, record.value, record.headers))
                        for record in records
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported by the harness
            self.failure = exc

    async def caught_up(self, ends: Mapping[TopicPartition, int], *, within: float) -> bool:
        """Wait until the reader's position is at ``ends`` (what the topics hold now) on
        every partition; False if it is not within ``within`` seconds or it failed."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + within
        while self.failure is None:
            behind = []
            for tp, end in ends.items():
                try:
                    position = await asyncio.wait_for(consumer.position(tp), timeout=1)
                except (TimeoutError, KafkaError):
                    position = -1
                if position < end:
                    behind.append(tp)
            if not behind:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def compare(
    seen: Mapping[TopicPartition, Sequence[Read]], held: Mapping[TopicPartition, Sequence[Read]]
) -> list[Violation]:
    """What is wrong with what a concurrent reader ``seen``, given what the topics
    ``held`` at the end (each per partition, in the order read)."""
    violations: list[Violation] = []
    for tp in sorted(set(seen) | set(held), key=lambda tp: (tp.topic, tp.partition)):
        reads, final = list(seen.get(tp, ())), list(held.get(tp, ()))
        if reads == final:
            continue
        where = f"{tp.topic}[{tp.partition}]"
        at = {read.offset: read.digest for read in final}
        dirty = [read.offset for read in reads if at.get(read.offset) != read.digest]
        if dirty:
            violations.append(
                Violation(
                    "dirty_read",
                    f"{where}: a concurrent read_committed reader read {len(dirty)} "
                    f"record(s) that the topic does not hold afterwards (aborted, read "
                    f"before their commit, or removed since): offsets {_some(dirty)}",
                )
            )
        read_offsets = {read.offset for read in reads}
        missed = [read.offset for read in final if read.offset not in read_offsets]
        if missed:
            violations.append(
                Violation(
                    "concurrent_read_mismatch",
                    f"{where}: the concurrent reader never read {len(missed)} record(s) the "
                    f"topic holds: offsets {_some(missed)}",
                )
            )
        offsets = [read.offset for read in reads]
        backwards = [b for a, b in itertools.pairwise(offsets) if b <= a]
        if backwards:
            violations.append(
                Violation(
                    "concurrent_read_mismatch",
                    f"{where}: the concurrent reader read offsets again or out of order: "
                    f"{_some(backwards)} came after a later or equal offset",
                )
            )
    return violations


def _some(offsets: Sequence[int]) -> str:
    shown = ", ".join(str(offset) for offset in offsets[:_EXAMPLES])
    return shown + (f", ... ({len(offsets)} in all)" if len(offsets) > _EXAMPLES else "")
