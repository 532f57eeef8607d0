"""The quick benchmark, end to end: both workers as subprocesses against the real Kafka
and PostgreSQL. No timing thresholds: the figures are for humans; what is checked is
that the benchmark measured something real (every command answered, by both workers,
with the same outcomes), so it cannot silently measure nothing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.report import to_json_line
from bench.runner import Options, run_benchmark
from devstack.stack import Stack


async def test_the_quick_benchmark_measures_both_workers_on_every_command(
    stack: Stack, tmp_path: Path
) -> None:
    options = Options.quick_options(
        latency_seconds=3.0,
        logs_dir=tmp_path / "logs",
        plot=tmp_path / "latency.svg",
        state_cost=True,
        idempotency_rows=30_000,
    )
    progress: list[str] = []

    result = json.loads(to_json_line(await run_benchmark(options, stack, progress=progress.append)))

    throughput = result["throughput"]
    assert throughput["ours_commands_per_second"] > 0
    assert throughput["naive_commands_per_second"] > 0
    assert throughput["ratio"] > 0
    for worker in ("ours", "naive"):
        figures = throughput[worker]
        assert figures["commands"] == options.commands
        assert figures["answered"] == options.commands, figures
        assert (figures["missing"], figures["duplicates"], figures["foreign"]) == (0, 0, 0)
        assert figures["outcomes"] == figures["expected_outcomes"]
        assert figures["outcomes"]["rejected"] > 0
        assert figures["processed_all"] is True
        assert figures["exit_status"] == 0
        assert figures["produced_before_start"] is True
    # The baseline is a correct worker: same outcome and sequence per command, same rows.
    assert throughput["outputs_match"] is True
    assert throughput["state_match"] is True

    # The SQL write-set limit replayed the worker's own statements for the same commands,
    # touching the same rows as when they were captured.
    limit = result["sql_write_set"]
    assert limit["verified"] is True, limit["mismatches"]
    assert (limit["commands"], limit["batches"]) == (options.commands, 2)
    assert limit["commands_per_second"] > 0
    assert [r["verified"] for r in limit["rounds"]] == [True] * options.sql_rounds
    assert limit["cpu_us_per_command"]["postgres"] is not None
    assert limit["statements"]["save_outbox"]["calls"] == 2
    assert limit["ours_fraction_of_limit"] == round(
        throughput["ours_commands_per_second"] / limit["commands_per_second"], 3
    )

    # With PUBLISH_STATE on, the state topic got one record per event; off, none.
    state = result["state"]
    assert state["order"] == ["state_on1", "state_off1"]
    assert state["verified"] is True, state["phases"]
    assert state["state_match"] is True
    on, off = state["phases"]["state_on1"], state["phases"]["state_off1"]
    assert on["state_topic"]["records"] == on["outcomes"]["applied"] > 0
    assert off["state_topic"] == {"exists": False, "records": 0, "bytes": 0}
    assert on["relay"]["records"] == options.commands + on["outcomes"]["applied"]
    assert off["relay"]["records"] == options.commands
    assert state["on_commands_per_second"] > 0
    assert state["off_commands_per_second"] > 0

    # The prefilled idempotency rows sat in the tables a worker makes, the oldest past the
    # retention; a pass dropped exactly that one. Both workers above ran beside them.
    idempotency = result["idempotency"]
    assert (idempotency["rows"], idempotency["retention_days"], idempotency["period_days"]) == (
        30_000, 7, 7,
    )  # fmt: skip
    prune = idempotency["prune"]
    assert prune["dropped"] == idempotency["tables"][:1]
    assert prune["deleted"] == 0
    assert 0 < prune["rows_after"] < prune["rows_before"] <= 30_000

    latency = result["latency"]
    assert latency["answered"] == latency["commands"] == round(options.rate * 3.0)
    assert latency["p50_ms"] is not None
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert result["soak"] is None
    assert result["machine"]["cores"] >= 1
    assert result["parameters"]["quick"] is True
    assert options.plot is not None
    assert ET.parse(options.plot).getroot().tag.endswith("svg")
    assert progress
