"""The ``customer-service`` command, as installed: it stops cleanly on SIGTERM even while
it is still starting.

Importing the command line and its clients takes a second or more on a busy machine, and
until the worker's (or the relay's) event loop takes SIGTERM over, Python's default would
end the process with -15: an orchestrator scaling down a pod that has just started sees a
failed process. Nothing has begun then that needs finishing, so a SIGTERM that early
ends it with status 0. Other commands keep the default: a ``migrate`` interrupted half-way
must not report success.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

LONG_RUNNING = frozenset({"worker", "relay"})


def main() -> None:
    if LONG_RUNNING.intersection(sys.argv[1:2]):
        signal.signal(signal.SIGTERM, _stop_before_starting)
    from service.entrypoints.cli import app

    app()


def _stop_before_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
