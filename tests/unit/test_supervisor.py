"""The supervisor of ``worker --processes N``: its plan, its metrics and its status."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.entrypoints.supervisor import exit_status, merge_metrics, plan, process_count
from service.infrastructure.settings import Settings


def test_processes_is_a_positive_number_or_one_per_core() -> None:
    assert process_count("3") == 3
    assert process_count("auto") >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="--processes"):
            process_count(bad)


def test_the_plan_is_n_consumers_and_one_relay_on_the_next_ports() -> None:
    children = plan(Settings(_env_file=None, http_port=9000), 2, base_env={"KEEP": "1"})

    assert [child.name for child in children] == ["worker-1", "worker-2", "relay"]
    assert [child.argv[-1] for child in children] == ["worker", "worker", "relay"]
    assert [child.port for child in children] == [9001, 9002, 9003]
    assert [child.env["RELAY_ENABLED"] for child in children] == ["false", "false", "true"]
    assert [child.env["HTTP_PORT"] for child in children] == ["9001", "9002", "9003"]
    assert all(child.env["KEEP"] == "1" for child in children)


def test_with_the_relay_elsewhere_only_consumers_run() -> None:
    settings = Settings(_env_file=None, relay_enabled=False, http_port=9000)

    assert [child.name for child in plan(settings, 3, base_env={})] == [
        "worker-1",
        "worker-2",
        "worker-3",
    ]


def test_on_port_0_each_child_gets_a_free_port_and_without_http_none() -> None:
    ports = iter([40001, 40002])
    children = plan(Settings(_env_file=None, http_port=0), 1, base_env={}, free_port=ports.__next__)
    assert [child.port for child in children] == [40001, 40002]

    quiet = plan(Settings(_env_file=None, http_enabled=False), 1, base_env={})
    assert [child.port for child in quiet] == [None, None]


def exposition(consumed: float, lag: float) -> str:
    registry = CollectorRegistry()
    Counter("customer_commands_consumed", "Commands read.", registry=registry).inc(consumed)
    Gauge("customer_outbox_backlog", "Rows waiting.", registry=registry).set(lag)
    Histogram("customer_batch_seconds", "Batch time.", ["outcome"], registry=registry).labels(
        "applied"
    ).observe(0.2)
    return generate_latest(registry).decode()


def test_metrics_of_all_children_are_one_exposition_labelled_by_process() -> None:
    merged = merge_metrics({"worker-1": exposition(5, 0), "worker-2": exposition(7, 3)}).decode()

    families = {family.name: family for family in text_string_to_metric_families(merged)}
    consumed = {
        sample.labels["process"]: sample.value
        for sample in families["customer_commands_consumed"].samples
        if sample.name == "customer_commands_consumed_total"
    }
    assert consumed == {"worker-1": 5.0, "worker-2": 7.0}
    buckets = [s for s in families["customer_batch_seconds"].samples if s.name.endswith("_bucket")]
    assert {(s.labels["process"], s.labels["outcome"]) for s in buckets} == {
        ("worker-1", "applied"),
        ("worker-2", "applied"),
    }
    assert merged.count("# TYPE customer_outbox_backlog gauge") == 1
    assert merge_metrics({}) == b""


@pytest.mark.parametrize(
    ("codes", "stopped", "status"),
    [
        ({"worker-1": 0, "relay": 0}, True, 0),
        ({"worker-1": 0, "relay": 0}, False, 1),  # ended on its own, though cleanly
        ({"worker-1": 3, "relay": 0}, True, 3),
        ({"worker-1": 0, "relay": -9}, True, 1),  # killed
        ({"worker-1": None}, True, 1),
    ],
)
def test_the_status_is_0_only_for_a_stop_every_child_finished(
    codes: dict[str, int | None], stopped: bool, status: int
) -> None:
    assert exit_status(codes, stopped=stopped) == status
