"""``customer-service tail``'s one-line summaries."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import ConsumerRecord

from service.entrypoints.operator.tail import describe
from service.infrastructure.settings import Settings
from tests.unit.test_events import BINARY, CONTEXT, an_update

SETTINGS = Settings(_env_file=None)


def test_a_dead_letter_is_shown_at_its_own_partition_and_offset() -> None:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic=SETTINGS.topic_dead_letters,
        partition=2,
        offset=17,
        timestamp=0,
        timestamp_type=0,
        key=b"cus_1",
        value=b"not json",
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=8,
        headers=(
            ("kafka_dlt-original-topic", b"customer.update"),
            ("kafka_dlt-original-partition", b"1"),
            ("kafka_dlt-original-offset", b"40"),
            ("kafka_dlt-exception-cause-fqcn", b"record_invalid_json"),
            ("x-null", None),
        ),
    )

    line = describe(record, SETTINGS)

    assert line.startswith("dead-letter 2:17 ")
    assert "from customer.update[1]@40" in line
    assert "record_invalid_json" in line


def event_record(
    value: bytes | None, headers: tuple[tuple[str, bytes | None], ...]
) -> ConsumerRecord[bytes, bytes]:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic=SETTINGS.topic_events, partition=0, offset=9, timestamp=0, timestamp_type=0,
        key=b"cus_1", value=value, checksum=None, serialized_key_size=5,
        serialized_value_size=len(value or b""), headers=headers,
    )  # fmt: skip
    return record


@pytest.mark.parametrize("time", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_an_event_at_the_edge_of_the_calendar_is_shown(time: str) -> None:
    message = an_update(CONTEXT)
    body = {**orjson.loads(message.value or b""), "time": time}

    line = describe(event_record(orjson.dumps(body), message.headers), SETTINGS)

    assert "updated" in line
    assert time[:4] in line


def test_a_binary_record_with_a_header_name_that_is_not_utf_8_is_shown_escaped() -> None:
    message = an_update(BINARY)
    headers = (*message.headers, ("ce_\udcff", b"x"))

    line = describe(event_record(message.value, headers), SETTINGS)

    assert line.startswith(f"unreadable message on {SETTINGS.topic_events}")
    line.encode("utf-8")  # printable as it is
