"""The backfill's statements: customers locked in id order, and each run's place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import asyncpg

from service.adapters.postgres.batch_store import (
    CUSTOMER_COLUMNS,
    PostgresUnitOfWork,
    customer_from_row,
    unit_of_work,
)
from service.application.ports import BackfillRun
from service.domain.customer import CustomerState


class PostgresBackfillUnitOfWork(PostgresUnitOfWork):
    async def share_customers_after(self, after_id: str | None, limit: int) -> list[CustomerState]:
        # FOR SHARE, in id order like the batches' FOR UPDATE: an update of one of these
        # customers waits for this transaction (or it for the update), and neither can
        # deadlock the other.
        rows = await self._connection.fetch(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE $1::text IS NULL OR id > $1 "
            "ORDER BY id LIMIT $2 FOR SHARE",
            after_id,
            limit,
        )
        return [customer_from_row(row) for row in rows]

    async def share_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
        ids = sorted(set(customer_ids))
        rows = await self._connection.fetch(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ANY($1::text[]) "
            "ORDER BY id FOR SHARE",
            ids,
        )
        return {row["id"]: customer_from_row(row) for row in rows}

    async def count_after(self, after_id: str | None) -> int:
        count: int = await self._connection.fetchval(
            "SELECT count(*) FROM customers WHERE $1::text IS NULL OR id > $1", after_id
        )
        return count

    async def run(self, name: str) -> BackfillRun | None:
        row = await self._connection.fetchrow(
            "SELECT after_id, published, finished IS NOT NULL AS finished, "
            "updated > now() - interval '1 minute' AS recent FROM backfill_runs "
            "WHERE name = $1 FOR UPDATE",
            name,
        )
        if row is None:
            return None
        return BackfillRun(row["after_id"], row["published"], row["finished"], row["recent"])

    async def save_run(self, name: str, run: BackfillRun) -> None:
        await self._connection.execute(
            """
            INSERT INTO backfill_runs (name, after_id, published, finished)
            VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)
            ON CONFLICT (name) DO UPDATE SET
                after_id = excluded.after_id, published = excluded.published,
                finished = excluded.finished, updated = now(),
                started = CASE WHEN excluded.published = 0 AND excluded.after_id IS NULL
                               THEN now() ELSE backfill_runs.started END
            """,
            name,
            run.after_id,
            run.published,
            run.finished,
        )


@asynccontextmanager
async def backfill_transaction(pool: asyncpg.Pool) -> AsyncIterator[PostgresBackfillUnitOfWork]:
    async with unit_of_work(pool, PostgresBackfillUnitOfWork) as unit:
        yield unit
