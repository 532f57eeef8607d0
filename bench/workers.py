"""Worker processes under test: ours (``customer-service worker``) and the naive
baseline (``python -m bench.naive_worker``), each a subprocess with its own log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

import psutil

from bench.kafka_io import BenchmarkError
from service.infrastructure.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

WorkerKind = Literal["ours", "naive"]


def cli_script() -> Path:
    """The ``customer-service`` console script of this interpreter's environment."""
    return Path(sys.executable).parent / "customer-service"


def worker_argv(
    kind: WorkerKind, *, profile: Path | None = None, verb: str = "worker"
) -> list[str]:
    """The command line of a worker (or of ours with another ``verb``, such as
    ``relay``); ``profile`` runs ours under cProfile, writing there."""
    if kind == "naive":
        return [sys.executable, "-m", "bench.naive_worker"]
    script = cli_script()
    if profile is not None:
        # The console script is a plain Python file, so cProfile can run it as a script;
        # ``-m service.entrypoints.cli`` would not work: the module has no ``__main__`` block.
        return [sys.executable, "-m", "cProfile", "-o", str(profile), str(script), verb]
    if script.exists():
        return [str(script), verb]
    return [sys.executable, "-c", "from service.entrypoints.cli import app; app()", verb]


def worker_env(
    settings: Settings,
    *,
    log_level: str,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The environment of a worker: the caller's (so Kafka security settings or tuning
    such as ``BATCH_MAX_RECORDS`` pass through), the benchmark's endpoints, topics and
    group, then ``extra``."""
    env = dict(base)
    env.update(settings.environment())
    env.update(
        {
            "HTTP_PORT": "0",
            "LOG_LEVEL": log_level,
            "LOG_FORMAT": "json",
            # ``bench`` is not part of the installed wheel; run from the checkout.
            "PYTHONPATH": os.pathsep.join(
                part for part in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if part
            ),
        }
    )
    env.update(extra or {})
    return env


def passed_through_settings(base: Mapping[str, str] = os.environ) -> list[str]:
    """Names of service settings the caller's environment sets for the workers (beyond
    the ones the benchmark sets itself), for the report."""
    ours = {
        "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "KAFKA_CONSUMER_GROUP", "TOPIC_COMMANDS",
        "TOPIC_EVENTS", "TOPIC_REJECTIONS", "TOPIC_DEAD_LETTERS", "TOPIC_STATE",
        "RELAY_TRANSACTIONAL_ID", "HTTP_PORT", "LOG_LEVEL", "LOG_FORMAT",
    }  # fmt: skip
    names = {name.upper() for name in Settings.model_fields}
    return sorted(name for name in base if name in names and name not in ours)


def read_rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB, from ``/proc/<pid>/status`` (None if gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_vm_rss(text)


def parse_vm_rss(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return None


def port_of(address: str) -> int:
    """The port of a ``host:port`` address (the first of a list)."""
    return int(address.split(",")[0].rsplit(":", 1)[1])


def connections_to(pids: Iterable[int], ports: Mapping[str, int]) -> dict[str, int]:
    """Established TCP connections of the processes ``pids`` and their descendants to each
    of ``ports`` (by name), counted by remote port: which of the broker's listeners a
    worker talks to."""
    counted = dict.fromkeys(ports, 0)
    names = {port: name for name, port in ports.items()}
    processes: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for connection in connections:
            name = names.get(connection.raddr.port) if connection.raddr else None
            if name is not None and connection.status == psutil.CONN_ESTABLISHED:
                counted[name] += 1
    return counted


class WorkerProcess:
    """One worker subprocess, its output going to ``log_path``."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        # A session of its own: a Ctrl-C meant for the benchmark does not reach the
        # worker; the benchmark stops it (SIGTERM, a clean stop) on its way out.
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        """Raise ``BenchmarkError`` with the end of its log if the worker has exited."""
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise BenchmarkError(
                f"the {self.name} worker exited with status {code}; the end of "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_kib(self) -> int | None:
        return read_rss_kib(self.pid)

    async def stop(self, grace: float = 60.0) -> int | None:
        """SIGTERM (the worker finishes its batch and drains), SIGKILL if it is still
        running ``grace`` seconds later; return the exit status."""
        process = self._process
        if process is None:
            return None
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await asyncio.to_thread(process.wait, 10)
            return process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


class WorkerGroup:
    """Several worker processes of one consumer group, and the relay process when the
    relay runs on its own, handled as one."""

    def __init__(
        self, consumers: Sequence[WorkerProcess], relay: WorkerProcess | None = None
    ) -> None:
        assert consumers, "a group needs at least one worker"
        self.consumers = list(consumers)
        self.relay = relay
        self.members = [*consumers, *([relay] if relay is not None else [])]
        self.name = consumers[0].name
        self.log_path = consumers[0].log_path

    def start(self) -> None:
        for member in self.members:
            member.start()

    def consumer_pids(self) -> list[int]:
        return [member.pid for member in self.consumers]

    def relay_pids(self) -> list[int]:
        return [] if self.relay is None else [self.relay.pid]

    def pids(self) -> list[int]:
        return [member.pid for member in self.members]

    def check_alive(self) -> None:
        for member in self.members:
            member.check_alive()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"== {m.log_path}\n{m.log_tail(lines)}" for m in self.members)

    def rss_kib(self) -> int | None:
        """The largest worker's RSS: memory per process is what must stay flat."""
        sizes = [size for size in (m.rss_kib() for m in self.consumers) if size is not None]
        return max(sizes) if sizes else None

    async def stop(self, grace: float = 60.0) -> int | None:
        """Stop every member; the status is the first non-zero one, else 0."""
        statuses = await asyncio.gather(*(member.stop(grace) for member in self.members))
        failed = [status for status in statuses if status]
        return failed[0] if failed else statuses[0]
