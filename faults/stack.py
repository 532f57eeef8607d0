"""The suite's own Kafka broker and PostgreSQL server, which it is free to kill and pause.

They live under ``<repo>/.devstack/faults/`` (or ``$FAULTS_DEVSTACK_HOME``), apart from
the shared ``.devstack/kafka`` and ``.devstack/postgres`` that other test runs use: a
fault injected here must never reach anyone else. Whatever this stack starts it stops
at the end; a stack that was already running is left running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack import processes
from devstack import stack as shared_stack
from devstack.native_kafka import NativeKafka
from devstack.native_postgres import NativePostgres
from devstack.toxiproxy import HOST, ToxiproxyServer, server_path
from faults.network import Network

HOME_VARIABLE = "FAULTS_DEVSTACK_HOME"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".devstack" / "faults"


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(HOME_VARIABLE, str(DEFAULT_HOME)))


class SharedStackError(ValueError):
    """The chosen home is the shared development stack, which the suite must not touch."""


@dataclass
class FaultStack:
    """A broker and a server under ``home``; start with ``open``, stop with ``close``."""

    home: Path
    #: PostgreSQL is then the TLS-capable server (the wheel's has no OpenSSL).
    tls: bool = False
    kafka: NativeKafka = field(init=False)
    postgres: NativePostgres = field(init=False)
    _started: list[str] = field(default_factory=list)
    _network: Network | None = None

    def __post_init__(self) -> None:
        # Absolute, because Maven resolves a relative output directory against the
        # pom's folder and pg_ctl runs from "/".
        self.home = self.home.resolve()
        shared = shared_stack.home().resolve()
        if self.home == shared:
            raise SharedStackError(
                f"{self.home} is the shared development stack; the fault suite kills and "
                "pauses its services, so give it a home of its own"
            )
        # With the listener that advertises the Kafka proxy's port (see faults.network).
        self.kafka = NativeKafka(self.home / "kafka", proxy_listener=True)
        self.postgres = (
            NativePostgres(self.home / "postgres-tls", tls=True)
            if self.tls
            else NativePostgres(self.home / "postgres")
        )

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers()

    def admin_url(self) -> str:
        return self.postgres.url("postgres")

    def database_url(self, name: str) -> str:
        return self.postgres.url(name)

    async def open(self) -> None:
        """Start whichever of the two is not running (and remember it, to stop it)."""
        if not self.kafka.running():
            self._started.append("kafka")
        elif not self.kafka.listens_for_proxy():
            # Started before it had the proxied listener: restart it with one.
            await asyncio.to_thread(self.kafka.stop)
        await asyncio.to_thread(self.kafka.start)
        if not self.postgres.running():
            self._started.append("postgres")
        await asyncio.to_thread(self.postgres.start)

    async def close(self) -> None:
        """Stop what ``open`` started; a paused broker is resumed first so it can stop."""
        self.kafka.resume()
        if self._network is not None:
            await self._network.close()
            await asyncio.to_thread(self._network.server.stop)
            self._network = None
        if "postgres" in self._started:
            await asyncio.to_thread(self.postgres.stop)
        if "kafka" in self._started:
            await asyncio.to_thread(self.kafka.stop)
        self._started.clear()

    async def network(self) -> Network:
        """Toxiproxy between the workers and this stack (built, cached and started on
        first use, and stopped by ``close``); each call hands the proxies back healed."""
        if self._network is not None:
            await self._network.heal()
            return self._network
        binary = await asyncio.to_thread(server_path, self.home)
        server = ToxiproxyServer(self.home / "toxiproxy-server", binary)
        await asyncio.to_thread(server.start)
        listener, advertised = self.kafka.proxy_ports()
        try:
            self._network = await Network.open(
                server,
                postgres_upstream=f"{HOST}:{self.postgres.port()}",
                kafka_listen=f"{HOST}:{advertised}",
                kafka_upstream=f"{HOST}:{listener}",
            )
        except BaseException:
            await asyncio.to_thread(server.stop)
            raise
        return self._network

    # -- faults ------------------------------------------------------------------------

    async def kill_kafka(self) -> None:
        await asyncio.to_thread(self.kafka.kill)

    async def start_kafka(self) -> None:
        await asyncio.to_thread(self.kafka.start)

    def pause_kafka(self) -> None:
        self.kafka.pause()

    def resume_kafka(self) -> None:
        self.kafka.resume()

    async def crash_postgres(self) -> None:
        await asyncio.to_thread(self.postgres.stop, mode="immediate")

    async def start_postgres(self) -> None:
        await asyncio.to_thread(self.postgres.start)

    async def sigkill_postgres(self) -> int:
        """SIGKILL the postmaster: no shutdown at all, not even an immediate one. Its
        backends notice their parent is gone and exit; the server can start again once
        they have (they still hold its shared memory). Returns how many there were."""
        pid = self.postgres.pid()
        if pid is None:
            raise RuntimeError("PostgreSQL is not running")
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(
            processes.wait_until,
            lambda: not any(processes.pid_alive(child) for child in (pid, *children)),
            timeout=60,
            interval=0.1,
            what="PostgreSQL's backends to exit after the postmaster died",
        )
        return len(children)

    def mount_small_disk(self, name: str, *, size_mib: int) -> Path:
        """A tmpfs of ``size_mib`` the server may write to (owned by its user), for a
        tablespace that runs out of space. Needs root, as the suite's machines have.

        Raises:
            OSError: when it cannot be mounted here.
        """
        mount_point = self.home / "small-disks" / name
        mount_point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {mount_point}: {done.stderr.strip()}")
        owner = self.postgres.data_dir.stat()
        os.chown(mount_point, owner.st_uid, owner.st_gid)
        return mount_point

    def unmount_small_disk(self, mount_point: Path) -> None:
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True, check=False)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found
