"""Turning measurements into the one-line JSON result. Pure: no I/O, no clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.cpu import CpuSample, cpu_figures, window
from bench.outputs import OutcomeLog
from bench.stats import latency_summary, rate, slope, spread

#: 2: the naive baseline runs for a time limit; CPU figures per process.
#: 3: the ``tls`` block (null without ``--tls``).
#: 4: the ``state`` block (null without ``--state-cost``); both comparisons add ``spread``
#: (median and range of each mode's phases and of the rounds' ratios).
#: 5: the ``sql_write_set`` block (null with ``--no-sql-limit``): the SQL write-set limit
#: and ``ours_fraction_of_limit``.
#: 6: the ``idempotency`` block (null without ``--idempotency-rows``): the prefilled rows
#: and one retention pass timed at that size.
RESULT_VERSION = 6
KIB_PER_MIB = 1024


@dataclass
class ThroughputRun:
    """One worker draining the same pre-produced commands."""

    worker: str
    log: OutcomeLog
    expected: Mapping[str, int]
    spawned_at: float
    consuming_at: float
    #: When producing the commands started and when the last one was acknowledged.
    produced_from: float
    produced_until: float
    exit_status: int | None
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    state: Mapping[str, Any] = field(default_factory=dict)
    log_path: str = ""
    #: CPU samples of the run's processes (``bench.cpu``), every ``CPU_SAMPLE_INTERVAL``.
    cpu: Sequence[CpuSample] = ()
    #: Seconds after its first output that the run was stopped at, if it was.
    time_limit: float | None = None
    #: The worker's database sessions by TLS or not, counted while it ran (``--tls``
    #: phases only; None: not counted, and left out of the figures).
    database_sessions: Mapping[str, int] | None = None
    #: The worker's connections to the broker's plain and TLS listeners, counted then too.
    kafka_connections: Mapping[str, int] | None = None
    #: How the wait for a quiet database before the run went, if there was one.
    quiet: Mapping[str, Any] | None = None
    #: What the run's state topic held after it (``--state-cost`` phases only):
    #: ``exists``, ``records`` and ``bytes`` (keys, values and headers), read back.
    state_topic: Mapping[str, Any] | None = None
    #: Output records (events, rejections, dead letters) the benchmark read, and their
    #: bytes (keys, values, headers); counted in ``--state-cost`` phases.
    output_records: int | None = None
    output_bytes: int | None = None
    #: WAL the PostgreSQL server wrote from the worker's start to the last output.
    wal_bytes: int | None = None


@dataclass
class PacedRun:
    """Commands offered at a fixed rate while one worker runs."""

    offered_rate: float
    seconds: float
    log: OutcomeLog
    sent_at: Sequence[float]
    started_at: float
    finished_at: float
    max_send_lag_ms: float
    warmup_seconds: float
    exit_status: int | None
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    log_path: str = ""
    #: How the wait for a quiet database before the run went (``db.until_quiet``).
    quiet: Mapping[str, Any] | None = None

    def samples(self) -> list[tuple[float, float]]:
        """``(seconds since the first send, latency ms)`` of every answered command."""
        log, sent_at = self.log, self.sent_at
        return [
            (sent_at[index] - self.started_at, (log.received_at[index] - sent_at[index]) * 1000)
            for index in range(min(log.count, len(sent_at)))
            if log.outcomes[index]
        ]


def throughput_figures(run: ThroughputRun) -> dict[str, Any]:
    log = run.log
    # Consumption began before the first output at the latest, even if the group was
    # seen stable a poll later.
    start = min(run.consuming_at, log.first_at or run.consuming_at)
    seconds = (log.last_at - start) if log.last_at is not None else 0.0
    outcomes = log.counts()
    # A run stopped at its time limit is measured over what it answered by then.
    counted = log.seen if run.time_limit is not None else log.count
    measured = log.complete or run.time_limit is not None
    return {
        "commands": log.count,
        "seconds": round(seconds, 3),
        "commands_per_second": round(rate(counted, seconds), 1) if measured else 0.0,
        "time_limit_seconds": run.time_limit,
        "cpu": cpu_figures(*window(run.cpu, start, log.last_at), counted)
        if run.cpu and log.last_at is not None
        else None,
        "startup_seconds": round(start - run.spawned_at, 3),
        "first_output_after_seconds": round(log.first_at - start, 3)
        if log.first_at is not None
        else None,
        "outcomes": outcomes,
        "expected_outcomes": dict(run.expected),
        "answered": log.seen,
        "missing": log.missing,
        "duplicates": log.duplicates,
        "foreign": log.foreign,
        "processed_all": log.complete and outcomes == dict(run.expected),
        "produce_seconds": round(run.produced_until - run.produced_from, 3),
        "produced_from": round(run.produced_from, 3),
        "produced_until": round(run.produced_until, 3),
        "produced_before_start": run.produced_until <= run.spawned_at,
        "rss_max_mib": _mib(max((kib for _, kib in run.rss_kib), default=0)) or None,
        "exit_status": run.exit_status,
        "state": dict(run.state),
        "log": run.log_path,
        **(
            {"database_sessions": dict(run.database_sessions)}
            if run.database_sessions is not None
            else {}
        ),
        **(
            {"kafka_connections": dict(run.kafka_connections)}
            if run.kafka_connections is not None
            else {}
        ),
        **({"database_quiet": dict(run.quiet)} if run.quiet is not None else {}),
        **_published(run, seconds),
    }


def _published(run: ThroughputRun, seconds: float) -> dict[str, Any]:
    """What the relay published in the run, when it was counted: its records (outputs and
    state records) per second of the throughput clock, bytes per command, and the WAL
    the database wrote per command."""
    if run.output_records is None:
        return {}
    commands = run.log.count
    state = dict(run.state_topic) if run.state_topic is not None else None
    state_records = state["records"] if state is not None else 0
    state_bytes = state["bytes"] if state is not None else 0
    records = run.output_records + state_records
    output_bytes = run.output_bytes or 0

    def per_command(value: float) -> float | None:
        return round(value / commands, 1) if commands else None

    return {
        "state_topic": state,
        "relay": {
            "records": records,
            "output_records": run.output_records,
            "state_records": state_records,
            "records_per_second": round(rate(records, seconds), 1),
            "records_per_command": round(records / commands, 3) if commands else None,
            "bytes_per_command": {
                "outputs": per_command(output_bytes),
                "state": per_command(state_bytes),
                "all": per_command(output_bytes + state_bytes),
            },
        },
        "wal_bytes": run.wal_bytes,
        "wal_bytes_per_command": per_command(run.wal_bytes) if run.wal_bytes is not None else None,
    }


@dataclass
class ComparedPhase:
    """One throughput run of a comparison of two worker environments (``--tls``,
    ``--state-cost``): ``round`` counts from 1, ``mode`` names the environment."""

    name: str
    round: int
    mode: str
    run: ThroughputRun


#: The phases of the ``--tls`` comparison; ``mode`` says whether the worker reached Kafka
#: and PostgreSQL over TLS.
TlsPhase = ComparedPhase
TlsMode = Literal["plain", "tls"]
#: The phases of the ``--state-cost`` comparison; ``mode`` says whether ``PUBLISH_STATE``
#: was on.
StatePhase = ComparedPhase
StateMode = Literal["on", "off"]

#: A figure of a phase (its ``throughput_figures`` with ``mode``) to summarise by mode.
Metric = Callable[[Mapping[str, Any]], float | None]


def comparison_figures(
    phases: Sequence[ComparedPhase],
    *,
    modes: tuple[str, str],
    as_meant: Callable[[ComparedPhase, Mapping[str, Any]], bool],
    reference_state: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Throughput and CPU per command in each of two ``modes`` (the mean over the rounds),
    the ratio and difference of the second to the first, each round's pair, the median
    and range of each mode's phases and of the rounds' ratios (``spread``), and whether
    every phase ran ``as_meant`` (``verified``) and left the same rows as each other and
    as ``reference_state``. ``metrics`` are more figures of a phase, reported by mode as
    ``<mode>_<name>`` (means) and in ``spread``; ``extra`` goes in as it is."""
    first, second = modes
    figures = {p.name: {"mode": p.mode, **throughput_figures(p.run)} for p in phases}

    def by_mode(metric: Metric) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {mode: [] for mode in modes}
        for phase in phases:
            value = metric(figures[phase.name])
            if value is not None and phase.mode in values:
                values[phase.mode].append(value)
        return values

    rates = by_mode(lambda f: f["commands_per_second"])
    mean_rate = {mode: _mean(values) for mode, values in rates.items()}
    cpu = {
        mode: _mean_cpu([_cpu_summary(figures[p.name]["cpu"]) for p in phases if p.mode == mode])
        for mode in modes
    }
    a, b = mean_rate[first], mean_rate[second]
    ratio = round(b / a, 3) if a and b is not None else None
    rounds = []
    ratios: list[float] = []
    for number in sorted({phase.round for phase in phases}):
        pair = [phase for phase in phases if phase.round == number]
        rate = {p.mode: figures[p.name]["commands_per_second"] for p in pair}
        pair_ratio = None
        if rate.get(first) and rate.get(second) is not None:
            pair_ratio = round(rate[second] / rate[first], 3)
            ratios.append(pair_ratio)
        rounds.append(
            {
                "round": number,
                "order": [phase.name for phase in pair],
                f"{first}_commands_per_second": rate.get(first),
                f"{second}_commands_per_second": rate.get(second),
                "ratio": pair_ratio,
            }
        )
    states = [_comparable(phase.run.state) for phase in phases]
    if reference_state is not None:
        states.append(_comparable(reference_state))
    measured = {name: by_mode(metric) for name, metric in (metrics or {}).items()}
    all_cpu = by_mode(lambda f: f["cpu"]["all"]["us_per_command"] if f["cpu"] else None)
    return {
        f"{first}_commands_per_second": a,
        f"{second}_commands_per_second": b,
        "ratio": ratio,
        "difference_percent": round((ratio - 1) * 100, 1) if ratio is not None else None,
        f"{first}_cpu_us_per_command": cpu[first],
        f"{second}_cpu_us_per_command": cpu[second],
        "cpu_difference_us_per_command": _cpu_difference(cpu[first], cpu[second]),
        **{
            f"{mode}_{name}": _mean(values[mode])
            for name, values in measured.items()
            for mode in modes
        },
        "spread": {
            "commands_per_second": {mode: spread(rates[mode]) for mode in modes},
            "ratio": spread(ratios, digits=3),
            "cpu_us_per_command_all": {mode: spread(all_cpu[mode]) for mode in modes},
            **{
                name: {mode: spread(values[mode]) for mode in modes}
                for name, values in measured.items()
            },
        },
        "verified": bool(phases) and all(as_meant(p, figures[p.name]) for p in phases),
        "state_match": all(state == states[0] for state in states) if states else None,
        "rounds": rounds,
        "order": [phase.name for phase in phases],
        **dict(extra or {}),
        "phases": figures,
    }


