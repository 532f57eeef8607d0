"""``python -m bench --state-cost``: the option, the phases it adds, what each phase's
worker (and relay) is given, and the ``state`` block of the result. No servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import build_parser, options_from_args, summary
from bench.cpu import CpuSample
from bench.kafka_io import record_bytes
from bench.load import Outcome
from bench.outputs import OutcomeLog, Output
from bench.report import (
    ComparedPhase,
    ThroughputRun,
    build_result,
    state_figures,
    throughput_figures,
    tls_figures,
    to_json_line,
)
from bench.runner import (
    Options,
    _Phase,
    _Run,
    _Server,
    alternating_phases,
    phase_plan,
    phase_settings,
    state_phases,
    tls_phases,
)
from bench.stats import median, spread
from bench.workers import worker_env
from devstack.stack import Stack

# -- the option and the plan ------------------------------------------------------------


def _options(*argv: str) -> Options:
    return options_from_args(build_parser().parse_args(list(argv)), native_home=None)


def test_state_cost_is_off_by_default() -> None:
    default = _options()

    assert (default.state_cost, default.state_rounds) == (False, 1)
    assert phase_plan(default) == ["ours", "sql_write_set", "naive", "latency"]
    assert default.parameters()["state_cost"] is False


def test_state_cost_adds_an_on_and_an_off_phase_after_the_tls_ones() -> None:
    options = _options("--state-cost")

    assert (options.state_cost, options.state_rounds) == (True, 1)
    assert phase_plan(options) == [
        "ours",
        "sql_write_set",
        "naive",
        "state_on1",
        "state_off1",
        "latency",
    ]
    assert phase_plan(
        _options("--state-cost", "--tls", "--no-naive", "--latency-seconds", "0")
    ) == [
        "ours",
        "sql_write_set",
        "plain1",
        "tls1",
        "state_on1",
        "state_off1",
    ]
    assert options.parameters()["state_cost"] is True


def test_each_round_runs_the_pair_in_the_other_order() -> None:
    assert state_phases(3) == [
        ("state_on1", 1, "on"),
        ("state_off1", 1, "off"),
        ("state_off2", 2, "off"),
        ("state_on2", 2, "on"),
        ("state_on3", 3, "on"),
        ("state_off3", 3, "off"),
    ]
    assert phase_plan(_options("--state-cost", "--state-rounds", "2", "--no-naive"))[2:6] == [
        "state_on1",
        "state_off1",
        "state_off2",
        "state_on2",
    ]


def test_both_comparisons_alternate_the_same_way() -> None:
    assert alternating_phases(2, ("a", "b"), prefix="x_") == [
        ("x_a1", 1, "a"),
        ("x_b1", 1, "b"),
        ("x_b2", 2, "b"),
        ("x_a2", 2, "a"),
    ]
    assert tls_phases(2) == alternating_phases(2, ("plain", "tls"))


def test_state_rounds_need_state_cost_and_at_least_one_round() -> None:
    with pytest.raises(ValueError, match="--state-rounds needs --state-cost"):
        _options("--state-rounds", "2")
    with pytest.raises(ValueError, match="state_rounds must be at least 1"):
        _options("--state-cost", "--state-rounds", "0")


def test_state_cost_refuses_publish_state_in_the_worker_env() -> None:
    with pytest.raises(ValueError, match="sets PUBLISH_STATE itself"):
        _options("--state-cost", "--worker-env", "PUBLISH_STATE=false")
    with pytest.raises(ValueError, match="sets PUBLISH_STATE itself"):
        Options(state_cost=True, worker_env={"PUBLISH_STATE": "true"})
    # Without the comparison it is just another setting for the workers.
    assert _options("--worker-env", "PUBLISH_STATE=false").worker_env == {"PUBLISH_STATE": "false"}


# -- what each phase's worker is given --------------------------------------------------


def _phase(name: str, publish_state: bool | None) -> _Phase:
    settings, worker_settings = phase_settings(
        f"bench.x.{name}",
        kafka="127.0.0.1:9092",
        database_url=f"postgresql://postgres@127.0.0.1:5432/bench_x_{name}",
        database=f"bench_x_{name}",
        publish_state=publish_state,
    )
    server = _Server("postgresql://postgres@127.0.0.1:5432/postgres", None, "bench_x_template")
    return _Phase(name, settings, f"bench_x_{name}", server, worker_settings)


@pytest.mark.parametrize(("publish_state", "value"), [(True, "true"), (False, "false")])
def test_a_state_phase_sets_publish_state_for_its_topics_and_its_worker(
    publish_state: bool, value: str
) -> None:
    phase = _phase("state_x1", publish_state)
    # The caller's environment cannot turn it the other way.
    env = worker_env(
        phase.worker_settings,
        log_level="WARNING",
        base={"PUBLISH_STATE": "false" if publish_state else "true"},
    )

    # The benchmark's settings create the phase's topics: with the state topic or not.
    assert phase.settings.publish_state is publish_state
    assert env["PUBLISH_STATE"] == value
    assert env["TOPIC_STATE"] == "bench.x.state_x1.customer.state"
    assert phase.settings.environment()["PUBLISH_STATE"] == value


def test_other_phases_leave_publish_state_to_the_environment() -> None:
    phase = _phase("ours", None)

    assert "PUBLISH_STATE" not in phase.worker_settings.environment()
    assert worker_env(phase.worker_settings, log_level="WARNING", base={}).get("PUBLISH_STATE") is (
        None
    )
    assert worker_env(phase.worker_settings, log_level="WARNING", base={"PUBLISH_STATE": "false"})[
        "PUBLISH_STATE"
    ] == ("false")


def _run(tmp_path: Path, **options: object) -> _Run:
    stack = Stack(
        "127.0.0.1:9092", "postgresql://postgres@127.0.0.1:5432/postgres", "native", "native"
    )
    return _Run(Options(logs_dir=tmp_path, **options), stack, lambda _: None)  # type: ignore[arg-type]


def test_a_separate_relay_gets_the_phases_publish_state_too(tmp_path: Path) -> None:
    # A relay that still expected the state topic would wait for the one an off phase
    # never created.
    run = _run(tmp_path, relay_process=True, state_cost=True, worker_env={"BATCH_MAX_RECORDS": "9"})

    group = run.worker("ours", _phase("state_off1", False))

    assert group.relay is not None
    for member in group.members:
        assert member.env["PUBLISH_STATE"] == "false"
        assert member.env["TOPIC_STATE"] == "bench.x.state_off1.customer.state"
        assert member.env["BATCH_MAX_RECORDS"] == "9"
    assert group.consumers[0].env["RELAY_ENABLED"] == "false"
    assert group.relay.env.get("RELAY_ENABLED") != "false"
    assert run.worker("ours", _phase("state_on1", True)).members[0].env["PUBLISH_STATE"] == "true"


# -- the figures ------------------------------------------------------------------------


def test_median_and_spread() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert spread([1.04, 1.1, 0.98], digits=2) == {"median": 1.04, "min": 0.98, "max": 1.1, "n": 3}
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    with pytest.raises(ValueError, match="no values"):
        median([])


def test_a_records_bytes_are_its_key_value_and_headers() -> None:
    assert (
        record_bytes(b"cus_1", b"{}", [("outbox-id", b"12"), ("ce_type", None)]) == 5 + 2 + 11 + 7
    )
    assert record_bytes(None, None, []) == 0


APPLIED = 90


def _state_run(
    seconds: float,
    *,
    state_records: int | None,
    worker_cpu: float = 0.5,
    wal: int = 200_000,
    state: str = "abc",
) -> ThroughputRun:
    """100 commands (90 applied, 10 rejected) answered over ``seconds``; the state topic
    holding ``state_records`` of 800 bytes (None: absent)."""
    log = OutcomeLog(100, "tp")
    for index in range(100):
        outcome: Outcome = "applied" if index < APPLIED else "rejected"
        log.add(Output(index, outcome, index + 2), 100.0 + index * seconds / 99)
    return ThroughputRun(
        worker="ours",
        log=log,
        expected={"applied": APPLIED, "rejected": 100 - APPLIED, "dead_lettered": 0},
        spawned_at=99.0,
        consuming_at=100.0,
        produced_from=98.0,
        produced_until=98.5,
        exit_status=0,
        state={"customers_md5": state, "log": "ignored"},
        cpu=[
            CpuSample(99.9, {"worker": 1.0, "relay": 0.0, "kafka": 2.0}),
            CpuSample(
                100.0 + seconds + 0.1, {"worker": 1.0 + worker_cpu, "relay": 0.2, "kafka": 2.1}
            ),
        ],
        state_topic={"exists": False, "records": 0, "bytes": 0}
        if state_records is None
        else {"exists": True, "records": state_records, "bytes": state_records * 800},
        output_records=100,
        output_bytes=100 * 1000,
        wal_bytes=wal,
    )


def _on(seconds: float = 1.25) -> ThroughputRun:
    return _state_run(seconds, state_records=APPLIED, worker_cpu=0.7, wal=300_000)


def _off(seconds: float = 1.0) -> ThroughputRun:
    return _state_run(seconds, state_records=None)


def _comparison() -> list[ComparedPhase]:
    return [
        ComparedPhase("state_on1", 1, "on", _on()),
        ComparedPhase("state_off1", 1, "off", _off()),
        ComparedPhase("state_off2", 2, "off", _off(0.8)),
        ComparedPhase("state_on2", 2, "on", _on()),
    ]


def test_the_state_block_compares_off_with_on() -> None:
    figures = state_figures(
        _comparison(), reference_state={"customers_md5": "abc"}, topics={"state_on1": "t"}
    )

    # 100 commands in 1.25 s with the state, in 1.0 s and 0.8 s without.
    assert figures["on_commands_per_second"] == pytest.approx(80.0)
    assert figures["off_commands_per_second"] == pytest.approx(112.5)
    assert figures["ratio"] == pytest.approx(1.406, abs=0.001)
    assert figures["difference_percent"] == pytest.approx(40.6)
    assert [r["ratio"] for r in figures["rounds"]] == [
        pytest.approx(1.25),
        pytest.approx(1.5625, abs=0.001),
    ]
    assert figures["rounds"][1]["order"] == ["state_off2", "state_on2"]
    assert figures["spread"]["ratio"] == {"median": 1.406, "min": 1.25, "max": 1.562, "n": 2}
    assert figures["spread"]["commands_per_second"]["off"] == {
        "median": 112.5,
        "min": 100.0,
        "max": 125.0,
        "n": 2,
    }
    # CPU: 0.7 and 0.5 s of the worker over 100 commands; the relay's and Kafka's alike.
    assert figures["on_cpu_us_per_command"]["worker"] == 7000.0
    assert figures["off_cpu_us_per_command"]["worker"] == 5000.0
    assert figures["cpu_difference_us_per_command"] == {
        "worker": -2000.0,
        "relay": 0.0,
        "kafka": 0.0,
        "all": -2000.0,
    }
    assert figures["spread"]["cpu_us_per_command_all"]["on"]["median"] == 10000.0
    # The relay: 100 outputs and 90 states, or the outputs alone.
    assert figures["on_relay_records_per_second"] == pytest.approx(152.0)
    assert figures["off_relay_records_per_second"] == pytest.approx(112.5)
    assert figures["on_published_bytes_per_command"] == 1000 + 720
    assert figures["off_published_bytes_per_command"] == 1000
    assert figures["on_wal_bytes_per_command"] == 3000
    assert figures["off_wal_bytes_per_command"] == 2000
    assert figures["spread"]["relay_records_per_second"]["off"]["max"] == 125.0
    assert figures["verified"] is True
    assert figures["state_match"] is True
    assert figures["order"] == ["state_on1", "state_off1", "state_off2", "state_on2"]
    assert figures["topics"] == {"state_on1": "t"}
    on1 = figures["phases"]["state_on1"]
    assert on1["mode"] == "on"
    assert on1["state_topic"] == {"exists": True, "records": 90, "bytes": 72_000}
    assert on1["relay"] == {
        "records": 190,
        "output_records": 100,
        "state_records": 90,
        "records_per_second": 152.0,
        "records_per_command": 1.9,
        "bytes_per_command": {"outputs": 1000.0, "state": 720.0, "all": 1720.0},
    }
    assert on1["wal_bytes"] == 300_000


@pytest.mark.parametrize(
    ("index", "broken"),
    [
        (0, {"state_topic": {"exists": True, "records": 89, "bytes": 1}}),  # a state short
        (0, {"state_topic": {"exists": False, "records": 0, "bytes": 0}}),  # none at all
        (0, {"state_topic": None}),  # not counted proves nothing
        (1, {"state_topic": {"exists": True, "records": 1, "bytes": 800}}),  # off, published
        (1, {"state_topic": None}),
        (1, {"exit_status": 1}),
    ],
)
def test_a_state_phase_not_as_meant_is_not_verified(index: int, broken: dict[str, object]) -> None:
    phases = _comparison()
    for name, value in broken.items():
        setattr(phases[index].run, name, value)

    assert state_figures(phases)["verified"] is False


def test_an_off_phase_may_have_an_empty_state_topic() -> None:
    phases = _comparison()
    phases[1].run.state_topic = {"exists": True, "records": 0, "bytes": 0}

    assert state_figures(phases)["verified"] is True


def test_different_rows_are_a_state_mismatch() -> None:
    phases = _comparison()
    phases[2].run.state = {"customers_md5": "other"}

    assert state_figures(phases)["state_match"] is False
    assert (
        state_figures(_comparison(), reference_state={"customers_md5": "x"})["state_match"] is False
    )


def test_runs_that_counted_nothing_published_have_no_such_figures() -> None:
    run = _off()
    run.output_records = run.output_bytes = run.wal_bytes = None
    run.state_topic = None

    figures = throughput_figures(run)

    assert not {"relay", "state_topic", "wal_bytes", "wal_bytes_per_command"} & set(figures)


def test_the_tls_block_keeps_its_figures_and_gains_the_spread() -> None:
    phases = [
        ComparedPhase(
            p.name.replace("state_on", "plain").replace("state_off", "tls"), p.round, mode, p.run
        )
        for p, mode in zip(_comparison(), ["plain", "tls", "tls", "plain"], strict=True)
    ]

    figures = tls_figures(phases, endpoints={"kafka_tls": "x:1"})

    assert list(figures)[:7] == [
        "plain_commands_per_second",
        "tls_commands_per_second",
        "ratio",
        "difference_percent",
        "plain_cpu_us_per_command",
        "tls_cpu_us_per_command",
        "cpu_difference_us_per_command",
    ]
    assert list(figures)[-2:] == ["endpoints", "phases"]
    assert figures["spread"]["ratio"]["n"] == 2
    assert "plain_relay_records_per_second" not in figures
    assert "topics" not in figures


def test_the_result_carries_the_state_block_and_the_summary_names_it() -> None:
    ours = _on()
    ours.output_records = ours.output_bytes = ours.wal_bytes = None
    ours.state_topic = None
    common = {
        "parameters": {},
        "machine": {},
        "load": {},
        "ours": ours,
        "naive": None,
        "latency": None,
        "soak": None,
        "wall_seconds": 1.0,
    }

    without = build_result(**common)  # type: ignore[arg-type]
    result = json.loads(to_json_line(build_result(**common, state=state_figures(_comparison()))))  # type: ignore[arg-type]

    assert without["state"] is None
    assert without["result_version"] == result["result_version"] == 6
    assert "relay" not in without["throughput"]["ours"]
    assert "state topic" not in summary(without)
    assert result["state"]["ratio"] == pytest.approx(1.406, abs=0.001)
    line = summary(result)
    assert "state topic off 112.5/s vs on 80/s" in line
    assert "ratio off/on 1.406" in line
    assert "rounds' median 1.406, 1.25-1.562, n 2" in line
    assert "relay records/s off 112.5 vs on 152" in line
    assert "worker -2000" in line
    assert "verified True" in line
