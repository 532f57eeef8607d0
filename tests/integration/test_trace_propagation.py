"""Trace context travels from a command to its event through the real services."""

from __future__ import annotations

import asyncpg

from service.infrastructure.settings import Settings
from tests.support import (
    TopicReader,
    command,
    encode,
    event_topics,
    insert_customer,
    produce,
    running_worker,
)

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_event_carries_the_commands_traceparent_as_attribute_and_header(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_tr", invoice_prefix="TRC1")
    sent = command("cus_tr", {"name": "Traced"})

    async with running_worker(settings) as worker:
        await produce(
            settings, [(b"cus_tr", encode(sent))], headers=[("traceparent", PARENT.encode())]
        )
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            [event] = await reader.wait_for_count(settings.topic_events, 1)

    assert event.json()["traceparent"] == PARENT
    assert ("traceparent", PARENT.encode()) in event.headers
