"""Artifacts from Maven Central, fetched by Maven itself (its ``~/.m2`` caches them between
runs and clones): the broker's jars and the TLS PostgreSQL's server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def copy_dependencies(pom: Path, output: Path, *, error: type[Exception], what: str) -> None:
    """Copy the runtime dependencies ``pom`` lists into ``output``; raise ``error`` saying
    ``what`` they were for when Maven is missing or fails."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise error(f"Maven (mvn) is not on PATH; it is needed to fetch {what}")
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            # Absolute: Maven resolves a relative directory against the pom's folder.
            f"-DoutputDirectory={output.resolve()}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise error("mvn dependency:copy-dependencies failed:\n" + result.stdout + result.stderr)
