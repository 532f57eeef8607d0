"""How the outbox is doing, for the metrics and the readiness probe.

Measured from the database, apart from the relay's publishing loop: a relay that is
stuck (Kafka refusing, a leader frozen) cannot report on itself, and its backlog is what
the operator needs to see then.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.application.errors import TransientError
from service.application.ports import OutboxStats, ParkedRow, ReadOutbox
from service.domain.outbox import shown_key
from service.infrastructure.metrics import Metrics

log = structlog.get_logger(__name__)

#: Seconds between two measurements.
INTERVAL = 1.0
#: Parked rows named in the metrics and the readiness reasons, at most.
NAMED_PARKED = 20


class OutboxMonitor:
    def __init__(self, read: ReadOutbox, metrics: Metrics, *, stall_seconds: float) -> None:
        self._read = read
        self._metrics = metrics
        self._stall_seconds = stall_seconds
        self._stats: OutboxStats | None = None
        self._parked: list[ParkedRow] = []

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.measure()
            except TransientError as exc:
                log.warning("outbox_measure_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), INTERVAL)

    async def measure(self) -> OutboxStats:
        stats, parked = await self._read(NAMED_PARKED)
        self.record(stats, parked)
        return stats

    def record(self, stats: OutboxStats, parked: list[ParkedRow]) -> None:
        """Take a measurement: into the metrics, and for ``problems``."""
        self._stats, self._parked = stats, parked
        self._metrics.outbox_backlog.set(stats.waiting)
        self._metrics.outbox_oldest.set(stats.oldest_seconds)
        self._metrics.outbox_parked.clear()
        for row in parked:
            self._metrics.outbox_parked.labels(row.topic, shown_key(row.key) or "").inc()

    def problems(self) -> list[str]:
        """Why the outbox keeps the service from being ready; empty when it does not."""
        stats = self._stats
        if stats is None:
            return []
        found = []
        if stats.oldest_seconds > self._stall_seconds:
            found.append(
                f"outbox stalled: the oldest unpublished message is {stats.oldest_seconds:.0f}s "
                f"old (RELAY_STALL_SECONDS is {self._stall_seconds:.0f})"
            )
        if stats.parked:
            named = ", ".join(
                f"{row.id} ({row.topic} {shown_key(row.key)}: {row.reason})" for row in self._parked
            )
            found.append(
                f"{stats.parked} outbox message(s) parked, refused by Kafka: {named}; see "
                "`customer-service outbox list`"
            )
        return found
