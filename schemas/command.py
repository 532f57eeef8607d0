"""The ``customer.update`` command: a CloudEvents 1.0 structured JSON envelope.

``data`` is the body of the public "Update customer" API. Field states follow JSON
Merge Patch (RFC 7396), with ``""`` meaning the same as ``null``:

* a field that is absent is left unchanged;
* ``null`` or ``""`` clears a clearable field (see ``CLEARABLE_FIELDS``);
* any other value sets it.

``address`` merges: only the address fields present change, and ``address: null`` (or
``""``) clears the whole address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from schemas import fields

COMMAND_TYPE = "customer.update"
AUTHORIZATION_ACTION = "pay:customers:update"

#: Fields of ``data`` that ``null`` or ``""`` clears. Clearing ``preferred_locales`` leaves
#: an empty list. ``invoice_prefix``, ``next_invoice_sequence`` and ``tax_exempt`` always
#: hold a value and cannot be cleared (``tax_exempt: "none"`` is its default state).
CLEARABLE_FIELDS = ("address", "description", "email", "name", "phone", "preferred_locales")

#: What ``expand`` may name: the customer object's expandable fields.
EXPANDABLE = ("subscriptions",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _absent_means_unchanged(schema: JsonDict) -> None:
    # In a merge patch an absent field is left alone while null clears it, so the
    # "default": null pydantic derives from "= None" would tell clients the opposite (and
    # for the fields that cannot be cleared, advertise a value that is refused).
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for field in properties.values():
            if isinstance(field, dict):
                field.pop("default", None)


class _Patch(_Strict):
    model_config = ConfigDict(json_schema_extra=_absent_means_unchanged)


class AddressUpdate(_Patch):
    """Address fields to change; absent ones stay as they are."""

    city: fields.AddressLine = None
    country: Annotated[
        fields.Country, Field(description="Two-letter country code (ISO 3166-1 alpha-2).")
    ] = None
    line1: Annotated[
        fields.AddressLine,
        Field(description="Address line 1 (e.g., street, block, PO Box, or company name)."),
    ] = None
    line2: Annotated[
        fields.AddressLine,
        Field(description="Address line 2 (e.g., apartment, suite, unit, or building)."),
    ] = None
    postal_code: Annotated[fields.PostalCode, Field(description="ZIP or postal code.")] = None
    state: Annotated[
        fields.AddressLine,
        Field(description="State, county, province, prefecture, or region."),
    ] = None


class CustomerUpdate(_Patch):
    """The body of "Update customer". A field that is absent is left unchanged; ``null`` or
    ``""`` clears a clearable one; any other value sets it. ``address`` merges field by
    field."""

    address: AddressUpdate | None = None
    description: fields.Description = None
    email: fields.Email = None
    invoice_prefix: Annotated[
        fields.InvoicePrefix,
        Field(
            description=(
                "The prefix for the customer used to generate unique invoice numbers. "
                "Must be 3-12 uppercase letters or numbers."
            )
        ),
    ] = None  # type: ignore[assignment]  # absent means unchanged; null is refused
    next_invoice_sequence: Annotated[
        fields.InvoiceSequence,
        Field(description="The sequence to be used on the customer's next invoice."),
    ] = None  # type: ignore[assignment]
    name: fields.Name = None
    phone: fields.Phone = None
    preferred_locales: fields.PreferredLocales = None
    tax_exempt: Literal["exempt", "none", "reverse"] = None  # type: ignore[assignment]
    expand: Annotated[
        list[Literal["subscriptions"]] | None,
        Field(
            description="Specifies which fields in the event's object should be expanded.",
            json_schema_extra={"uniqueItems": True},
        ),
    ] = None

    @field_validator(
        "address", mode="before", json_schema_input_type=AddressUpdate | None | Literal[""]
    )
    @classmethod
    def _address_empty_string_clears(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("invoice_prefix", "next_invoice_sequence", "tax_exempt", mode="before")
    @classmethod
    def _not_clearable(cls, value: object) -> object:
        if value is None or value == "":
            raise PydanticCustomError("parameter_invalid_empty", "cannot be cleared")
        return value

    @field_validator("expand")
    @classmethod
    def _expand_unique(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else fields.ensure_unique(value)

    def changes(self) -> dict[str, Any]:
        """The fields this update names (set or cleared), excluding ``expand``."""
        # In declaration order, so that what is derived from it (previous_attributes) is
        # the same bytes on every run.
        given = self.model_fields_set
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name in given and name != "expand"
        }

    def expands(self, field: str) -> bool:
        return bool(self.expand) and field in (self.expand or ())


#: The highest version a customer can reach (PostgreSQL bigint), and so the highest
#: ``expectedversion``: a larger one is refused rather than carried into the database.
MAX_VERSION = 2**63 - 1


class CustomerUpdateCommand(_Strict):
    """A request to update one customer, published to topic ``customer.update``.

    The record key must equal ``subject``. ``id`` is the idempotency key: a command
    delivered again is applied once, and reusing an id for a different update is refused.
    """

    specversion: Literal["1.0"]
    id: Annotated[
        fields.Identifier,
        Field(description="Command id, unique per update; also its idempotency key."),
    ]
    source: Annotated[
        StrictStr,
        Field(min_length=1, max_length=1024, description="URI-reference of the sender."),
        fields.NoWhitespace,
    ]
    type: Literal["customer.update"]
    subject: Annotated[fields.Identifier, Field(description="The id of the customer to update.")]
    time: Annotated[
        Annotated[datetime, Field(strict=False), fields.Rfc3339] | None,
        BeforeValidator(fields.ensure_rfc3339),
        Field(description="When the command was created (RFC 3339, with an offset)."),
    ] = None
    datacontenttype: Annotated[
        StrictStr,
        Field(
            max_length=255,
            description=(
                "application/json, with parameters if any; a charset must be utf-8. "
                "Absent means application/json."
            ),
        ),
        AfterValidator(fields.ensure_json_media_type),
        fields.documented(pattern=f"^{fields.JSON_MEDIA_TYPE.pattern}$"),
    ] = "application/json"
    dataschema: Annotated[
        Annotated[
            StrictStr,
            Field(min_length=1, max_length=1024),
            AfterValidator(fields.ensure_absolute_uri),
            fields.documented(pattern=f"^{fields.ABSOLUTE_URI.pattern}$"),
        ]
        | None,
        Field(description="The schema data adheres to (CloudEvents): an absolute URI, not read."),
    ] = None
    expectedversion: Annotated[
        StrictInt | None,
        Field(
            ge=1,
            le=MAX_VERSION,
            description="Apply only if the customer is at this version.",
        ),
    ] = None
    correlationid: Annotated[
        fields.Identifier | None,
        Field(description="Copied to the resulting event to tie a conversation together."),
    ] = None
    traceparent: Annotated[
        fields.TraceParent | None,
        Field(description="W3C trace context (CloudEvents distributed tracing extension)."),
    ] = None
    tracestate: Annotated[
        StrictStr | None, Field(max_length=512, description="W3C tracestate, passed along.")
    ] = None
    principal: Annotated[
        fields.Identifier | None,
        Field(description="Who the command acts for (unsigned authorization mode)."),
    ] = None
    permissions: Annotated[
        StrictStr | None,
        Field(
            max_length=4096,
            description=(
                "Space-separated actions the principal holds (unsigned authorization mode); "
                f"must include {AUTHORIZATION_ACTION}."
            ),
        ),
    ] = None
    authtoken: Annotated[
        StrictStr | None,
        Field(
            max_length=8192,
            description="A signed JWT naming the principal and its permissions (signed mode).",
        ),
    ] = None
    data: CustomerUpdate

    @field_validator("source")
    @classmethod
    def _source_is_single_token(cls, value: str) -> str:
        return fields.ensure_identifier(value)
