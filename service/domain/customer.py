"""A customer as the service holds it, and its public object form."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from schemas.customer import Customer, SubscriptionList


@dataclass(frozen=True, slots=True)
class Address:
    city: str | None = None
    country: str | None = None
    line1: str | None = None
    line2: str | None = None
    postal_code: str | None = None
    state: str | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, field.name) is None for field in fields(self))

    def to_object(self) -> dict[str, str | None]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


ADDRESS_FIELDS = tuple(field.name for field in fields(Address))


@dataclass(frozen=True, slots=True)
class CustomerState:
    """One row of ``customers``. ``version`` counts applied updates; ``last_invoice_sequence``
    is the highest invoice number already issued (written by invoicing, read here)."""

    id: str
    created: int
    delinquent: bool
    address: Address | None
    description: str | None
    email: str | None
    invoice_prefix: str | None
    next_invoice_sequence: int
    name: str | None
    phone: str | None
    preferred_locales: tuple[str, ...]
    tax_exempt: str
    last_invoice_sequence: int
    version: int

    def field_object(self, name: str) -> Any:
        """The value of public field ``name`` as the customer object shows it."""
        value = getattr(self, name)
        if name == "address":
            return None if value is None else value.to_object()
        if name == "preferred_locales":
            return list(value)
        return value

    def to_object(self, subscriptions: SubscriptionList | None = None) -> Customer:
        return Customer(
            id=self.id,
            created=self.created,
            delinquent=self.delinquent,
            address=self.field_object("address"),
            description=self.description,
            email=self.email,
            invoice_prefix=self.invoice_prefix,
            next_invoice_sequence=self.next_invoice_sequence,
            name=self.name,
            phone=self.phone,
            preferred_locales=list(self.preferred_locales),
            tax_exempt=self.tax_exempt,
            subscriptions=subscriptions,
        )
