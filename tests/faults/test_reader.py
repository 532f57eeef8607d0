"""What a concurrent reader must have read, given what the topics hold at the end."""

from __future__ import annotations

from aiokafka import TopicPartition

from faults.checker import ConsumedRecord
from faults.reader import Read, compare, digest, reads_of

TP = TopicPartition("customer.updated", 0)
OTHER = TopicPartition("customer.updated", 1)


def record(offset: int, value: bytes, partition: int = 0) -> ConsumedRecord:
    return ConsumedRecord(
        "customer.updated", partition, offset, b"cus_1", value, (("outbox-id", b"1"),)
    )


def held() -> dict[TopicPartition, list[Read]]:
    # Offset 2 is a transaction marker: no record there.
    return reads_of([record(0, b"a"), record(1, b"b"), record(3, b"c"), record(0, b"d", 1)])


def test_reading_exactly_what_the_topics_hold_passes() -> None:
    assert compare(held(), held()) == []
    assert compare({TP: [], OTHER: []}, {}) == []


def test_the_digest_covers_key_value_and_headers() -> None:
    base = digest(b"k", b"v", [("h", b"1")])

    assert base == digest(b"k", b"v", [("h", b"1")])
    assert len({base, digest(b"k", b"v2", [("h", b"1")]), digest(b"k", b"v", [("h", None)])}) == 3
    assert digest(b"kv", None, []) != digest(b"k", b"v", [])


def test_a_record_read_that_the_topic_no_longer_holds_is_a_dirty_read() -> None:
    # Offset 0 was removed from the topic after it had been read.
    afterwards = held()
    afterwards[TP] = afterwards[TP][1:]

    [violation] = compare(held(), afterwards)

    assert violation.kind == "dirty_read"
    assert "customer.updated[0]" in violation.message
    assert "offsets 0" in violation.message


def test_a_record_read_with_other_content_than_the_topic_holds_is_a_dirty_read() -> None:
    seen = held()
    seen[TP][1] = Read(1, digest(b"cus_1", b"not b", (("outbox-id", b"1"),)))

    assert [v.kind for v in compare(seen, held())] == ["dirty_read"]


def test_a_record_the_reader_never_read_is_a_mismatch() -> None:
    seen = held()
    seen[OTHER] = []

    [violation] = compare(seen, held())

    assert violation.kind == "concurrent_read_mismatch"
    assert "customer.updated[1]: the concurrent reader never read 1 record(s)" in violation.message


def test_a_record_read_twice_or_out_of_order_is_a_mismatch() -> None:
    seen = held()
    seen[TP] = [seen[TP][0], seen[TP][1], seen[TP][1], seen[TP][2]]

    [violation] = compare(seen, held())

    assert violation.kind == "concurrent_read_mismatch"
    assert "read offsets again or out of order: 1" in violation.message
