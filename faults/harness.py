"""One scenario's world: a fresh database and fresh topics on the suite's own stack,
``customer-service worker`` subprocesses, and reading everything back for the checker.

Every wait here polls a condition against a deadline; sleeping is only used to pace
polls and to hold a fault for its duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack.native_postgres import PASSWORD_USER
from faults.checker import ConsumedRecord, History, Violation, accounting
from faults.load import LONG_CUSTOMER_ID, LoadPlan, LoadProducer
from faults.model import SIGNING_ALGORITHM, produced_command, signed_authorizer
from faults.network import Network
from faults.reader import ConcurrentReader, compare, reads_of
from faults.stack import FaultStack
from service.adapters.kafka import records as kafka_records
from service.adapters.kafka.clients import create_topics, partitions_of, read_range

# The same columns, in the same form, as the service reads a customer.
from service.adapters.postgres.batch_store import CUSTOMER_COLUMNS, customer_from_row
from service.adapters.postgres.migrations import migrate
from service.adapters.postgres.seed import seed_customers
from service.domain.customer import CustomerState
from service.infrastructure.settings import Settings

Progress = Callable[[str], None]
#: Polled while the harness waits for the moment to inject a fault: True when that moment
#: will not come any more (the load is sent and processed, say).
GiveUp = Callable[[], Awaitable[bool]]

#: Statements only a batch transaction runs (the relay's own queries on the outbox and
#: the idempotency pruner's are left out).
_BATCH_STATEMENTS = (
    "%consumer_offsets%",
    "%FROM customers%",
    "%UPDATE customers%",
    "%INSERT INTO outbox%",
    "%INSERT INTO processed_commands%",
    "%FROM processed_commands WHERE command_id%",
    "%FROM subscriptions%",
)
#: Errors of the harness's own database connections while a fault is on.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
#: Environment variables a worker inherits; everything else it is given explicitly, so a
#: developer's own settings (or a .env) cannot change what the suite runs.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")
#: The backfill's ``application_name``: not a worker's, so that a batch it holds open is
#: never taken for a worker's (``_BATCH_STATEMENTS`` match its ``FROM customers`` too).
BACKFILL_SESSION = "faults-backfill"
#: ``customer-service backfill --all`` in transactions of three customers (locked in id
#: order, as a worker's batch locks its own), paced so that it lasts as long as the load:
#: two at once, then two a second (7 transactions, 2.5 s, in the short form; 14 in the
#: full one).
BACKFILL_ARGS = ("backfill", "--all", "--batch-size", "3", "--rate", "6")


def cli_path() -> Path:
    return Path(sys.executable).parent / "customer-service"


@dataclass(frozen=True)
class RunConfig:
    commands: int
    rate: float
    customers: int
    seed: int
    #: How long a scenario may take to settle after its fault before it is judged as is.
    settle_within: float = 180.0
    #: Keep the database and topics even when the checker finds nothing.
    keep: bool = False
    #: Keep them when it finds something (for inspection).
    keep_failed: bool = True
    #: The worker's command line; ``customer-service worker`` when empty.
    worker_command: tuple[str, ...] = ()
    #: The CI form: scenarios inject their fault once rather than repeatedly.
    short: bool = False
    #: Every scenario's workers in signed mode (``AUTH_JWT_KEY``), with a load to match.
    signed: bool = False
    #: Every scenario's workers with ``EVENT_CONTENT_MODE=binary``.
    binary_events: bool = False
    #: The workers' ``KAFKA_SESSION_TIMEOUT_MS``; the service's default when None.
    session_timeout_ms: int | None = None
    #: Workers reach Kafka over SSL and PostgreSQL with verify-full (the stack's TLS
    #: server); the harness itself stays on the plain endpoints.
    tls: bool = False


# -- worker processes ----------------------------------------------------------------------


@dataclass
class Worker:
    """One ``customer-service worker`` process (a restart is a new ``Worker``)."""

    slot: int
    incarnation: int
    env: dict[str, str]
    log_path: Path
    cwd: Path
    failpoints: str = ""
    command: tuple[str, ...] = ()
    #: Set when this process is meant to exit: stopped, killed, or armed to crash.
    planned_exit: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"worker {self.slot}.{self.incarnation}"

    def start(self) -> None:
        env = {**self.env, "FAILPOINTS": self.failpoints}
        self.planned_exit = bool(self.failpoints)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.command or (str(cli_path()), "worker")),
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the suite must not reach it.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.returncode is None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish anything. (A process that already
        exited on its own is left as it is: its exit was not planned.)"""
        if self.running:
            self.planned_exit = True
            os.kill(self.pid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, as by a long GC pause or a stalled VM; its
        connections stay open and its transaction, if any, stays open with them."""
        if self.running:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)

    async def wait_stopped(self, *, within: float) -> bool:
        """Until the process is stopped by a signal (a ``:stop`` failpoint), or give up."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.running and process_state(self.pid) == "T":
                return True
            await asyncio.sleep(0.05)
        return False

    async def wait_exit(self, *, within: float) -> int | None:
        deadline = time.monotonic() + within
        while self.returncode is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self.returncode

    async def stop(self, *, within: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time (-9 then)."""
        if self.running:
            self.planned_exit = True
            os.kill(self.pid, signal.SIGTERM)
        code = await self.wait_exit(within=within)
        if code is None:
            self.kill()
            code = await self.wait_exit(within=10)
        assert code is not None
        return code

    def relay_recovered(self) -> list[int]:
        """Rows each of this process's relay recoveries deleted as already published."""
        return [
            count
            for event in self.events()
            if event.get("event") == "relay_recovered"
            and (count := int(event.get("already_published") or 0))
        ]

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines this process wrote."""
        found = []
        try:
            lines = self.log_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def logged(self, name: str) -> int:
        return sum(1 for event in self.events() if event.get("event") == name)

    def assigned(self) -> set[int]:
        """The partitions of its latest assignment, as it logged them."""
        latest: list[str] = []
        for event in self.events():
            if event.get("event") == "partitions_assigned":
                latest = event.get("partitions") or []
        return {int(name.rsplit("-", 1)[1]) for name in latest}

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- reading topics --------------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (``T`` when stopped), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def _session_name(slot: int | str) -> str:
    return f"faults-worker-{slot}"


def _with_application_name(url: str, name: str) -> str:
    """asyncpg passes query parameters it does not know on as server settings."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), ("application_name", name)])
    return urlunsplit(parts._replace(query=query))


def _consumer(bootstrap_servers: str) -> AIOKafkaConsumer:
    # The load holds header names that are not UTF-8; read them as the worker does.
    kafka_records.install()
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        client_id="faults-reader",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )


async def read_topics(settings: Settings, topics: list[str]) -> dict[str, list[ConsumedRecord]]:
    """Every committed record of ``topics``, from the beginning to the current end."""
    partitions = await partitions_of(settings, topics)
    consumer = _consumer(settings.kafka_bootstrap_servers)
    await consumer.start()
    found: dict[str, list[ConsumedRecord]] = {topic: [] for topic in topics}
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        async for record in read_range(consumer, starts, ends):
            found[record.topic].append(
                ConsumedRecord(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                    headers=tuple(record.headers),
                )
            )
    finally:
        await consumer.stop()
    return found


# -- the scenario's world ----------------------------------------------------------------------


@dataclass
class ScenarioEnv:
    stack: FaultStack
    name: str
    partitions: int
    config: RunConfig
    run_dir: Path
    progress: Progress = lambda _: None
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: dict[int, Worker] = field(default_factory=dict)
    every_worker: list[Worker] = field(default_factory=list)
    #: What was done to the system, as evidence that the fault happened.
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    unplanned_exits: int = 0
    seeded: dict[str, CustomerState] = field(default_factory=dict)
    #: Environment of every worker on top of the harness's own (a scenario's settings).
    worker_settings: dict[str, str] = field(default_factory=dict)
    #: When set, the workers reach PostgreSQL and Kafka through its proxies.
    network: Network | None = None
    #: The workers that go through ``network`` (all of them when empty).
    proxied_slots: frozenset[int] = frozenset()
    #: Signed mode: the key the workers verify command tokens with.
    jwt_key: str | None = None
    #: The workers' ``EVENT_CONTENT_MODE``, which the checker holds every output to.
    event_content_mode: str = "structured"
    _supervisor: asyncio.Task[None] | None = None
    #: Reads the output topics for the whole scenario (``faults.reader``).
    reader: ConcurrentReader | None = None
    _crashes: list[Worker] = field(default_factory=list)
    #: The running ``customer-service backfill``, if any.
    _backfill: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        stem = self.name.replace("-", "_")
        self.database = f"faults_{stem}_{self.suffix}"
        prefix = f"faults.{self.name}.{self.suffix}"
        self.settings = Settings(
            kafka_bootstrap_servers=self.stack.bootstrap_servers,
            kafka_security_protocol="PLAINTEXT",
            kafka_client_id=f"faults-{self.name}",
            kafka_consumer_group=f"faults-{self.name}-{self.suffix}",
            database_url=self.stack.database_url(self.database),
            topic_commands=f"{prefix}.customer.update",
            topic_events=f"{prefix}.customer.updated",
            topic_rejections=f"{prefix}.customer.update.rejected",
            topic_dead_letters=f"{prefix}.customer.update.dlq",
            topic_state=f"{prefix}.customer.state",
            relay_transactional_id=f"faults-relay-{self.name}-{self.suffix}",
            _env_file=None,
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def database_url(self) -> str:
        return self.settings.database_url.get_secret_value()

    @property
    def output_topics(self) -> list[str]:
        s = self.settings
        return [s.topic_events, s.topic_rejections, s.topic_dead_letters, s.topic_state]

    @property
    def output_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.output_topics for p in range(self.partitions)]

    def fault(self, description: str) -> None:
        self.faults.append(description)
        self.progress(f"fault: {description}")

    def violation(self, kind: str, message: str) -> None:
        self.violations.append(Violation(kind, message))
        self.progress(f"VIOLATION {kind}: {message}")

    # -- set-up and tear-down ------------------------------------------------------------

    async def setup(self) -> None:
        admin = await asyncpg.connect(self.stack.admin_url())
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(self.database_url)
        try:
            await migrate(connection)
            await seed_customers(connection, self.config.customers)
            # A customer whose id makes a key as large as the service takes.
            await connection.execute(
                "INSERT INTO customers (id, name, invoice_prefix) VALUES ($1, $2, $3)",
                LONG_CUSTOMER_ID,
                "Long Key",
                "LONGKEY",
            )
            self.seeded = await self._customers(connection)
        finally:
            await connection.close()
        await create_topics(self.settings, partitions=self.partitions)
        self.reader = ConcurrentReader(self.stack.bootstrap_servers, self.output_partitions)
        await self.reader.start()

    async def teardown(self, *, keep: bool) -> None:
        """Stop every process; drop the database and topics unless they are to be kept."""
        await self.stop_supervising()
        self._kill_backfill()
        for worker in self.every_worker:
            if worker.running:
                worker.kill()
                await worker.wait_exit(within=10)
        if self.reader is not None:
            with contextlib.suppress(KafkaError):
                await self.reader.stop()
        if keep:
            self.progress(f"kept database {self.database} and topics faults.*.{self.suffix}.*")
            return
        with contextlib.suppress(*DATABASE_ERRORS):
            admin = await asyncpg.connect(self.stack.admin_url())
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await admin.close()
        with contextlib.suppress(KafkaError):
            client = AIOKafkaAdminClient(bootstrap_servers=self.stack.bootstrap_servers)
            await client.start()
            try:
                await client.delete_topics([self.settings.topic_commands, *self.output_topics])
            finally:
                await client.close()

    # -- workers -------------------------------------------------------------------------

    def worker_env(
        self, slot: int, *, session: str | None = None, proxied: bool = True
    ) -> dict[str, str]:
        """Worker ``slot``'s environment; its database sessions are named ``session``
        (``faults-worker-<slot>`` by default), and it goes through the scenario's proxies
        if it has any, ``slot`` is one of the proxied ones and ``proxied`` holds."""
        s = self.settings
        session = session or _session_name(slot)
        bootstrap, database_url = s.kafka_bootstrap_servers, self.database_url
        if (
            proxied
            and self.network is not None
            and (not self.proxied_slots or slot in self.proxied_slots)
        ):
            bootstrap = self.network.bootstrap_servers
            database_url = self.network.database_url(database_url)
        env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                "KAFKA_CLIENT_ID": f"faults-{self.name}-w{slot}",
                "KAFKA_CONSUMER_GROUP": s.kafka_consumer_group,
                # Named, so that the harness can tell its sessions apart in pg_stat_activity.
                "DATABASE_URL": _with_application_name(database_url, session),
                "TOPIC_COMMANDS": s.topic_commands,
                "TOPIC_EVENTS": s.topic_events,
                "TOPIC_REJECTIONS": s.topic_rejections,
                "TOPIC_DEAD_LETTERS": s.topic_dead_letters,
                "TOPIC_STATE": s.topic_state,
                "RELAY_TRANSACTIONAL_ID": s.relay_transactional_id,
                "RELAY_IDLE_INTERVAL": "0.2",
                "RETRY_INITIAL_DELAY": "0.05",
                "RETRY_MAX_DELAY": "1.0",
                "BATCH_MAX_RECORDS": "200",
                # The checker's model classifies with these same limits.
                "MAX_RECORD_BYTES": str(s.max_record_bytes),
                "MAX_JSON_DEPTH": str(s.max_json_depth),
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": "0",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "TRACING_ENABLED": "false",
                **self._signed_mode(),
                **self._tls(session),
                "EVENT_CONTENT_MODE": self.event_content_mode,
                **self._session_timeout(),
                **self.worker_settings,
            }
        )
        return env

    def _tls(self, session: str) -> dict[str, str]:
        if not self.config.tls:
            return {}
        kafka, postgres = self.stack.kafka, self.stack.postgres
        url = postgres.tls_url(self.database)
        return {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.tls_bootstrap_servers("SSL"),
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(kafka.certificates.ca),
            "DATABASE_URL": _with_application_name(url, session),
            "DATABASE_SSLMODE": "verify-full",
            "DATABASE_SSL_ROOT_CERT": str(postgres.certificates.ca),
            "DATABASE_PASSWORD_FILE": str(postgres.password_file),
        }

    async def check_tls(self) -> None:
        """With ``tls``, every session the workers hold on the database is encrypted, and
        they hold some (else the run proved nothing about TLS)."""

        async def sessions(connection: asyncpg.Connection) -> dict[bool, int]:
            rows = await connection.fetch(
                "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.datname = $1 AND a.usename = $2 GROUP BY s.ssl",
                self.database,
                PASSWORD_USER,
            )
            return {row["ssl"]: row["count"] for row in rows}

        counted = await self.query(sessions)
        if counted.get(False) or not counted.get(True):
            self.violation("tls", f"worker sessions by TLS (true/false): {counted}")
        else:
            self.notes.append(f"{counted[True]} worker database session(s), all over TLS")

    def _session_timeout(self) -> dict[str, str]:
        timeout = self.config.session_timeout_ms
        return {} if timeout is None else {"KAFKA_SESSION_TIMEOUT_MS": str(timeout)}

    def _signed_mode(self) -> dict[str, str]:
        if self.jwt_key is None:
            return {}
        return {"AUTH_JWT_KEY": self.jwt_key, "AUTH_JWT_ALGORITHMS": SIGNING_ALGORITHM}

    def start_worker(self, slot: int, *, failpoints: str = "") -> Worker:
        incarnation = sum(1 for worker in self.every_worker if worker.slot == slot)
        worker = Worker(
            slot=slot,
            incarnation=incarnation,
            env=self.worker_env(slot),
            log_path=self.run_dir / f"worker-{slot}.{incarnation}.log",
            cwd=self.run_dir,
            failpoints=failpoints,
            command=self.config.worker_command,
        )
        worker.start()
        self.workers[slot] = worker
        self.every_worker.append(worker)
        armed = f" with FAILPOINTS={failpoints}" if failpoints else ""
        self.progress(f"started {worker.name} (pid {worker.pid}){armed}")
        return worker

    async def wait_assigned(self, worker: Worker, *, within: float = 90.0) -> None:
        """Until ``worker`` has joined the group and been given partitions."""
        deadline = time.monotonic() + within
        while not worker.logged("partitions_assigned"):
            if self.crashed(worker):
                raise RuntimeError(f"{worker.name} exited with {worker.returncode} at start")
            if not worker.running:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.name} had no partitions after {within:.0f}s")
            await asyncio.sleep(0.1)

    async def launch(self, slot: int, *, failpoints: str = "", wait: bool = True) -> Worker:
        worker = self.start_worker(slot, failpoints=failpoints)
        if wait:
            await self.wait_assigned(worker)
        return worker

    def crashed(self, worker: Worker) -> bool:
        """Whether ``worker`` exited without being meant to (killed, stopped or armed by the
        harness). The first time it is seen, that is a violation (``worker_crashed``): the
        worker is supposed to survive every fault the suite injects."""
        if worker.returncode is None or worker.planned_exit:
            return False
        if worker not in self._crashes:
            self._crashes.append(worker)
            self.unplanned_exits += 1
            self.violation(
                "worker_crashed",
                f"{worker.name} exited on its own with {worker.returncode}. Last lines:\n"
                f"{worker.tail()}",
            )
        return True

    async def wait_until(self, condition: Callable[[], bool], *, within: float) -> bool:
        """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def supervise(self) -> None:
        """Restart any worker that exits without being meant to, as an orchestrator would,
        after recording the crash: the checker then still judges whether anything was lost."""

        async def loop() -> None:
            while True:
                for slot, worker in list(self.workers.items()):
                    if self.crashed(worker):
                        self.notes.append(f"{worker.name} crashed; restarted")
                        self.start_worker(slot)
                await asyncio.sleep(0.2)

        self._supervisor = asyncio.create_task(loop(), name=f"supervise-{self.name}")

    async def stop_supervising(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None

    async def stop_workers(self) -> dict[str, int]:
        """SIGTERM every running worker at once and collect the exit codes."""
        await self.stop_supervising()
        # One that crashed since the supervisor last looked is not running any more.
        for worker in self.every_worker:
            self.crashed(worker)
        running = [worker for worker in self.workers.values() if worker.running]
        codes = await asyncio.gather(*(worker.stop() for worker in running))
        return {worker.name: code for worker, code in zip(running, codes, strict=True)}

    def logged(self, name: str) -> int:
        return sum(worker.logged(name) for worker in self.every_worker)

    # -- the backfill ----------------------------------------------------------------------

    async def backfill(self, *, within: float) -> None:
        """Run ``customer-service backfill --all`` (``BACKFILL_ARGS``) to completion under
        whatever the scenario does meanwhile, with the workers' environment but its own
        ``application_name`` and never through the proxies (it is an operator's job, not
        a worker). A run that a fault ends (its sessions terminated, the server down) is
        started again and resumes where it stopped. It is a violation
        (``backfill_incomplete``) if no run completes within ``within`` seconds, or if
        the completed run did not publish every customer."""
        deadline = time.monotonic() + within
        env = self.worker_env(0, session=BACKFILL_SESSION, proxied=False)
        runs: list[int] = []
        while True:
            log_path = self.run_dir / f"backfill.{len(runs)}.log"
            process = self._start_backfill(env, log_path)
            try:
                await self.wait_until(
                    functools.partial(_exited, process), within=deadline - time.monotonic()
                )
            finally:
                self._kill_backfill()
            runs.append(process.returncode)
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
            if process.returncode == 0:
                break
            if time.monotonic() >= deadline:
                self.violation(
                    "backfill_incomplete",
                    f"customer-service backfill --all did not complete within {within:.0f}s "
                    f"(exit codes of its runs: {runs}). Last lines:\n{tail}",
                )
                return
            await asyncio.sleep(0.5)
        published = await self.query(
            lambda connection: connection.fetchval(
                "SELECT published FROM backfill_runs WHERE name = 'all' AND finished IS NOT NULL"
            )
        )
        again = f", after {len(runs) - 1} run(s) that a fault ended" if len(runs) > 1 else ""
        if published != len(self.seeded):
            self.violation(
                "backfill_incomplete",
                f"customer-service backfill --all completed{again} having published "
                f"{published} of {len(self.seeded)} customers' states. Last lines:\n{tail}",
            )
        else:
            self.notes.append(
                f"customer-service backfill --all published the state of {published} "
                f"customer(s) under the load{again}"
            )

    def _start_backfill(self, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            self._backfill = subprocess.Popen(
                [str(cli_path()), *BACKFILL_ARGS],
                env=env,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session, as a worker's: a Ctrl-C meant for the suite is not its.
                start_new_session=True,
            )
        return self._backfill

    def _kill_backfill(self) -> None:
        process, self._backfill = self._backfill, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def relay_recovered(self) -> list[int]:
        """Rows each relay recovery of any worker really deleted."""
        return [count for worker in self.every_worker for count in worker.relay_recovered()]

    # -- the database ----------------------------------------------------------------------

    async def _customers(self, connection: asyncpg.Connection) -> dict[str, CustomerState]:
        rows = await connection.fetch(f"SELECT {CUSTOMER_COLUMNS} FROM customers ORDER BY id")
        return {row["id"]: customer_from_row(row) for row in rows}

    async def query(self, run: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        connection = await asyncpg.connect(self.database_url, timeout=10)
        try:
            return await run(connection)
        finally:
            await connection.close(timeout=5)

    async def batch_in_flight(self, *, within: float, give_up: GiveUp | None = None) -> bool:
        """Wait until some worker has a batch transaction open (True), or give up: after
        ``within`` seconds, or once ``give_up()`` holds (polled every half second)."""
        deadline = time.monotonic() + within
        connection = await asyncpg.connect(self.database_url)
        try:
            next_look = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                if await self._in_batch(connection):
                    return True
                if give_up is not None and time.monotonic() > next_look:
                    if await give_up():
                        return False
                    next_look = time.monotonic() + 0.5
                await asyncio.sleep(0.002)
            return False
        finally:
            await connection.close()

    async def _in_batch(self, connection: asyncpg.Connection, slot: int | None = None) -> bool:
        """Whether the worker in ``slot`` (any worker, if None) has a batch transaction open."""
        found: int = await connection.fetchval(
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE datname = $1 AND application_name LIKE $2
              AND xact_start IS NOT NULL
              AND state IN ('active', 'idle in transaction')
              AND query LIKE ANY($3::text[])
            """,
            self.database,
            _session_name("%" if slot is None else str(slot)),
            list(_BATCH_STATEMENTS),
        )
        return found > 0

    async def catch(
        self,
        worker: Worker,
        moment: Callable[[asyncpg.Connection], Awaitable[bool]],
        *,
        within: float,
        attempts: int = 20,
        give_up: GiveUp | None = None,
    ) -> bool:
        """SIGSTOP ``worker`` at a moment when ``moment`` holds, and check it again while
        the worker is stopped (a stopped process changes nothing). When the stop came just
        too late, let the worker go on and try again, ``attempts`` times at most. Returns
        True with the worker stopped there; False with it running, when the moment did not
        come within ``within`` seconds, before ``give_up()`` held (polled every half
        second), or in ``attempts`` tries."""
        deadline = time.monotonic() + within
        connection = await asyncpg.connect(self.database_url)
        try:
            next_look = time.monotonic() + 0.5
            while attempts > 0 and time.monotonic() < deadline and worker.running:
                if await moment(connection):
                    worker.pause()
                    try:
                        held = await moment(connection)
                    except BaseException:
                        worker.resume()
                        raise
                    if held:
                        return True
                    worker.resume()
                    attempts -= 1
                elif give_up is not None and time.monotonic() > next_look:
                    if await give_up():
                        break
                    next_look = time.monotonic() + 0.5
                await asyncio.sleep(0.001)
            return False
        finally:
            await connection.close()

    async def catch_in_batch(
        self, worker: Worker, *, within: float, give_up: GiveUp | None = None
    ) -> bool:
        """``catch`` ``worker`` inside one of its batch transactions."""

        async def in_batch(connection: asyncpg.Connection) -> bool:
            return await self._in_batch(connection, worker.slot)

        return await self.catch(worker, in_batch, within=within, give_up=give_up)

    async def freeze_in_batch(self, worker: Worker, *, within: float) -> bool:
        """SIGSTOP ``worker`` inside one of its batch transactions (``catch_in_batch``).
        Returns whether it was caught inside a transaction; it is stopped either way."""
        caught = await self.catch_in_batch(worker, within=within)
        if not caught:
            worker.pause()
        return caught

    async def still_in_batch(self, worker: Worker) -> bool:
        async def run(connection: asyncpg.Connection) -> bool:
            return await self._in_batch(connection, worker.slot)

        result: bool = await self.query(run)
        return result

    async def terminate_in_batch(
        self, *, within: float, give_up: GiveUp | None = None
    ) -> tuple[int, int]:
        """End every session of the scenario's database but the harness's own, while a
        worker's batch transaction is open: one statement looks for an open batch in
        ``pg_stat_activity`` and, only if it finds one, ends every session of that same
        snapshot, so that the batch has no time to end in between. Polled until it ends a
        batch, for ``within`` seconds at most or until ``give_up()`` holds (every half
        second). Returns how many sessions it ended and how many of them were in a batch
        transaction: (0, 0) if it never found one open."""
        deadline = time.monotonic() + within
        connection = await asyncpg.connect(self.database_url)
        try:
            next_look = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                row = await connection.fetchrow(
                    """
                    WITH sessions AS MATERIALIZED (
                        SELECT pid,
                               application_name LIKE $2
                               AND xact_start IS NOT NULL
                               AND state IN ('active', 'idle in transaction')
                               AND query LIKE ANY($3::text[]) AS in_batch
                        FROM pg_stat_activity
                        WHERE datname = $1 AND pid <> pg_backend_pid()
                    )
                    SELECT count(pg_terminate_backend(pid)) AS ended,
                           count(*) FILTER (WHERE in_batch) AS in_batch
                    FROM sessions
                    WHERE EXISTS (SELECT FROM sessions WHERE in_batch)
                    """,
                    self.database,
                    _session_name("%"),
                    list(_BATCH_STATEMENTS),
                )
                if row["in_batch"]:
                    return int(row["ended"]), int(row["in_batch"])
                if give_up is not None and time.monotonic() > next_look:
                    if await give_up():
                        break
                    next_look = time.monotonic() + 0.5
                await asyncio.sleep(0.002)
            return 0, 0
        finally:
            await connection.close()

    async def positions(self) -> dict[int, int]:
        """The next offset per command partition, as the database holds it."""

        async def run(connection: asyncpg.Connection) -> dict[int, int]:
            rows = await connection.fetch(
                "SELECT partition, next_offset FROM consumer_offsets "
                "WHERE consumer_group = $1 AND topic = $2",
                self.settings.kafka_consumer_group,
                self.settings.topic_commands,
            )
            return {row["partition"]: row["next_offset"] for row in rows}

        positions: dict[int, int] = await self.query(run)
        return positions

    async def outbox_size(self, *, backfill: bool = True) -> int:
        """Rows in the outbox; without the backfill's (the only rows whose own topic is
        the state topic) when ``backfill`` is False: a worker cannot answer for those,
        which another process may write while it stops."""

        async def run(connection: asyncpg.Connection) -> int:
            if backfill:
                count: int = await connection.fetchval("SELECT count(*) FROM outbox")
            else:
                count = await connection.fetchval(
                    "SELECT count(*) FROM outbox WHERE topic <> $1", self.settings.topic_state
                )
            return count

        size: int = await self.query(run)
        return size

    async def kafka_commits(self) -> dict[int, int]:
        """The group's committed offsets per command partition, as Kafka holds them."""
        client = AIOKafkaAdminClient(bootstrap_servers=self.stack.bootstrap_servers)
        await client.start()
        try:
            offsets = await client.list_consumer_group_offsets(self.settings.kafka_consumer_group)
        finally:
            await client.close()
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.settings.topic_commands and meta.offset >= 0
        }

    async def redelivery_gap(self) -> int:
        """Records whose effects the database holds but whose offsets Kafka does not:
        what a restarted consumer is handed again."""
        positions, commits = await self.positions(), await self.kafka_commits()
        return sum(max(0, next_offset - commits.get(p, 0)) for p, next_offset in positions.items())

    # -- settling and reading back ---------------------------------------------------------

    async def command_ends(self) -> dict[int, int]:
        topic = self.settings.topic_commands
        partitions = [TopicPartition(topic, p) for p in range(self.partitions)]
        consumer = _consumer(self.stack.bootstrap_servers)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        return {tp.partition: offset for tp, offset in ends.items()}

    async def quiescent(self) -> bool:
        """Every command record processed (by the database's positions) and the outbox
        empty (so every outcome is published)."""
        try:
            ends = await self.command_ends()
            positions = await self.positions()
            if any(positions.get(p, 0) < end for p, end in ends.items() if end > 0):
                return False
            return await self.outbox_size() == 0
        except (*DATABASE_ERRORS, KafkaError):
            return False

    async def settle(self, load: LoadProducer) -> bool:
        """Wait for the load to be sent and every record to be accounted for."""
        deadline = time.monotonic() + self.config.settle_within
        await asyncio.wait_for(load.wait(), timeout=self.config.settle_within)
        self.progress("load sent; waiting for every record to be accounted for")
        while time.monotonic() < deadline:
            if await self.quiescent():
                counts = accounting(await self.collect())
                if counts.unaccounted == 0:
                    return True
            await asyncio.sleep(0.5)
        self.notes.append(
            f"not settled within {self.config.settle_within:.0f}s; judged as it stood"
        )
        return False

    async def collect(self) -> History:
        topics = [self.settings.topic_commands, *self.output_topics]
        records = await asyncio.wait_for(read_topics(self.settings, topics), timeout=120)
        final = await self.query(self._customers)
        s = self.settings
        return History(
            commands_topic=s.topic_commands,
            produced=[
                produced_command(r.partition, r.offset, r.key, r.value, r.headers)
                for r in records[s.topic_commands]
            ],
            seeded=self.seeded,
            final=final,
            updated=records[s.topic_events],
            rejected=records[s.topic_rejections],
            dead_letters=records[s.topic_dead_letters],
            state=records[s.topic_state],
            limits=s.limits,
            authorizer=None if self.jwt_key is None else signed_authorizer(self.jwt_key),
            jwt_key=self.jwt_key,
            event_content_mode=self.event_content_mode,
        )

    async def output_ends(self) -> dict[TopicPartition, int]:
        """Where each output partition ends for a ``read_committed`` reader now."""
        consumer = _consumer(self.stack.bootstrap_servers)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = await consumer.end_offsets(self.output_partitions)
        finally:
            await consumer.stop()
        return ends

    async def reader_caught_up(self, *, within: float = 30.0) -> bool:
        """Until the concurrent reader has read what the output topics hold now."""
        assert self.reader is not None
        return await self.reader.caught_up(await self.output_ends(), within=within)

    async def check_concurrent_reads(self, history: History) -> None:
        """What the concurrent reader read during the scenario must be exactly what the
        output topics hold at the end (``faults.reader.compare``)."""
        reader = self.reader
        assert reader is not None
        if not await self.reader_caught_up(within=60):
            self.violation(
                "concurrent_read_mismatch",
                "the concurrent reader did not reach the end of the output topics in 60 s",
            )
        if reader.failure is not None:
            self.violation("harness_error", f"the concurrent reader failed: {reader.failure!r}")
        held = reads_of(
            [*history.updated, *history.rejected, *history.dead_letters, *history.state]
        )
        for violation in compare(reader.reads, held):
            self.violation(violation.kind, violation.message)
        if reader.errors:
            self.notes.append(f"the concurrent reader retried {reader.errors} failed fetch(es)")

    def check_durability(self, history: History, plan: LoadPlan, load: LoadProducer) -> None:
        """Every record the broker acknowledged is in the log where it said it put it."""
        logged = {(c.partition, c.offset): c for c in history.produced}
        for ack in load.acks:
            record = plan.records[ack.index]
            found = logged.get((ack.partition, ack.offset))
            if found is None or (found.key, found.value) != (record.key, record.value):
                self.violation(
                    "lost_write",
                    f"record {ack.index} was acknowledged at {ack.partition}:{ack.offset} "
                    "but is not there in the command topic",
                )
        for index in load.abandoned:
            self.notes.append(f"record {index} was never acknowledged (gave up resending)")
