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
from pathlib import Path

from devstack.native_kafka import NativeKafka
from devstack.native_postgres import NativePostgres
from devstack.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO_ROOT / ".devstack" / "bench"
POM = REPO_ROOT / "devstack" / "kafka" / "pom.xml"


def open_bench_stack(
    env: Mapping[str, str] = os.environ,
    *,
    home: Path = DEFAULT_HOME,
    progress: Callable[[str], None] = lambda _: None,
) -> Stack:
    given_kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
    given_database = env.get("DATABASE_URL")
    if given_kafka and given_database:
        return Stack(given_kafka, given_database, "environment", "environment")
    cleanups: list[Callable[[], None]] = []
    try:
        if given_kafka:
            kafka, kafka_source = given_kafka, "environment"
        else:
            broker = NativeKafka(home / "kafka")
            if not broker.running():
                progress(f"starting the benchmark's Kafka under {broker.home} ...")
                cleanups.append(broker.stop)
            broker.start()
            kafka, kafka_source = broker.bootstrap_servers(), "native"
        if given_database:
            database, postgres_source = given_database, "environment"
        else:
            server = NativePostgres(home / "postgres")
            if not server.running():
                progress(f"starting the benchmark's PostgreSQL under {server.home} ...")
                cleanups.append(server.stop)
            server.start()
            database, postgres_source = server.url(), "native"
    except BaseException:
        for cleanup in reversed(cleanups):
            cleanup()
        raise
    return Stack(
        kafka,
        database,
        kafka_source,  # type: ignore[arg-type]
        postgres_source,  # type: ignore[arg-type]
        _cleanups=cleanups,
    )


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
