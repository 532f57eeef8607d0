"""What the outbox tells the metrics and the readiness probe."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.application.outbox_health import NAMED_PARKED, OutboxMonitor
from service.application.ports import OutboxStats, ParkedRow
from service.infrastructure.metrics import Metrics


def parked_row(**overrides: Any) -> ParkedRow:
    fields: dict[str, Any] = {
        "id": 7,
        "topic": "customer.updated",
        "key": b"cus_1",
        "size": 2_000_000,
        "parked_at": datetime(2026, 12, 1, tzinfo=UTC),
        "reason": "MessageSizeTooLargeError",
        "waiting": 2,
    }
    return ParkedRow(**{**fields, **overrides})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


async def unread(named_parked: int) -> tuple[OutboxStats, list[ParkedRow]]:
    raise AssertionError("these tests record measurements themselves")


@pytest.fixture
def monitor(metrics: Metrics) -> OutboxMonitor:
    return OutboxMonitor(unread, metrics=metrics, stall_seconds=60.0)


def test_nothing_measured_yet_is_no_problem(monitor: OutboxMonitor) -> None:
    assert monitor.problems() == []


def test_a_draining_outbox_is_no_problem(monitor: OutboxMonitor, metrics: Metrics) -> None:
    monitor.record(OutboxStats(waiting=120, parked=0, oldest_seconds=59.0), [])
    assert monitor.problems() == []
    assert metrics.registry.get_sample_value("customer_outbox_backlog") == 120
    assert metrics.registry.get_sample_value("customer_outbox_oldest_seconds") == 59.0


def test_an_old_waiting_message_is_a_stall(monitor: OutboxMonitor) -> None:
    monitor.record(OutboxStats(waiting=3, parked=0, oldest_seconds=61.0), [])
    [problem] = monitor.problems()
    assert problem.startswith("outbox stalled")
    assert "61s" in problem


def test_parked_rows_are_named_with_their_customer(
    monitor: OutboxMonitor, metrics: Metrics
) -> None:
    rows = [parked_row(), parked_row(id=9, key=b"cus_\x00two")]
    monitor.record(OutboxStats(waiting=4, parked=2, oldest_seconds=1.0), rows)
    [problem] = monitor.problems()
    assert "2 outbox message(s) parked" in problem
    assert "7 (customer.updated cus_1: MessageSizeTooLargeError)" in problem
    assert "cus_\\x00two" in problem
    assert problem.isprintable()
    labels = {"topic": "customer.updated", "key": "cus_1"}
    assert metrics.registry.get_sample_value("customer_outbox_parked", labels) == 1


def test_a_row_no_longer_parked_leaves_the_metric(monitor: OutboxMonitor, metrics: Metrics) -> None:
    monitor.record(OutboxStats(waiting=0, parked=1, oldest_seconds=0.0), [parked_row()])
    monitor.record(OutboxStats(waiting=0, parked=0, oldest_seconds=0.0), [])
    labels = {"topic": "customer.updated", "key": "cus_1"}
    assert metrics.registry.get_sample_value("customer_outbox_parked", labels) is None
    assert monitor.problems() == []


async def test_a_measurement_reads_the_outbox_and_names_parked_rows(metrics: Metrics) -> None:
    asked: list[int] = []

    async def read(named_parked: int) -> tuple[OutboxStats, list[ParkedRow]]:
        asked.append(named_parked)
        return OutboxStats(waiting=5, parked=1, oldest_seconds=2.0), [parked_row()]

    monitor = OutboxMonitor(read, metrics, stall_seconds=60.0)
    stats = await monitor.measure()

    assert stats.waiting == 5
    assert asked == [NAMED_PARKED]
    assert metrics.registry.get_sample_value("customer_outbox_backlog") == 5
    [problem] = monitor.problems()
    assert "1 outbox message(s) parked" in problem
