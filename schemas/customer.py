"""The customer object, as the public API returns it and as events carry it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Object):
    city: str | None
    country: Annotated[
        str | None, Field(description="Two-letter country code (ISO 3166-1 alpha-2).")
    ]
    line1: str | None
    line2: str | None
    postal_code: str | None
    state: str | None


class Subscription(_Object):
    id: str
    object: Literal["subscription"] = "subscription"
    status: str
    created: Annotated[int, Field(description="Unix seconds.")]
    current_period_end: Annotated[int | None, Field(description="Unix seconds.")]


class SubscriptionList(_Object):
    object: Literal["list"] = "list"
    data: list[Subscription]
    has_more: bool
    url: str


class Customer(_Object):
    """The full customer. ``subscriptions`` is present only when the command expanded it."""

    id: str
    object: Literal["customer"] = "customer"
    created: Annotated[int, Field(description="Time of creation, in seconds since the Unix epoch.")]
    delinquent: bool
    address: Address | None
    description: str | None
    email: str | None
    invoice_prefix: str | None
    next_invoice_sequence: int
    name: str | None
    phone: str | None
    preferred_locales: list[str]
    tax_exempt: Literal["exempt", "none", "reverse"]
    subscriptions: SubscriptionList | None = Field(
        default=None, description="Present only when the command's expand named it."
    )

    @model_serializer(mode="wrap")
    def _omit_unexpanded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An unexpanded field is absent from the object, not null, as in the public API.
        data: dict[str, Any] = handler(self)
        if self.subscriptions is None:
            data.pop("subscriptions", None)
        return data