def tls_figures(
    phases: Sequence[ComparedPhase],
    *,
    reference_state: Mapping[str, Any] | None = None,
    endpoints: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``comparison_figures`` of plain and TLS: TLS over plain, ``verified`` when every
    phase answered everything over the connections it was meant to, and the state
    compared with ``reference_state`` (ours, on the other server)."""
    return comparison_figures(
        phases,
        modes=("plain", "tls"),
        as_meant=_as_meant,
        reference_state=reference_state,
        extra={"endpoints": dict(endpoints or {})},
    )


def state_figures(
    phases: Sequence[ComparedPhase],
    *,
    reference_state: Mapping[str, Any] | None = None,
    topics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``comparison_figures`` of ``PUBLISH_STATE`` on and off: off over on (above 1: the
    state topic costs throughput), CPU off minus on (negative: what it costs), and the
    relay's records per second, the bytes it published and the WAL written per command
    by mode. ``verified`` when every phase answered everything and the state topic got
    one record per applied event with the state on, and none with it off."""
    return comparison_figures(
        phases,
        modes=("on", "off"),
        as_meant=_state_as_meant,
        reference_state=reference_state,
        metrics={
            "relay_records_per_second": lambda f: f["relay"]["records_per_second"],
            "published_bytes_per_command": lambda f: f["relay"]["bytes_per_command"]["all"],
            "wal_bytes_per_command": lambda f: f["wal_bytes_per_command"],
        },
        extra={"topics": dict(topics or {})},
    )


def _state_as_meant(phase: ComparedPhase, figures: Mapping[str, Any]) -> bool:
    """The phase answered every command as expected and stopped cleanly, and its state
    topic holds one record per applied event (on), or does not exist or is empty (off)."""
    state = phase.run.state_topic
    if phase.mode == "on":
        published = (
            state is not None
            and state.get("exists") is True
            and (state.get("records") == figures["outcomes"].get("applied"))
        )
    else:
        published = state is not None and state.get("records") == 0
    return figures["processed_all"] is True and figures["exit_status"] == 0 and published


def _as_meant(phase: ComparedPhase, figures: Mapping[str, Any]) -> bool:
    """The phase answered every command as expected, stopped cleanly, and its worker held
    database sessions and broker connections, all over TLS or all plain as its mode says."""
    used, other = ("tls", "plain") if phase.mode == "tls" else ("plain", "tls")
    counts = [phase.run.database_sessions or {}, phase.run.kafka_connections or {}]
    return (
        figures["processed_all"] is True
        and figures["exit_status"] == 0
        and all(count.get(used, 0) > 0 and count.get(other, 0) == 0 for count in counts)
    )


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _mean_cpu(
    summaries: Sequence[Mapping[str, float | None] | None],
) -> dict[str, float | None] | None:
    """The mean of each process's microseconds per command (None where any run lacks it)."""
    if not summaries or any(summary is None for summary in summaries):
        return None
    present = [summary for summary in summaries if summary is not None]
    names = list(present[0])
    result: dict[str, float | None] = {}
    for name in names:
        values = [summary.get(name) for summary in present]
        numbers = [value for value in values if value is not None]
        result[name] = _mean(numbers) if len(numbers) == len(values) else None
    return result


def _cpu_difference(
    first: Mapping[str, float | None] | None, second: Mapping[str, float | None] | None
) -> dict[str, float | None] | None:
    """The second mode minus the first (TLS minus plain), microseconds per command, by
    process."""
    if first is None or second is None:
        return None
    result: dict[str, float | None] = {}
    for name, before in first.items():
        after = second.get(name)
        result[name] = None if before is None or after is None else round(after - before, 1)
    return result


def paced_figures(run: PacedRun) -> dict[str, Any]:
    log = run.log
    latencies = log.latencies_ms(run.sent_at, since=run.started_at + run.warmup_seconds)
    sent = min(log.count, len(run.sent_at))
    send_seconds = run.finished_at - run.started_at
    window = (log.last_at - run.started_at) if log.last_at is not None else 0.0
    figures: dict[str, Any] = {
        "offered_rate": run.offered_rate,
        "sent_rate": round(rate(sent - 1, send_seconds), 1) if sent > 1 else 0.0,
        "achieved_rate": round(rate(log.seen, window), 1),
        "seconds": run.seconds,
        "commands": log.count,
        "answered": log.seen,
        "missing": log.missing,
        "duplicates": log.duplicates,
        "outcomes": log.counts(),
        "warmup_seconds": run.warmup_seconds,
        "max_send_lag_ms": round(run.max_send_lag_ms, 2),
        **_renamed(latency_summary(latencies), count="latency_samples"),
        "split": _split(log.split_ms(run.sent_at, since=run.started_at + run.warmup_seconds)),
        "database_quiet": dict(run.quiet) if run.quiet is not None else None,
        "exit_status": run.exit_status,
        "log": run.log_path,
    }
    return figures


def _split(parts: tuple[list[float], list[float]]) -> dict[str, Any]:
    """Percentiles of each part of the latency of events and rejections (dead letters
    carry no time of the worker's)."""
    decided, visible = parts
    return {
        "due_to_decided": latency_summary(decided),
        "decided_to_visible": latency_summary(visible),
    }


def rss_figures(samples: Sequence[tuple[float, int]], *, warmup_seconds: float) -> dict[str, Any]:
    """Start, end and maximum RSS, and the least-squares slope after the warm-up (the
    first minutes fill caches and pools; a leak shows as a steady slope after them)."""
    if not samples:
        return {"samples": 0}
    settled = [(t, kib) for t, kib in samples if t >= warmup_seconds] or list(samples)
    per_second = slope([(t, kib / KIB_PER_MIB) for t, kib in settled])
    return {
        "samples": len(samples),
        "rss_start_mib": _mib(samples[0][1]),
        "rss_end_mib": _mib(samples[-1][1]),
        "rss_max_mib": _mib(max(kib for _, kib in samples)),
        "rss_slope_mib_per_hour": round(per_second * 3600, 2),
        "rss_slope_warmup_seconds": warmup_seconds,
        # The last sample of each minute: the shape a slope alone hides (a plateau or not).
        "rss_mib_by_minute": [
            _mib(kib) for _, kib in {int(t // 60): (t, kib) for t, kib in samples}.values()
        ],
    }


def _renamed(figures: Mapping[str, Any], **names: str) -> dict[str, Any]:
    return {names.get(key, key): value for key, value in figures.items()}


def _mib(kib: int) -> float:
    return round(kib / KIB_PER_MIB, 2)


def build_result(
    *,
    parameters: Mapping[str, Any],
    machine: Mapping[str, Any],
    load: Mapping[str, Any],
    ours: ThroughputRun,
    naive: ThroughputRun | None,
    latency: PacedRun | None,
    soak: PacedRun | None,
    soak_warmup_seconds: float = 0.0,
    wall_seconds: float,
    outputs_mismatched: int | None = None,
    tls: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    sql_write_set: Mapping[str, Any] | None = None,
    idempotency: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole result; ``tls`` is ``tls_figures`` of a ``--tls`` run, ``state``
    ``state_figures`` of a ``--state-cost`` one, ``sql_write_set`` the
    ``sql_limit.combined_figures`` of the limit's phase (ours' fraction of it added here)."""
    ours_figures = throughput_figures(ours)
    naive_figures = throughput_figures(naive) if naive is not None else None
    ratio = None
    if naive_figures is not None and naive_figures["commands_per_second"] > 0:
        ratio = round(ours_figures["commands_per_second"] / naive_figures["commands_per_second"], 2)
    same_state = None
    if naive is not None and naive.log.complete:
        # A baseline stopped at its time limit left part of the load undone.
        same_state = _comparable(ours.state) == _comparable(naive.state)
    soak_figures = None
    if soak is not None:
        soak_figures = {
            **paced_figures(soak),
            **rss_figures(soak.rss_kib, warmup_seconds=soak_warmup_seconds),
        }
    return {
        "benchmark": "customer-service",
        "result_version": RESULT_VERSION,
        "throughput": {
            "ours_commands_per_second": ours_figures["commands_per_second"],
            "ours_cpu_us_per_command": _cpu_summary(ours_figures["cpu"]),
            "naive_commands_per_second": naive_figures["commands_per_second"]
            if naive_figures
            else None,
            "ratio": ratio,
            "outputs_match": None if outputs_mismatched is None else outputs_mismatched == 0,
            "outputs_mismatched": outputs_mismatched,
            "state_match": same_state,
            "ours": ours_figures,
            "naive": naive_figures,
        },
        "sql_write_set": _with_fraction(sql_write_set, ours_figures["commands_per_second"]),
        "tls": dict(tls) if tls is not None else None,
        "state": dict(state) if state is not None else None,
        "idempotency": dict(idempotency) if idempotency is not None else None,
        "latency": paced_figures(latency) if latency is not None else None,
        "soak": soak_figures,
        "load": dict(load),
        "parameters": dict(parameters),
        "machine": dict(machine),
        "wall_seconds": round(wall_seconds, 1),
    }


def _with_fraction(
    sql_write_set: Mapping[str, Any] | None, ours_commands_per_second: float
) -> dict[str, Any] | None:
    """The limit's figures with ``ours_fraction_of_limit``: ours' commands per second
    over the limit's (None without a limit)."""
    if sql_write_set is None:
        return None
    limit = sql_write_set.get("commands_per_second")
    fraction = round(ours_commands_per_second / limit, 3) if limit else None
    return {**sql_write_set, "ours_fraction_of_limit": fraction}


def _cpu_summary(cpu: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Microseconds of CPU per command by process, and for the whole box."""
    if cpu is None:
        return None
    summary: dict[str, float | None] = {
        name: None if figures is None else figures["us_per_command"]
        for name, figures in cpu["processes"].items()
    }
    summary["all"] = cpu["all"]["us_per_command"]
    return summary


def _comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "log"}


def to_json_line(result: Mapping[str, Any]) -> str:
    """The result as one line of JSON (no newline inside)."""
    return json.dumps(result, separators=(",", ":"), sort_keys=False, default=str)
