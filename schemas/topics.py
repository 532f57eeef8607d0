"""Default topic names; each can be renamed in the settings (``TOPIC_*``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    commands: str = "customer.update"
    events: str = "customer.updated"
    rejections: str = "customer.update.rejected"
    dead_letters: str = "customer.update.dlq"
    #: Compacted: the latest state of every customer (``schemas.event.CustomerStateEvent``).
    state: str = "customer.state"
