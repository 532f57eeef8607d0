"""The worker's connection pool: a session left idle inside a transaction is ended by
PostgreSQL, and what the client sees then counts as transient (retry on a new session)."""

from __future__ import annotations

import asyncpg
import pytest

from service.adapters.postgres.batch_store import batch_transaction
from service.adapters.postgres.connection import Database
from service.adapters.postgres.errors import translated
from service.adapters.postgres.pool import create_pool
from service.application.errors import TransientError
from service.domain.events import OutboundMessage
from service.infrastructure.settings import Settings
from tests.support import eventually, freeze_until_session_ends, session_gone


async def test_the_pool_sets_the_configured_idle_in_transaction_timeout(
    settings: Settings,
) -> None:
    pool = await create_pool(
        Database(settings.database_url.get_secret_value()),
        size=2,
        command_timeout=5,
        idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout,
    )
    try:
        shown = await pool.fetchval("SHOW idle_in_transaction_session_timeout")
    finally:
        await pool.close()
    assert settings.database_idle_in_transaction_timeout == 30.0
    assert shown == "30s"


async def test_zero_leaves_the_server_timeout_off(database_url: str) -> None:
    pool = await create_pool(
        Database(database_url), size=2, command_timeout=5, idle_in_transaction_timeout=0
    )
    try:
        assert await pool.fetchval("SHOW idle_in_transaction_session_timeout") == "0"
    finally:
        await pool.close()


async def test_a_stalled_transaction_is_ended_and_the_client_error_is_transient(
    database_url: str, db: asyncpg.Connection
) -> None:
    pool = await create_pool(
        Database(database_url), size=2, command_timeout=5, idle_in_transaction_timeout=0.2
    )
    try:
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            backend = await connection.fetchval("SELECT pg_backend_pid()")
            await connection.execute("SELECT id FROM customers FOR UPDATE")

            await eventually(
                lambda: session_gone(db, backend),
                within=10,
                what="the server to end the idle transaction",
            )
            # Usually asyncpg has seen the server close the session by then
            # (InterfaceError); a statement racing the timeout gets 25P03 instead.
            with pytest.raises(TransientError), translated():
                await connection.fetchval("SELECT 1")
    finally:
        pool.terminate()


async def test_the_batchs_own_error_propagates_when_the_rollback_fails_too(
    database_url: str,
) -> None:
    """A permanent error must stay permanent (and a transient one transient) even when
    the session is gone by the time the transaction is rolled back."""
    pool = await create_pool(
        Database(database_url), size=2, command_timeout=5, idle_in_transaction_timeout=0.2
    )

    async def frozen_past_the_timeout_then_fail() -> None:
        async with batch_transaction(pool) as store:
            backend = await store.connection.fetchval("SELECT pg_backend_pid()")
            freeze_until_session_ends(database_url, backend)
            raise ValueError("the block's own error")

    try:
        with pytest.raises(ValueError, match="the block's own error"):
            await frozen_past_the_timeout_then_fail()
    finally:
        pool.terminate()


async def test_a_batch_transaction_rolls_back_unless_committed(
    database_url: str, db: asyncpg.Connection
) -> None:
    """An early exit from the block (a ``return`` added one day) commits nothing."""
    pool = await create_pool(
        Database(database_url), size=2, command_timeout=5, idle_in_transaction_timeout=0
    )
    message = OutboundMessage("customer.updated", b"cus_uow", b"{}")

    async def write(*, commit: bool) -> None:
        async with batch_transaction(pool) as unit:
            await unit.save_outbox([message])
            if not commit:
                return
            await unit.commit()

    try:
        await write(commit=False)
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0
        await write(commit=True)
        assert await db.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await pool.close()
