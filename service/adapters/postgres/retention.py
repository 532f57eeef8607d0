"""Forgetting old idempotency rows: one table per period of days, dropped whole.

``processed_commands`` is partitioned by ``processed_on`` (migration 0008). Each pass
makes the tables for today and the next days, moving in any of their rows that landed
in the default partition, and drops the periods past the retention (the dates are
``domain.retention_periods``). A pass costs the same at a thousand rows or at billions;
only the default partition, normally empty, is pruned row by row.
"""

from __future__ import annotations

import datetime

import asyncpg

from service.adapters.postgres.errors import translated
from service.application.errors import ClaimConflictError, MaintenanceRefusedError
from service.application.ports import Pruned
from service.domain.retention_periods import (
    Period,
    oldest_day_kept,
    periods_to_drop,
    periods_to_make,
)

#: Days made ahead of today, so that passes may fail for that long before a row lands
#: in the default partition.
DAYS_AHEAD = 2
#: Any constant works: it only has to be the same for every worker.
LOCK_KEY = 0x6375_7374_7072_756E
_DEFAULT_SLICE = 10_000
# Dropping a period's table and attaching one lock the parent table; a pass that cannot
# have the lock at once gives up until the next one rather than queue batches behind it.
_LOCK_TIMEOUT = "1s"


async def prune_processed_commands(
    pool: asyncpg.Pool,
    retention_days: int,
    *,
    period_days: int,
    today: datetime.date | None = None,
) -> Pruned:
    """Drop the periods past the retention, make the coming periods' tables and prune the
    default partition. One worker at a time: a pass that finds another running skips.
    Raises ``TransientError`` for what the next pass may not meet again (a lock not had in
    time, the server away) and ``MaintenanceRefusedError`` for anything else refused."""
    try:
        return await _locked_pass(pool, retention_days, period_days, today)
    except (asyncpg.PostgresError, ClaimConflictError) as exc:
        raise MaintenanceRefusedError(
            f"idempotency retention: {type(exc).__name__}: {exc}"
        ) from exc


async def _locked_pass(
    pool: asyncpg.Pool, retention_days: int, period_days: int, today: datetime.date | None
) -> Pruned:
    with translated():
        async with pool.acquire() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                return Pruned(skipped=True)
            try:
                if today is None:
                    today = await connection.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
                await connection.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
                try:
                    return await _prune(connection, retention_days, period_days, today)
                finally:
                    await connection.execute("RESET lock_timeout")
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def _prune(
    connection: asyncpg.Connection, retention_days: int, period_days: int, today: datetime.date
) -> Pruned:
    existing = await _periods(connection)
    # Dropping first: a table that cannot be made must not keep the old ones.
    dropped = []
    for period in periods_to_drop(existing, today, retention_days=retention_days):
        await connection.execute(f"DROP TABLE {period.table}")
        dropped.append(period.table)
    kept = [period for period in existing if period.table not in dropped]
    created = []
    for period in periods_to_make(kept, today, width=period_days, days_ahead=DAYS_AHEAD):
        created.append((period.table, await _make(connection, period)))
    deleted = await _prune_default(connection, oldest_day_kept(today, retention_days))
    return Pruned(created=tuple(created), dropped=tuple(dropped), deleted=deleted)


async def idempotency_tables(connection: asyncpg.Connection) -> list[str]:
    """Every table of ``processed_commands``: the periods' and the default partition."""
    rows = await connection.fetch(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'processed_commands'::regclass
        """
    )
    return [row["relname"] for row in rows]


async def _periods(connection: asyncpg.Connection) -> list[Period]:
    names = await idempotency_tables(connection)
    return [period for name in names if (period := Period.from_table(name)) is not None]


async def _make(connection: asyncpg.Connection, period: Period) -> int:
    """Make the period's table apart, move in its rows from the default partition and
    attach it; returns how many rows moved. ``CREATE TABLE ... PARTITION OF`` would refuse
    while the default holds any row of the period, as it does when no pass ran in time."""
    name = period.table
    async with connection.transaction():
        # Holds off batches writing to the default partition (not those reading it) until
        # the table is attached: a row of the period written after the move would make
        # ATTACH refuse. Batches wait at most the lock timeout for it.
        await connection.execute(
            "LOCK TABLE processed_commands_default IN SHARE ROW EXCLUSIVE MODE"
        )
        await connection.execute(
            f"""
            CREATE TABLE {name} (LIKE processed_commands INCLUDING DEFAULTS INCLUDING INDEXES
                                 INCLUDING CONSTRAINTS);
            -- Proves the bound, so that ATTACH need not scan the table for it.
            ALTER TABLE {name} ADD CONSTRAINT {name}_bound
                CHECK (processed_on >= DATE '{period.start}' AND processed_on < DATE '{period.end}')
            """
        )
        status = await connection.execute(
            f"""
            WITH moved AS (
                DELETE FROM processed_commands_default
                WHERE processed_on >= $1 AND processed_on < $2
                RETURNING *
            )
            INSERT INTO {name} SELECT * FROM moved
            """,
            period.start,
            period.end,
        )
        await connection.execute(
            f"ALTER TABLE processed_commands ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{period.start}') TO ('{period.end}')"
        )
        await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound")
    return int(status.split()[-1])


async def _prune_default(connection: asyncpg.Connection, oldest_kept: datetime.date) -> int:
    """Rows older than the retention that have no period table, a slice at a time so
    that no single statement holds many locks."""
    deleted = 0
    while True:
        status = await connection.execute(
            """
            DELETE FROM processed_commands_default WHERE ctid IN (
                SELECT ctid FROM processed_commands_default
                WHERE processed_on < $1 LIMIT $2
            )
            """,
            oldest_kept,
            _DEFAULT_SLICE,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < _DEFAULT_SLICE:
            return deleted
