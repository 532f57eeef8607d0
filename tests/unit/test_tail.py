"""``customer-service tail``'s one-line summaries."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from service.entrypoints.operator.tail import describe
from service.infrastructure.settings import Settings

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
