"""Failpoints: named places where a test can make the process die, or freeze, on purpose.

The fault-injection suite needs faults at exact moments (after the database commit but
before the offset commit; after the relay's Kafka commit but before it deletes the rows;
inside the relay's Kafka transaction) that no outside signal can hit reliably.
``FAILPOINTS=after_batch_commit@3`` SIGKILLs the process the third time that point is
reached; ``in_relay_transaction@2:stop`` SIGSTOPs it there instead, so that the suite
can break something else while the process holds that moment, then SIGCONT it. Unset in
production, each point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from typing import Literal

AFTER_BATCH_COMMIT = "after_batch_commit"
AFTER_RELAY_PUBLISH = "after_relay_publish"
IN_RELAY_TRANSACTION = "in_relay_transaction"
KNOWN = frozenset({AFTER_BATCH_COMMIT, AFTER_RELAY_PUBLISH, IN_RELAY_TRANSACTION})

Action = Literal["kill", "stop"]
_SIGNALS: dict[Action, signal.Signals] = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}

_armed: dict[str, tuple[int, Action]] = {}


def parse(spec: str) -> dict[str, tuple[int, Action]]:
    """``"name@count:action,name"`` to ``{name: (count, action)}`` (count 1 and action
    ``kill`` when omitted).

    Raises:
        ValueError: naming an unknown failpoint or action, or a count that is not a
            positive integer.
    """
    armed: dict[str, tuple[int, Action]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, action = item.partition(":")
        name, _, count = point.partition("@")
        if name not in KNOWN:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(KNOWN))}")
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"failpoint {name!r} needs a positive count, not {count!r}")
        if action not in ("", "kill", "stop"):
            raise ValueError(f"failpoint {name!r}: unknown action {action!r}; use kill or stop")
        armed[name] = (int(count or 1), "stop" if action == "stop" else "kill")
    return armed


def arm(spec: str) -> None:
    _armed.clear()
    _armed.update(parse(spec))


def reached(name: str) -> None:
    """Die (or freeze) here if ``name`` is armed and this is the hit it waits for."""
    armed = _armed.get(name)
    if armed is None:
        return
    remaining, action = armed
    if remaining > 1:
        _armed[name] = (remaining - 1, action)
        return
    del _armed[name]
    os.kill(os.getpid(), _SIGNALS[action])
