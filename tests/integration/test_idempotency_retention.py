"""Command ids are remembered for the retention period in tables of a few days each; a
table past it is dropped whole, and a redelivered command is found whichever table holds
it. Daily tables here, so that the days are easy to follow."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest

from service.adapters.postgres import migrations, retention
from service.adapters.postgres.batch_store import BatchStore
from service.adapters.postgres.migrations import load_migrations, migrate
from service.adapters.postgres.retention import DAYS_AHEAD, LOCK_KEY, prune_processed_commands
from service.application.errors import MaintenanceRefusedError, TransientError
from service.application.ports import Pruned
from service.domain.retention_periods import Period

RETENTION = 7


def day_table(day: datetime.date) -> str:
    return Period(day, day + datetime.timedelta(days=1)).table


async def prune(
    pool: asyncpg.Pool, *, today: datetime.date | None = None, period_days: int = 1
) -> Pruned:
    return await prune_processed_commands(pool, RETENTION, period_days=period_days, today=today)


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """The database with no table of days yet: the migration's weeks are dropped, so that
    each test lays out the tables it follows."""
    for row in await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'processed_commands'::regclass "
        "AND c.relname <> 'processed_commands_default'"
    ):
        await db.execute(f"DROP TABLE {row['relname']}")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def utc_today(db: asyncpg.Connection) -> datetime.date:
    day: datetime.date = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return day


def days(n: int) -> datetime.timedelta:
    return datetime.timedelta(days=n)


async def insert(db: asyncpg.Connection, prefix: str, count: int, day: datetime.date) -> None:
    await db.execute(
        """
        INSERT INTO processed_commands (command_id, customer_id, fingerprint, outcome, processed_on)
        SELECT $1 || n, 'cus_1', '\\x00'::bytea, 'applied', $3
        FROM generate_series(1, $2) AS n
        """,
        prefix,
        count,
        day,
    )


async def tables(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'processed_commands'::regclass ORDER BY 1"
    )
    return [row["relname"] for row in rows]


async def where_rows_are(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT tableoid::regclass::text AS t, count(*) AS n FROM processed_commands GROUP BY 1"
    )
    return {row["t"]: row["n"] for row in rows}


async def test_a_pass_makes_the_coming_days_and_moves_in_their_rows_from_the_default(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    # Written before any pass made today's table: they land in the default partition.
    await db.execute(
        "INSERT INTO processed_commands (command_id, customer_id, fingerprint, outcome) "
        "VALUES ('cmd_early', 'cus_1', '\\x00', 'applied')"
    )
    assert await where_rows_are(db) == {"processed_commands_default": 1}

    pruned = await prune(pool)

    assert pruned.created == (
        (day_table(today), 1),
        *((day_table(today + days(n)), 0) for n in range(1, DAYS_AHEAD + 1)),
    )
    assert await where_rows_are(db) == {day_table(today): 1}
    # New rows now go to the day's table, and the next pass has nothing to make.
    await insert(db, "later-", 3, today)
    assert await where_rows_are(db) == {day_table(today): 4}
    assert (await prune(pool)).created == ()


async def test_days_past_the_retention_are_dropped_whole_and_newer_ones_kept(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    # Passes as if run nine and seven days ago made those days' tables.
    await prune(pool, today=today - days(9))
    await prune(pool, today=today - days(7))
    await insert(db, "nine-", 20, today - days(9))
    await insert(db, "eight-", 20, today - days(8))
    # Exactly the retention old at the start of today: kept until tomorrow's pass.
    await insert(db, "seven-", 5, today - days(7))

    pruned = await prune(pool)

    assert pruned.dropped == (day_table(today - days(9)), day_table(today - days(8)))
    assert pruned.deleted == 0
    assert await where_rows_are(db) == {day_table(today - days(7)): 5}
    assert (await prune(pool, today=today + days(1))).dropped == (day_table(today - days(7)),)
    assert await where_rows_are(db) == {}


async def test_rows_past_the_retention_in_the_default_partition_are_deleted_in_slices(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    # Days no pass ever made a table for (a database migrated from the single table).
    await insert(db, "old-", 25000, today - days(8))
    await insert(db, "new-", 10, today - days(6))

    pruned = await prune(pool)

    assert pruned.deleted == 25000
    assert await where_rows_are(db) == {"processed_commands_default": 10}


async def test_a_command_seen_on_an_earlier_day_is_still_known(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    await prune(pool, today=today - days(3))
    await db.execute(
        "INSERT INTO processed_commands "
        "(command_id, customer_id, fingerprint, outcome, processed_on) VALUES "
        "('cmd_monday', 'cus_1', '\\x01', 'applied', $1), "
        "('cmd_default', 'cus_1', '\\x02', 'rejected', $2)",
        today - days(3),
        today - days(5),
    )
    await prune(pool)

    async with pool.acquire() as connection, connection.transaction():
        known = await BatchStore(connection).known_commands(
            ["cmd_monday", "cmd_default", "cmd_new"]
        )

    assert known == {"cmd_monday": b"\x01", "cmd_default": b"\x02"}


async def test_a_pass_while_another_runs_does_nothing(
    database_url: str, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        pruned = await prune(pool)
    finally:
        await other.close()

    assert pruned.skipped
    assert (
        await db.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'processed_commands'::regclass"
        )
        == 1
    )


async def test_a_pass_that_cannot_lock_the_table_gives_up_instead_of_queueing_workers(
    database_url: str, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    await prune(pool, today=today - days(9))
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            # A worker's batch reading the table holds it for as long as it runs.
            await other.execute("LOCK TABLE processed_commands IN ACCESS SHARE MODE")
            with pytest.raises(TransientError, match="LockNotAvailable"):
                await asyncio.wait_for(prune(pool), 30)
    finally:
        await other.close()

    # Nothing was dropped under the batch; the next pass, with the batch done, does it.
    assert day_table(today - days(9)) in await tables(db)
    assert day_table(today - days(9)) in (await prune(pool)).dropped


async def test_a_batch_writing_to_the_default_partition_holds_the_pass_off_not_the_reverse(
    database_url: str, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    batch = await asyncpg.connect(database_url)
    try:
        # A batch that wrote a row of today before today's table existed, still open: had
        # the pass moved the rows and attached meanwhile, ATTACH would find this row.
        transaction = batch.transaction()
        await transaction.start()
        await insert(batch, "open-", 1, today)
        with pytest.raises(TransientError, match="LockNotAvailable"):
            await prune(pool)
        await transaction.commit()
    finally:
        await batch.close()

    assert await where_rows_are(db) == {"processed_commands_default": 1}
    pruned = await prune(pool)
    assert pruned.created[0] == (day_table(today), 1)
    assert await where_rows_are(db) == {day_table(today): 1}


async def test_a_step_the_database_refuses_is_reported_as_refused_and_drops_still_happen(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    await prune(pool, today=today - days(9))
    # A table made by hand over today: the pass cannot make its own there.
    await db.execute(
        "CREATE TABLE processed_commands_by_hand PARTITION OF processed_commands "
        f"FOR VALUES FROM ('{today}') TO ('{today + days(1)}')"
    )

    with pytest.raises(MaintenanceRefusedError, match="processed_commands"):
        await prune(pool)

    assert day_table(today - days(9)) not in await tables(db)


class AttachWatcher:
    """The pass's connection, which runs ``before_attach`` just before it attaches."""

    def __init__(self, connection: asyncpg.Connection, before_attach: Any) -> None:
        self._connection = connection
        self._before_attach = before_attach

    def transaction(self) -> Any:
        return self._connection.transaction()

    async def execute(self, query: str, *args: Any) -> str:
        if "ATTACH PARTITION" in query:
            await self._before_attach()
        status: str = await self._connection.execute(query, *args)
        return status


