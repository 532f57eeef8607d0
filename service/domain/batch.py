"""Deciding a whole batch of records at once, in partition order, against loaded state.

The batch is folded command by command: a customer updated twice in one batch gets two
versions and two events, exactly as if the commands had come one poll apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.command import CustomerUpdateCommand
from schemas.errors import ErrorObject
from service.domain.customer import CustomerState
from service.domain.inbound import Classified, InboundRecord, Invalid, Poison, Valid
from service.domain.update import Applied, Refused, apply_update

Outcome = Literal["applied", "rejected", "duplicate", "dead_lettered"]


@dataclass(frozen=True, slots=True)
class ProcessedCommand:
    """A row of the idempotency table: this command id has had this outcome."""

    command_id: str
    customer_id: str
    fingerprint: bytes
    outcome: Literal["applied", "rejected"]
    version: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    record: InboundRecord
    outcome: Outcome
    customer_id: str | None = None
    command_id: str | None = None
    correlationid: str | None = None
    command: CustomerUpdateCommand | None = None
    applied: Applied | None = None
    error: ErrorObject | None = None
    poison: Poison | None = None
    traceparent: str | None = None


@dataclass
class BatchState:
    """What the batch needs from storage, loaded (and locked) before deciding."""

    customers: dict[str, CustomerState]
    #: Current holder of each invoice prefix that some command in the batch asks for.
    prefix_owners: dict[str, str]
    #: Fingerprint of each command id of the batch that was processed before.
    known_commands: dict[str, bytes]


@dataclass
class BatchDecisions:
    decisions: list[Decision] = field(default_factory=list)
    #: Final state of every customer the batch changed.
    changed: dict[str, CustomerState] = field(default_factory=dict)
    processed: list[ProcessedCommand] = field(default_factory=list)


def requested_prefixes(items: Iterable[Classified]) -> set[str]:
    return {
        item.command.data.invoice_prefix
        for item in items
        if isinstance(item, Valid) and "invoice_prefix" in item.command.data.model_fields_set
    }


def decide_batch(
    items: Sequence[tuple[InboundRecord, Classified]], state: BatchState
) -> BatchDecisions:
    result = BatchDecisions()
    customers = dict(state.customers)
    owners = dict(state.prefix_owners)
    owners.update(
        {c.invoice_prefix: c.id for c in customers.values() if c.invoice_prefix is not None}
    )
    seen = dict(state.known_commands)

    for record, item in items:
        if isinstance(item, Poison):
            result.decisions.append(Decision(record, "dead_lettered", poison=item))
            continue
        if isinstance(item, Invalid):
            result.decisions.append(
                Decision(
                    record,
                    "rejected",
                    customer_id=item.customer_id,
                    command_id=item.command_id,
                    correlationid=item.correlationid,
                    error=item.error,
                    traceparent=item.traceparent,
                )
            )
            continue

        command = item.command
        previous = seen.get(command.id)
        if previous is not None:
            if previous == item.fingerprint:
                result.decisions.append(_decided(record, item, "duplicate"))
            else:
                result.decisions.append(
                    _decided(record, item, "rejected", error=reused_id_error(command))
                )
            continue
        seen[command.id] = item.fingerprint

        verdict = apply_update(customers.get(command.subject), command, owners.get)
        if isinstance(verdict, Refused):
            result.decisions.append(_decided(record, item, "rejected", error=verdict.error))
            result.processed.append(
                ProcessedCommand(command.id, command.subject, item.fingerprint, "rejected", None)
            )
            continue

        after = verdict.after
        customers[after.id] = after
        result.changed[after.id] = after
        before_prefix = verdict.before.invoice_prefix
        if before_prefix != after.invoice_prefix:
            if before_prefix is not None and owners.get(before_prefix) == after.id:
                del owners[before_prefix]
            if after.invoice_prefix is not None:
                owners[after.invoice_prefix] = after.id
        result.decisions.append(_decided(record, item, "applied", applied=verdict))
        result.processed.append(
            ProcessedCommand(
                command.id, command.subject, item.fingerprint, "applied", after.version
            )
        )
    return result


def _decided(record: InboundRecord, item: Valid, outcome: Outcome, **details: Any) -> Decision:
    command = item.command
    return Decision(
        record,
        outcome,
        customer_id=command.subject,
        command_id=command.id,
        correlationid=command.correlationid,
        command=command,
        traceparent=item.traceparent,
        **details,
    )


def reused_id_error(command: CustomerUpdateCommand) -> ErrorObject:
    return ErrorObject(
        type="idempotency_error",
        code="idempotency_key_reused",
        param="id",
        message=(
            f"Command id '{command.id}' was already used for a different update; "
            "an id can only be reused with the same subject, data and expectedversion"
        ),
    )
