"""``customer-service backfill``: the wiring of ``application.backfill`` for the CLI."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiolimiter import AsyncLimiter

from service.adapters.postgres.backfill import backfill_transaction
from service.adapters.postgres.connection import database
from service.adapters.postgres.pool import create_pool
from service.application.backfill import Backfill, BackfillConfig, Started
from service.application.ports import BackfillRun
from service.infrastructure.ids import RandomUuids
from service.infrastructure.settings import Settings


def pacer(rate: float, batch_size: int) -> tuple[Callable[[int], Awaitable[None]], int]:
    """``pace(n)`` waits until ``n`` more states fit ``rate`` per second (0: no limit),
    and the batch size it allows: a token bucket takes at most its capacity at once."""
    if rate <= 0:

        async def unlimited(_: int) -> None:
            return None

        return unlimited, batch_size
    if rate < 1:
        return AsyncLimiter(1, 1 / rate).acquire, 1
    return AsyncLimiter(rate, 1.0).acquire, min(batch_size, int(rate))


async def run_backfill(
    settings: Settings,
    *,
    customers: list[str],
    restart: bool,
    rate: float,
    batch_size: int,
    on_start: Callable[[Started], Callable[[int], None]],
) -> tuple[BackfillRun | None, int, list[str]]:
    """Publish ``customers`` (all of them when empty); ``on_start`` is told where an
    ``--all`` run begins and returns what to call after each batch. Returns the finished
    run (``--all``), and how many were published and which named ids do not exist."""
    target = database(settings)
    pool = await create_pool(
        target,
        size=2,
        command_timeout=settings.database_command_timeout,
        idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout,
    )
    pace, batch_size = pacer(rate, batch_size)
    try:
        backfill = Backfill(
            functools.partial(backfill_transaction, pool),
            BackfillConfig(
                source=settings.event_source,
                topics=settings.topics,
                content_mode=settings.event_content_mode,
                batch_size=batch_size,
            ),
            clock=lambda: datetime.now(UTC),
            new_id=RandomUuids(),
            pace=pace,
        )
        if customers:
            published, missing = await backfill.customers(customers)
            return None, published, missing
        started = await backfill.start_all(restart=restart)
        run, published = await backfill.all(on_start(started))
        return run, published, []
    finally:
        await pool.close()
