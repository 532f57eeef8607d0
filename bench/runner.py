"""The benchmark: the phases of one run, against one stack, on one seeded load.

1. ``ours``: pre-produce every command, start ``customer-service worker`` and time it
   from the moment its consumer group is stable (it has its partitions and starts
   fetching) until the benchmark's ``read_committed`` consumer has the last output.
1b. ``sql_write_set`` (unless ``sql_limit`` is off): the SQL write-set limit, right after
   ``ours``: the first ``sql_batches`` batches of the same records captured through the
   service's own processor, then their statements replayed and timed ``sql_rounds``
   times without Python work per command (``bench.sql_limit``).
2. ``naive``: the same records on fresh topics and a fresh copy of the same database,
   drained by ``bench.naive_worker`` for at most ``naive_seconds``, timed the same way
   (its rate is over what it answered by then).
3. ``latency``: a fresh copy again, vacuumed and checkpointed, with no autovacuum
   running; our worker running; commands offered at a fixed rate; latency = when the
   output arrived minus when the command was due to be sent, split at the worker's
   decision (the event's ``time``).
4. ``soak`` (optional): like ``latency`` for longer, sampling the worker's RSS.

With ``tls``, after ``naive``: ``plain1`` and ``tls1`` (then ``tls2``, ``plain2``, ... with
more rounds, each round in the other order): the ``ours`` measurement again, on the same
records, against the TLS-capable PostgreSQL and the same broker, the worker connecting
plainly (``sslmode=disable``, the broker's PLAINTEXT listener) or over TLS (Kafka ``SSL``
and ``verify-full``), each after the servers are quiet. See ``phase_plan``.

With ``state_cost``, after those: ``state_on1`` and ``state_off1`` (then ``state_off2``,
``state_on2``, ...): the ``ours`` measurement again, on the same records and servers,
with ``PUBLISH_STATE`` on and off, each after the servers are quiet, counting what the
relay published and the WAL written. Both comparisons are ``_compare``.

``run_benchmark`` is the library entry point (the e2e test calls it); ``python -m bench``
wraps it in a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench import db, sql_limit
from bench.cpu import CpuMeter, CpuSample
from bench.kafka_io import (
    BenchmarkError,
    OutputReader,
    create_topics,
    delete_topics,
    produce_all,
    produce_paced,
    topic_contents,
    wait_until_consuming,
)
from bench.load import Command, LoadGenerator, LoadSpec, describe, expected_outcomes, generate
from bench.outputs import OutcomeLog
from bench.report import (
    ComparedPhase,
    PacedRun,
    StateMode,
    ThroughputRun,
    TlsMode,
    build_result,
    state_figures,
    throughput_figures,
    tls_figures,
)
from bench.stack import DEFAULT_HOME, TlsStack, kafka_version
from bench.svg import render_latency_svg
from bench.workers import (
    WorkerGroup,
    WorkerKind,
    WorkerProcess,
    connections_to,
    passed_through_settings,
    port_of,
    worker_argv,
    worker_env,
)
from devstack.stack import Stack
from service.infrastructure.settings import Settings

Progress = Callable[[str], None]

#: Command-id prefixes of the streams; the two throughput runs share one.
THROUGHPUT_STREAM = "tp"
LATENCY_STREAM = "lat"
SOAK_STREAM = "soak"
#: Seconds between CPU samples of a throughput run: the window's ends are found to this.
CPU_SAMPLE_INTERVAL = 0.1


@dataclass(frozen=True)
class Options:
    customers: int = 2000
    commands: int = 50_000
    partitions: int = 6
    seed: int = 1
    #: Zipf exponent of the customer choice; 0 is uniform.
    skew: float = 0.0
    invalid_ratio: float = 0.05
    #: Offered rate of the latency run, commands per second.
    rate: float = 1000.0
    #: Seconds of the latency run; 0 skips it.
    latency_seconds: float = 30.0
    #: Commands due in the first seconds of a paced run are left out of the percentiles.
    warmup_seconds: float = 1.0
    #: Seconds of the soak run; 0 skips it.
    soak_seconds: float = 0.0
    #: Offered rate of the soak run (default: ``rate``).
    soak_rate: float | None = None
    rss_interval: float = 5.0
    log_level: str = "WARNING"
    naive: bool = True
    #: The naive baseline stops after this many seconds of output (it takes minutes for
    #: the whole load); its rate is over the commands it answered by then.
    naive_seconds: float = 60.0
    #: Run the relay as its own process (``customer-service relay``, workers with
    #: ``RELAY_ENABLED=false``), as the Helm chart and the Compose stack do, so that its
    #: CPU time is measured apart; False puts it back on the worker's event loop.
    relay_process: bool = True
    #: Run ours as ``customer-service worker --processes N`` (a supervisor and N
    #: consumers, and the relay too when ``relay_process`` is False); 0 runs the plain
    #: single-process worker.
    processes: int = 0
    #: Extra environment for both workers, e.g. ``{"BATCH_MAX_RECORDS": "1000"}``.
    worker_env: dict[str, str] = field(default_factory=dict)
    #: Run our worker's throughput run under cProfile, writing the stats here.
    profile: Path | None = None
    plot: Path | None = None
    #: Fail a phase when no output arrives for this long.
    stall_timeout: float = 120.0
    #: Keep the run's databases and topics for inspection.
    keep: bool = False
    logs_dir: Path = DEFAULT_HOME / "logs"
    #: The benchmark's own native stack, to read the broker version from its jars.
    stack_home: Path | None = None
    quick: bool = False
    #: Worker processes in the consumer group, for ours and for the naive baseline alike.
    workers: int = 1
    #: Measure ours again with and without TLS against the same servers (``phase_plan``).
    tls: bool = False
    #: Pairs of that comparison, each in the other order than the one before.
    tls_rounds: int = 1
    #: Measure ours again with ``PUBLISH_STATE`` on and off on the same servers.
    state_cost: bool = False
    #: Pairs of that comparison, each in the other order than the one before.
    state_rounds: int = 1
    #: Measure the SQL write-set limit after ours (``bench.sql_limit``).
    sql_limit: bool = True
    #: Batches of the limit's phase: the first ``sql_batches x BATCH_MAX_RECORDS`` commands
    #: of the throughput load (all of them if fewer).
    sql_batches: int = 30
    #: Replays of the captured batches, each on a fresh copy; the limit is their median.
    sql_rounds: int = 3
    #: Idempotency rows written into the seeded database before any phase (a week or
    #: more of command ids), and one retention pass timed on a copy at the end.
    idempotency_rows: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.tls_rounds < 1:
            raise ValueError("tls_rounds must be at least 1")
        if self.state_rounds < 1:
            raise ValueError("state_rounds must be at least 1")
        if self.state_cost and "PUBLISH_STATE" in self.worker_env:
            raise ValueError("state_cost sets PUBLISH_STATE itself; leave it out of worker_env")
        if self.processes < 0:
            raise ValueError("processes must be 0 (off) or more")
        if self.sql_batches < 1:
            raise ValueError("sql_batches must be at least 1")
        if self.sql_rounds < 1:
            raise ValueError("sql_rounds must be at least 1")
        if self.naive_seconds <= 0:
            raise ValueError("naive_seconds must be positive")
        if self.idempotency_rows < 0:
            raise ValueError("idempotency_rows must be 0 (none) or more")

    def retention(self) -> tuple[int, int]:
        """The workers' retention and period, in days, as their settings will have them."""
        fields = Settings.model_fields
        return (
            int(
                self.worker_env.get(
                    "IDEMPOTENCY_RETENTION_DAYS", fields["idempotency_retention_days"].default
                )
            ),
            int(
                self.worker_env.get(
                    "IDEMPOTENCY_PERIOD_DAYS", fields["idempotency_period_days"].default
                )
            ),
        )

    @classmethod
    def quick_options(cls, **overrides: Any) -> Options:
        """Small enough for a test: a few seconds per phase."""
        values: dict[str, Any] = {
            "customers": 100,
            "commands": 1000,
            "partitions": 3,
            "rate": 100.0,
            "latency_seconds": 5.0,
            "soak_seconds": 0.0,
            "rss_interval": 1.0,
            "quick": True,
        }
        values.update(overrides)
        return cls(**values)

    def load_spec(self) -> LoadSpec:
        return LoadSpec(
            customers=self.customers,
            seed=self.seed,
            skew=self.skew,
            invalid_ratio=self.invalid_ratio,
        )

    def parameters(self) -> dict[str, Any]:
        values = asdict(self)
        for name in ("profile", "plot", "logs_dir", "stack_home"):
            values[name] = str(values[name]) if values[name] is not None else None
        values["soak_rate"] = self.soak_rate or self.rate
        spec = self.load_spec()
        values["conflict_ratio"] = spec.conflict_ratio
        values["missing_ratio"] = spec.missing_ratio
        values["poison_ratio"] = spec.poison_ratio
        values["worker_settings_from_environment"] = passed_through_settings()
        return values


