"""Outbox rows as the relay sees them, and what identifies one once it is published."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service.domain.events import StateRecord


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    #: Published with the row's record, under its key, in the same transaction.
    state: StateRecord | None = None

    @property
    def topics(self) -> tuple[str, ...]:
        """Where the row's records go: its topic, and its state record's."""
        return (self.topic,) if self.state is None else (self.topic, self.state.topic)


def row_fingerprint(row: OutboxRow) -> bytes:
    """What makes a record read back the one published from ``row``: topic, key, value and
    headers (but the ``outbox-id`` one), each length-prefixed so that no two differ only
    in where one field ends. A row's state record goes out in the same transaction as
    its record, so the record alone tells whether the row was published."""
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
