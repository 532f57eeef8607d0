"""Command ids are remembered for the retention period, then pruned."""

from __future__ import annotations

import asyncpg

from service.adapters.postgres.retention import prune_processed_commands


async def test_ids_older_than_the_retention_are_pruned_and_newer_ones_kept(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        INSERT INTO processed_commands (command_id, customer_id, fingerprint, outcome, processed_at)
        SELECT 'old-' || n, 'cus_1', '\\x00'::bytea, 'applied', now() - interval '8 days'
        FROM generate_series(1, 25000) AS n
        UNION ALL
        SELECT 'new-' || n, 'cus_1', '\\x00'::bytea, 'applied', now() - interval '6 days'
        FROM generate_series(1, 10) AS n
        """
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        removed = await prune_processed_commands(pool, retention_days=7)
    finally:
        await pool.close()

    assert removed == 25000
    assert await db.fetchval("SELECT count(*) FROM processed_commands") == 10
    assert (
        await db.fetchval("SELECT count(*) FROM processed_commands WHERE command_id LIKE 'old-%'")
        == 0
    )