Mode = TypeVar("Mode", bound=str)


def alternating_phases(
    rounds: int, modes: tuple[Mode, Mode], *, prefix: str = ""
) -> list[tuple[str, int, Mode]]:
    """``(name, round, mode)`` of a comparison's phases: the first mode then the second,
    then the second then the first, and so on, so that a machine speeding up or slowing
    down during the run favours neither side. Names are ``<prefix><mode><round>``."""
    phases: list[tuple[str, int, Mode]] = []
    first, second = modes
    for number in range(1, rounds + 1):
        order = (first, second) if number % 2 else (second, first)
        phases.extend((f"{prefix}{mode}{number}", number, mode) for mode in order)
    return phases


def tls_phases(rounds: int) -> list[tuple[str, int, TlsMode]]:
    """The TLS comparison's phases: ``plain1``, ``tls1``, ``tls2``, ``plain2``, ..."""
    modes: tuple[TlsMode, TlsMode] = ("plain", "tls")
    return alternating_phases(rounds, modes)


def state_phases(rounds: int) -> list[tuple[str, int, StateMode]]:
    """The state topic's comparison: ``state_on1``, ``state_off1``, ``state_off2``, ..."""
    modes: tuple[StateMode, StateMode] = ("on", "off")
    return alternating_phases(rounds, modes, prefix="state_")