async def test_no_batch_can_write_to_the_default_partition_between_the_move_and_the_attach(
    database_url: str, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    refused: list[str] = []

    async def write_a_row_of_the_period() -> None:
        batch = await asyncpg.connect(database_url)
        try:
            await batch.execute("SET lock_timeout = '200ms'")
            try:
                await insert(batch, "late-", 1, today)
            except asyncpg.LockNotAvailableError as exc:
                refused.append(str(exc))
        finally:
            await batch.close()

    connection = await asyncpg.connect(database_url)
    try:
        watched = cast(asyncpg.Connection, AttachWatcher(connection, write_a_row_of_the_period))
        await retention._make(watched, Period(today, today + days(1)))
    finally:
        await connection.close()

    # Without the pass's lock on the default partition the row would have gone in, and
    # ATTACH would have refused the table for it.
    assert refused
    assert await where_rows_are(db) == {}


async def test_an_id_written_twice_across_midnight_is_known_by_its_first_row(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    await prune(pool, today=today - days(1))
    # Two transactions overlapping midnight, each for another customer (migration 0008).
    await db.execute(
        "INSERT INTO processed_commands "
        "(command_id, customer_id, fingerprint, outcome, processed_at, processed_on) VALUES "
        "('cmd_twice', 'cus_b', '\\x0b', 'applied', now(), $1), "
        "('cmd_twice', 'cus_a', '\\x0a', 'applied', now() - interval '1 second', $2)",
        today,
        today - days(1),
    )

    async with pool.acquire() as connection, connection.transaction():
        known = await BatchStore(connection).known_commands(["cmd_twice"])

    assert known == {"cmd_twice": b"\x0a"}


async def test_week_wide_tables_take_the_days_already_held_by_daily_ones_into_account(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    today = await utc_today(db)
    await prune(pool, today=today)

    pruned = await prune(pool, today=today + days(3), period_days=7)

    made = [Period.from_table(name) for name, _ in pruned.created]
    # The daily tables already hold up to today + DAYS_AHEAD; the week starts after them.
    first = made[0]
    assert first is not None
    assert first.start == today + days(DAYS_AHEAD + 1)
    assert all(period is not None and period.end - period.start <= days(7) for period in made)
    await insert(db, "week-", 4, today + days(5))
    assert await where_rows_are(db) == {pruned.created[-1][0]: 4}


async def test_the_migration_carries_every_row_of_the_single_table_over(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        before = [m for m in load_migrations() if m.version < 8]
        monkeypatch.setattr(migrations, "load_migrations", lambda: before)
        await migrate(connection)
        await connection.execute(
            "INSERT INTO processed_commands "
            "(command_id, customer_id, fingerprint, outcome, version, processed_at) VALUES "
            "('cmd_a', 'cus_1', '\\x01', 'applied', 3, '2026-11-30T23:59:59Z'), "
            "('cmd_b', 'cus_2', '\\x02', 'rejected', NULL, '2026-12-01T00:00:00Z')"
        )
        monkeypatch.undo()
        await migrate(connection)

        rows = await connection.fetch(
            "SELECT command_id, customer_id, fingerprint, outcome, version, processed_on, "
            "tableoid::regclass::text AS held_by FROM processed_commands ORDER BY command_id"
        )
        today = await utc_today(connection)
        weeks = await connection.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'processed_commands'::regclass ORDER BY 1"
        )
    finally:
        await connection.close()

    # Each row went to its week's table, Monday to Monday, none to the default partition.
    assert [tuple(row) for row in rows] == [
        ("cmd_a", "cus_1", b"\x01", "applied", 3, datetime.date(2026, 11, 30),
         "processed_commands_20261130_20261207"),
        ("cmd_b", "cus_2", b"\x02", "rejected", None, datetime.date(2026, 12, 1),
         "processed_commands_20261130_20261207"),
    ]  # fmt: skip
    # The weeks run on to the one holding the day after tomorrow, as a worker makes them.
    periods = [Period.from_table(row["relname"]) for row in weeks]
    assert weeks[-1]["relname"] == "processed_commands_default"
    assert periods[-2] is not None
    assert periods[-2].holds(today + days(DAYS_AHEAD))
    assert periods[0] == Period(datetime.date(2026, 11, 30), datetime.date(2026, 12, 7))
