"""A worker whose ``customer.state`` record of each update carries the customer as it was
before the update, not after: every event still goes out right, with a state record in
its transaction, so only the state topic's checks (``customer_state``) notice: no record
pairs with its event's version, and a customer's latest state is one update behind its
row."""

from __future__ import annotations

import dataclasses
from typing import Any

from schemas.command import CustomerUpdateCommand
from service.domain import messages
from service.domain.events import (
    OutboundMessage,
    StateRecord,
    state_event_id,
    state_message,
    updated_message,
)
from service.domain.update import Applied
from tests.faults.workers import run_worker


def _with_the_state_before(
    applied: Applied, command: CustomerUpdateCommand, **options: Any
) -> OutboundMessage:
    message = updated_message(applied, command, **options)
    if message.state is None:
        return message
    stale = state_message(
        applied.before,
        event_id=state_event_id(options["event_id"]),
        context=options["context"],
        causationid=command.id,
        correlationid=command.correlationid,
        traceparent=options.get("traceparent"),
    )
    assert stale.value is not None
    return dataclasses.replace(message, state=StateRecord(stale.topic, stale.value, stale.headers))


if __name__ == "__main__":
    messages.updated_message = _with_the_state_before  # type: ignore[attr-defined]
    run_worker()