def phase_plan(options: Options) -> list[str]:
    """The phases ``run_benchmark`` runs for ``options``, in order."""
    plan = ["ours"]
    if options.sql_limit:
        plan.append("sql_write_set")
    if options.naive:
        plan.append("naive")
    if options.tls:
        plan.extend(name for name, _, _ in tls_phases(options.tls_rounds))
    if options.state_cost:
        plan.extend(name for name, _, _ in state_phases(options.state_rounds))
    if options.latency_seconds > 0:
        plan.append("latency")
    if options.soak_seconds > 0:
        plan.append("soak")
    return plan


def phase_settings(
    tag: str,
    *,
    kafka: str,
    database_url: str,
    database: str,
    mode: TlsMode | None = None,
    tls: TlsStack | None = None,
    publish_state: bool | None = None,
) -> tuple[Settings, Settings]:
    """The settings of a phase's topics, group and database: the benchmark's own clients'
    (plain, at ``kafka`` and ``database_url``) and the worker's. Without a ``mode`` the
    worker's are the same; ``plain`` says so explicitly (libpq's default, ``prefer``,
    would take TLS from a server that offers it); ``tls`` reaches the broker's ``SSL``
    listener and PostgreSQL with ``verify-full`` as the TLS user, with the stack's CAs.
    ``publish_state`` sets ``PUBLISH_STATE`` explicitly in both (so that the phase's
    topics are created with or without the state topic, and the caller's environment
    cannot change it); None leaves it to the environment."""
    names: dict[str, Any] = {
        "kafka_consumer_group": f"{tag}.worker",
        "topic_commands": f"{tag}.customer.update",
        "topic_events": f"{tag}.customer.updated",
        "topic_rejections": f"{tag}.customer.update.rejected",
        "topic_dead_letters": f"{tag}.customer.update.dlq",
        "topic_state": f"{tag}.customer.state",
        "relay_transactional_id": f"{tag}.relay",
        "_env_file": None,
    }
    if publish_state is not None:
        names["publish_state"] = publish_state
    settings = Settings(kafka_bootstrap_servers=kafka, database_url=database_url, **names)
    worker_settings = settings
    if mode == "plain":
        worker_settings = Settings(
            kafka_bootstrap_servers=kafka,
            kafka_security_protocol="PLAINTEXT",
            database_url=database_url,
            database_sslmode="disable",
            **names,
        )
    elif mode == "tls":
        if tls is None:
            raise ValueError("a TLS phase needs the TLS stack")
        postgres = tls.postgres
        worker_settings = Settings(
            kafka_bootstrap_servers=tls.kafka_bootstrap_servers,
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=tls.kafka.certificates.ca,
            database_url=postgres.tls_url(database),
            database_sslmode="verify-full",
            database_ssl_root_cert=postgres.certificates.ca,
            database_password_file=postgres.password_file,
            **names,
        )
    return settings, worker_settings


def stderr_progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class _Server:
    """A PostgreSQL server the run makes databases on: a superuser URL that connects
    plainly, its postmaster (for CPU figures), the run's seeded template on it, and the
    databases made there so far."""

    admin_url: str
    pid: int | None
    template: str
    databases: list[str] = field(default_factory=list)


@dataclass
class _Phase:
    """The topics, group and database of one phase: ``settings`` are the benchmark's own
    clients' (always plain), ``worker_settings`` the worker's."""

    name: str
    settings: Settings
    database: str
    server: _Server
    worker_settings: Settings


