"""Failpoints: named places where a test can make the process die on purpose.

The fault-injection suite needs crashes at exact moments (after the database commit but
before the offset commit; after the relay's Kafka commit but before it deletes the rows)
that no outside signal can hit reliably. ``FAILPOINTS=after_batch_commit@3`` SIGKILLs the
process the third time that point is reached. Unset in production, each point is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

AFTER_BATCH_COMMIT = "after_batch_commit"
AFTER_RELAY_PUBLISH = "after_relay_publish"
KNOWN = frozenset({AFTER_BATCH_COMMIT, AFTER_RELAY_PUBLISH})

_armed: dict[str, int] = {}


def parse(spec: str) -> dict[str, int]:
    """``"name@count,name"`` to ``{name: count}`` (count 1 when omitted).

    Raises:
        ValueError: naming an unknown failpoint or a count that is not a positive integer.
    """
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("@")
        if name not in KNOWN:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(KNOWN))}")
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"failpoint {name!r} needs a positive count, not {count!r}")
        armed[name] = int(count or 1)
    return armed


def arm(spec: str) -> None:
    _armed.clear()
    _armed.update(parse(spec))


def reached(name: str) -> None:
    """Die here if ``name`` is armed and this is the hit it waits for."""
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining > 1:
        _armed[name] = remaining - 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
