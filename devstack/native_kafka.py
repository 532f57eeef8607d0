"""A real single-node Apache Kafka broker (KRaft) run from its Maven Central jars.

The broker's jars are resolved once by ``mvn dependency:copy-dependencies`` from
``devstack/kafka/pom.xml``; Maven's local repository (``~/.m2``) caches them between
runs and between clones. Storage is formatted with ``kafka.tools.StorageTool`` and the
broker is started as ``kafka.Kafka`` with a generated ``server.properties``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack import maven, processes
from devstack.certificates import Certificates

POM_DIR = Path(__file__).parent / "kafka"
HOST = "127.0.0.1"
#: Also loopback, but not a name the server certificate carries: a listener here fails
#: every client that checks the host name.
OTHER_HOST = "127.0.0.2"


@dataclass(frozen=True)
class TlsListener:
    """One TLS listener of the broker: where, which protocol, and how it misbehaves."""

    protocol: str  # SSL or SASL_SSL
    host: str = HOST
    client_certificate: bool = False  # required of the client
    expired: bool = False  # presents an expired certificate


#: The TLS listeners, each on a port of its own. The ``*_OTHER_HOST`` ones listen on a
#: loopback address the certificate does not name, for hostname checks.
TLS_LISTENERS = {
    "SSL": TlsListener("SSL"),
    "SASL_SSL": TlsListener("SASL_SSL"),
    "MTLS": TlsListener("SSL", client_certificate=True),
    "SSL_OTHER_HOST": TlsListener("SSL", host=OTHER_HOST),
    "SASL_SSL_OTHER_HOST": TlsListener("SASL_SSL", host=OTHER_HOST),
    "MTLS_OTHER_HOST": TlsListener("SSL", host=OTHER_HOST, client_certificate=True),
    "SSL_EXPIRED": TlsListener("SSL", expired=True),
}


@dataclass(frozen=True)
class SaslCredentials:
    username: str
    password: str


class KafkaSetupError(RuntimeError):
    """The broker could not be installed, formatted or started; the message says which step."""


@dataclass(frozen=True)
class NativeKafka:
    """A broker whose files all live under ``home``.

    With ``proxy_listener`` it has one more PLAINTEXT listener, ``PROXIED``, which
    advertises another port than its own: the port a TCP proxy (Toxiproxy, for the fault
    suite) listens on and forwards to this listener. A client bootstrapped at the proxy
    is told, in every metadata answer, to reach the broker at the proxy again, so none of
    its connections bypasses it. See ``proxy_ports``.
    """

    home: Path
    proxy_listener: bool = False

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def ports_file(self) -> Path:
        return self.home / "ports.json"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def certificates(self) -> Certificates:
        return Certificates(self.home / "tls")

    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self._ports()['broker']}"

    def pid(self) -> int | None:
        pid = processes.read_pid(self.pid_file)
        return pid if pid is not None and processes.pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    # -- lifecycle ------------------------------------------------------------------

    def install(self) -> None:
        """Copy the broker jars into ``libs`` (a no-op when they are already there)."""
        marker = self.libs / ".complete"
        pom = POM_DIR / "pom.xml"
        if marker.exists() and marker.read_text() == pom.read_text():
            return
        java = shutil.which("java")
        if java is None:
            raise KafkaSetupError("Java (java) is not on PATH; the broker needs Java 17 or newer")
        shutil.rmtree(self.libs, ignore_errors=True)
        maven.copy_dependencies(pom, self.libs, error=KafkaSetupError, what="the broker jars")
        marker.write_text(pom.read_text())

    def start(self, *, timeout: float = 90.0) -> None:
        """Format storage on first use, start the broker and wait until it serves metadata.

        A broker already running is restarted when its configuration is not the one this
        code writes (a checkout that added listeners since it started), so that every
        endpoint this class hands out is one the broker serves.
        """
        if self.running():
            if self._configured():
                self.wait_ready(timeout=timeout)
                return
            self.stop()
        self.install()
        ports = self._ports(allocate=True)
        credentials = self.sasl_credentials(create=True)
        self._write_properties(ports, credentials)
        if not (self.data_dir / "meta.properties").exists():
            self._format(credentials)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *self._java(heap="1g"),
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={POM_DIR / 'log4j2.properties'}",
            "kafka.Kafka",
            str(self.properties_file),
        ]
        # Started through a shell in the background so the broker outlives this process
        # and is not left as our zombie; setsid gives it a process group of its own.
        script = 'setsid "$@" >"$LOG" 2>&1 </dev/null & echo $!'
        result = subprocess.run(
            ["sh", "-c", script, "sh", *command],
            env={**_java_env(), "LOG": str(self.log_dir / "stdout.log")},
            capture_output=True,
            text=True,
            check=True,
        )
        self.pid_file.write_text(result.stdout.strip())
        self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Block until the broker answers a metadata request; fail early if it died."""
        bootstrap = self.bootstrap_servers()

        def ready() -> bool:
            if not self.running():
                raise KafkaSetupError(f"the broker exited during start-up; see {self.log_dir}")
            host, port = bootstrap.rsplit(":", 1)
            return processes.port_open(host, int(port)) and asyncio.run(
                metadata_available(bootstrap)
            )

        processes.wait_until(ready, timeout=timeout, interval=0.5, what=f"Kafka at {bootstrap}")

    def stop(self) -> None:
        pid = processes.read_pid(self.pid_file)
        if pid is not None:
            processes.terminate(pid, timeout=60)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker: a crash, for fault-injection tests."""
        pid = self.pid()
        if pid is not None:
            processes.terminate_now(pid)

    def pause(self) -> None:
        pid = self.pid()
        if pid is not None:
            processes.pause(pid)

    def resume(self) -> None:
        pid = self.pid()
        if pid is not None:
            processes.resume(pid)

    def destroy(self) -> None:
        """Stop the broker and delete its data (the jars stay)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.ports_file.unlink(missing_ok=True)
        (self.home / "sasl.json").unlink(missing_ok=True)
        self.sasl_password_file.unlink(missing_ok=True)
        shutil.rmtree(self.certificates.directory, ignore_errors=True)

    # -- internals ------------------------------------------------------------------

    def _ports(self, *, allocate: bool = False) -> dict[str, int]:
        """The broker, controller and SASL ports, chosen once and kept with the data."""
        ports: dict[str, int] = {}
        if self.ports_file.exists():
            ports = json.loads(self.ports_file.read_text())
        elif not allocate:
            raise KafkaSetupError("the native broker has never been started")
        missing = {"broker", "controller", "sasl", *(n.lower() for n in TLS_LISTENERS)} - set(ports)
        if self.proxy_listener:
            missing |= {"proxied", "proxied_advertised"} - set(ports)
        if missing and allocate:
            self.home.mkdir(parents=True, exist_ok=True)
            ports.update({name: processes.free_port(HOST) for name in missing})
            self.ports_file.write_text(json.dumps(ports))
        return ports

    def sasl_bootstrap_servers(self) -> str:
        """The listener that requires SASL (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)."""
        port = self._ports().get("sasl")
        if port is None:
            raise KafkaSetupError(
                "this broker was started before it had a SASL listener; restart it "
                "(python -m devstack down, then up)"
            )
        return f"{HOST}:{port}"

    def tls_bootstrap_servers(self, listener: str) -> str:
        """The bootstrap address of one of ``TLS_LISTENERS`` (its certificates are under
        ``certificates``; the SASL user is ``sasl_credentials``)."""
        if listener not in TLS_LISTENERS:
            raise ValueError(f"no TLS listener {listener!r}; one of {sorted(TLS_LISTENERS)}")
        return f"{TLS_LISTENERS[listener].host}:{self._ports()[listener.lower()]}"

    def _configured(self) -> bool:
        """Whether the broker's configuration file is what ``_write_properties`` writes now."""
        try:
            written = self.properties_file.read_text()
            ports = self._ports()
            credentials = self.sasl_credentials()
            wanted = self._properties_text(ports, credentials)
        except (FileNotFoundError, KafkaSetupError, KeyError):  # KeyError: a port not chosen yet
            return False
        return written == wanted

    def proxy_ports(self) -> tuple[int, int]:
        """The proxied listener's own port and the port it advertises, where the proxy
        must listen (``127.0.0.1`` both). The proxy forwards the second to the first."""
        ports = self._ports()
        if "proxied" not in ports or "proxied_advertised" not in ports:
            raise KafkaSetupError("this broker has no proxied listener (proxy_listener=False)")
        return ports["proxied"], ports["proxied_advertised"]

    def listens_for_proxy(self) -> bool:
        """Whether the broker's configuration (as last written) has the proxied listener
        at the ports kept with its data: a broker started without it needs a restart."""
        try:
            listener, advertised = self.proxy_ports()
            text = self.properties_file.read_text()
        except (KafkaSetupError, FileNotFoundError):
            return False
        return f"PROXIED://{HOST}:{listener}" in text and f"PROXIED://{HOST}:{advertised}" in text

    def sasl_credentials(self, *, create: bool = False) -> SaslCredentials:
        """The local SASL user, made up when the storage is first formatted (never kept in
        the repository). A stack formatted before it existed is formatted again."""
        path = self.home / "sasl.json"
        if path.exists():
            credentials = SaslCredentials(**json.loads(path.read_text()))
            if not self.sasl_password_file.exists():  # made before the file existed
                self.sasl_password_file.write_text(credentials.password)
                self.sasl_password_file.chmod(0o600)
            return credentials
        if not create:
            raise KafkaSetupError("the native broker has never been started")
        if (self.data_dir / "meta.properties").exists():
            shutil.rmtree(self.data_dir)  # formatted without the SCRAM user: start afresh
        self.home.mkdir(parents=True, exist_ok=True)
        credentials = SaslCredentials("devstack", secrets.token_urlsafe(18))
        path.write_text(json.dumps(dataclasses.asdict(credentials)))
        self.sasl_password_file.write_text(credentials.password)
        for written in (path, self.sasl_password_file):
            written.chmod(0o600)
        return credentials

    @property
    def sasl_password_file(self) -> Path:
        """The SASL user's password alone, to give as ``KAFKA_SASL_PASSWORD_FILE``."""
        return self.home / "sasl-password"

    def _java(self, *, heap: str) -> list[str]:
        return ["java", f"-Xms{heap}", f"-Xmx{heap}", "-cp", f"{self.libs}/*"]

    def _format(self, credentials: SaslCredentials) -> None:
        cluster_id = new_cluster_id()
        # SCRAM users live in the cluster metadata, written when storage is formatted.
        scram = [
            argument
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for argument in (
                "--add-scram",
                f"{mechanism}=[name={credentials.username},password={credentials.password}]",
            )
        ]
        result = subprocess.run(
            [
                *self._java(heap="256m"),
                f"-Dlog4j2.configurationFile={POM_DIR / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.log_dir}",
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(self.properties_file),
                *scram,
            ],
            env=_java_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaSetupError("kafka.tools.StorageTool format failed:\n" + result.stderr)

    def _write_properties(self, ports: dict[str, int], credentials: SaslCredentials) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.certificates.ensure()
        self.properties_file.write_text(self._properties_text(ports, credentials))

    def _properties_text(self, ports: dict[str, int], credentials: SaslCredentials) -> str:
        port, controller_port, sasl_port = ports["broker"], ports["controller"], ports["sasl"]
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{credentials.username}="{credentials.password}";'
        )
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        listeners = [
            f"PLAINTEXT://{HOST}:{port}",
            f"CONTROLLER://{HOST}:{controller_port}",
            f"SASL_PLAINTEXT://{HOST}:{sasl_port}",
        ]
        advertised = [f"PLAINTEXT://{HOST}:{port}", f"SASL_PLAINTEXT://{HOST}:{sasl_port}"]
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        for name, tls in TLS_LISTENERS.items():
            address = f"{name}://{tls.host}:{ports[name.lower()]}"
            listeners.append(address)
            advertised.append(address)
            protocols += f",{name}:{tls.protocol}"
        if self.proxy_listener:
            # Listens on one port and advertises the proxy's: a client that came in through
            # the proxy is sent back to it for every broker connection (see the class).
            listeners.append(f"PROXIED://{HOST}:{ports['proxied']}")
            advertised.append(f"PROXIED://{HOST}:{ports['proxied_advertised']}")
            protocols += ",PROXIED:PLAINTEXT"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{controller_port}",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            # A second listener that authenticates, so the service's SASL settings can be
            # tested against a real broker: PLAIN and both SCRAM variants, one local user.
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain_login,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram_login,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram_login,
            **self._tls_properties(plain_login, scram_login),
            "log.dirs": str(self.data_dir),
            "num.partitions": "6",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        return "".join(f"{key}={value}\n" for key, value in properties.items())

    def _tls_properties(self, plain_login: str, scram_login: str) -> dict[str, str]:
        """PEM key and trust stores (no JKS, no keytool): the broker's certificate (or
        the expired one), the CA that client certificates must chain to where the broker
        asks for one, and the SASL logins of the SASL_SSL listeners."""
        certificates = self.certificates
        properties = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certificates.server),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certificates.ca),
            "ssl.client.auth": "none",
        }
        for name, tls in TLS_LISTENERS.items():
            prefix = f"listener.name.{name.lower()}"
            if tls.client_certificate:
                properties[f"{prefix}.ssl.client.auth"] = "required"
            if tls.expired:
                properties[f"{prefix}.ssl.keystore.type"] = "PEM"
                properties[f"{prefix}.ssl.keystore.location"] = str(certificates.expired_server)
            if tls.protocol == "SASL_SSL":
                properties[f"{prefix}.plain.sasl.jaas.config"] = plain_login
                properties[f"{prefix}.scram-sha-256.sasl.jaas.config"] = scram_login
                properties[f"{prefix}.scram-sha-512.sasl.jaas.config"] = scram_login
        return properties


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A cluster id as Kafka's own `Uuid.randomUuid` makes it: base64url of 16 random bytes.

    Like Kafka, refuse an id that starts with "-": StorageTool's argument parser would take
    it for an option and fail the format (one id in 64 does).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    # The broker must not pick up a user's KAFKA_* or JAVA_TOOL_OPTIONS tuning by accident.
    env.pop("JAVA_TOOL_OPTIONS", None)
    return env


async def metadata_available(bootstrap_servers: str) -> bool:
    """True when a broker at ``bootstrap_servers`` answers with cluster metadata."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) != -1
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