class _Run:
    def __init__(
        self, options: Options, stack: Stack, progress: Progress, tls: TlsStack | None = None
    ) -> None:
        self.options = options
        self.stack = stack
        self.tls = tls
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:8]
        self.server = _Server(stack.database_url, stack.postgres_pid, self.template_name(""))
        self.tls_server = (
            _Server(tls.postgres.url(), tls.postgres.pid(), self.template_name("tls"))
            if tls is not None
            else None
        )
        self.phases: list[_Phase] = []
        self.logs = options.logs_dir / self.run_id

    @property
    def large_template(self) -> bool:
        return self.options.idempotency_rows > 0

    def template_name(self, server: str) -> str:
        return f"bench_{self.run_id}_{server + '_' if server else ''}template"

    @property
    def template(self) -> str:
        return self.server.template

    @property
    def servers(self) -> list[_Server]:
        return [self.server, *([self.tls_server] if self.tls_server is not None else [])]

    async def phase(
        self, name: str, *, mode: TlsMode | None = None, publish_state: bool | None = None
    ) -> _Phase:
        """A fresh copy of the seeded database and fresh topics for phase ``name``; with
        a ``mode``, on the TLS-capable server, the worker connecting that way; with
        ``publish_state``, ``PUBLISH_STATE`` set that way (``phase_settings``)."""
        server = self.server
        if mode is not None:
            assert self.tls_server is not None, "a TLS phase needs the TLS stack"
            server = self.tls_server
        database = f"bench_{self.run_id}_{name}"
        server.databases.append(database)
        url = await db.clone(
            server.admin_url, server.template, database, file_copy=self.large_template
        )
        settings, worker_settings = phase_settings(
            f"bench.{self.run_id}.{name}",
            kafka=self.stack.kafka_bootstrap_servers,
            database_url=url,
            database=database,
            mode=mode,
            tls=self.tls,
            publish_state=publish_state,
        )
        phase = _Phase(name, settings, database, server, worker_settings)
        self.phases.append(phase)
        await create_topics(settings, self.options.partitions)
        return phase

    async def database(self, name: str) -> str:
        """A fresh copy of the seeded database on the run's plain server, without topics
        (dropped at the end with the phases' ones); returns its URL."""
        database = f"bench_{self.run_id}_{name}"
        self.server.databases.append(database)
        return await db.clone(
            self.server.admin_url, self.server.template, database, file_copy=self.large_template
        )

    def worker(
        self, kind: WorkerKind, phase: _Phase, *, profile: Path | None = None
    ) -> WorkerGroup:
        """``options.workers`` processes in one consumer group (only the first one is
        profiled)."""
        options = self.options
        separate = options.relay_process and kind == "ours"
        extra = {**options.worker_env, **({"RELAY_ENABLED": "false"} if separate else {})}
        env = worker_env(phase.worker_settings, log_level=options.log_level, extra=extra)
        members = [
            WorkerProcess(
                kind,
                worker_argv(kind, profile=profile if number == 1 else None)
                + (
                    ["--processes", str(options.processes)]
                    if options.processes and kind == "ours"
                    else []
                ),
                env,
                self.logs / (f"{phase.name}.log" if number == 1 else f"{phase.name}-{number}.log"),
            )
            for number in range(1, options.workers + 1)
        ]
        relay = None
        if separate:
            relay_env = worker_env(
                phase.worker_settings, log_level=options.log_level, extra=options.worker_env
            )
            relay = WorkerProcess(
                "relay",
                worker_argv(kind, verb="relay"),
                relay_env,
                self.logs / f"{phase.name}-relay.log",
            )
        return WorkerGroup(members, relay)

    def broker_ports(self) -> dict[str, int]:
        """The broker's plain listener and, with the TLS stack, its ``SSL`` one."""
        ports = {"plain": port_of(self.stack.kafka_bootstrap_servers)}
        if self.tls is not None:
            ports["tls"] = port_of(self.tls.kafka_bootstrap_servers)
        return ports

    def cpu_meter(self, worker: WorkerGroup, phase: _Phase) -> CpuMeter:
        """CPU time of the worker processes, a separate relay, the services this machine
        runs for the benchmark (the phase's PostgreSQL), and the benchmark itself
        (producing and reading back)."""
        stack = self.stack
        postgres = phase.server.pid
        return CpuMeter(
            {
                "worker": worker.consumer_pids(),
                "relay": worker.relay_pids(),
                "kafka": [stack.kafka_pid] if stack.kafka_pid else [],
                "postgres": [postgres] if postgres else [],
                "benchmark": [os.getpid()],
            },
            alone=frozenset({"benchmark"}),
        )

    async def cleanup(self) -> None:
        if self.options.keep:
            kept = [name for s in self.servers for name in (s.template, *s.databases)]
            self.progress(f"kept databases {kept} and topics bench.{self.run_id}.*")
            return
        for phase in self.phases:
            topics = phase.settings.topics
            with contextlib.suppress(Exception):
                await delete_topics(
                    phase.settings,
                    [
                        topics.commands,
                        topics.events,
                        topics.rejections,
                        topics.dead_letters,
                        topics.state,
                    ],
                )
        for server in self.servers:
            with contextlib.suppress(Exception):
                await db.drop(server.admin_url, [*server.databases, server.template])


