"""kcat (librdkafka) produces records aiokafka cannot, for the tests that need them.

Read back with kcat too: aiokafka itself fails on a header name that is not UTF-8.
"""

from __future__ import annotations

import binascii
import os
from pathlib import Path

import asyncpg

from devstack.kcat import produce_raw, run_kcat
from service.adapters.kafka.publisher import partition_for
from service.infrastructure.settings import Settings
from tests.conftest import TEST_PARTITIONS
from tests.support import (
    TopicReader,
    command,
    encode,
    event_topics,
    insert_customer,
    running_worker,
)

BAD_NAME = b"\xff\xfebad"


async def test_kcat_produces_a_header_name_that_is_not_utf8_and_a_large_value(
    settings: Settings, kcat: Path
) -> None:
    value = os.urandom(200_000)
    await produce_raw(
        settings.kafka_bootstrap_servers,
        settings.topic_commands,
        key=b"cus_kcat",
        value=value,
        headers=[(BAD_NAME, b"v1"), (b"ce_id", b"cmd-1")],
        partition=1,
        kcat=kcat,
    )

    out = await run_kcat(
        kcat,
        [
            *(b"-F", b"none", b"-q", b"-C", b"-b", settings.kafka_bootstrap_servers.encode()),
            *(b"-t", settings.topic_commands.encode(), b"-o", b"beginning", b"-e"),
            # Partition, key length and key, headers, value length, then the value itself.
            *(b"-f", b"%p|%K|%k|%h|%S|%s"),
        ],
    )

    assert out == b"1|8|cus_kcat|" + BAD_NAME + b"=v1,ce_id=cmd-1|200000|" + value


async def test_kcat_with_murmur2_puts_each_customer_where_our_client_does(
    settings: Settings, kcat: Path
) -> None:
    """What the README's "Producing from other languages and tools" says: librdkafka's
    murmur2_random agrees with our partitioner, its default (consistent_random) does not."""
    topic = settings.topic_commands
    keys = [f"cus_demo_{n:06d}".encode() for n in range(1, 11)]
    for key in keys:  # produce_raw sets partitioner=murmur2_random
        await produce_raw(settings.kafka_bootstrap_servers, topic, key=key, value=b"{}", kcat=kcat)
    out = await run_kcat(
        kcat,
        [
            *(b"-F", b"none", b"-q", b"-C", b"-b", settings.kafka_bootstrap_servers.encode()),
            *(b"-t", topic.encode(), b"-o", b"beginning", b"-e", b"-f", b"%p %k\\n"),
        ],
    )
    placed = dict(line.split(b" ")[::-1] for line in out.splitlines())
    count = TEST_PARTITIONS

    assert {key: int(placed[key]) for key in keys} == {
        key: partition_for(key, count) for key in keys
    }
    crc32 = [key for key in keys if binascii.crc32(key) % count != partition_for(key, count)]
    assert len(crc32) >= len(keys) // 2, "the default partitioner should mostly differ"


async def test_commands_kcat_sends_in_either_content_mode_are_applied(
    settings: Settings, kcat: Path, db: asyncpg.Connection
) -> None:
    """kcat (librdkafka) as a producer we did not write: the README's structured-mode
    example, then the same update in binary mode (ce_ headers, data as the value)."""
    customer = "cus_demo_000001"
    await insert_customer(db, customer, invoice_prefix="KCT1")
    structured = command(customer, {"name": "Ada"}, id="cmd-kcat-1")
    binary_headers = [
        (b"content-type", b"application/json"),
        *(
            (f"ce_{name}".encode(), str(value).encode())
            for name, value in command(customer, id="cmd-kcat-2").items()
            if name != "data"
        ),
    ]
    async with TopicReader(settings, event_topics(settings)) as reader:
        await produce_raw(
            settings.kafka_bootstrap_servers,
            settings.topic_commands,
            key=customer.encode(),
            value=encode(structured),
            kcat=kcat,
        )
        await produce_raw(
            settings.kafka_bootstrap_servers,
            settings.topic_commands,
            key=customer.encode(),
            value=b'{"name":"Grace"}',
            headers=binary_headers,
            kcat=kcat,
        )
        async with running_worker(settings):
            events = await reader.wait_for_count(settings.topic_events, 2)

    bodies = [event.json() for event in events]
    assert [body["causationid"] for body in bodies] == ["cmd-kcat-1", "cmd-kcat-2"]
    assert [body["data"]["object"]["name"] for body in bodies] == ["Ada", "Grace"]
