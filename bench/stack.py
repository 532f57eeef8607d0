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

from devstack.stack import Stack, open_stack

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