async def run_benchmark(
    options: Options,
    stack: Stack,
    *,
    progress: Progress = stderr_progress,
    tls: TlsStack | None = None,
) -> dict[str, Any]:
    """Run every phase the options ask for and return the result (see README);
    ``options.tls`` needs ``tls``, the TLS side of the same native stack."""
    if options.tls and tls is None:
        raise ValueError("options.tls needs the TLS stack (bench.stack.open_tls_stack)")
    started = time.monotonic()
    load_before = os.getloadavg()
    run = _Run(options, stack, progress, tls if options.tls else None)
    spec = options.load_spec()
    tls_result = state_result = sql_result = idempotency = None
    try:
        progress(
            f"run {run.run_id}: phases {', '.join(phase_plan(options))}; seeding "
            f"{spec.customers} customers; worker logs in {run.logs}"
        )
        for server in run.servers:
            await db.create_template(server.admin_url, server.template, customers=spec.customers)
        if options.idempotency_rows:
            idempotency = await _prefill(run)
        commands = generate(spec, options.commands, prefix=THROUGHPUT_STREAM)
        load = describe(commands)
        progress(f"load: {load}")
        ours = await _throughput(run, "ours", commands)
        if options.sql_limit:
            sql_result = await _sql_write_set(run, commands)
        naive = await _throughput(run, "naive", commands) if options.naive else None
        if run.tls is not None:
            tls_result = await _tls_comparison(run, commands, reference=ours)
        if options.state_cost:
            state_result = await _state_comparison(run, commands, reference=ours)
        latency = None
        if options.latency_seconds > 0:
            latency = await _paced(run, "latency", options.rate, options.latency_seconds)
        soak = None
        if options.soak_seconds > 0:
            soak = await _paced(
                run, "soak", options.soak_rate or options.rate, options.soak_seconds, rss=True
            )
        if idempotency is not None:
            idempotency["prune"] = await _retention_pass(run)
        postgres_version = await db.server_version(stack.database_url)
    finally:
        await run.cleanup()
    if options.plot is not None:
        plotted = latency or soak
        if plotted is not None:
            options.plot.write_text(
                render_latency_svg(
                    plotted.samples(),
                    title=f"customer-service: latency at {plotted.offered_rate:g} commands/s "
                    f"({os.cpu_count()} cores)",
                )
            )
            progress(f"wrote {options.plot}")
    machine = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka_version": kafka_version(options.stack_home),
        "kafka_source": stack.kafka_source,
        "postgres_version": postgres_version,
        "postgres_source": stack.postgres_source,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }
    return build_result(
        parameters=options.parameters(),
        machine=machine,
        load=load,
        ours=ours,
        naive=naive,
        latency=latency,
        soak=soak,
        soak_warmup_seconds=min(60.0, options.soak_seconds / 10),
        wall_seconds=time.monotonic() - started,
        outputs_mismatched=ours.log.mismatches(naive.log) if naive is not None else None,
        tls=tls_result,
        state=state_result,
        sql_write_set=sql_result,
        idempotency=idempotency,
    )


async def _prefill(run: _Run) -> dict[str, Any]:
    """Every server's template given ``idempotency_rows`` rows of earlier days."""
    retention_days, period_days = run.options.retention()
    figures: dict[str, Any] = {}
    for server in run.servers:
        run.progress(f"writing {run.options.idempotency_rows} idempotency rows into the template")
        figures = await db.prefill_processed(
            db.database_url_for(server.admin_url, server.template),
            run.options.idempotency_rows,
            retention_days=retention_days,
            period_days=period_days,
        )
        run.progress(
            f"idempotency rows written in {figures['fill_seconds']} s "
            f"(of which vacuum {figures['vacuum_seconds']} s)"
        )
    return {"retention_days": retention_days, "period_days": period_days, **figures}


async def _retention_pass(run: _Run) -> dict[str, Any]:
    """One worker's retention pass on a fresh copy of the prefilled database, its oldest
    table due: what it costs at that size."""
    retention_days, period_days = run.options.retention()
    url = await run.database("retention")
    return await db.timed_prune(url, retention_days=retention_days, period_days=period_days)


