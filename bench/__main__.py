"""``python -m bench``: throughput against a naive baseline, latency at a fixed rate, and
an optional soak, on the same seeded load. One JSON line of results goes to stdout,
progress to stderr. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.kafka_io import BenchmarkError
from bench.report import to_json_line
from bench.runner import Options, run_benchmark, stderr_progress
from bench.stack import DEFAULT_HOME, TlsStack, open_bench_stack, open_tls_stack, tls_refusal
from devstack.stack import Stack


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    defaults = Options()
    quick = Options.quick_options()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Measure customer-service's worker: throughput against a naive one-at-a-time "
            "worker on the same data, latency percentiles at a fixed offered rate, and "
            "optionally memory over a soak. Prints one JSON line to stdout."
        ),
        epilog=(
            "Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL from the "
            "environment if both are set, else the benchmark's own native stack under "
            f"{DEFAULT_HOME} (started if needed, stopped at the end if started here)."
        ),
    )
    add = parser.add_argument
    add("--customers", type=int, help=f"seeded customers (default {defaults.customers})")
    add("--commands", type=int, help=f"commands per throughput run (default {defaults.commands})")
    add("--partitions", type=int, help=f"partitions per topic (default {defaults.partitions})")
    add("--seed", type=int, help=f"seed of the load (default {defaults.seed})")
    add("--skew", type=float, help="Zipf exponent of the customer choice; 0 = uniform (default 0)")
    add("--invalid-ratio", type=float, help="share of invalid commands (default 0.05)")
    add(
        "--rate",
        type=float,
        help=f"offered commands/s of the latency run (default {defaults.rate:g})",
    )
    add(
        "--latency-seconds",
        type=float,
        help=f"length of the latency run; 0 skips it (default {defaults.latency_seconds:g})",
    )
    add(
        "--warmup-seconds",
        type=float,
        help="left out of the latency percentiles at the start of a paced run (default 1)",
    )
    add("--soak-seconds", type=float, help="length of a soak run sampling RSS (default 0: none)")
    add("--soak-rate", type=float, help="offered commands/s of the soak run (default: --rate)")
    add("--rss-interval", type=float, help="seconds between RSS samples in the soak (default 5)")
    add(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="LOG_LEVEL of the workers (default WARNING: no line per command)",
    )
    add(
        "--workers",
        type=int,
        help="worker processes in the consumer group, ours and naive alike (default 1)",
    )
    add(
        "--no-naive",
        dest="naive",
        action="store_false",
        default=None,
        help="skip the naive baseline",
    )
    add(
        "--no-sql-limit",
        dest="sql_limit",
        action="store_false",
        default=None,
        help="skip the SQL write-set limit (the worker's batch statements replayed "
        "without Python work per command)",
    )
    add(
        "--sql-batches",
        type=int,
        help="batches of the SQL write-set limit, from the start of the throughput load "
        f"(default {defaults.sql_batches})",
    )
    add(
        "--sql-rounds",
        type=int,
        help="replays of those batches, each on a fresh copy; the limit is their median "
        f"(default {defaults.sql_rounds})",
    )
    add(
        "--idempotency-rows",
        type=int,
        help="idempotency rows of earlier days written before any phase (e.g. 50000000), "
        "and one retention pass timed at that size (default 0: none)",
    )
    add(
        "--naive-seconds",
        type=float,
        help="stop the naive baseline this long after its first output (default 60)",
    )
    add(
        "--processes",
        type=int,
        help="run ours as `customer-service worker --processes N` (default: one process)",
    )
    add(
        "--relay-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the relay as its own process, as the Helm chart does, so that its CPU "
        "time is measured apart (default); --no-relay-process runs it on the worker's loop",
    )
    add(
        "--worker-env",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="extra environment for the workers, e.g. BATCH_MAX_RECORDS=1000 (repeatable)",
    )
    add(
        "--profile",
        type=Path,
        metavar="FILE.prof",
        help="run our worker's throughput run under cProfile, writing the stats to FILE",
    )
    add("--plot", type=Path, metavar="FILE.svg", help="write an SVG plot of latency over time")
    add(
        "--stall-timeout",
        type=float,
        help="fail when no output arrives for this many seconds (default 120)",
    )
    add(
        "--tls",
        action="store_true",
        default=None,
        help="measure ours again with and without TLS (Kafka SSL, PostgreSQL verify-full) "
        "against the same servers: the benchmark's native broker and TLS PostgreSQL",
    )
    add(
        "--tls-rounds",
        type=int,
        help="pairs of that comparison, each in the other order than the one before (default 1)",
    )
    add(
        "--state-cost",
        action="store_true",
        default=None,
        help="measure ours again with PUBLISH_STATE on and off (the customer.state topic) "
        "against the same servers",
    )
    add(
        "--state-rounds",
        type=int,
        help="pairs of that comparison, each in the other order than the one before (default 1)",
    )
    add("--keep", action="store_true", default=None, help="keep the run's databases and topics")
    add(
        "--quick",
        action="store_true",
        help=f"a small run ({quick.commands} commands, {quick.latency_seconds:g}s latency run)",
    )
    add(
        "--stack-home",
        type=Path,
        default=DEFAULT_HOME,
        help=f"where the benchmark's native stack lives (default {DEFAULT_HOME})",
    )
    add(
        "--keep-stack",
        action="store_true",
        help="leave the benchmark's native stack running at the end",
    )
    return parser  # fmt: skip


def options_from_args(args: argparse.Namespace, *, native_home: Path | None) -> Options:
    given: dict[str, Any] = {}
    names = (
        "customers", "commands", "partitions", "seed", "skew", "invalid_ratio", "rate",
        "latency_seconds", "warmup_seconds", "soak_seconds", "soak_rate", "rss_interval",
        "log_level", "naive", "profile", "plot", "stall_timeout", "keep", "workers",
        "naive_seconds", "relay_process", "processes", "tls", "tls_rounds", "state_cost",
        "state_rounds", "sql_limit", "sql_batches", "sql_rounds", "idempotency_rows",
    )  # fmt: skip
    for name in names:
        value = getattr(args, name)
        if value is not None:
            given[name] = value
    if args.tls_rounds is not None and not args.tls:
        raise ValueError("--tls-rounds needs --tls")
    sized = args.sql_batches is not None or args.sql_rounds is not None
    if sized and args.sql_limit is False:
        raise ValueError("--sql-batches and --sql-rounds need the limit (no --no-sql-limit)")
    if args.state_rounds is not None and not args.state_cost:
        raise ValueError("--state-rounds needs --state-cost")
    if args.state_cost and any(name == "PUBLISH_STATE" for name, _ in args.worker_env or ()):
        raise ValueError("--state-cost sets PUBLISH_STATE itself; leave it out of --worker-env")
    if args.worker_env:
        given["worker_env"] = dict(args.worker_env)
    given["logs_dir"] = args.stack_home / "logs"
    given["stack_home"] = native_home
    return Options.quick_options(**given) if args.quick else Options(**given)


async def _run(options: Options, stack: Stack, tls: TlsStack | None) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does: the workers are stopped and the run's
    # databases and topics dropped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_benchmark(options, stack, tls=tls)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[bench] %(name)s: %(message)s")
    # aiokafka warns about retries it recovers from (a new topic's leader not yet known).
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # Fail on bad options before starting anything.
    try:
        options_from_args(args, native_home=None)
    except ValueError as exc:
        build_parser().error(str(exc))
    refusal = tls_refusal(os.environ) if args.tls else None
    if refusal is not None:
        build_parser().error(refusal)
    stack = open_bench_stack(os.environ, home=args.stack_home, progress=stderr_progress)
    native = stack.kafka_source == "native"
    options = options_from_args(args, native_home=args.stack_home if native else None)
    tls: TlsStack | None = None
    try:
        if args.tls:
            tls = open_tls_stack(args.stack_home, progress=stderr_progress)
        result = asyncio.run(_run(options, stack, tls))
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmark interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep_stack:
            if tls is not None:
                tls.close()
            stack.close()
    stderr_progress(summary(result))
    print(to_json_line(result), flush=True)
    return 0


def summary(result: dict[str, Any]) -> str:
    """The headline figures in one human-readable line."""
    throughput = result["throughput"]
    parts = [f"ours {throughput['ours_commands_per_second']:g} commands/s"]
    cpu = throughput.get("ours_cpu_us_per_command")
    if cpu is not None:
        parts.append(f"CPU µs per command: {_cpu_shown(cpu)}")
    limit = result.get("sql_write_set")
    if limit is not None:
        rounds = limit["spread"]["commands_per_second"]
        parts.append(
            f"SQL write-set limit {limit['commands_per_second']:g}/s "
            f"(rounds {rounds['min']}-{rounds['max']}, n {rounds['n']}) "
            f"(ours {limit['ours_fraction_of_limit']} of it; PostgreSQL CPU µs per command "
            f"{(limit['cpu_us_per_command'] or {}).get('postgres')}, verified {limit['verified']})"
        )
    if throughput["naive"] is not None:
        parts.append(
            f"naive {throughput['naive_commands_per_second']:g}/s, ratio {throughput['ratio']}x, "
            f"outputs match {throughput['outputs_match']}, state match {throughput['state_match']}"
        )
    tls = result.get("tls")
    if tls is not None:
        parts.append(
            f"TLS {tls['tls_commands_per_second']:g}/s vs plain "
            f"{tls['plain_commands_per_second']:g}/s on the same servers "
            f"(ratio {tls['ratio']}, {tls['difference_percent']:+g}%, verified {tls['verified']})"
        )
    idempotency = result.get("idempotency")
    if idempotency is not None:
        prune = idempotency["prune"]
        parts.append(
            f"{idempotency['rows']} idempotency rows in {len(idempotency['tables'])} tables of "
            f"{idempotency['period_days']} days: a retention pass took {prune['seconds']} s "
            f"(dropped {len(prune['dropped'])}, {prune['rows_before']} -> "
            f"{prune['rows_after']} rows)"
        )
    state = result.get("state")
    if state is not None:
        rounds = state["spread"]["ratio"]
        parts.append(
            f"state topic off {state['off_commands_per_second']:g}/s vs on "
            f"{state['on_commands_per_second']:g}/s (ratio off/on {state['ratio']}, "
            f"{state['difference_percent']:+g}%; rounds' median {rounds['median']}, "
            f"{rounds['min']}-{rounds['max']}, n {rounds['n']}; relay records/s off "
            f"{state['off_relay_records_per_second']:g} vs on "
            f"{state['on_relay_records_per_second']:g}; "
            f"CPU µs per command off - on: {_cpu_shown(state['cpu_difference_us_per_command'])}; "
            f"verified {state['verified']})"
        )
    for name in ("latency", "soak"):
        paced = result[name]
        if paced is not None:
            parts.append(
                f"{name} at {paced['offered_rate']:g}/s (achieved {paced['achieved_rate']:g}/s): "
                f"p50 {paced['p50_ms']} ms, p95 {paced['p95_ms']} ms, p99 {paced['p99_ms']} ms"
            )
    if result["soak"] is not None:
        soak = result["soak"]
        parts.append(
            f"RSS {soak.get('rss_start_mib')} -> {soak.get('rss_end_mib')} MiB "
            f"(max {soak.get('rss_max_mib')}, slope {soak.get('rss_slope_mib_per_hour')} MiB/h)"
        )
    return "; ".join(parts)


def _cpu_shown(cpu: dict[str, float | None] | None) -> str:
    if cpu is None:
        return "none"
    return ", ".join(f"{name} {us:g}" for name, us in cpu.items() if us is not None)


if __name__ == "__main__":
    raise SystemExit(main())
