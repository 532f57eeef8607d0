"""Events the service publishes, as CloudEvents 1.0 structured JSON envelopes.

* ``customer.updated`` (topic ``customer.updated``): a command was applied.
* ``customer.update.rejected`` (topic ``customer.update.rejected``): a command was refused.
* ``customer.state`` (topic ``customer.state``, compacted): a customer's whole current
  state, published with every ``customer.updated`` event (in the same Kafka transaction)
  and by ``customer-service backfill``; the latest record of each key is the customer now.

All are keyed by the customer id. ``causationid`` is the id of the command that caused
the event and ``correlationid`` is copied from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from schemas.customer import Customer
from schemas.errors import ErrorObject

UPDATED_TYPE = "customer.updated"
REJECTED_TYPE = "customer.update.rejected"
STATE_TYPE = "customer.state"
SEQUENCE_DIGITS = 20
_OPTIONAL_ATTRIBUTES = ("correlationid", "traceparent", "causationid")


def format_sequence(version: int) -> str:
    """The ``sequence`` attribute for a customer version: zero-padded so string order is
    version order, as the CloudEvents sequence extension requires."""
    return str(version).zfill(SEQUENCE_DIGITS)


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, Field(description="Unique per event; the same on a republished copy.")]
    source: Annotated[str, Field(description="The service that published the event.")]
    subject: Annotated[str, Field(description="The customer id.")]
    time: Annotated[datetime, Field(description="When the service produced the event.")]
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: Annotated[
        str | None, Field(description="The command's correlationid, when it had one.")
    ] = None
    traceparent: Annotated[
        str | None, Field(description="W3C trace context of the command, when it had one.")
    ] = None

    @model_serializer(mode="wrap")
    def _omit_absent_attributes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # CloudEvents leaves out an optional attribute that has no value, not sends null.
        data: dict[str, Any] = handler(self)
        for name in _OPTIONAL_ATTRIBUTES:
            if data.get(name, "") is None:
                del data[name]
        return data


class CustomerUpdatedData(BaseModel):
    """The customer after the update, and what the update changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object: Customer
    previous_attributes: Annotated[
        dict[str, Any],
        Field(description="For each field the update changed, its value before the update."),
    ]


class CustomerUpdatedEvent(_Envelope):
    """A ``customer.update`` command was applied; published to topic ``customer.updated``,
    keyed by the customer id."""

    type: Literal["customer.updated"] = "customer.updated"
    sequence: Annotated[
        str,
        Field(
            pattern=rf"^[0-9]{{{SEQUENCE_DIGITS}}}$",
            description=(
                "The customer's version after this update, zero-padded to 20 digits. "
                "Versions of one customer increase by one with every applied command."
            ),
        ),
    ]
    causationid: Annotated[str, Field(description="The id of the command that was applied.")]
    data: CustomerUpdatedData


class CustomerStateData(BaseModel):
    """The customer as it is at ``sequence``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object: Customer


class CustomerStateEvent(_Envelope):
    """A customer's whole state at one version; published to the compacted topic
    ``customer.state``, keyed by the customer id, so that the topic's latest record of a
    key is that customer as it is now. A subscriber reads the topic from its start to
    build a complete view, then follows ``customer.updated``."""

    type: Literal["customer.state"] = "customer.state"
    sequence: Annotated[
        str,
        Field(
            pattern=rf"^[0-9]{{{SEQUENCE_DIGITS}}}$",
            description=(
                "The customer's version, zero-padded to 20 digits: the same as the "
                "``customer.updated`` event published with it. A customer's records never go "
                "back in version; a backfill may publish the same version again."
            ),
        ),
    ]
    causationid: Annotated[
        str | None,
        Field(description="The command that made this version; absent on a backfill."),
    ] = None
    data: CustomerStateData


class CommandRecord(BaseModel):
    """Where a command was read: what its producer's acknowledgement said."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]


class RejectionData(BaseModel):
    """Which command was refused, for which customer, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: Annotated[
        str | None,
        Field(
            description=(
                "The command's id, as sent when it is a printable string of at most 255 "
                "characters (even one the rules refuse); else null, and ``record`` is what "
                "the producer can match on."
            )
        ),
    ]
    customer_id: str
    error: ErrorObject
    # Optional only so that rejections published before it existed still read back.
    record: Annotated[
        CommandRecord | None,
        Field(description="Where the refused command was read: topic, partition, offset."),
    ] = None


class CustomerUpdateRejectedEvent(_Envelope):
    """A ``customer.update`` command was refused and changed nothing; published to topic
    ``customer.update.rejected``, keyed by the record key of the command."""

    type: Literal["customer.update.rejected"] = "customer.update.rejected"
    # Defaulted because the serializer leaves it out when the command had no usable id:
    # without a default this model could not read back a rejection it had published.
    causationid: Annotated[
        str | None, Field(description="The refused command's id; absent when it had none.")
    ] = None
    data: RejectionData
