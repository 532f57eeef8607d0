"""Two workers in one consumer group: partitions move, nothing is applied twice."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg

from service.bootstrap import WorkerProcess
from service.infrastructure.settings import Settings
from tests.support import (
    TopicReader,
    command,
    event_topics,
    eventually,
    insert_customer,
    produce_commands,
)

CUSTOMERS = [f"cus_rb_{n}" for n in range(12)]


def consumed(process: WorkerProcess) -> float:
    value = process.metrics.registry.get_sample_value("customer_commands_consumed_total")
    return value or 0.0


def lag_partitions(process: WorkerProcess) -> set[str]:
    return {
        sample.labels["partition"]
        for family in process.metrics.registry.collect()
        if family.name == "customer_consumer_lag_records"
        for sample in family.samples
    }


async def test_a_worker_joining_and_one_leaving_keep_every_customer_exactly_once_and_in_order(
    settings: Settings, db: asyncpg.Connection
) -> None:
    for number, customer_id in enumerate(CUSTOMERS):
        await insert_customer(db, customer_id, invoice_prefix=f"RB{number:04d}")
    waves = [
        [
            command(c, {"description": f"wave {wave} step {step}"})
            for step in range(5)
            for c in CUSTOMERS
        ]
        for wave in range(3)
    ]
    first, second = WorkerProcess(settings), WorkerProcess(settings)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))
    second_task: asyncio.Task[None] | None = None
    try:
        async with TopicReader(settings, event_topics(settings), first_task) as reader:
            await produce_commands(settings, waves[0])
            await reader.wait_for_count(settings.topic_events, 60)

            second_task = asyncio.create_task(second.run(stop_second))
            # Ready means holding partitions (and a database that answers).
            await eventually(
                lambda: _both_ready(first, second),
                what="the group to split the partitions between both workers",
            )
            await produce_commands(settings, waves[1])
            await reader.wait_for_count(settings.topic_events, 120)
            assert consumed(second) > 0
            # Each partition's lag is exported by the worker that holds it, not also by
            # the one that held it before.
            await eventually(
                lambda: (
                    bool(lag_partitions(second))
                    and lag_partitions(first).isdisjoint(lag_partitions(second))
                ),
                what="the first worker to stop exporting the lag of partitions it gave up",
            )

            stop_first.set()
            await asyncio.wait_for(first_task, timeout=60)
            reader.worker = second_task
            await produce_commands(settings, waves[2])
            await reader.wait_for_count(settings.topic_events, 180)
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.gather(
            first_task, *([second_task] if second_task else []), return_exceptions=True
        )

    events: list[dict[str, Any]] = [record.json() for record in reader.on(settings.topic_events)]
    sent = [c["id"] for wave in waves for c in wave]
    assert sorted(e["causationid"] for e in events) == sorted(sent)
    for customer_id in CUSTOMERS:
        versions = [int(e["sequence"]) for e in events if e["subject"] == customer_id]
        assert versions == list(range(2, 17)), customer_id
        row = await db.fetchrow(
            "SELECT description, version FROM customers WHERE id = $1", customer_id
        )
        assert row is not None
        assert (row["description"], row["version"]) == ("wave 2 step 4", 16)


async def _ready(process: WorkerProcess) -> bool:
    if process.http_port is None:
        return False
    url = f"http://127.0.0.1:{process.http_port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status == 200


async def _both_ready(first: WorkerProcess, second: WorkerProcess) -> bool:
    return await _ready(first) and await _ready(second)
