"""Forgetting old idempotency rows."""

from __future__ import annotations

import asyncpg

from service.adapters.postgres.errors import translated


async def prune_processed_commands(pool: asyncpg.Pool, retention_days: int) -> int:
    """Forget command ids older than the retention, a slice at a time so that no single
    statement holds many locks. Returns how many were removed."""
    removed = 0
    while True:
        with translated():
            status = await pool.execute(
                """
                DELETE FROM processed_commands WHERE command_id IN (
                    SELECT command_id FROM processed_commands
                    WHERE processed_at < now() - make_interval(days => $1)
                    LIMIT 10000
                )
                """,
                retention_days,
            )
        count = int(status.split()[-1])
        removed += count
        if count < 10000:
            return removed
