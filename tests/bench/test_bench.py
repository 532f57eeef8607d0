"""The pure parts of the benchmark (the load, the statistics, the SVG and the result), and
its CPU meter on processes of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from array import array
from collections import Counter
from pathlib import Path

import orjson
import psutil
import pytest

from bench.__main__ import build_parser, options_from_args, summary
from bench.cpu import CpuMeter, CpuSample, cpu_figures, own_seconds, tree_seconds, window
from bench.load import (
    INDEX_HEADER,
    Command,
    LoadGenerator,
    LoadSpec,
    command_id,
    describe,
    expected_outcomes,
    generate,
    index_of,
)
from bench.outputs import OutcomeLog, Output, parse_output
from bench.report import (
    PacedRun,
    ThroughputRun,
    build_result,
    paced_figures,
    rss_figures,
    to_json_line,
)
from bench.runner import Options
from bench.stats import latency_summary, percentile, slope
from bench.svg import bucket_series, nice_step, render_latency_svg
from bench.workers import parse_vm_rss, passed_through_settings, worker_argv, worker_env
from service.adapters.postgres.seed import demo_id
from service.domain.authorization import UnsignedAuthorizer
from service.domain.batch import BatchState, decide_batch
from service.domain.customer import CustomerState
from service.domain.inbound import InboundRecord, Invalid, Limits, Poison, Valid, classify
from service.infrastructure.settings import Settings

# -- the load ---------------------------------------------------------------------------


def _record(command: Command) -> InboundRecord:
    return InboundRecord(
        "bench", 0, command.index, 0, 0, command.key, command.value, command.headers
    )


def _seeded(customers: int) -> dict[str, CustomerState]:
    """The customers as ``service.adapters.postgres.seed`` creates them."""
    return {
        demo_id(number): CustomerState(
            id=demo_id(number),
            created=0,
            delinquent=False,
            address=None,
            description=None,
            email=f"demo{number}@example.com",
            invoice_prefix=f"DEMO{number:06d}",
            next_invoice_sequence=1,
            name=f"Demo Customer {number}",
            phone=None,
            preferred_locales=("en-US",),
            tax_exempt="none",
            last_invoice_sequence=0,
            version=1,
        )
        for number in range(1, customers + 1)
    }


def test_the_load_is_the_same_for_the_same_seed_and_stream() -> None:
    spec = LoadSpec(customers=50, seed=7, skew=0.8)

    first = generate(spec, 300, prefix="tp")
    again = generate(spec, 300, prefix="tp")
    other_seed = generate(LoadSpec(customers=50, seed=8, skew=0.8), 300, prefix="tp")
    other_stream = generate(spec, 300, prefix="lat")

    assert first == again
    assert [c.value for c in first] != [c.value for c in other_seed]
    assert [c.value for c in first] != [c.value for c in other_stream]


def test_streaming_gives_the_same_commands_as_a_list() -> None:
    spec = LoadSpec(customers=20)
    assert list(LoadGenerator(spec, prefix="s").stream(100)) == generate(spec, 100, prefix="s")


def test_the_mix_has_the_configured_shares() -> None:
    spec = LoadSpec(customers=500, invalid_ratio=0.05)
    summary = describe(generate(spec, 20_000, prefix="tp"))

    shares = {kind: count / 20_000 for kind, count in summary["kinds"].items()}
    assert shares["invalid"] == pytest.approx(0.05, abs=0.01)
    assert shares["conflict"] == pytest.approx(spec.conflict_ratio, abs=0.004)
    assert shares["missing"] == pytest.approx(spec.missing_ratio, abs=0.003)
    assert 0 < shares["poison"] < 0.004
    assert shares["valid"] > 0.9


def test_updates_name_several_fields_and_some_addresses() -> None:
    commands = [c for c in generate(LoadSpec(), 5000, prefix="tp") if c.kind == "valid"]
    bodies = [orjson.loads(c.value)["data"] for c in commands]

    fields = [len([name for name in body if name != "expand"]) for body in bodies]
    addresses = sum(1 for body in bodies if "address" in body)
    assert sum(fields) / len(fields) > 2
    assert max(fields) >= 4
    assert 0.15 < addresses / len(bodies) < 0.4
    assert any("expand" in body for body in bodies)
    assert any("next_invoice_sequence" in body for body in bodies)
    assert any("invoice_prefix" in body for body in bodies)


def test_every_command_classifies_as_its_kind() -> None:
    commands = generate(LoadSpec(customers=100), 5000, prefix="tp")
    authorizer = UnsignedAuthorizer()
    invalid_params: Counter[str | None] = Counter()

    for command in commands:
        item = classify(_record(command), Limits(), authorizer)
        if command.kind == "poison":
            assert isinstance(item, Poison), command
        elif command.kind == "invalid":
            assert isinstance(item, Invalid), command
            invalid_params[item.error.param] += 1
            # Rejections name their command, so the benchmark can match them.
            assert item.command_id == command.command_id
        else:
            assert isinstance(item, Valid), (command, item)

    # Bad country, unknown field, bad sequence, bad email ...: many different reasons.
    assert len(invalid_params) >= 8
    assert "data.address.country" in invalid_params
    assert "data.next_invoice_sequence" in invalid_params
    assert "data.nickname" in invalid_params


def test_folding_the_load_gives_every_command_its_expected_outcome() -> None:
    spec = LoadSpec(customers=60, skew=1.0)
    commands = generate(spec, 3000, prefix="tp")
    authorizer = UnsignedAuthorizer()
    items = [(_record(c), classify(_record(c), Limits(), authorizer)) for c in commands]

    decided = decide_batch(
        items, BatchState(customers=_seeded(60), prefix_owners={}, known_commands={})
    )

    outcomes = [decision.outcome for decision in decided.decisions]
    assert outcomes == [command.expected for command in commands]
    assert Counter(outcomes) == Counter(expected_outcomes(commands))


def test_uniform_load_spreads_over_customers_with_several_commands_each() -> None:
    summary = describe(generate(LoadSpec(customers=1000, skew=0.0), 20_000, prefix="tp"))

    assert summary["customers_touched"] == 1000
    assert summary["mean_commands_per_customer"] > 15
    assert summary["busiest_customer_commands"] < 3 * summary["mean_commands_per_customer"]


def test_skew_makes_a_few_customers_hot() -> None:
    spec = LoadSpec(customers=1000, skew=1.2)
    commands = generate(spec, 20_000, prefix="tp")
    summary = describe(commands)

    assert summary["busiest_customer_commands"] > 20 * summary["mean_commands_per_customer"]
    # Every stream of a seed has the same hot customers.
    hottest = Counter(c.customer for c in commands).most_common(1)[0][0]
    other = Counter(c.customer for c in generate(spec, 20_000, prefix="lat"))
    assert other.most_common(1)[0][0] == hottest


@pytest.mark.parametrize(
    "arguments",
    [{"customers": 0}, {"skew": -1.0}, {"invalid_ratio": -0.1}, {"invalid_ratio": 0.999}],
)
def test_a_load_spec_refuses_nonsense(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"customers|skew|ratios"):
        LoadSpec(**arguments)  # type: ignore[arg-type]


def test_command_ids_carry_their_index() -> None:
    assert index_of(command_id("tp", 42), "tp") == 42
    assert index_of(command_id("lat", 42), "tp") is None
    assert index_of("cmd-abc", "cmd") is None
    assert index_of("nonsense", "tp") is None


# -- outputs ----------------------------------------------------------------------------


def test_an_event_is_matched_by_causationid_and_keeps_its_sequence() -> None:
    value = orjson.dumps({"causationid": "tp-00000007", "sequence": "00000000000000000003"})
    assert parse_output("applied", value, [], prefix="tp") == Output(7, "applied", 3)


def test_a_rejection_is_matched_by_causationid() -> None:
    value = orjson.dumps({"causationid": "tp-00000009", "data": {}})
    assert parse_output("rejected", value, [], prefix="tp") == Output(9, "rejected", 0)


def test_a_dead_letter_is_matched_by_its_index_header() -> None:
    headers = [("kafka_dlt-original-topic", b"x"), (INDEX_HEADER, b"12")]
    assert parse_output("dead_lettered", b"{not json", headers, prefix="tp") == Output(
        12, "dead_lettered"
    )
    assert parse_output("dead_lettered", b"{", [], prefix="tp").index is None


@pytest.mark.parametrize("value", [b"not json", b"[1]", orjson.dumps({"causationid": "x-1"})])
def test_outputs_of_something_else_name_no_command(value: bytes) -> None:
    assert parse_output("applied", value, [], prefix="tp").index is None


def test_the_outcome_log_counts_each_command_once() -> None:
    log = OutcomeLog(3, "tp")
    log.add(Output(0, "applied", 2), 10.0)
    log.add(Output(0, "applied", 2), 11.0)
    log.add(Output(None, "rejected"), 11.0)
    log.add(Output(5, "rejected"), 11.0)
    log.add(Output(2, "dead_lettered"), 12.5)

    assert (log.seen, log.duplicates, log.foreign, log.missing) == (2, 1, 2, 1)
    assert not log.complete
    assert log.counts() == {"applied": 1, "rejected": 0, "dead_lettered": 1}
    assert (log.first_at, log.last_at) == (10.0, 12.5)
    assert log.latencies_ms([9.5, 0.0, 12.0]) == [500.0, 500.0]
    assert log.latencies_ms([9.5, 0.0, 12.0], since=10.0) == [500.0]


def test_two_logs_compare_outcome_and_sequence_per_command() -> None:
    first, second = OutcomeLog(3, "tp"), OutcomeLog(3, "tp")
    for log in (first, second):
        log.add(Output(0, "applied", 2), 1.0)
        log.add(Output(1, "rejected"), 1.0)
    first.add(Output(2, "applied", 3), 1.0)
    second.add(Output(2, "applied", 4), 1.0)

    assert first.mismatches(second) == 1
    assert first.mismatches(first) == 0
    with pytest.raises(ValueError, match="different loads"):
        first.mismatches(OutcomeLog(4, "tp"))


# -- statistics -------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_percentiles_refuse_nothing_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = latency_summary([30.0, 10.0, 20.0])
    assert summary == {"count": 3, "mean_ms": 20.0, "p50_ms": 20.0, "p95_ms": 29.0,
                       "p99_ms": 29.8, "max_ms": 30.0}  # fmt: skip
    assert latency_summary([])["p99_ms"] is None


def test_slope_is_least_squares() -> None:
    assert slope([(x, 3 * x + 1) for x in (0.0, 1.0, 2.0, 5.0)]) == pytest.approx(3.0)
    assert slope([(1.0, 5.0), (1.0, 9.0)]) == 0.0
    assert slope([(1.0, 5.0)]) == 0.0


def test_rss_figures_report_the_slope_after_the_warmup() -> None:
    # 100 MiB flat during the warm-up, then growing 1 MiB a minute.
    samples = [(float(t), 100 * 1024) for t in range(0, 60, 5)]
    samples += [(float(t), 100 * 1024 + (t - 60) * 1024 // 60) for t in range(60, 660, 5)]

    figures = rss_figures(samples, warmup_seconds=60)

    assert figures["rss_start_mib"] == 100.0
    assert figures["rss_max_mib"] == figures["rss_end_mib"]
    assert figures["rss_slope_mib_per_hour"] == pytest.approx(60, abs=0.5)
    assert figures["samples"] == len(samples)
    assert figures["rss_mib_by_minute"][:3] == [100.0, 100.92, 101.92]
    assert len(figures["rss_mib_by_minute"]) == 11
    assert rss_figures([], warmup_seconds=0) == {"samples": 0}


# -- SVG --------------------------------------------------------------------------------


def test_nice_steps() -> None:
    assert nice_step(100) == 20
    assert nice_step(7) == 2
    assert nice_step(0.3) == pytest.approx(0.1)
    assert nice_step(0) == 1


def test_buckets_summarise_each_slice_of_time() -> None:
    samples = [(t / 10, 10.0) for t in range(100)] + [(9.95, 500.0)]
    series = bucket_series(samples, buckets=10)
    assert len(series["p50"]) == 10
    assert series["p50"][-1][1] == 10.0
    assert series["max"][-1][1] == 500.0


def test_the_svg_is_well_formed_with_a_line_per_series() -> None:
    samples = [(i / 100, 5.0 + (i % 7)) for i in range(3000)]

    document = render_latency_svg(samples, title="latency <at> 1000/s & more")

    root = ET.fromstring(document)
    polylines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(polylines) == 3
    assert all(len(line.attrib["points"].split()) == 60 for line in polylines)
    titles = [text.text for text in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "latency <at> 1000/s & more" in titles


def test_the_svg_of_no_samples_says_so() -> None:
    root = ET.fromstring(render_latency_svg([], title="empty"))
    assert "no samples" in [text.text for text in root.iter("{http://www.w3.org/2000/svg}text")]
    assert not root.findall("{http://www.w3.org/2000/svg}polyline")


# -- the result -------------------------------------------------------------------------


def _finished_log(count: int, *, at: float, spacing: float) -> OutcomeLog:
    log = OutcomeLog(count, "tp")
    for index in range(count):
        log.add(Output(index, "applied", index + 2), at + index * spacing)
    return log


def _throughput(worker: str, seconds: float) -> ThroughputRun:
    return ThroughputRun(
        worker=worker,
        log=_finished_log(100, at=100.0, spacing=seconds / 99),
        expected={"applied": 100, "rejected": 0, "dead_lettered": 0},
        spawned_at=99.0,
        consuming_at=100.0,
        produced_from=98.0,
        produced_until=98.5,
        exit_status=0,
        rss_kib=[(0.0, 51200), (1.0, 52224)],
        state={"customers_md5": "abc"},
    )


def _paced(rss: list[tuple[float, int]] | None = None) -> PacedRun:
    sent = array("d", [1000.0 + index / 10 for index in range(50)])
    log = OutcomeLog(50, "lat")
    for index in range(50):
        log.add(Output(index, "applied", 2), sent[index] + 0.02)
    return PacedRun(
        offered_rate=10.0,
        seconds=5.0,
        log=log,
        sent_at=sent,
        started_at=1000.0,
        finished_at=1004.9,
        max_send_lag_ms=0.5,
        warmup_seconds=1.0,
        exit_status=0,
        rss_kib=rss or [],
    )


def test_the_result_has_every_figure_on_one_json_line() -> None:
    result = build_result(
        parameters=Options().parameters(),
        machine={"cores": 2, "python": "3.11", "kafka_version": "4.1.1"},
        load={"commands": 100},
        ours=_throughput("ours", 1.0),
        naive=_throughput("naive", 10.0),
        latency=_paced(),
        soak=_paced(rss=[(0.0, 102400), (60.0, 102400), (120.0, 102400)]),
        soak_warmup_seconds=10,
        wall_seconds=42.0,
        outputs_mismatched=0,
    )

    line = to_json_line(result)
    assert "\n" not in line
    parsed = json.loads(line)
    throughput = parsed["throughput"]
    assert throughput["ours_commands_per_second"] == pytest.approx(100.0, rel=0.01)
    assert throughput["naive_commands_per_second"] == pytest.approx(10.0, rel=0.01)
    assert throughput["ratio"] == pytest.approx(10.0, rel=0.01)
    assert throughput["outputs_match"] is True
    assert throughput["state_match"] is True
    ours = throughput["ours"]
    assert ours["processed_all"] is True
    assert (ours["answered"], ours["missing"], ours["duplicates"]) == (100, 0, 0)
    assert ours["startup_seconds"] == pytest.approx(1.0)
    assert ours["produce_seconds"] == pytest.approx(0.5)
    assert ours["produced_before_start"] is True
    assert ours["rss_max_mib"] == 51.0
    latency = parsed["latency"]
    assert latency["offered_rate"] == 10.0
    assert latency["sent_rate"] == pytest.approx(10.0)
    assert latency["p50_ms"] == pytest.approx(20.0, abs=0.01)
    assert latency["p99_ms"] == pytest.approx(20.0, abs=0.01)
    assert latency["latency_samples"] == 40  # the first second is warm-up
    soak = parsed["soak"]
    assert soak["rss_start_mib"] == soak["rss_end_mib"] == soak["rss_max_mib"] == 100.0
    assert soak["rss_slope_mib_per_hour"] == 0.0
    assert parsed["machine"]["cores"] == 2
    assert parsed["parameters"]["commands"] == Options().commands
    line = summary(parsed)
    assert "ratio 10.0x" in line
    assert "p99 20.0 ms" in line
    assert "slope 0.0 MiB/h" in line


def test_a_result_without_baseline_latency_or_soak() -> None:
    result = build_result(
        parameters={},
        machine={},
        load={},
        ours=_throughput("ours", 1.0),
        naive=None,
        latency=None,
        soak=None,
        wall_seconds=1.0,
    )
    assert result["throughput"]["ratio"] is None
    assert result["throughput"]["naive"] is None
    assert result["throughput"]["outputs_match"] is None
    assert result["latency"] is None
    assert result["soak"] is None


def test_an_unfinished_run_reports_no_throughput() -> None:
    run = _throughput("ours", 1.0)
    run.log = OutcomeLog(100, "tp")
    run.log.add(Output(0, "applied", 2), 101.0)
    figures = build_result(
        parameters={}, machine={}, load={}, ours=run, naive=None, latency=None, soak=None,
        wall_seconds=1.0,
    )["throughput"]["ours"]  # fmt: skip
    assert figures["commands_per_second"] == 0.0
    assert figures["processed_all"] is False
    assert figures["missing"] == 99


# -- the command line and the workers' environment --------------------------------------


def test_quick_is_small_and_explicit_options_win() -> None:
    parser = build_parser()

    quick = options_from_args(parser.parse_args(["--quick"]), native_home=None)
    tuned = options_from_args(
        parser.parse_args(["--quick", "--commands", "300", "--worker-env", "BATCH_MAX_RECORDS=9"]),
        native_home=None,
    )
    default = options_from_args(parser.parse_args([]), native_home=None)

    assert quick.quick
    assert quick.commands < 5000
    assert quick.latency_seconds <= 10
    assert tuned.commands == 300
    assert tuned.worker_env == {"BATCH_MAX_RECORDS": "9"}
    assert (default.commands, default.customers, default.partitions) == (50_000, 2000, 6)
    assert default.log_level == "WARNING"
    assert default.naive
    # The relay apart, as deployed; the old shape on request.
    assert default.relay_process
    inside = options_from_args(parser.parse_args(["--no-relay-process"]), native_home=None)
    assert not inside.relay_process


def test_bad_worker_env_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--worker-env", "NOVALUE"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_the_worker_environment_names_the_runs_topics_and_quiet_logs() -> None:
    settings = Settings(
        kafka_bootstrap_servers="k:9092",
        database_url="postgresql://db/x",
        kafka_consumer_group="g",
        topic_commands="c",
        topic_events="e",
        topic_rejections="r",
        topic_dead_letters="d",
        relay_transactional_id="t",
        _env_file=None,
    )

    env = worker_env(
        settings,
        log_level="WARNING",
        extra={"BATCH_MAX_RECORDS": "1000"},
        base={"PATH": "/bin", "TOPIC_COMMANDS": "someone-elses"},
    )

    assert env["TOPIC_COMMANDS"] == "c"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "k:9092"
    assert env["DATABASE_URL"] == "postgresql://db/x"
    assert (env["KAFKA_CONSUMER_GROUP"], env["RELAY_TRANSACTIONAL_ID"]) == ("g", "t")
    assert (env["TOPIC_EVENTS"], env["TOPIC_REJECTIONS"], env["TOPIC_DEAD_LETTERS"]) == (
        "e",
        "r",
        "d",
    )
    assert (env["HTTP_PORT"], env["LOG_LEVEL"]) == ("0", "WARNING")
    assert env["BATCH_MAX_RECORDS"] == "1000"
    assert env["PATH"] == "/bin"
    assert passed_through_settings({"BATCH_MAX_RECORDS": "5", "DATABASE_URL": "x"}) == [
        "BATCH_MAX_RECORDS"
    ]


def test_worker_command_lines() -> None:
    assert worker_argv("naive") == [sys.executable, "-m", "bench.naive_worker"]
    assert worker_argv("ours")[-1] == "worker"
    profiled = worker_argv("ours", profile=Path("/tmp/w.prof"))
    assert profiled[:5] == [sys.executable, "-m", "cProfile", "-o", "/tmp/w.prof"]
    assert profiled[-2].endswith("customer-service")


def test_rss_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t  9000 kB\nVmRSS:\t   73512 kB\nThreads:\t3\n"
    assert parse_vm_rss(status) == 73512
    assert parse_vm_rss("Name:\tzombie\n") is None


# -- CPU time and the time-limited baseline --------------------------------------------


def test_cpu_figures_per_process_and_for_the_box() -> None:
    before = CpuSample(100.0, {"worker": 1.0, "postgres": 10.0, "relay": None})
    after = CpuSample(102.0, {"worker": 1.5, "postgres": 11.0, "relay": None})

    figures = cpu_figures(before, after, commands=10_000)

    processes = figures["processes"]
    assert isinstance(processes, dict)
    assert processes["worker"] == {"seconds": 0.5, "us_per_command": 50.0, "cores": 0.25}
    assert processes["postgres"] == {"seconds": 1.0, "us_per_command": 100.0, "cores": 0.5}
    assert processes["relay"] is None
    assert figures["all"] == {"seconds": 1.5, "us_per_command": 150.0, "cores": 0.75}
    assert figures["window_seconds"] == 2.0


def test_the_cpu_window_is_the_samples_around_the_run() -> None:
    samples = [CpuSample(float(at), {"worker": float(at)}) for at in range(10)]

    assert window(samples, 2.5, 6.5) == (samples[2], samples[7])
    assert window(samples, -1.0, 20.0) == (samples[0], samples[-1])
    with pytest.raises(ValueError, match="no CPU sample"):
        window([], 0.0, 1.0)


def test_a_process_trees_cpu_counts_its_children_even_after_they_exit() -> None:
    # A parent that spends CPU in a child it then reaps, as the postmaster does with
    # backends, and waits to be read.
    script = (
        "import subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', 'sum(range(20_000_000))'], check=True)\n"
        "print('done', flush=True)\n"
        "time.sleep(30)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline() == b"done\n"
            own = psutil.Process(parent.pid).cpu_times()
            seconds = tree_seconds(parent.pid)
            assert seconds is not None
            assert seconds >= own.user + own.system + 0.1  # the child's work is in it
        finally:
            parent.kill()
            parent.wait()
    assert tree_seconds(parent.pid) is None


def test_a_group_measured_alone_leaves_out_its_childrens_time() -> None:
    # The benchmark's children are the workers it measures in a group of their own.
    script = (
        "import sys; sum(range(30_000_000)); "
        "sys.stdout.write('done\\n'); sys.stdout.flush(); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"done\n"
            meter = CpuMeter({"benchmark": [os.getpid()]}, alone=frozenset({"benchmark"}))
            whole = CpuMeter({"benchmark": [os.getpid()]})
            alone, tree = meter.sample(), whole.sample()
            assert (tree.seconds["benchmark"] or 0) >= (alone.seconds["benchmark"] or 0) + 0.2
            assert own_seconds(child.pid) == pytest.approx(tree_seconds(child.pid), abs=0.05)
        finally:
            child.kill()
            child.wait()


def test_a_meter_names_only_the_groups_it_has_processes_for() -> None:
    meter = CpuMeter({"benchmark": [os.getpid()], "relay": [], "kafka": []})

    sample = meter.sample()

    assert list(sample.seconds) == ["benchmark"]
    assert (sample.seconds["benchmark"] or 0) > 0


def test_a_time_limited_run_is_rated_over_what_it_answered() -> None:
    run = _throughput("naive", 1.0)
    run.log = OutcomeLog(100, "tp")
    for index in range(40):
        run.log.add(Output(index, "applied", index + 2), 100.0 + index * 0.1)
    run.time_limit = 3.9
    ours = _throughput("ours", 1.0)

    result = build_result(
        parameters={}, machine={}, load={}, ours=ours, naive=run, latency=None, soak=None,
        wall_seconds=1.0, outputs_mismatched=ours.log.mismatches(run.log),
    )["throughput"]  # fmt: skip

    assert result["naive"]["commands_per_second"] == pytest.approx(40 / 3.9, rel=0.01)
    assert result["naive"]["time_limit_seconds"] == 3.9
    assert result["naive"]["processed_all"] is False
    assert result["outputs_match"] is True  # the 40 it answered match ours
    assert result["state_match"] is None  # the rest of the load was never applied


def test_outputs_are_compared_only_where_the_other_run_answered() -> None:
    ours, partial = OutcomeLog(3, "tp"), OutcomeLog(3, "tp")
    for index in range(3):
        ours.add(Output(index, "applied", 2), 1.0)
    partial.add(Output(0, "applied", 2), 1.0)
    assert ours.mismatches(partial) == 0
    partial.add(Output(1, "rejected", 0), 1.0)
    assert ours.mismatches(partial) == 1


def test_the_relay_runs_as_its_own_verb() -> None:
    assert worker_argv("ours", verb="relay")[-1] == "relay"


def test_an_outputs_decision_time_is_its_events_time() -> None:
    value = orjson.dumps(
        {"causationid": command_id("lat", 7), "sequence": "3", "time": "2026-01-31T09:30:00.25Z"}
    )
    output = parse_output("applied", value, [], prefix="lat")
    assert output.decided_at == 1769851800.25
    assert parse_output("applied", orjson.dumps({"time": 5}), [], prefix="lat").decided_at == 0.0


def test_the_latency_splits_at_the_decision() -> None:
    run = _paced()
    for index in range(50):
        run.log.decided_at[index] = run.sent_at[index] + 0.005  # 5 ms to decide, 15 to show

    split = paced_figures(run)["split"]

    assert split["due_to_decided"]["p50_ms"] == pytest.approx(5.0, abs=0.01)
    assert split["decided_to_visible"]["p99_ms"] == pytest.approx(15.0, abs=0.01)
    assert split["due_to_decided"]["count"] == 40  # the warm-up is left out here too


def test_an_event_in_binary_mode_is_matched_as_in_structured_mode() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_time", b"2026-01-31T09:30:00Z"),
        ("ce_sequence", b"00000000000000000003"),
        ("ce_causationid", command_id("tp", 7).encode()),
    ]
    output = parse_output("applied", b'{"object": {}}', headers, prefix="tp")
    assert (output.index, output.sequence, output.decided_at) == (7, 3, 1769851800.0)