async def _sql_write_set(run: _Run, commands: list[Command]) -> dict[str, Any]:
    """The SQL write-set limit (``bench.sql_limit``): the worker's batches captured on one
    copy of the database by the service's own processor, then replayed and timed on
    another, after the server is quiet."""
    options, progress = run.options, run.progress
    capture_url = await run.database("sql_capture")
    phase_config, _ = phase_settings(
        f"bench.{run.run_id}.sql_write_set",
        kafka=run.stack.kafka_bootstrap_servers,
        database_url=capture_url,
        database=f"bench_{run.run_id}_sql_capture",
    )
    settings = sql_limit.worker_settings(phase_config, options.worker_env)
    batches = sql_limit.plan_batches(
        commands[: options.sql_batches * settings.batch_max_records],
        topic=settings.topic_commands,
        partitions=options.partitions,
        batch_size=settings.batch_max_records,
    )
    progress(
        f"sql_write_set: capturing {len(batches)} batches of up to "
        f"{settings.batch_max_records} records with the service's processor"
    )
    captured = await sql_limit.capture(capture_url, settings, batches)
    progress(
        f"sql_write_set: captured in {captured.seconds:.1f}s "
        f"({captured.records / captured.seconds:.0f} commands/s in-process); replaying"
    )
    # The capture's copy is done with: dropped now (unless kept), so that its autovacuum
    # cannot fall in a replay; so is each replay's after it.
    if not options.keep:
        await db.drop(run.server.admin_url, [f"bench_{run.run_id}_sql_capture"])
    postgres = run.server.pid
    meter = CpuMeter(
        {"postgres": [postgres] if postgres else [], "driver": [os.getpid()]},
        alone=frozenset({"driver"}),
    )
    rounds = []
    for number in range(1, options.sql_rounds + 1):
        name = f"sql_replay{number}"
        replay_url = await run.database(name)
        quiet = await db.until_quiet(replay_url)
        replayed = await sql_limit.replay(
            replay_url, captured.batches, meter=meter, admin_url=run.server.admin_url
        )
        if not options.keep:
            await db.drop(run.server.admin_url, [f"bench_{run.run_id}_{name}"])
        rounds.append(
            sql_limit.sql_figures(
                replayed,
                captured=captured,
                batch_max_records=settings.batch_max_records,
                quiet=quiet,
            )
        )
        progress(
            f"sql_write_set: round {number}: {rounds[-1]['commands_per_second']}/s "
            f"(quiet after {quiet['seconds']}s, verified {rounds[-1]['verified']})"
        )
    figures = sql_limit.combined_figures(rounds)
    progress(
        f"sql_write_set: {figures['commands']} commands in {figures['batches']} batches, "
        f"median of {len(rounds)} rounds {figures['commands_per_second']}/s "
        f"({figures['spread']['commands_per_second']}), CPU µs per command "
        f"{figures['cpu_us_per_command']}, verified {figures['verified']}"
    )
    return figures


async def _compare(
    run: _Run,
    commands: list[Command],
    plan: Iterable[tuple[str, int, Mode]],
    open_phase: Callable[[str, Mode], Awaitable[_Phase]],
    *,
    count_sessions: bool = False,
    count_published: bool = False,
) -> list[ComparedPhase]:
    """Ours on the same records in each phase of ``plan`` (``alternating_phases``), each
    in the phase ``open_phase`` gives for its name and mode, each after every PostgreSQL
    server of the run is quiet (the runs before leave autovacuum work behind, which would
    land on whichever phase came next)."""
    measured: list[ComparedPhase] = []
    for name, number, mode in plan:
        phase = await open_phase(name, mode)
        # The other servers first: their databases are tiny, only their autovacuum matters.
        for server in run.servers:
            if server is not phase.server:
                await db.until_quiet(server.admin_url)
        quiet = await db.until_quiet(phase.settings.database_url.get_secret_value())
        run.progress(f"{name}: the databases were quiet after {quiet['seconds']}s ({quiet})")
        result = await _throughput(
            run,
            "ours",
            commands,
            phase=phase,
            count_sessions=count_sessions,
            count_published=count_published,
        )
        result.quiet = quiet
        measured.append(ComparedPhase(name, number, mode, result))
    return measured


async def _tls_comparison(
    run: _Run, commands: list[Command], *, reference: ThroughputRun
) -> dict[str, Any]:
    """Ours on the same records with and without TLS, against the same two servers."""
    assert run.tls is not None
    assert run.tls_server is not None

    async def open_phase(name: str, mode: TlsMode) -> _Phase:
        return await run.phase(name, mode=mode)

    measured = await _compare(
        run, commands, tls_phases(run.options.tls_rounds), open_phase, count_sessions=True
    )
    postgres = run.tls.postgres
    endpoints = {
        "kafka_plain": run.stack.kafka_bootstrap_servers,
        "kafka_tls": run.tls.kafka_bootstrap_servers,
        "kafka_security_protocol": "SSL",
        "postgres_plain": postgres.url(),
        "postgres_tls": postgres.tls_url(),
        "database_sslmode": "verify-full",
        "postgres_version": await db.server_version(run.tls_server.admin_url),
        "postgres_server": str(postgres.server_dir),
    }
    figures = tls_figures(measured, reference_state=reference.state, endpoints=endpoints)
    run.progress(
        f"tls: plain {figures['plain_commands_per_second']}/s, TLS "
        f"{figures['tls_commands_per_second']}/s (ratio {figures['ratio']}), "
        f"verified {figures['verified']}, state match {figures['state_match']}"
    )
    return figures


