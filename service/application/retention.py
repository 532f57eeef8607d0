"""Forgetting idempotency rows past their retention, once an hour."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.application.errors import TransientError
from service.application.ports import PruneProcessed

log = structlog.get_logger(__name__)

PRUNE_INTERVAL_SECONDS = 3600.0


async def prune_periodically(
    prune: PruneProcessed,
    *,
    retention_days: int,
    stopping: asyncio.Event,
    interval: float = PRUNE_INTERVAL_SECONDS,
) -> None:
    """Until ``stopping`` is set; a failed pass is logged and tried at the next interval."""
    while not stopping.is_set():
        try:
            removed = await prune(retention_days)
            if removed:
                log.info("idempotency_pruned", removed=removed)
        except TransientError as exc:
            log.warning("idempotency_prune_failed", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
