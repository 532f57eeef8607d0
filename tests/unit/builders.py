"""Builders of commands, customers and records shared by the unit tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from schemas.command import AUTHORIZATION_ACTION, CustomerUpdateCommand
from service.domain.customer import CustomerState
from service.domain.events import OutboundMessage
from service.domain.inbound import InboundRecord

CUSTOMER_ID = "cus_1"
OTHER_CUSTOMER_ID = "cus_2"


def command_document(data: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
    """A valid command as parsed JSON; ``attributes`` override or add envelope attributes."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "cmd-1",
        "source": "tests",
        "type": "customer.update",
        "subject": CUSTOMER_ID,
        "principal": "svc-tests",
        "permissions": AUTHORIZATION_ACTION,
        "data": {} if data is None else data,
    }
    document.update(attributes)
    return document


def command(data: dict[str, Any] | None = None, **attributes: Any) -> CustomerUpdateCommand:
    return CustomerUpdateCommand.model_validate(command_document(data, **attributes))


def customer(**changes: Any) -> CustomerState:
    """A stored customer at version 1 with no optional field set, then ``changes``."""
    base = CustomerState(
        id=CUSTOMER_ID,
        created=1_700_000_000,
        delinquent=False,
        address=None,
        description=None,
        email=None,
        invoice_prefix=None,
        next_invoice_sequence=1,
        name=None,
        phone=None,
        preferred_locales=(),
        tax_exempt="none",
        last_invoice_sequence=0,
        version=1,
    )
    return dataclasses.replace(base, **changes)


def record(
    value: bytes | None,
    *,
    key: bytes | None = CUSTOMER_ID.encode(),
    offset: int = 0,
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> InboundRecord:
    return InboundRecord(
        topic="customer.update",
        partition=0,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=key,
        value=value,
        headers=headers,
    )


def record_of(document: object, *, key: bytes | None = CUSTOMER_ID.encode()) -> InboundRecord:
    return record(orjson.dumps(document), key=key)


def no_owner(prefix: str) -> str | None:
    """A prefix-owner lookup for a world where every invoice prefix is free."""
    return None


def value_of(message: OutboundMessage) -> bytes:
    """The bytes of a published message; only a dead-lettered tombstone has none."""
    value = message.value
    assert value is not None
    return value
