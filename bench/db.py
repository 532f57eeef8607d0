"""Databases of a benchmark run: a seeded template, and a fresh copy of it per phase."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import asyncpg

from service.adapters.postgres.migrations import migrate
from service.adapters.postgres.retention import idempotency_tables, prune_processed_commands
from service.adapters.postgres.seed import seed_customers
from service.domain.retention_periods import Period, period_of

SEED_CHUNK = 5000
#: The customer id of the idempotency rows ``prefill_processed`` writes, so that a run's
#: own rows can be told from them.
PREFILLED = "prefilled"


def database_url_for(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def create_template(admin_url: str, name: str, *, customers: int) -> None:
    """A new database with every migration applied and ``customers`` demo customers
    (``service.adapters.postgres.seed``: one subscription each), analysed so that every
    copy starts with the same planner statistics."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    connection = await asyncpg.connect(database_url_for(admin_url, name))
    try:
        await migrate(connection)
        for first in range(1, customers + 1, SEED_CHUNK):
            await seed_customers(connection, min(SEED_CHUNK, customers + 1 - first), start=first)
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def clone(admin_url: str, template: str, name: str, *, file_copy: bool = False) -> str:
    """A fresh copy of ``template``; returns its URL. ``file_copy`` copies the files
    whole instead of block by block through the WAL: minutes faster for a template of
    many gigabytes, at the price of a checkpoint."""
    admin = await asyncpg.connect(admin_url)
    strategy = " STRATEGY FILE_COPY" if file_copy else ""
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    finally:
        await admin.close()
    return database_url_for(admin_url, name)


