"""The benchmark's prefilled idempotency rows: the option, the retention it assumes, and
the block of the result that reports the timed retention pass."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import build_parser, options_from_args, summary
from bench.report import build_result
from bench.runner import Options
from tests.bench.test_bench import _throughput


def test_the_rows_are_an_option_and_off_by_default() -> None:
    parse = build_parser().parse_args
    assert options_from_args(parse([]), native_home=None).idempotency_rows == 0
    given = parse(["--idempotency-rows", "50000000"])
    assert options_from_args(given, native_home=None).idempotency_rows == 50_000_000
    with pytest.raises(ValueError, match="idempotency_rows"):
        Options(idempotency_rows=-1)


def test_the_retention_is_the_workers_own() -> None:
    assert Options().retention() == (7, 7)
    overridden = Options(
        worker_env={"IDEMPOTENCY_RETENTION_DAYS": "30", "IDEMPOTENCY_PERIOD_DAYS": "1"}
    )
    assert overridden.retention() == (30, 1)


def test_the_result_carries_the_pass_and_the_summary_names_it() -> None:
    block = {
        "retention_days": 7,
        "period_days": 7,
        "rows": 50_000_000,
        "tables": ["processed_commands_20261119_20261123", "processed_commands_20261123_20261130"],
        "fill_seconds": 600.0,
        "vacuum_seconds": 60.0,
        "prune": {
            "seconds": 0.05,
            "rows_before": 50_000_000,
            "rows_after": 36_000_000,
            "dropped": ["processed_commands_20261119_20261123"],
            "created": [],
            "deleted": 0,
        },
    }
    ours = _throughput("ours", 1.0)
    common: dict[str, Any] = {
        "parameters": {},
        "machine": {},
        "load": {},
        "ours": ours,
        "naive": None,
    }
    result = build_result(**common, latency=None, soak=None, wall_seconds=1.0, idempotency=block)

    assert result["idempotency"] == block
    assert (
        "50000000 idempotency rows in 2 tables of 7 days: a retention pass took 0.05 s "
        "(dropped 1, 50000000 -> 36000000 rows)"
    ) in summary(result)
    without = build_result(**common, latency=None, soak=None, wall_seconds=1.0)
    assert without["idempotency"] is None
    assert "idempotency" not in summary(without)
