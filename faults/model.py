"""The reference model: what the service ought to do with each produced record.

It is the service's own pure decision code (``classify`` and ``decide_batch``) run one
record at a time, in partition order, from the seeded customers; no I/O and no clock.
A faulty run may batch, retry, crash and redeliver however it likes: if the service is
exactly-once, every record still ends with the outcome this model gives it.

The model is exact when every command id and every invoice prefix a command asks for
belongs to one partition; records of different partitions are processed in an order
nobody controls, so a prefix wanted by customers on two partitions, or a command id
sent under two keys, has no single right answer. ``faults.load`` never produces either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.domain import binary_mode
from service.domain.authorization import Authorizer, JwtAuthorizer, UnsignedAuthorizer
from service.domain.batch import BatchState, Outcome, decide_batch
from service.domain.customer import CustomerState
from service.domain.inbound import Classified, InboundRecord, Limits, classify

Position = tuple[int, int]

#: Longest command id the service echoes back in a rejection (``inbound._echo``).
MAX_ECHOED_ID = 255
#: The algorithm of the suite's signed mode (``AUTH_JWT_ALGORITHMS``), with a shared key.
SIGNING_ALGORITHM = "HS256"


def signed_authorizer(key: str) -> JwtAuthorizer:
    """What a worker run with ``AUTH_JWT_KEY=key`` and the suite's algorithm checks."""
    return JwtAuthorizer(key, algorithms=[SIGNING_ALGORITHM], clock=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class ProducedCommand:
    """One record of the command topic, as it sits in the log."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    #: The record key as text: the customer the record is for (None when unreadable).
    customer_id: str | None
    #: The command id a rejection would carry (None when the record has no usable id).
    command_id: str | None
    #: The value parsed as a JSON object; None for poison that is not one.
    body: Mapping[str, Any] | None

    @property
    def position(self) -> Position:
        return (self.partition, self.offset)

    def describe(self) -> str:
        what = f"command {self.command_id}" if self.command_id else "record without id"
        return f"{what} at {self.partition}:{self.offset} (key {self.customer_id!r})"


def produced_command(
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] = (),
) -> ProducedCommand:
    """Read what the checker needs out of a raw command record."""
    headers = tuple(headers)
    customer_id = None
    if key:
        try:
            customer_id = key.decode("utf-8")
        except UnicodeDecodeError:
            customer_id = None
    body: dict[str, Any] | None = None
    if value is not None:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = None
        if binary_mode.is_binary(headers):
            # The command binary mode makes, read as the service reads it; a header that
            # cannot be an attribute leaves it without a body (it is refused whole).
            built = binary_mode.document(headers, parsed)
            body = built if isinstance(built, dict) else None
        elif isinstance(parsed, dict):
            body = parsed
    return ProducedCommand(
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        customer_id=customer_id,
        command_id=echoed_id(body.get("id")) if body is not None else None,
        body=body,
    )


def echoed_id(value: object) -> str | None:
    """The id a rejection carries for a command whose ``id`` attribute is ``value``.

    The same rule as the service's ``inbound._echo``; kept here because the checker
    must not reach into private helpers, and a divergence shows up as unmatched
    rejections rather than passing silently.
    """
    if isinstance(value, str) and 0 < len(value) <= MAX_ECHOED_ID and value.isprintable():
        return value
    return None


def inbound_record(command: ProducedCommand, topic: str) -> InboundRecord:
    return InboundRecord(
        topic=topic,
        partition=command.partition,
        offset=command.offset,
        timestamp=0,
        timestamp_type=0,
        key=command.key,
        value=command.value,
        headers=command.headers,
    )


def classify_produced(
    command: ProducedCommand, topic: str, limits: Limits, authorizer: Authorizer | None = None
) -> Classified:
    """``authorizer`` is the workers' (unsigned mode when None)."""
    return classify(inbound_record(command, topic), limits, authorizer or UnsignedAuthorizer())


@dataclass(frozen=True, slots=True)
class Expected:
    """The outcome the model gives a record."""

    outcome: Outcome
    #: The rejection's error code, or the dead letter's reason code.
    code: str | None = None
    #: The customer's version after an applied command.
    version: int | None = None


class ReferenceModel:
    """Feeds records one at a time through the service's decision code."""

    def __init__(
        self,
        seeded: Mapping[str, CustomerState],
        *,
        topic: str,
        limits: Limits | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.customers: dict[str, CustomerState] = dict(seeded)
        self._seen: dict[str, bytes] = {}
        self._topic = topic
        self._limits = limits or Limits()
        self._authorizer = authorizer or UnsignedAuthorizer()

    def step(self, command: ProducedCommand) -> Expected:
        record = inbound_record(command, self._topic)
        item = classify(record, self._limits, self._authorizer)
        owners = {c.invoice_prefix: c.id for c in self.customers.values() if c.invoice_prefix}
        decided = decide_batch(
            [(record, item)],
            BatchState(customers=self.customers, prefix_owners=owners, known_commands=self._seen),
        )
        self.customers.update(decided.changed)
        self._seen.update({row.command_id: row.fingerprint for row in decided.processed})
        [decision] = decided.decisions
        code: str | None = None
        if decision.error is not None:
            code = decision.error.code
        elif decision.poison is not None:
            code = decision.poison.code
        version = decision.applied.after.version if decision.applied is not None else None
        return Expected(decision.outcome, code, version)


def expected_outcomes(
    produced: Iterable[ProducedCommand],
    seeded: Mapping[str, CustomerState],
    *,
    topic: str,
    limits: Limits | None = None,
    authorizer: Authorizer | None = None,
) -> dict[Position, Expected]:
    """The model's outcome for every record, keyed by its position."""
    model = ReferenceModel(seeded, topic=topic, limits=limits, authorizer=authorizer)
    return {
        command.position: model.step(command)
        for command in sorted(produced, key=lambda command: command.position)
    }
