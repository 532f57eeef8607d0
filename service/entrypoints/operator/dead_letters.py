"""Reading the dead-letter topic and replaying chosen records onto the command topic.

A replayed record carries the original key, value and headers (without the
``kafka_dlt-*`` provenance) plus ``dlq-replayed-from``. Replaying is for records that
failed for a reason since fixed; a record that is still unreadable is dead-lettered again.
A dead letter that is a partial copy (``kafka_dlt-truncated`` or
``kafka_dlt-headers-dropped``) is replayed from the whole original kept in PostgreSQL;
header names that no client can write (not UTF-8) are left out of the replay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_HEADERS_DROPPED,
    DLT_ORIGINAL_CONSUMER_GROUP,
    DLT_ORIGINAL_OFFSET,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_TOPIC,
    DLT_PREFIX,
    DLT_TRUNCATED,
    OUTBOX_ID,
    REPLAYED_FROM,
)
from service.adapters.kafka.clients import (
    connection_options,
    partitions_of,
    read_range,
    reader,
    start,
)
from service.adapters.postgres.connection import database
from service.adapters.postgres.outbox import decode_raw_headers
from service.domain.inbound import Headers
from service.infrastructure.settings import Settings

PREVIEW_BYTES = 60


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    #: None for a dead-lettered tombstone.
    value: bytes | None
    headers: Headers
    #: The whole original record, for a dead letter that is only a partial copy of it.
    original: Original | None = None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        return cls(
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            tuple(record.headers),
        )

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def partial(self) -> bool:
        return any(name in (DLT_TRUNCATED, DLT_HEADERS_DROPPED) for name, _ in self.headers)

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return (value or b"").decode("utf-8", errors="replace")
        return ""

    def replay_headers(self, dead_letter_topic: str) -> list[tuple[str, bytes | None]]:
        if self.original is not None:
            kept = self.original.writable_headers()
        else:
            kept = [
                (name, value)
                for name, value in self.headers
                if not name.startswith(DLT_PREFIX) and name != OUTBOX_ID
            ]
        origin = f"{dead_letter_topic}:{self.partition}:{self.offset}".encode()
        return [*kept, (REPLAYED_FROM, origin)]

    def describe(self) -> str:
        """One line: where it is, where it came from, why, and a preview of its bytes."""
        origin = (
            f"{self.header(DLT_ORIGINAL_TOPIC)}[{self.header(DLT_ORIGINAL_PARTITION)}]"
            f"@{self.header(DLT_ORIGINAL_OFFSET)}"
        )
        key = self.key.decode("utf-8", errors="replace") if self.key is not None else "(no key)"
        value = self.value if self.original is None else self.original.value
        if value is None:
            preview = "(tombstone)"
        else:
            preview = repr(value[:PREVIEW_BYTES].decode("utf-8", errors="replace"))
            if len(value) > PREVIEW_BYTES:
                preview += f"... ({len(value)} bytes)"
        if self.partial:
            preview += (
                " [partial copy; whole original in the database]"
                if self.original is not None
                else " [partial copy; original not found in the database]"
            )
        return (
            f"{self.position:<10} from {origin:<28} {self.header(DLT_ERROR_CODE):<20} "
            f"key={key} {self.header(DLT_ERROR_MESSAGE)} | {preview}"
        )


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every record in the dead-letter topic now, oldest first per partition, each partial
    copy with its whole original from the database."""
    partitions = await partitions_of(settings, [settings.topic_dead_letters])
    consumer = reader(settings)
    try:
        await start(consumer, settings)
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        letters = [DeadLetter.of(record) async for record in read_range(consumer, starts, ends)]
    finally:
        await consumer.stop()
    if any(letter.partial for letter in letters):
        letters = await _with_originals(settings, letters)
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


@dataclass(frozen=True)
class Original:
    """A dead-lettered record as it was consumed, from ``dead_letter_originals``."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]

    def writable_headers(self) -> list[tuple[str, bytes | None]]:
        """The headers a Kafka client can write again: those whose names are UTF-8."""
        kept = []
        for raw, value in self.headers:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if name != OUTBOX_ID and not name.startswith(DLT_PREFIX):
                kept.append((name, value))
        return kept


async def _with_originals(settings: Settings, letters: list[DeadLetter]) -> list[DeadLetter]:
    connection = await database(settings).connect()
    try:
        found = {}
        for row in await connection.fetch(
            'SELECT consumer_group, topic, partition, "offset", key, value, headers '
            "FROM dead_letter_originals"
        ):
            where = (row["consumer_group"], row["topic"], str(row["partition"]), str(row["offset"]))
            found[where] = Original(
                row["key"], row["value"], tuple(decode_raw_headers(row["headers"]))
            )
    finally:
        await connection.close()
    return [
        replace(letter, original=found.get(_origin(letter))) if letter.partial else letter
        for letter in letters
    ]


def _origin(letter: DeadLetter) -> tuple[str, str, str, str]:
    return (
        letter.header(DLT_ORIGINAL_CONSUMER_GROUP),
        letter.header(DLT_ORIGINAL_TOPIC),
        letter.header(DLT_ORIGINAL_PARTITION),
        letter.header(DLT_ORIGINAL_OFFSET),
    )


def select(letters: Iterable[DeadLetter], positions: Iterable[str]) -> list[DeadLetter]:
    """The letters at ``positions`` ("partition:offset"), in the order given.

    Raises:
        KeyError: naming the positions that hold no dead letter.
    """
    by_position = {letter.position: letter for letter in letters}
    wanted = list(positions)
    missing = [position for position in wanted if position not in by_position]
    if missing:
        raise KeyError(f"no dead letter at {', '.join(missing)}")
    return [by_position[position] for position in wanted]


async def replay(
    settings: Settings,
    letters: Iterable[DeadLetter],
    *,
    on_sent: Callable[[DeadLetter], None] = lambda _: None,
) -> int:
    """Publish ``letters`` onto the command topic, in order; return how many."""
    producer = AIOKafkaProducer(**connection_options(settings), acks="all", enable_idempotence=True)
    count = 0
    try:
        await start(producer, settings)
        for letter in letters:
            source = letter.original or letter
            await producer.send_and_wait(
                settings.topic_commands,
                source.value,
                key=source.key,
                headers=letter.replay_headers(settings.topic_dead_letters),
            )
            count += 1
            on_sent(letter)
    finally:
        await producer.stop()
    return count
