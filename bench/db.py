"""Databases of a benchmark run: a seeded template, and a fresh copy of it per phase."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from service.adapters.postgres.migrations import migrate
from service.adapters.postgres.seed import seed_customers

SEED_CHUNK = 5000


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


async def clone(admin_url: str, template: str, name: str) -> str:
    """A fresh copy of ``template``; returns its URL."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
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
                  FROM processed_commands) p
            """
        )
        rows = await connection.fetch(
            "SELECT outcome, count(*) AS n FROM processed_commands GROUP BY outcome"
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
