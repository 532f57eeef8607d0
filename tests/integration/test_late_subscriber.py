"""A subscriber that starts late builds a complete view: the real worker, relay and
backfill publish, the subscriber client (through the SQLite example) bootstraps from the
state topic and follows the events, and its table equals the database row for row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from examples.sqlite_subscriber import CustomerTable, mirror
from service.adapters.kafka.clients import connection_options, partitions_of
from service.adapters.postgres.batch_store import CUSTOMER_COLUMNS, customer_from_row
from service.adapters.postgres.seed import demo_id, seed_customers
from service.entrypoints.subscriber import Subscriber
from service.infrastructure.settings import Settings
from tests.support import (
    cli,
    command,
    eventually,
    outbox_size,
    produce_commands,
    read_everything,
    running_worker,
)

CUSTOMERS = 40


async def database_view(db: asyncpg.Connection) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every customer as the events show it: ``{id: (version, object)}``."""
    rows = await db.fetch(f"SELECT {CUSTOMER_COLUMNS} FROM customers")
    customers = [customer_from_row(row) for row in rows]
    return {c.id: (c.version, c.to_object()) for c in customers}


async def settled(db: asyncpg.Connection, commands: int) -> bool:
    applied = await db.fetchval("SELECT count(*) FROM processed_commands")
    return bool(applied == commands and await outbox_size(db) == 0)


@contextlib.asynccontextmanager
async def mirroring(
    settings: Settings, table: CustomerTable, group: str
) -> AsyncIterator[asyncio.Task[None]]:
    """The example subscriber running into ``table``; a gap would end it with the error."""
    subscriber = Subscriber(settings, group_id=group, versions=table.versions())
    async with subscriber:
        task = asyncio.create_task(mirror(subscriber, table))
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def the_same(table: CustomerTable, db: asyncpg.Connection, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # a SequenceGap (or any error) fails the test here, by name
        raise AssertionError("the subscriber stopped")
    return table.rows() == await database_view(db)


async def test_a_late_subscriber_bootstraps_and_follows_to_the_databases_view_under_load(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_customers(db, CUSTOMERS)
    commands = [
        command(demo_id(n % CUSTOMERS + 1), {"description": f"d{n}", "name": f"Name {n}"})
        for n in range(600)
    ]
    table = CustomerTable(tmp_path / "view.sqlite")
    async with running_worker(settings):
        backfill = await cli(settings, "backfill", "--all", "--rate", "0")
        assert backfill.code == 0, backfill.err
        sending = asyncio.create_task(produce_commands(settings, commands))
        await eventually(
            lambda: _applied_at_least(db, 200), within=60, what="a third of the updates applied"
        )
        async with mirroring(settings, table, f"{settings.kafka_consumer_group}.view") as task:
            await sending
            await eventually(lambda: settled(db, len(commands)), within=60, what="all published")
            await eventually(lambda: the_same(table, db, task), what="the view caught up")

    view = table.rows()
    assert len(view) == CUSTOMERS
    assert all(version > 1 for version, _ in view.values()), "every customer was updated"
    assert view == await database_view(db)


async def _applied_at_least(db: asyncpg.Connection, count: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM processed_commands") >= count)


async def test_the_bootstrap_gives_the_full_view_after_retention_deleted_the_events(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_customers(db, CUSTOMERS)
    first = [command(demo_id(n % CUSTOMERS + 1), {"description": f"a{n}"}) for n in range(200)]
    later = [command(demo_id(n % 7 + 1), {"description": f"b{n}"}) for n in range(30)]
    table = CustomerTable(tmp_path / "view.sqlite")
    async with running_worker(settings):
        assert (await cli(settings, "backfill", "--all", "--rate", "0")).code == 0
        await produce_commands(settings, first)
        await eventually(lambda: settled(db, len(first)), within=60, what="all published")
        deleted = await delete_all_records(settings, settings.topic_events)
        assert deleted == len(first), "retention took every event published so far"
        assert (await read_everything(settings, [settings.topic_events]))[
            settings.topic_events
        ] == []

        async with mirroring(settings, table, f"{settings.kafka_consumer_group}.view") as task:
            await eventually(lambda: the_same(table, db, task), what="the bootstrap")
            await produce_commands(settings, later)
            await eventually(lambda: settled(db, len(first) + len(later)), what="all published")
            await eventually(lambda: the_same(table, db, task), what="the view followed")

    assert table.rows() == await database_view(db)


async def delete_all_records(settings: Settings, topic: str) -> int:
    """What retention does to a topic's old segments, up to its end now; returns how many
    records went."""
    partitions = await partitions_of(settings, [topic])
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        before = await read_everything(settings, [topic])
        ends = {tp: max((r.offset for r in before[topic] if r.partition == tp.partition),
                        default=-1) + 1 for tp in partitions}  # fmt: skip
        await admin.delete_records(
            {tp: RecordsToDelete(before_offset=end) for tp, end in ends.items() if end > 0}
        )
    finally:
        await admin.close()
    return len(before[topic])
