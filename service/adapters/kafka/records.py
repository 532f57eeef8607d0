"""Reading fetched record batches so that no record can make a consumer raise.

aiokafka decodes every header name as strict UTF-8 while it parses a fetched batch, inside
``getmany``. One record whose header name is not UTF-8 (any producer can write one: the
protocol carries names as bytes) then raises ``UnicodeDecodeError`` on every poll, before
the application sees the record, so the partition cannot move past it. aiokafka has no
deserializer hook for header names, so ``install()`` swaps the ``MemoryRecords`` class its
fetcher reads with ``TolerantMemoryRecords``: batches are read by aiokafka's own C reader
as before, and only a batch that fails to decode is read again by aiokafka's pure-Python
reader with names decoded with ``surrogateescape``. Such a name is a ``str`` that does
not encode to UTF-8 (``service.domain.inbound.valid_header_name`` says so), and the
record is dead-lettered like any other unreadable one. The swap is checked against the
real broker by ``tests/integration/test_hostile_records.py``; aiokafka is pinned in
``uv.lock``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchPy,
    _DefaultRecordPy,
)
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.util import decode_varint

from service.domain.inbound import UNREADABLE_BATCH_HEADER

_LENGTH_OFFSET = struct.calcsize(">q")
_LOG_OVERHEAD = struct.calcsize(">qi")
_MAGIC_OFFSET = struct.calcsize(">qii")
# The smallest legacy (v0) record: what aiokafka's own reader asks of a slice.
_MIN_SLICE = _LOG_OVERHEAD + 14


def install() -> None:
    """Make every aiokafka consumer of this process read batches tolerantly. Idempotent."""
    aiokafka.consumer.fetcher.MemoryRecords = TolerantMemoryRecords


class TolerantMemoryRecords:
    """The record batches of one fetch response, as aiokafka's ``MemoryRecords``."""

    def __init__(self, data: bytes) -> None:
        self._buffer = data
        self._pos = 0
        self._next: memoryview | None = None
        self._remaining = 0
        self._cache_next()

    def size_in_bytes(self) -> int:
        return len(self._buffer)

    def has_next(self) -> bool:
        return self._next is not None

    def next_batch(self) -> Any:
        piece = self._next
        if piece is None:
            return None
        if len(piece) < _MIN_SLICE:
            raise CorruptRecordException(
                f"Record size is less than the minimum record overhead ({_MIN_SLICE})"
            )
        self._cache_next()
        magic = piece[_MAGIC_OFFSET]
        if magic >= 2:
            return _TolerantBatch(piece)
        return LegacyRecordBatch(piece, magic)  # legacy records carry no headers

    def _cache_next(self) -> None:
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < _LOG_OVERHEAD:
            self._next = None
            return
        (length,) = struct.unpack_from(">i", buffer, pos + _LENGTH_OFFSET)
        end = pos + _LOG_OVERHEAD + length
        if end > len(buffer):
            # A partial batch at the end of a fetch; the fetcher asks for it again.
            self._next = None
            return
        self._next = memoryview(buffer)[pos:end]
        self._pos = end


class _TolerantBatch:
    """One v2 record batch: aiokafka's C reader, or its Python one where that fails."""

    def __init__(self, piece: memoryview) -> None:
        self._piece = piece
        self._batch = DefaultRecordBatch(piece)

    def __getattr__(self, name: str) -> Any:
        # base_offset, next_offset, producer_id, is_control_batch, validate_crc, ...
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        try:
            records = list(self._batch)
        except UnicodeDecodeError:
            records = self._leniently()
        except Exception as exc:  # an unknown codec, corrupt or truncated compressed data
            records = self._unreadable(exc)
        return iter(records)

    def _leniently(self) -> list[Any]:
        try:
            return list(_LenientBatch(self._piece))
        except Exception as exc:
            return self._unreadable(exc)

    def _unreadable(self, error: Exception) -> list[Any]:
        """One made-up record standing for the whole batch, at its first offset, so that
        the consumer moves past the batch and the worker dead-letters it (reason
        ``record_batch_unreadable``, with the offsets it covered)."""
        batch = self._batch
        reason = (
            f"offsets {batch.base_offset} to {batch.next_offset - 1}: "
            f"{type(error).__name__}: {error}"
        )[:1000]
        header = (UNREADABLE_BATCH_HEADER, reason.encode("utf-8", "replace"))
        timestamp = batch.first_timestamp
        return [_DefaultRecordPy(batch.base_offset, timestamp, 0, None, None, [header])]

    def __next__(self) -> Any:
        # Only control batches are read with next(); their records have no headers.
        return next(self._batch)


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python batch reader with one change: header names are decoded with
    ``surrogateescape`` instead of strictly. The rest of ``_read_msg`` is aiokafka's."""

    def _read_msg(self, decode_varint: Any = decode_varint) -> Any:
        buffer = self._buffer
        pos = self._pos
        length, pos = decode_varint(buffer, pos)
        start_pos = pos
        _, pos = decode_varint(buffer, pos)  # attributes
        ts_delta, pos = decode_varint(buffer, pos)
        if self.timestamp_type == self.LOG_APPEND_TIME:
            timestamp = self.max_timestamp
        else:
            timestamp = self.first_timestamp + ts_delta
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _nullable_bytes(buffer, pos)
        value, pos = _nullable_bytes(buffer, pos)
        header_count, pos = decode_varint(buffer, pos)
        if header_count < 0:
            raise CorruptRecordException(f"Found invalid number of record headers {header_count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(header_count):
            name_length, pos = decode_varint(buffer, pos)
            if name_length < 0:
                raise CorruptRecordException(f"Invalid negative header key size {name_length}")
            name = bytes(buffer[pos : pos + name_length]).decode("utf-8", "surrogateescape")
            pos += name_length
            header_value, pos = _nullable_bytes(buffer, pos)
            headers.append((name, header_value))
        if pos - start_pos != length:
            raise CorruptRecordException(
                f"Invalid record size: expected to read {length} bytes in record "
                f"payload, but instead read {pos - start_pos}"
            )
        self._pos: int = pos
        return _DefaultRecordPy(
            self.base_offset + offset_delta, timestamp, self.timestamp_type, key, value, headers
        )


def _nullable_bytes(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    return bytes(buffer[pos : pos + length]), pos + length