async def _state_comparison(
    run: _Run, commands: list[Command], *, reference: ThroughputRun
) -> dict[str, Any]:
    """Ours on the same records with ``PUBLISH_STATE`` on and off, against the run's
    broker and PostgreSQL, counting what the relay published and the WAL written."""

    async def open_phase(name: str, mode: StateMode) -> _Phase:
        return await run.phase(name, publish_state=mode == "on")

    measured = await _compare(
        run, commands, state_phases(run.options.state_rounds), open_phase, count_published=True
    )
    topics = {
        phase.name: phase.settings.topic_state
        for phase in run.phases
        if phase.name in {compared.name for compared in measured}
    }
    figures = state_figures(measured, reference_state=reference.state, topics=topics)
    run.progress(
        f"state topic: on {figures['on_commands_per_second']}/s, off "
        f"{figures['off_commands_per_second']}/s (ratio off/on {figures['ratio']}, rounds "
        f"{figures['spread']['ratio']}), relay records/s on "
        f"{figures['on_relay_records_per_second']} off {figures['off_relay_records_per_second']}, "
        f"verified {figures['verified']}, state match {figures['state_match']}"
    )
    return figures


async def _throughput(
    run: _Run,
    kind: WorkerKind,
    commands: list[Command],
    *,
    phase: _Phase | None = None,
    count_sessions: bool = False,
    count_published: bool = False,
) -> ThroughputRun:
    """One worker draining ``commands`` pre-produced on fresh topics, in ``phase`` (by
    default a new one named ``kind``); ``count_sessions`` counts its database sessions
    and broker connections by TLS or not while it still runs; ``count_published`` the
    WAL its server wrote until the last output and, once it stopped, the records on the
    phase's state topic."""
    options, progress = run.options, run.progress
    if phase is None:
        phase = await run.phase(kind)
    name = phase.name
    progress(f"{name}: producing {len(commands)} commands to {phase.settings.topic_commands}")
    produced = await produce_all(phase.settings, commands)
    progress(
        f"{name}: produced in {produced.seconds:.1f}s ({len(commands) / produced.seconds:.0f}/s); "
        "starting the worker"
    )
    log = OutcomeLog(len(commands), THROUGHPUT_STREAM)
    profile = options.profile if name == "ours" else None
    worker = run.worker(kind, phase, profile=profile)
    rss: list[tuple[float, int]] = []
    cpu: list[CpuSample] = []
    limit = options.naive_seconds if kind == "naive" else None
    sessions = brokers = wal_from = wal_until = None
    if count_published:
        wal_from = await db.wal_position(phase.server.admin_url)
    async with OutputReader(phase.settings, log) as reader:
        spawned = time.time()
        worker.start()
        meter = run.cpu_meter(worker, phase)
        background: list[asyncio.Task[Any]] = []
        try:
            consuming = asyncio.create_task(
                wait_until_consuming(phase.settings, alive=worker.check_alive)
            )
            background = [
                consuming,
                asyncio.create_task(_sample_rss(worker, 1.0, rss)),
                asyncio.create_task(_sample_cpu(meter, CPU_SAMPLE_INTERVAL, cpu)),
            ]
            await _drain(run, name, reader, log, worker, checks=[consuming], limit=limit)
            cpu.append(meter.sample())
            if count_published:
                wal_until = await db.wal_position(phase.server.admin_url)
            consuming_at = await consuming
            if count_sessions:
                sessions = await db.session_encryption(phase.server.admin_url, phase.database)
                brokers = connections_to(worker.pids(), run.broker_ports())
        finally:
            await _cancel(background)
            status = await worker.stop()
    state = await db.state_fingerprint(phase.settings.database_url.get_secret_value())
    state_topic = None
    if count_published:
        state_topic = await topic_contents(phase.settings, phase.settings.topic_state)
    result = ThroughputRun(
        worker=kind,
        log=log,
        expected=expected_outcomes(commands),
        spawned_at=spawned,
        consuming_at=consuming_at,
        produced_from=produced.started_at,
        produced_until=produced.finished_at,
        exit_status=status,
        rss_kib=rss,
        state=state,
        log_path=str(worker.log_path),
        cpu=cpu,
        time_limit=limit,
        database_sessions=sessions,
        kafka_connections=brokers,
        state_topic=state_topic,
        output_records=reader.records if count_published else None,
        output_bytes=reader.bytes if count_published else None,
        wal_bytes=wal_until - wal_from if wal_from is not None and wal_until is not None else None,
    )
    figures = throughput_figures(result)
    progress(
        f"{name}: {log.count} commands in {figures['seconds']}s = "
        f"{figures['commands_per_second']}/s (outcomes {figures['outcomes']}, "
        f"duplicates {log.duplicates}, exit {status}"
        + (f", database sessions {sessions}" if sessions is not None else "")
        + (f", broker connections {brokers}" if brokers is not None else "")
        + (f", state topic {state_topic}" if state_topic is not None else "")
        + (f", WAL {figures['wal_bytes_per_command']} B/command" if count_published else "")
        + ")"
    )
    return result


