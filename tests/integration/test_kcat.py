"""kcat (librdkafka) produces records aiokafka cannot, for the tests that need them.

Read back with kcat too: aiokafka itself fails on a header name that is not UTF-8.
"""

from __future__ import annotations

import os
from pathlib import Path

from devstack.kcat import produce_raw, run_kcat
from service.infrastructure.settings import Settings

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
