"""A worker whose database sessions do not carry the ``application_name`` the harness gave
it, so that ``pg_stat_activity`` never shows it inside a batch: a fault meant to hit an
open batch transaction (a SIGKILL mid-batch) cannot be injected as designed, and only a
scenario that says so (``fault_not_injected``) rather than kill it anyway notices."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tests.faults.workers import run_worker


def anonymous(url: str) -> str:
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query) if name != "application_name"]
    return urlunsplit(parts._replace(query=urlencode(query)))


if __name__ == "__main__":
    os.environ["DATABASE_URL"] = anonymous(os.environ["DATABASE_URL"])
    run_worker()
