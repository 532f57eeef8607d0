"""Applying one update to one customer: the rules that need stored state, and the merge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.command import AddressUpdate, CustomerUpdate, CustomerUpdateCommand
from schemas.errors import ErrorObject, invalid
from service.domain.customer import ADDRESS_FIELDS, Address, CustomerState, evolve

#: Who holds an invoice prefix: a customer id, or None when it is free.
PrefixOwner = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Applied:
    before: CustomerState
    after: CustomerState
    #: For each public field the update changed, its value before (object form).
    previous_attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refused:
    error: ErrorObject


def apply_update(
    current: CustomerState | None, command: CustomerUpdateCommand, prefix_owner: PrefixOwner
) -> Applied | Refused:
    """Check ``command`` against the stored customer and return the customer after it.

    Every applied command moves the version on by one, even one that changes no field,
    so that each applied command has exactly one event with its own sequence.
    """
    if current is None:
        return Refused(
            invalid("resource_missing", "subject", f"No such customer: '{command.subject}'")
        )
    if command.expectedversion is not None and command.expectedversion != current.version:
        return Refused(
            invalid(
                "version_conflict",
                "expectedversion",
                f"Customer '{current.id}' is at version {current.version}, "
                f"not the expected version {command.expectedversion}",
            )
        )
    body = command.data
    refusal = _check_rules(current, body, prefix_owner)
    if refusal is not None:
        return refusal
    changes = body.changes()
    after = merge(current, body, changes)
    previous = {}
    for name in changes:
        # Compared as stored (dataclasses, tuples); shown as the customer object shows them.
        if getattr(current, name) != getattr(after, name):
            previous[name] = current.field_object(name)
    return Applied(before=current, after=after, previous_attributes=previous)


def _check_rules(
    current: CustomerState, body: CustomerUpdate, prefix_owner: PrefixOwner
) -> Refused | None:
    fields_set = body.model_fields_set
    if "invoice_prefix" in fields_set and body.invoice_prefix != current.invoice_prefix:
        owner = prefix_owner(body.invoice_prefix)
        if owner is not None and owner != current.id:
            return Refused(
                invalid(
                    "parameter_invalid",
                    "data.invoice_prefix",
                    f"Invalid data.invoice_prefix: '{body.invoice_prefix}' is already used "
                    "by another customer",
                )
            )
    if (
        "next_invoice_sequence" in fields_set
        and body.next_invoice_sequence <= current.last_invoice_sequence
    ):
        return Refused(
            invalid(
                "parameter_invalid",
                "data.next_invoice_sequence",
                f"Invalid data.next_invoice_sequence: must be greater than "
                f"{current.last_invoice_sequence}, the last invoice sequence already used",
            )
        )
    return None


def merge(
    current: CustomerState, body: CustomerUpdate, changes: dict[str, Any] | None = None
) -> CustomerState:
    """``current`` with ``body`` applied (JSON Merge Patch semantics) and version + 1.
    ``changes`` is ``body.changes()`` when the caller has it already."""
    new_values: dict[str, Any] = {}
    for name, value in (body.changes() if changes is None else changes).items():
        if name == "address":
            new_values["address"] = _merge_address(current.address, value)
        elif name == "preferred_locales":
            new_values["preferred_locales"] = tuple(value or ())
        else:
            new_values[name] = value
    new_values["version"] = current.version + 1
    return evolve(current, new_values)


def _merge_address(current: Address | None, update: AddressUpdate | None) -> Address | None:
    if update is None:
        return None
    base = current or _NO_ADDRESS
    given = update.model_fields_set
    merged = Address(*[getattr(update if name in given else base, name) for name in ADDRESS_FIELDS])
    return None if merged.is_empty() else merged


_NO_ADDRESS = Address()
