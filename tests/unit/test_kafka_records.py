"""Reading fetched record batches whose header names are not UTF-8."""

from __future__ import annotations

import struct
from typing import Any

import aiokafka.consumer.fetcher
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from service.adapters.kafka.records import TolerantMemoryRecords
from service.domain.authorization import UnsignedAuthorizer
from service.domain.events import dead_letter_message
from service.domain.inbound import (
    UNREADABLE_BATCH_HEADER,
    InboundRecord,
    Limits,
    Poison,
    classify,
    valid_header_name,
)

# v2 record batch layout: the CRC at byte 17 covers everything from byte 21 on.
_CRC_AT, _CRC_FROM = 17, 21


def batch_with_header_name(raw_name: bytes) -> bytes:
    """Two records; the second has a header whose name is ``raw_name`` on the wire, which
    no Python builder writes, so a placeholder is swapped for it and the CRC made good."""
    placeholder = "P" * len(raw_name)
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=1, key=b"k0", value=b"v0", headers=[("good", b"1")])
    builder.append(1, timestamp=2, key=b"k1", value=b"v1", headers=[(placeholder, b"2")])
    data = bytearray(builder.build())
    at = data.index(placeholder.encode())
    data[at : at + len(raw_name)] = raw_name
    struct.pack_into(">I", data, _CRC_AT, calc_crc32c(bytes(data[_CRC_FROM:])))
    return bytes(data)


def test_aiokafkas_own_reader_raises_on_such_a_name() -> None:
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(batch_with_header_name(b"\xff\xfebad")))


def test_the_tolerant_reader_returns_every_record_with_the_name_marked_invalid() -> None:
    records = TolerantMemoryRecords(batch_with_header_name(b"\xff\xfebad"))
    batch = records.next_batch()
    assert batch.validate_crc()
    assert (batch.base_offset, batch.next_offset) == (0, 2)
    read = list(batch)
    assert records.has_next() is False
    assert [(r.offset, r.key, r.value) for r in read] == [(0, b"k0", b"v0"), (1, b"k1", b"v1")]
    assert read[0].headers == [("good", b"1")]
    [(name, value)] = read[1].headers
    assert value == b"2"
    assert name.encode("utf-8", "surrogateescape") == b"\xff\xfebad"
    assert not valid_header_name(name)


def test_a_valid_batch_is_read_as_aiokafka_reads_it() -> None:
    data = batch_with_header_name(b"fine")
    expected = [(r.offset, r.key, r.value, r.headers) for r in DefaultRecordBatch(data)]
    got = [(r.offset, r.key, r.value, r.headers) for r in TolerantMemoryRecords(data).next_batch()]
    assert got == expected


def test_a_batch_that_cannot_be_decompressed_stands_as_one_unreadable_record() -> None:
    data = bytearray(batch_with_header_name(b"fine"))
    # Attributes (bytes 21-22): gzip, whose payload is then not gzip at all.
    struct.pack_into(">h", data, 21, 1)
    struct.pack_into(">I", data, _CRC_AT, calc_crc32c(bytes(data[_CRC_FROM:])))
    [record] = list(TolerantMemoryRecords(bytes(data)).next_batch())
    assert (record.offset, record.key, record.value) == (0, None, None)
    [(name, reason)] = record.headers
    assert name == UNREADABLE_BATCH_HEADER
    assert reason.startswith(b"offsets 0 to 1: ")
    poison = classify(inbound_of(record), Limits(), UnsignedAuthorizer())
    assert isinstance(poison, Poison)
    assert poison.code == "record_batch_unreadable"
    letter = dead_letter_message(inbound_of(record), poison, consumer_group="g", topic="dlq")
    assert all(name != UNREADABLE_BATCH_HEADER for name, _ in letter.headers)


def inbound_of(record: Any) -> InboundRecord:
    return InboundRecord(
        "customer.update", 0, record.offset, 0, 0, None, None, tuple(record.headers)
    )


@pytest.mark.parametrize("build", ["reader", "command_consumer"])
async def test_every_consumer_built_by_the_adapter_reads_tolerantly(
    build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap is process-wide: a process whose only consumer is the client's or an
    operator verb's must get it as well as the worker (they all use these builders)."""
    from aiokafka.record.memory_records import MemoryRecords

    from service.adapters.kafka import clients
    from service.infrastructure.settings import Settings

    monkeypatch.setattr(aiokafka.consumer.fetcher, "MemoryRecords", MemoryRecords)
    consumer = getattr(clients, build)(Settings(_env_file=None))
    try:
        assert aiokafka.consumer.fetcher.MemoryRecords is TolerantMemoryRecords
    finally:
        await consumer.stop()
