"""Reading the dead-letter topic and replaying chosen records onto the command topic.

A replayed record carries the original key, value and headers (without the
``kafka_dlt-*`` provenance) plus ``dlq-replayed-from``. Replaying is for records that
failed for a reason since fixed; a record that is still unreadable is dead-lettered again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_ORIGINAL_OFFSET,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_TOPIC,
    DLT_PREFIX,
    OUTBOX_ID,
    REPLAYED_FROM,
)
from service.adapters.kafka import connection_options, partitions_of, read_range
from service.settings import Settings

PREVIEW_BYTES = 60


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    #: None for a dead-lettered tombstone.
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", errors="replace")
        return ""

    def replay_headers(self, dead_letter_topic: str) -> list[tuple[str, bytes]]:
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
        value = self.value
        if value is None:
            preview = "(tombstone)"
        else:
            preview = repr(value[:PREVIEW_BYTES].decode("utf-8", errors="replace"))
            if len(value) > PREVIEW_BYTES:
                preview += f"... ({len(value)} bytes)"
        return (
            f"{self.position:<10} from {origin:<28} {self.header(DLT_ERROR_CODE):<20} "
            f"key={key} {self.header(DLT_ERROR_MESSAGE)} | {preview}"
        )


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every record in the dead-letter topic now, oldest first per partition."""
    partitions = await partitions_of(settings, [settings.topic_dead_letters])
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        letters = [
            DeadLetter(
                record.partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
                tuple(record.headers),
            )
            async for record in read_range(consumer, starts, ends)
        ]
        return sorted(letters, key=lambda letter: (letter.partition, letter.offset))
    finally:
        await consumer.stop()


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
        await producer.start()
        for letter in letters:
            await producer.send_and_wait(
                settings.topic_commands,
                letter.value,
                key=letter.key,
                headers=letter.replay_headers(settings.topic_dead_letters),
            )
            count += 1
            on_sent(letter)
    finally:
        await producer.stop()
    return count