async def _paced(
    run: _Run, name: str, offered_rate: float, seconds: float, *, rss: bool = False
) -> PacedRun:
    options, progress = run.options, run.progress
    phase = await run.phase(name)
    count = max(1, round(offered_rate * seconds))
    stream = LATENCY_STREAM if name == "latency" else SOAK_STREAM
    log = OutcomeLog(count, stream)
    sent_at = array("d", bytes(8 * count))
    generator = LoadGenerator(options.load_spec(), prefix=stream)
    worker = run.worker("ours", phase)
    samples: list[tuple[float, int]] = []
    quiet = await db.until_quiet(phase.settings.database_url.get_secret_value())
    progress(f"{name}: the database was quiet after {quiet['seconds']}s ({quiet})")
    async with OutputReader(phase.settings, log) as reader:
        worker.start()
        background: list[asyncio.Task[Any]] = []
        try:
            await wait_until_consuming(phase.settings, alive=worker.check_alive)
            progress(f"{name}: offering {count} commands at {offered_rate:g}/s for {seconds:g}s")
            producing = asyncio.create_task(
                produce_paced(
                    phase.settings, generator.stream(count), rate=offered_rate, sent_at=sent_at
                )
            )
            background = [producing]
            if rss:
                background.append(
                    asyncio.create_task(_sample_rss(worker, options.rss_interval, samples))
                )
            await _drain(run, name, reader, log, worker, checks=[producing])
            paced = await producing
        finally:
            await _cancel(background)
            status = await worker.stop()
    result = PacedRun(
        offered_rate=offered_rate,
        seconds=seconds,
        log=log,
        sent_at=sent_at,
        started_at=paced.started_at,
        finished_at=paced.finished_at,
        max_send_lag_ms=paced.max_lag_ms,
        warmup_seconds=options.warmup_seconds,
        exit_status=status,
        rss_kib=samples,
        log_path=str(worker.log_path),
        quiet=quiet,
    )
    progress(f"{name}: {log.seen}/{count} answered; exit {status}")
    return result


async def _drain(
    run: _Run,
    name: str,
    reader: OutputReader,
    log: OutcomeLog,
    worker: WorkerGroup,
    *,
    checks: Iterable[asyncio.Task[Any]] = (),
    limit: float | None = None,
) -> None:
    """Read outputs until every command has one, or for ``limit`` seconds after the
    first; fail if the worker dies, a helper task fails, or nothing new arrives for
    ``stall_timeout`` seconds."""
    stall_timeout = run.options.stall_timeout
    last_seen, last_change = -1, time.monotonic()
    last_report, reported_seen = time.monotonic(), 0
    while not log.complete:
        if limit is not None and log.first_at is not None and time.time() - log.first_at >= limit:
            run.progress(f"{name}: stopped after {limit:g}s with {log.seen}/{log.count} answered")
            return
        await reader.poll()
        worker.check_alive()
        for task in checks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                await task  # raises its error
        now = time.monotonic()
        if log.seen != last_seen:
            last_seen, last_change = log.seen, now
        elif now - last_change > stall_timeout:
            raise BenchmarkError(
                f"{name}: no new output for {stall_timeout:.0f}s with {log.seen}/{log.count} "
                f"commands answered; see {worker.log_path}:\n{worker.log_tail()}"
            )
        if now - last_report >= 5:
            speed = (log.seen - reported_seen) / (now - last_report)
            run.progress(f"{name}: {log.seen}/{log.count} answered ({speed:.0f}/s)")
            last_report, reported_seen = now, log.seen


async def _sample_rss(
    worker: WorkerGroup, interval: float, samples: list[tuple[float, int]]
) -> None:
    started = time.monotonic()
    while True:
        kib = worker.rss_kib()
        if kib is not None:
            samples.append((time.monotonic() - started, kib))
        await asyncio.sleep(interval)


async def _sample_cpu(meter: CpuMeter, interval: float, samples: list[CpuSample]) -> None:
    while True:
        samples.append(meter.sample())
        await asyncio.sleep(interval)


async def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


__all__ = ["BenchmarkError", "Options", "run_benchmark"]
