"""The asyncpg pool."""

from __future__ import annotations

import asyncpg

from service.adapters.postgres.connection import Database, refused_for_good
from service.adapters.postgres.errors import translated


async def create_pool(
    target: Database, *, size: int, command_timeout: float, idle_in_transaction_timeout: float
) -> asyncpg.Pool:
    """``idle_in_transaction_timeout`` bounds how long a stalled client (a frozen process,
    a paused VM) can keep a batch transaction, and the row locks its successor needs,
    open: PostgreSQL ends such a session, and the worker retries on a new one."""
    with translated(), refused_for_good(target):
        pool: asyncpg.Pool = await asyncpg.create_pool(
            **target.options(),
            min_size=1,
            max_size=size,
            command_timeout=command_timeout,
            server_settings={
                "idle_in_transaction_session_timeout": str(
                    round(idle_in_transaction_timeout * 1000)
                )
            },
        )
    return pool
