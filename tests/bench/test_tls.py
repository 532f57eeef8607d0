"""``python -m bench --tls``: the option, the phases it adds, the worker's settings in
each, and the ``tls`` block of the result. No servers: the settings are built from a
stack home of files written here."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from bench.__main__ import build_parser, options_from_args, summary
from bench.cpu import CpuSample
from bench.outputs import OutcomeLog, Output
from bench.report import ThroughputRun, TlsPhase, build_result, tls_figures, to_json_line
from bench.runner import Options, phase_plan, phase_settings, tls_phases
from bench.stack import TlsStack, tls_refusal
from bench.workers import connections_to, port_of, worker_env
from devstack.native_kafka import TLS_LISTENERS, NativeKafka
from devstack.native_postgres import PASSWORD_USER, NativePostgres
from service.adapters.postgres.connection import database

# -- the option and the plan ------------------------------------------------------------


def _options(*argv: str) -> Options:
    return options_from_args(build_parser().parse_args(list(argv)), native_home=None)


def test_tls_is_off_by_default_and_the_default_plan_is_unchanged() -> None:
    default = _options()

    assert default.tls is False
    assert phase_plan(default) == ["ours", "sql_write_set", "naive", "latency"]
    assert phase_plan(_options("--soak-seconds", "60")) == [
        "ours",
        "sql_write_set",
        "naive",
        "latency",
        "soak",
    ]


def test_tls_adds_a_plain_and_a_tls_phase_after_the_baseline() -> None:
    options = _options("--tls")

    assert (options.tls, options.tls_rounds) == (True, 1)
    assert phase_plan(options) == ["ours", "sql_write_set", "naive", "plain1", "tls1", "latency"]
    assert phase_plan(_options("--tls", "--no-naive", "--latency-seconds", "0")) == [
        "ours",
        "sql_write_set",
        "plain1",
        "tls1",
    ]
    assert options.parameters()["tls"] is True


def test_each_round_runs_the_pair_in_the_other_order() -> None:
    assert tls_phases(3) == [
        ("plain1", 1, "plain"),
        ("tls1", 1, "tls"),
        ("tls2", 2, "tls"),
        ("plain2", 2, "plain"),
        ("plain3", 3, "plain"),
        ("tls3", 3, "tls"),
    ]
    assert phase_plan(_options("--tls", "--tls-rounds", "2", "--no-naive"))[2:6] == [
        "plain1",
        "tls1",
        "tls2",
        "plain2",
    ]


def test_tls_rounds_need_tls_and_at_least_one_round() -> None:
    with pytest.raises(ValueError, match="--tls-rounds needs --tls"):
        _options("--tls-rounds", "2")
    with pytest.raises(ValueError, match="tls_rounds must be at least 1"):
        _options("--tls", "--tls-rounds", "0")


def test_tls_refuses_endpoints_from_the_environment() -> None:
    assert tls_refusal({"PATH": "/bin"}) is None
    assert tls_refusal({"KAFKA_BOOTSTRAP_SERVERS": ""}) is None
    refusal = tls_refusal({"DATABASE_URL": "postgresql://x/y"})
    assert refusal is not None
    assert "unset DATABASE_URL" in refusal
    both = tls_refusal({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://x/y"})
    assert both is not None
    assert "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL" in both


# -- the worker's settings in each phase ------------------------------------------------


def _tls_stack(home: Path) -> TlsStack:
    """A stack home with the ports files the endpoints are read from (nothing runs)."""
    kafka = NativeKafka(home / "kafka")
    postgres = NativePostgres(home / "postgres-tls", tls=True)
    kafka.home.mkdir(parents=True)
    postgres.home.mkdir(parents=True)
    ports = {"broker": 9000, "controller": 9001, "sasl": 9002}
    ports.update({name.lower(): 9100 + n for n, name in enumerate(TLS_LISTENERS)})
    kafka.ports_file.write_text(json.dumps(ports))
    postgres.ports_file.write_text(json.dumps({"postgres": 5499}))
    postgres.password_file.write_text("secret")
    # The settings refuse CA files they cannot read.
    kafka.certificates.ensure()
    postgres.certificates.ensure()
    return TlsStack(kafka, postgres)


def _settings(tls: TlsStack, mode: str | None) -> tuple[dict[str, str], dict[str, str], str]:
    url = tls.postgres.url("bench_x_tls1")
    ours, worker = phase_settings(
        "bench.x.tls1",
        kafka=tls.kafka.bootstrap_servers(),
        database_url=url,
        database="bench_x_tls1",
        mode=mode,  # type: ignore[arg-type]
        tls=tls,
    )
    env = worker_env(worker, log_level="WARNING", base={})
    return ours.environment(), env, database(worker).url


def test_the_tls_phases_worker_uses_ssl_and_verify_full(tmp_path: Path) -> None:
    tls = _tls_stack(tmp_path)

    ours, env, url = _settings(tls, "tls")

    assert env["KAFKA_BOOTSTRAP_SERVERS"] == tls.kafka.tls_bootstrap_servers("SSL")
    assert env["KAFKA_BOOTSTRAP_SERVERS"] != tls.kafka.bootstrap_servers()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert env["KAFKA_SSL_CAFILE"] == str(tls.kafka.certificates.ca)
    assert env["DATABASE_URL"] == f"postgresql://{PASSWORD_USER}@127.0.0.1:5499/bench_x_tls1"
    assert env["DATABASE_SSLMODE"] == "verify-full"
    assert env["DATABASE_SSL_ROOT_CERT"] == str(tls.postgres.certificates.ca)
    assert env["DATABASE_PASSWORD_FILE"] == str(tls.postgres.password_file)
    assert "sslmode=verify-full" in url
    # The benchmark's own clients stay plain, on the same servers.
    assert ours["KAFKA_BOOTSTRAP_SERVERS"] == tls.kafka.bootstrap_servers()
    assert ours["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5499/bench_x_tls1"
    assert "KAFKA_SECURITY_PROTOCOL" not in ours
    assert "DATABASE_SSLMODE" not in ours


def test_the_plain_phases_worker_refuses_tls_explicitly(tmp_path: Path) -> None:
    tls = _tls_stack(tmp_path)

    ours, env, url = _settings(tls, "plain")

    # The same servers as the TLS phase, without TLS: libpq's default would be "prefer".
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == tls.kafka.bootstrap_servers()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5499/bench_x_tls1"
    assert env["DATABASE_SSLMODE"] == "disable"
    assert "sslmode=disable" in url
    assert not {"KAFKA_SSL_CAFILE", "DATABASE_SSL_ROOT_CERT", "DATABASE_PASSWORD_FILE"} & set(env)
    assert env["TOPIC_COMMANDS"] == ours["TOPIC_COMMANDS"] == "bench.x.tls1.customer.update"


def test_other_phases_give_the_worker_the_benchmarks_settings(tmp_path: Path) -> None:
    tls = _tls_stack(tmp_path)

    ours, env, _ = _settings(tls, None)

    assert {name: env[name] for name in ours} == ours
    assert "DATABASE_SSLMODE" not in env
    assert "KAFKA_SECURITY_PROTOCOL" not in env
    with pytest.raises(ValueError, match="TLS stack"):
        phase_settings("t", kafka="k:1", database_url="postgresql://h/d", database="d", mode="tls")


def test_broker_connections_are_counted_by_listener_port() -> None:
    assert port_of("127.0.0.1:9093") == 9093
    assert port_of("a:1,b:2") == 1
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                counted = connections_to([os.getpid()], {"tls": port, "plain": 1})
    # This process holds both ends; only the client's remote port is the listener's.
    assert counted == {"tls": 1, "plain": 0}
    assert connections_to([], {"tls": port}) == {"tls": 0}


# -- the result -------------------------------------------------------------------------


def _run(
    seconds: float,
    *,
    tls_sessions: int,
    plain_sessions: int,
    worker_cpu: float = 0.5,
    state: str = "abc",
) -> ThroughputRun:
    log = OutcomeLog(100, "tp")
    for index in range(100):
        log.add(Output(index, "applied", index + 2), 100.0 + index * seconds / 99)
    tls = tls_sessions > 0
    return ThroughputRun(
        worker="ours",
        log=log,
        expected={"applied": 100, "rejected": 0, "dead_lettered": 0},
        spawned_at=99.0,
        consuming_at=100.0,
        produced_from=98.0,
        produced_until=98.5,
        exit_status=0,
        state={"customers_md5": state, "log": "ignored"},
        cpu=[
            CpuSample(99.9, {"worker": 1.0, "kafka": 2.0}),
            CpuSample(100.0 + seconds + 0.1, {"worker": 1.0 + worker_cpu, "kafka": 2.1}),
        ],
        database_sessions={"tls": tls_sessions, "plain": plain_sessions},
        kafka_connections={"tls": 3, "plain": 0} if tls else {"tls": 0, "plain": 3},
    )


def _comparison() -> list[TlsPhase]:
    return [
        TlsPhase("plain1", 1, "plain", _run(1.0, tls_sessions=0, plain_sessions=3)),
        TlsPhase("tls1", 1, "tls", _run(1.25, tls_sessions=3, plain_sessions=0, worker_cpu=0.7)),
        TlsPhase("tls2", 2, "tls", _run(1.25, tls_sessions=3, plain_sessions=0, worker_cpu=0.7)),
        TlsPhase("plain2", 2, "plain", _run(1.0, tls_sessions=0, plain_sessions=3)),
    ]


def test_the_tls_block_compares_both_rates_and_cpu_per_command() -> None:
    figures = tls_figures(
        _comparison(), reference_state={"customers_md5": "abc"}, endpoints={"kafka_tls": "x:1"}
    )

    assert figures["plain_commands_per_second"] == pytest.approx(100.0)
    assert figures["tls_commands_per_second"] == pytest.approx(80.0)
    assert figures["ratio"] == pytest.approx(0.8)
    assert figures["difference_percent"] == pytest.approx(-20.0)
    assert figures["order"] == ["plain1", "tls1", "tls2", "plain2"]
    assert [r["order"] for r in figures["rounds"]] == [["plain1", "tls1"], ["tls2", "plain2"]]
    assert [r["ratio"] for r in figures["rounds"]] == [pytest.approx(0.8)] * 2
    # 0.5 and 0.7 CPU seconds of the worker over 100 commands; Kafka 0.1 s in both.
    assert figures["plain_cpu_us_per_command"]["worker"] == 5000.0
    assert figures["tls_cpu_us_per_command"]["worker"] == 7000.0
    assert figures["cpu_difference_us_per_command"] == {
        "worker": 2000.0,
        "kafka": 0.0,
        "all": 2000.0,
    }
    assert figures["verified"] is True
    assert figures["state_match"] is True
    assert figures["endpoints"] == {"kafka_tls": "x:1"}
    tls1 = figures["phases"]["tls1"]
    assert tls1["mode"] == "tls"
    assert tls1["database_sessions"] == {"tls": 3, "plain": 0}
    assert tls1["kafka_connections"] == {"tls": 3, "plain": 0}
    assert tls1["processed_all"] is True


@pytest.mark.parametrize(
    "broken",
    [
        {"database_sessions": {"tls": 2, "plain": 1}},  # a session fell back to plaintext
        {"database_sessions": {"tls": 0, "plain": 0}},  # nothing counted proves nothing
        {"kafka_connections": {"tls": 2, "plain": 1}},
        {"exit_status": 1},
    ],
)
def test_a_tls_phase_not_as_meant_is_not_verified(broken: dict[str, object]) -> None:
    phases = _comparison()
    for name, value in broken.items():
        setattr(phases[1].run, name, value)

    assert tls_figures(phases)["verified"] is False


def test_a_plain_phase_over_tls_is_not_verified() -> None:
    phases = _comparison()
    phases[0].run.database_sessions = {"tls": 3, "plain": 0}

    assert tls_figures(phases)["verified"] is False


def test_different_rows_are_a_state_mismatch() -> None:
    phases = _comparison()
    phases[3].run.state = {"customers_md5": "other"}

    assert tls_figures(phases)["state_match"] is False
    assert tls_figures(_comparison(), reference_state={"customers_md5": "x"})["state_match"] is (
        False
    )


def test_the_result_carries_the_tls_block_and_the_summary_names_it() -> None:
    ours = _run(1.0, tls_sessions=0, plain_sessions=3)
    ours.database_sessions = ours.kafka_connections = None
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
    result = json.loads(to_json_line(build_result(**common, tls=tls_figures(_comparison()))))  # type: ignore[arg-type]

    assert without["tls"] is None
    assert "database_sessions" not in without["throughput"]["ours"]
    assert "TLS" not in summary(without)
    assert result["tls"]["ratio"] == pytest.approx(0.8)
    line = summary(result)
    assert "TLS 80/s vs plain 100/s" in line
    assert "-20%" in line
    assert "verified True" in line
