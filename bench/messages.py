"""CPU per command of building a batch's outbox messages (``messages_for``: the
``customer.updated`` event and, with ``PUBLISH_STATE``, its ``customer.state`` record), the
pure step after folding, without Kafka or PostgreSQL:

    .venv/bin/python -m bench.messages [--runs 15] [--batch 500]

It builds the messages of a batch of applied updates over and over, with the state topic
on and off in turn, and prints the median, min and max of the process CPU time per command
over the runs. Compare two checkouts in the same sitting, interleaved: the machine's speed
drifts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from schemas.command import AUTHORIZATION_ACTION, CustomerUpdateCommand
from schemas.topics import Topics
from service.domain.batch import Decision
from service.domain.customer import Address, CustomerState
from service.domain.events import EventContext
from service.domain.inbound import InboundRecord
from service.domain.messages import messages_for
from service.domain.update import Applied, apply_update
from service.infrastructure.ids import RandomUuids


def _decisions(count: int) -> list[Decision]:
    decisions = []
    for n in range(count):
        customer_id = f"cus_{n:06d}"
        stored = CustomerState(
            id=customer_id, created=1_700_000_000, delinquent=False,
            address=Address(city="Rome", country="IT", line1="Via Roma 1"),
            description=None, email="ada@example.com", invoice_prefix=None,
            next_invoice_sequence=1, name="Ada", phone=None, preferred_locales=("it", "en"),
            tax_exempt="none", last_invoice_sequence=0, version=5,
        )  # fmt: skip
        command = CustomerUpdateCommand.model_validate(
            {
                "specversion": "1.0", "id": f"cmd-{n}", "source": "bench",
                "type": "customer.update", "subject": customer_id, "principal": "svc-bench",
                "permissions": AUTHORIZATION_ACTION, "correlationid": f"req-{n}",
                "data": {"name": f"Ada {n}", "address": {"city": "Milan"}},
            }
        )  # fmt: skip
        applied = apply_update(stored, command, lambda _prefix: None)
        if not isinstance(applied, Applied):
            raise SystemExit(f"the bench's command was refused: {applied}")
        record = InboundRecord("customer.update", 0, n, 0, 0, customer_id.encode(), b"{}", ())
        decisions.append(
            Decision(record, "applied", customer_id, command.id, command.correlationid,
                     command, applied)
        )  # fmt: skip
    return decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    decisions = _decisions(args.batch)
    new_id = RandomUuids()
    per_command: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.runs):
        for mode in ("on", "off"):
            context = EventContext(
                "customer-service", datetime.now(UTC), Topics(), publish_state=mode == "on"
            )
            started = time.process_time()
            messages_for(
                decisions,
                context=context,
                consumer_group="bench",
                dead_letter_max_bytes=1_048_588,
                subscriptions={},
                traceparents=[None] * len(decisions),
                new_id=new_id,
            )
            elapsed = time.process_time() - started
            per_command[mode].append(elapsed / len(decisions) * 1e6)
    for mode, figures in per_command.items():
        print(
            f"messages_for, state {mode}: {statistics.median(figures):.1f} us CPU per command "
            f"(median of {len(figures)} runs; min {min(figures):.1f}, max {max(figures):.1f})"
        )


if __name__ == "__main__":
    main()
