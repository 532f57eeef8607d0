"""Deliberately broken workers, for ``--worker-command``: each one monkeypatches a bug into
the service and then runs the real ``customer-service worker``. The fault suite must
report each of them (``tests/e2e/test_fault_suite.py``); the real worker it must pass.

Run one as ``python tests/faults/workers/<name>.py``: the worker takes its settings from
the environment, as ``customer-service worker`` does. A worker's current directory is its
scenario's log folder, where a broken worker may leave a marker so that it misbehaves
once per scenario rather than in every incarnation.
"""

from __future__ import annotations

import os

from service.entrypoints.cli import app


def run_worker() -> None:
    """``customer-service worker``, with whatever the caller patched in."""
    app(["worker"])


def first_time(marker: str) -> bool:
    """True once per scenario: creates ``marker`` in the current directory (the scenario's
    log folder), and is False if it was there already."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
