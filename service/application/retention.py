"""Forgetting idempotency rows past their retention, once an hour."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.application.errors import MaintenanceRefusedError, TransientError
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
            pruned = await prune(retention_days)
            if pruned.created or pruned.dropped or pruned.deleted:
                log.info(
                    "idempotency_pruned",
                    created=[name for name, _ in pruned.created],
                    moved=sum(moved for _, moved in pruned.created),
                    dropped=list(pruned.dropped),
                    deleted=pruned.deleted,
                )
        except TransientError as exc:
            log.warning("idempotency_prune_failed", error=repr(exc))
        except MaintenanceRefusedError as exc:
            # Not the commands' work: consuming goes on, and an operator is told.
            log.error("idempotency_prune_refused", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
