"""Helm, to render the project's chart in tests exactly as ``helm install`` would.

``helm_path`` returns a ``helm`` binary of version ``VERSION`` that runs, looked up in
this order:

1. ``HELM`` in the environment (a path, or a name on ``PATH``).
2. The copy cached under ``<home>/helm/bin`` by an earlier call.
3. Else it is built from source with ``go install MODULE@vVERSION`` (``go_build``),
   and kept once ``helm version`` names ``VERSION``. A first build takes a few minutes.

Two processes that call this at once take turns on ``<home>/helm.lock``.
"""

from __future__ import annotations

import re
from pathlib import Path

from devstack import go_build, tools

VERSION = "4.3.2"
MODULE = "helm.sh/helm/v4/cmd/helm"
ENV_VAR = "HELM"
BINARY = "helm"
#: As Helm's release build links it: stripped, and knowing its full version (the
#: source alone says only the minor version).
LDFLAGS = f"-s -w -X helm.sh/helm/v4/internal/version.version=v{VERSION}"


class HelmSetupError(RuntimeError):
    """No working helm could be found or built; the message says why."""


def helm_path(home: Path) -> Path:
    """A helm of ``VERSION`` that runs; ``home`` is the devstack folder."""
    return tools.provide(
        what="helm",
        env_var=ENV_VAR,
        cached=cached_path(home),
        lock=home / "helm.lock",
        problem_running=_problem_running,
        install=lambda: _build(home),
        error=HelmSetupError,
    )


def cached_path(home: Path) -> Path:
    return home / "helm" / "bin" / BINARY


def _build(home: Path) -> Path:
    return go_build.go_install(
        what="helm",
        module=MODULE,
        version=f"v{VERSION}",
        ldflags=LDFLAGS,
        final=home / "helm",
        binary=BINARY,
        problem_running=_problem_running,
        error=HelmSetupError,
    )


def _problem_running(path: Path) -> str | None:
    """None when ``path`` is a helm of ``VERSION``; else what is wrong."""
    problem, output = tools.run_problem(path, "version", "--short")
    if problem is None and re.search(rf"\bv{re.escape(VERSION)}\b", output) is None:
        return f"{path} is not version {VERSION}: {tools.tail(output)}"
    return problem
