"""The supervisor of ``worker --processes N``: its plan, its metrics and its status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.entrypoints.supervisor import (
    IDLE,
    exit_status,
    merge_metrics,
    plan,
    probe_host,
    process_count,
    unready,
    usable_cpus,
)
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
    merged = merge_metrics(
        {"worker-1": exposition(5, 0), "worker-2": exposition(7, 3)}, ready=True
    ).decode()

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
    assert merge_metrics({}, ready=True) == b""


def test_a_child_that_answers_nonsense_or_nothing_is_down_and_the_rest_still_shown() -> None:
    merged = merge_metrics(
        {"worker-1": exposition(5, 0), "worker-2": "<html>oops</html>", "relay": None},
        ready=False,
    ).decode()

    families = {family.name: family for family in text_string_to_metric_families(merged)}
    up = {s.labels["process"]: s.value for s in families["customer_supervised_process_up"].samples}
    assert up == {"worker-1": 1.0, "worker-2": 0.0, "relay": 0.0}
    consumed = families["customer_commands_consumed"].samples
    assert {s.labels["process"] for s in consumed} == {"worker-1"}


def test_readiness_in_the_metrics_is_the_units_not_each_childs() -> None:
    def child(ready: float) -> str:
        registry = CollectorRegistry()
        Gauge("customer_ready", "Ready.", registry=registry).set(ready)
        return generate_latest(registry).decode()

    # An idle consumer is not ready on its own; the unit is, and says so once.
    for unit_ready in (True, False):
        merged = merge_metrics({"worker-1": child(1), "worker-2": child(0)}, ready=unit_ready)
        families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
        samples = [(s.labels, s.value) for s in families["customer_ready"].samples]
        assert samples == [({}, float(unit_ready))]


def test_auto_is_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    import os

    allowed = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert usable_cpus(quota) == min(allowed, 2)
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == allowed
    assert usable_cpus(tmp_path / "absent") == allowed
    assert process_count("auto", cgroup=quota) == allowed


def test_children_need_ports_up_to_65535() -> None:
    with pytest.raises(ValueError, match="HTTP_PORT 65534 leaves no room for 3 children"):
        plan(Settings(_env_file=None, http_port=65534), 2, base_env={})


def status(problems: list[str]) -> tuple[int, str]:
    return 503, json.dumps({"status": "fail", "problems": problems})


def test_idle_consumers_do_not_keep_the_unit_from_being_ready() -> None:
    ok = (200, '{"status": "ok", "problems": []}')
    idle = status([IDLE])

    assert unready({"worker-1": ok, "worker-2": idle, "relay": ok}) == {}
    broken = status([IDLE, "database unreachable: TimeoutError"])
    assert set(unready({"worker-1": ok, "worker-2": broken, "relay": ok})) == {"worker-2"}
    assert set(unready({"worker-1": idle, "worker-2": idle, "relay": ok})) == {
        "worker-1",
        "worker-2",
    }  # none holds a partition
    assert set(unready({"worker-1": ok, "relay": status(["outbox stalled"])})) == {"relay"}
    assert set(unready({"worker-1": (503, "no answer: TimeoutError")})) == {"worker-1"}


def test_children_are_reached_where_they_bind() -> None:
    assert probe_host("0.0.0.0") == "127.0.0.1"
    assert probe_host("::") == "[::1]"
    assert probe_host("127.0.0.1") == "127.0.0.1"
    assert probe_host("fd00::5") == "[fd00::5]"


@pytest.mark.parametrize(
    ("codes", "stopped", "status"),
    [
        ({"worker-1": 0, "relay": 0}, True, 0),
        ({"worker-1": 0, "relay": 0}, False, 1),  # ended on its own, though cleanly
        ({"worker-1": 3, "relay": 0}, True, 3),
        ({"worker-1": 0, "relay": -9}, True, 137),  # killed by SIGKILL, as a shell says
        ({"worker-1": None}, True, 1),
    ],
)
def test_the_status_is_0_only_for_a_stop_every_child_finished(
    codes: dict[str, int | None], stopped: bool, status: int
) -> None:
    assert exit_status(codes, stopped=stopped) == status


def test_the_status_is_the_one_of_the_child_that_ended_first() -> None:
    # The relay failed with 3; the worker, stopped after it, ended by a signal.
    codes = {"worker-1": -15, "relay": 3}

    assert exit_status(codes, stopped=False, first="relay") == 3
    assert exit_status({"worker-1": 0, "relay": 0}, stopped=False, first="relay") == 1
