"""Test tools built from source with ``go install`` (Toxiproxy, Helm), the same way each,
and sources fetched with ``go mod download`` (the CRDs of KEDA and the Prometheus operator).

``go_install`` builds ``module@version`` with ``GOBIN`` pointing into a staging folder
next to the cache, and renames the folder into place only once the binary passes
``problem_running``: a build that dies half-way leaves nothing that looks installed. Go's
module and build caches make a rebuild after ``rm -rf`` of the cached copy quick.

The Go toolchain is ``$GO``, else ``go`` on ``PATH``, else ``$GOROOT/bin/go``, else Go's
default install location. It builds with itself (``GOTOOLCHAIN=local``): never with a
toolchain that ``go`` would download on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from devstack import tools

#: Where Go's own installer puts the toolchain, the last place looked for ``go``.
GO_DEFAULT = Path("/usr/local/go/bin/go")
#: Longest a build may take: downloading the modules, then compiling, on two cores.
BUILD_TIMEOUT = 900.0


def go_path(needed_for: str, error: Callable[[str], Exception], env: Mapping[str, str]) -> Path:
    """The Go toolchain's ``go`` command; ``error`` names ``needed_for`` when there is none."""
    candidates: list[Path] = []
    if env.get("GO"):
        candidates.append(Path(shutil.which(env["GO"]) or env["GO"]))
    on_path = shutil.which("go", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path))
    if env.get("GOROOT"):
        candidates.append(Path(env["GOROOT"]) / "bin" / "go")
    candidates.append(GO_DEFAULT)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise error(
        "the Go toolchain (go) is not on PATH, nor at $GO, $GOROOT/bin/go or "
        f"{GO_DEFAULT}; it is needed to build {needed_for}"
    )


def go_install(
    *,
    what: str,
    module: str,
    version: str,
    ldflags: str,
    final: Path,
    binary: str,
    problem_running: Callable[[Path], str | None],
    error: Callable[[str], Exception],
) -> Path:
    """Build ``module@version`` into ``final/bin/binary`` and return that path."""
    home = final.parent
    home.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}-"
    go = go_path(f"{what} {version}", error, os.environ)
    # Stale staging folders are from processes that died while holding the caller's lock.
    for stale in home.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=home))
    target = f"{module}@{version}"
    try:
        staging.chmod(0o755)
        env = {
            **os.environ,
            "GOBIN": str(staging / "bin"),
            # A static binary that needs no C toolchain.
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-buildvcs=false -trimpath",
        }
        result = _go(go, ["install", f"-ldflags={ldflags}", target], env, staging, error)
        if result.returncode != 0:
            raise error(
                f"go install {target} exited with {result.returncode}:\n"
                + tools.tail(result.stdout + result.stderr)
            )
        problem = problem_running(staging / "bin" / binary)
        if problem is not None:
            raise error(f"the {what} just built does not run: {problem}")
        if final.exists():  # a copy that no longer runs, or of another version
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final / "bin" / binary


def go_download(*, what: str, module: str, version: str, error: Callable[[str], Exception]) -> Path:
    """The source folder of ``module@version`` in Go's module cache, downloaded from the
    module proxy on first use (read only: Go keeps it so)."""
    go = go_path(f"{what} {version}", error, os.environ)
    target = f"{module}@{version}"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    result = _go(go, ["mod", "download", "-json", target], env, Path(tempfile.gettempdir()), error)
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = {}
    if result.returncode != 0 or "Dir" not in answer:
        raise error(
            f"go mod download {target} exited with {result.returncode}:\n"
            + tools.tail(answer.get("Error", "") or result.stdout + result.stderr)
        )
    return Path(answer["Dir"])


def _go(
    go: Path, args: list[str], env: dict[str, str], cwd: Path, error: Callable[[str], Exception]
) -> subprocess.CompletedProcess[str]:
    """``go args``, its output captured; ``error`` when it cannot run or runs too long."""
    try:
        return subprocess.run(
            [str(go), *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"go {' '.join(args)}: {exc}") from exc