async def drop(admin_url: str, names: list[str]) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def server_version(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        version: str = await connection.fetchval("SHOW server_version")
        return version
    finally:
        await connection.close()


async def state_fingerprint(url: str) -> dict[str, Any]:
    """Digest of what a run left in the database: every customer's fields and version,
    and every idempotency row's outcome (timestamps excluded). Two correct workers fed
    the same load leave the same digest."""
    connection = await asyncpg.connect(url)
    try:
        customers = await connection.fetchval(
            """
            SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY c.id), ''))
            FROM (SELECT id, address_city, address_country, address_line1, address_line2,
                         address_postal_code, address_state, description, email,
                         invoice_prefix, next_invoice_sequence, name, phone,
                         preferred_locales, tax_exempt, version
                  FROM customers) c
            """
        )
        processed = await connection.fetchval(
            """
            SELECT md5(coalesce(string_agg(p::text, '|' ORDER BY p.command_id), ''))
            FROM (SELECT command_id, customer_id, fingerprint, outcome, version
                  FROM processed_commands WHERE customer_id <> $1) p
            """,
            PREFILLED,
        )
        rows = await connection.fetch(
            "SELECT outcome, count(*) AS n FROM processed_commands WHERE customer_id <> $1 "
            "GROUP BY outcome",
            PREFILLED,
        )
        versions = await connection.fetchval("SELECT coalesce(sum(version - 1), 0) FROM customers")
    finally:
        await connection.close()
    return {
        "customers_md5": customers,
        "processed_md5": processed,
        "processed": {row["outcome"]: row["n"] for row in rows},
        "updates_applied": int(versions),
    }


#: How long the database may take to become quiet before a paced run starts anyway.
QUIET_TIMEOUT = 60.0


async def until_quiet(url: str, *, within: float = QUIET_TIMEOUT) -> dict[str, Any]:
    """Make the server's background work happen now rather than during a measurement:
    VACUUM ANALYZE the phase's database (so autovacuum finds nothing to do in it), force
    a CHECKPOINT (so the next timed one is minutes away), then wait until no autovacuum
    worker runs anywhere on the server. Returns what it found and how long it took."""
    started = time.monotonic()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("VACUUM (ANALYZE)")
        await connection.execute("CHECKPOINT")
        workers = -1
        while time.monotonic() - started < within:
            workers = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            if workers == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    return {
        "seconds": round(time.monotonic() - started, 3),
        "quiet": workers == 0,
        "autovacuum_workers_left": max(workers, 0),
    }


async def session_encryption(admin_url: str, database: str) -> dict[str, int]:
    """How many sessions on ``database`` (other than this one) are over TLS and how many
    are not: taken while a worker runs, it shows which way the worker connected."""
    connection = await asyncpg.connect(admin_url)
    try:
        rows = await connection.fetch(
            """
            SELECT coalesce(s.ssl, false) AS tls, count(*) AS n
            FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid)
            WHERE a.datname = $1 AND a.pid <> pg_backend_pid()
            GROUP BY 1
            """,
            database,
        )
    finally:
        await connection.close()
    counted = {bool(row["tls"]): int(row["n"]) for row in rows}
    return {"tls": counted.get(True, 0), "plain": counted.get(False, 0)}


async def wal_position(admin_url: str) -> int:
    """The server's current WAL position in bytes: two of them apart are the WAL it
    wrote in between (all its databases')."""
    connection = await asyncpg.connect(admin_url)
    try:
        position = await connection.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    finally:
        await connection.close()
    return int(position)


async def prefill_processed(
    url: str, rows: int, *, retention_days: int, period_days: int
) -> dict[str, Any]:
    """``rows`` idempotency rows spread evenly over the last ``retention_days +
    period_days`` days, in the tables a worker would have made for them, so that the
    oldest one is due to be dropped. Each table is filled before its primary key is
    built and attached after: a sort-built index is many times faster than one grown row
    by row, and the rows are the same. Returns the tables and the time taken."""
    started = time.monotonic()
    connection = await asyncpg.connect(url)
    try:
        today: datetime.date = await connection.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
        # The migration's empty weeks make way for the tables laid out here.
        for name in await idempotency_tables(connection):
            if Period.from_table(name) is not None:
                await connection.execute(f"DROP TABLE {name}")
        first = today - datetime.timedelta(days=retention_days + period_days)
        span = (today - first).days + 1
        per_day = rows // span
        periods: list[Period] = []
        for offset in range(span):
            day = first + datetime.timedelta(days=offset)
            if not any(period.holds(day) for period in periods):
                period = period_of(day, period_days)
                periods.append(Period(max(period.start, first), period.end))
        filled = 0
        for period in periods:
            days = [
                first + datetime.timedelta(days=offset)
                for offset in range(span)
                if period.holds(first + datetime.timedelta(days=offset))
            ]
            count = per_day * len(days) + (rows - per_day * span if period is periods[-1] else 0)
            await _fill(connection, period, days, count, start=filled)
            filled += count
        # Vacuumed and frozen here, once, in the template: else autovacuum takes up
        # the fresh millions of rows in the middle of a timed phase (seen as a database
        # that never became quiet), and every copy of the template would inherit that.
        vacuumed = time.monotonic()
        await connection.execute("VACUUM (FREEZE, ANALYZE) processed_commands")
        return {
            "rows": filled,
            "tables": [period.table for period in periods],
            "fill_seconds": round(time.monotonic() - started, 1),
            "vacuum_seconds": round(time.monotonic() - vacuumed, 1),
        }
    finally:
        await connection.close()


async def _fill(
    connection: asyncpg.Connection,
    period: Period,
    days: list[datetime.date],
    count: int,
    *,
    start: int,
) -> None:
    name = period.table
    await connection.execute(
        f"CREATE TABLE {name} (LIKE processed_commands INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    # Random-looking ids like a client's UUIDs, and a fingerprint as long as the real one.
    await connection.execute(
        f"""
        INSERT INTO {name}
            (command_id, customer_id, fingerprint, outcome, version, processed_at, processed_on)
        SELECT md5(n::text)::uuid::text, $5, sha256(int8send(n)),
               'applied', 1, day::timestamp AT TIME ZONE 'UTC', day
        FROM generate_series($1::bigint, $2::bigint) AS n,
             LATERAL (SELECT ($3::date[])[1 + n % $4] AS day) AS d
        """,
        start + 1,
        start + count,
        days,
        len(days),
        PREFILLED,
    )
    await connection.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (command_id, processed_on)")
    await connection.execute(
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound "
        f"CHECK (processed_on >= DATE '{period.start}' AND processed_on < DATE '{period.end}')"
    )
    await connection.execute(
        f"ALTER TABLE processed_commands ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{period.start}') TO ('{period.end}')"
    )
    await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound")


async def timed_prune(url: str, *, retention_days: int, period_days: int) -> dict[str, Any]:
    """One retention pass as a worker runs it, on a database prefilled by
    ``prefill_processed``: its wall time and what it did. Row counts are the planner's
    (analysed after the fill): counting 50 million rows would take longer than the pass."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        before = await _estimated_rows(pool)
        started = time.perf_counter()
        pruned = await prune_processed_commands(pool, retention_days, period_days=period_days)
        seconds = time.perf_counter() - started
        after = await _estimated_rows(pool)
    finally:
        await pool.close()
    return {
        "seconds": round(seconds, 4),
        "rows_before": before,
        "rows_after": after,
        "dropped": list(pruned.dropped),
        "created": [name for name, _ in pruned.created],
        "deleted": pruned.deleted,
    }


async def _estimated_rows(pool: asyncpg.Pool) -> int:
    rows: int = await pool.fetchval(
        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'processed_commands'::regclass"
    )
    return rows
