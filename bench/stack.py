"""The benchmark's own Kafka and PostgreSQL.

Endpoints given in the environment (both ``KAFKA_BOOTSTRAP_SERVERS`` and
``DATABASE_URL``) are used as they are. Otherwise the benchmark runs its own native
services under ``<repo>/.devstack/bench/`` (never the developer's ``.devstack/kafka``
and ``.devstack/postgres``, which tests and other people use), starting them if they
are not running and stopping them at the end if it started them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.native_kafka import NativeKafka
from devstack.native_postgres import NativePostgres
from devstack.stack import Stack, native_kafka, native_postgres_tls, open_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".devstack" / "bench"
POM = REPO_ROOT / "devstack" / "kafka" / "pom.xml"


def open_bench_stack(
    env: Mapping[str, str] = os.environ,
    *,
    home: Path = DEFAULT_HOME,
    progress: Callable[[str], None] = lambda _: None,
) -> Stack:
    """devstack's precedence with a home of the benchmark's own, always native (never a
    container: the benchmark measures this machine's services)."""
    progress(f"using the benchmark's stack under {home} (started if not running) ...")
    return open_stack({**env, "DEVSTACK_HOME": str(home), "DEVSTACK_MODE": "native"})


#: The endpoints ``--tls`` needs the benchmark's own stack for.
ENDPOINT_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")


def tls_refusal(env: Mapping[str, str]) -> str | None:
    """Why ``--tls`` cannot run with this environment (None when it can): its TLS
    endpoints and certificates are those of the benchmark's native stack."""
    given = [name for name in ENDPOINT_VARIABLES if env.get(name)]
    if not given:
        return None
    return (
        f"--tls runs against the benchmark's own native stack (its TLS listener, TLS "
        f"PostgreSQL and certificates); unset {' and '.join(given)}"
    )


@dataclass
class TlsStack:
    """The TLS side of the benchmark's native stack: the broker's ``SSL`` listener and
    the TLS-capable PostgreSQL, which also takes the superuser's plain connections."""

    kafka: NativeKafka
    postgres: NativePostgres
    #: Whether ``open_tls_stack`` started the server (and ``close`` stops it).
    started: bool = False

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka.tls_bootstrap_servers("SSL")

    def close(self) -> None:
        if self.started:
            self.postgres.stop()
            self.started = False


def open_tls_stack(
    home: Path = DEFAULT_HOME, *, progress: Callable[[str], None] = lambda _: None
) -> TlsStack:
    """The TLS endpoints of the native stack under ``home`` (whose broker
    ``open_bench_stack`` started), starting its TLS PostgreSQL if it is not running."""
    # Absolute: pg_ctl runs from "/" and Maven resolves paths against the pom's folder.
    env = {"DEVSTACK_HOME": str(home.resolve())}
    kafka, postgres = native_kafka(env), native_postgres_tls(env)
    progress(f"using the TLS PostgreSQL under {postgres.home} (started if not running) ...")
    started = not postgres.running()
    postgres.start()
    return TlsStack(kafka, postgres, started=started)


def kafka_version(home: Path | None) -> str:
    """The broker's version: from the jars of the benchmark's native broker (under
    ``home``) when it runs one, else the version the devstack pins."""
    if home is not None:
        for jar in sorted((home / "kafka" / "libs").glob("kafka_2.13-*.jar")):
            return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
    try:
        text = POM.read_text()
    except OSError:
        return "unknown"
    start = text.find("<kafka.version>")
    end = text.find("</kafka.version>")
    if start < 0 or end < 0:
        return "unknown"
    return text[start + len("<kafka.version>") : end].strip() + " (devstack pom)"
