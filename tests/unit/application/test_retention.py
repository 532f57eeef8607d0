"""Pruning idempotency rows on a schedule: every pass prunes, a transient failure waits for
the next pass, shutdown ends the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.application import retention
from service.application.errors import MaintenanceRefusedError, TransientError
from service.application.ports import Pruned
from service.application.retention import prune_periodically

DAYS = 30


class RecordingLog:
    """Stands in for the module's logger: what it was told, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event, fields))

    def error(self, event: str, **fields: object) -> None:
        self.lines.append(("error", event, fields))


class Prune:
    """A ``PruneProcessed`` whose passes give ``outcomes`` in turn (the last one again
    when they run out), setting ``stopping`` on pass ``stop_after``."""

    def __init__(
        self, stopping: asyncio.Event, outcomes: Sequence[Pruned | Exception], *, stop_after: int
    ) -> None:
        self._stopping = stopping
        self._outcomes = list(outcomes)
        self._stop_after = stop_after
        self.calls: list[int] = []

    async def __call__(self, retention_days: int) -> Pruned:
        self.calls.append(retention_days)
        if len(self.calls) >= self._stop_after:
            self._stopping.set()
        outcome = self._outcomes[min(len(self.calls), len(self._outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    recording = RecordingLog()
    monkeypatch.setattr(retention, "log", recording)
    return recording


async def run(prune: Prune, stopping: asyncio.Event, *, interval: float = 0.001) -> None:
    async with asyncio.timeout(5):
        await prune_periodically(prune, retention_days=DAYS, stopping=stopping, interval=interval)


async def test_every_pass_prunes_with_the_retention_days(log: RecordingLog) -> None:
    stopping = asyncio.Event()
    passes = [
        Pruned(created=(("processed_commands_20261203", 4), ("processed_commands_20261204", 0))),
        Pruned(),
        Pruned(skipped=True),
        Pruned(dropped=("processed_commands_20261125",), deleted=3),
    ]
    prune = Prune(stopping, passes, stop_after=4)

    await run(prune, stopping)

    assert prune.calls == [DAYS] * 4
    # A pass that changed nothing, or left the work to another worker, says nothing.
    assert log.lines == [
        (
            "info",
            "idempotency_pruned",
            {
                "created": ["processed_commands_20261203", "processed_commands_20261204"],
                "moved": 4,
                "dropped": [],
                "deleted": 0,
            },
        ),
        (
            "info",
            "idempotency_pruned",
            {"created": [], "moved": 0, "dropped": ["processed_commands_20261125"], "deleted": 3},
        ),
    ]


async def test_a_transient_error_is_logged_and_the_next_pass_happens(log: RecordingLog) -> None:
    stopping = asyncio.Event()
    prune = Prune(stopping, [TransientError("database away"), Pruned(deleted=2)], stop_after=2)

    await run(prune, stopping)

    assert prune.calls == [DAYS, DAYS]
    assert log.lines == [
        ("warning", "idempotency_prune_failed", {"error": "TransientError('database away')"}),
        (
            "info",
            "idempotency_pruned",
            {"created": [], "moved": 0, "dropped": [], "deleted": 2},
        ),
    ]


async def test_a_refused_step_is_logged_as_an_error_and_the_next_pass_happens(
    log: RecordingLog,
) -> None:
    stopping = asyncio.Event()
    refused = MaintenanceRefusedError("idempotency retention: a table in the way")
    prune = Prune(stopping, [refused, Pruned(deleted=1)], stop_after=2)

    await run(prune, stopping)

    assert prune.calls == [DAYS, DAYS]
    assert log.lines[0] == (
        "error",
        "idempotency_prune_refused",
        {"error": "idempotency retention: a table in the way"},
    )
    assert log.lines[1][1] == "idempotency_pruned"


async def test_any_other_error_ends_the_loop_with_it(log: RecordingLog) -> None:
    stopping = asyncio.Event()
    prune = Prune(stopping, [RuntimeError("a bug"), Pruned()], stop_after=99)

    with pytest.raises(RuntimeError, match="a bug"):
        await run(prune, stopping)

    assert prune.calls == [DAYS]


async def test_a_loop_stopped_before_it_starts_prunes_nothing(log: RecordingLog) -> None:
    stopping = asyncio.Event()
    stopping.set()
    prune = Prune(stopping, [Pruned()], stop_after=1)

    await run(prune, stopping)

    assert prune.calls == []


async def test_stopping_ends_the_wait_for_the_next_pass_at_once(log: RecordingLog) -> None:
    stopping = asyncio.Event()
    prune = Prune(stopping, [Pruned()], stop_after=1)

    # An hour's interval: only the stop can end the wait within run()'s timeout.
    await run(prune, stopping, interval=3600)

    assert prune.calls == [DAYS]
