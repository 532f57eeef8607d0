"""The invariant checker: given everything that went in and came out of a run, say which
guarantee was broken, where, and how. Pure: no I/O, no clock.

What it verifies (each a separate check in ``CHECKS``, so a test can name one):

``applied_once``
    Every accepted command (one that has a ``customer.updated`` event with its id) was
    applied exactly once: each customer's final row equals the seeded row folded with
    its accepted commands in partition order (using the service's own ``merge``), at
    version seeded + number accepted, and each event carries the fold's state after its
    command. Kinds: ``lost_update``, ``extra_update``, ``row_mismatch``, ``event_content``.
``one_event_per_command``
    No outcome is published twice: one ``customer.updated`` per command id, no rejection
    or dead letter republished, no more rejections for an id than records carrying it.
    Kind: ``duplicate_event``.
``versions``
    Each customer's events carry strictly increasing, gap-free versions starting right
    after the seeded version. Kinds: ``version_gap``, ``version_not_increasing``.
``partition_order``
    Each customer's events follow the partition order of the accepted commands.
    Kind: ``reordered``.
``accounted``
    Every produced record is accounted for: applied, rejected (a rejection with its
    command id; records without a usable id are matched to id-less rejections of their
    key in order), dead-lettered (a dead letter whose ``kafka_dlt-original-*`` headers
    point at it), or a resend of a command id already accounted. Every output belongs
    to a produced record. Kinds: ``unaccounted``, ``unexpected_output``.
``outcomes``
    Every record had the outcome the reference model (``faults.model``) gives it: a
    fault must not turn an update into a rejection or a dead letter, or the reverse.
    Kind: ``wrong_outcome``.
``oracle``
    The same records against ``faults.oracle``, the contract written out again without
    the service's code, so that a wrong rule in the service (which the model and the
    fold share) shows too: every record's outcome, error code and param, or dead-letter
    reason (``oracle_outcome``), and the customer each event carries (with its version,
    ``previous_attributes`` and whether ``subscriptions`` is there) and each final row
    (``oracle_state``).
``customer_partition``
    All of one customer's events are on one partition of the events topic, where
    ``versions`` and ``partition_order`` then judge them in offset order: events split
    over partitions reach a subscriber in no defined order. Kind: ``partition_split``.
``event_details``
    Each event's ``data.previous_attributes`` holds, for every field the command changed,
    the value before it (the fold's state before and after the command, compared field
    by field), and nothing else. Every event and rejection carries the headers the
    contract gives it: the command's ``traceparent`` when it had one (its attribute, or
    else its record header; workers run without tracing, so it passes unchanged), as a
    header and an attribute, none when it had none, and the relay's one ``outbox-id``;
    and it is in the run's content mode (``History.event_content_mode``, the workers'
    ``EVENT_CONTENT_MODE``): in structured mode one ``content-type`` naming the format,
    in binary mode each attribute once as a ``ce_`` header, in the envelope's order, and
    ``content-type: application/json``. Its envelope has the attributes the README gives
    it and no other, with ``specversion`` 1.0, its own ``type``, an RFC 3339 ``time``, a
    ``source``, a 20-digit ``sequence`` (events) and, on a rejection, ``causationid``
    exactly when ``data.command_id`` is set, equal to it. Kinds: ``previous_attributes``,
    ``output_headers``, ``envelope``.
``dead_letter_content``
    Every dead letter carries the record it points at: the same key and value bytes and
    the same headers in the same order, but for what the contract changes (a header of
    the service's namespace renamed ``original-...``; a name that is not UTF-8 or holds
    NUL left out and counted in ``kafka_dlt-headers-dropped``), plus each provenance
    header once and one ``outbox-id``. A dead letter cut to fit the topic
    (``kafka_dlt-truncated``) must have needed it, keep the start of the key and value,
    carry none of the original headers, and give the original's key and value sizes
    and the value's SHA-256. Kind: ``dead_letter_content``.

``customer_state``
    The ``customer.state`` topic (``History.state``): each record is a valid
    ``schemas.event.CustomerStateEvent`` keyed by its ``subject`` with one ``outbox-id``
    (``malformed_state``); a customer's records are on one partition
    (``state_partition_split``) and their versions never go down in offset order
    (``state_went_backwards``; the same version again is a backfill's right); every
    customer in the database has a record (``state_missing``), and the latest one carries
    its final row, object and version, as the service builds it from the row
    (``state_mismatch``, also for records of a customer without a row); and every
    ``customer.updated`` event has a state record of the same outbox row (the same
    ``outbox-id``, so the same Kafka transaction) with its subject, ``sequence`` and
    ``causationid`` (``state_unpaired``).

Outputs that cannot be read at all are reported as ``malformed_output``. An output is
read in either content mode, as the README's "Content modes" table says, without the
service's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from faults import oracle
from faults.model import (
    Expected,
    Position,
    ProducedCommand,
    classify_produced,
    expected_outcomes,
)
from schemas import headers as contract
from schemas.command import CustomerUpdateCommand
from schemas.event import CustomerStateEvent
from schemas.headers import DLT_ERROR_CODE, DLT_ORIGINAL_OFFSET, DLT_ORIGINAL_PARTITION
from schemas.headers import DLT_ORIGINAL_TOPIC as DLT_TOPIC
from service.domain.authorization import Authorizer
from service.domain.customer import CustomerState
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES, record_size
from service.domain.inbound import (
    UNREADABLE_BATCH_HEADER,
    Classified,
    Limits,
    Poison,
    Valid,
    valid_header_name,
)
from service.domain.update import merge

#: How many examples of one kind of violation are spelt out before they are summarised.
MAX_EXAMPLES_PER_KIND = 20
#: The headers every dead letter carries once, saying where its record came from and why.
DLT_PROVENANCE = (
    contract.DLT_ORIGINAL_TOPIC,
    contract.DLT_ORIGINAL_PARTITION,
    contract.DLT_ORIGINAL_OFFSET,
    contract.DLT_ORIGINAL_TIMESTAMP,
    contract.DLT_ORIGINAL_TIMESTAMP_TYPE,
    contract.DLT_ORIGINAL_CONSUMER_GROUP,
    contract.DLT_ERROR_CODE,
    contract.DLT_ERROR_MESSAGE,
)
#: A dead letter may be cut only if its original, whole, would come this close to the
#: topic's ``max.message.bytes`` (the relay's own header needs room too).
CUT_SLACK_BYTES = 1024
_ROW_ID = re.compile(rb"[0-9]{1,19}")
#: README, "Content modes": a structured event's content-type, and a binary event's.
STRUCTURED_CONTENT_TYPE = b"application/cloudevents+json; charset=UTF-8"
BINARY_CONTENT_TYPE = b"application/json"
UPDATED = "customer.updated"
REJECTED = "customer.update.rejected"
#: README, "The event" and "Content modes": the attributes of each output in the
#: envelope's order (in binary mode, the order of their headers).
ENVELOPE_ORDER = {
    UPDATED: (
        "specversion", "id", "source", "subject", "time", "datacontenttype",
        "correlationid", "traceparent", "type", "sequence", "causationid", "data",
    ),
    REJECTED: (
        "specversion", "id", "source", "subject", "time", "datacontenttype",
        "correlationid", "traceparent", "type", "causationid", "data",
    ),
}  # fmt: skip
#: Present only when the command had them (a rejection's causationid: a usable id).
_OPTIONAL_ATTRIBUTES = {
    UPDATED: {"correlationid", "traceparent"},
    REJECTED: {"correlationid", "traceparent", "causationid"},
}
_SEQUENCE = re.compile(r"[0-9]{20}")


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record read back from an output topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def header(self, name: str) -> bytes | None:
        found = None
        for header, value in self.headers:
            if header == name:
                found = value
        return found

    def where(self) -> str:
        return f"{self.topic}[{self.partition}:{self.offset}]"


@dataclass(frozen=True)
class History:
    """Everything a run produced and left behind."""

    commands_topic: str
    #: Every record of the command topic, from the log itself.
    produced: Sequence[ProducedCommand]
    #: The customers as seeded before the first command.
    seeded: Mapping[str, CustomerState]
    #: The customers in the database after the run.
    final: Mapping[str, CustomerState]
    #: Everything read (read_committed) from the events, rejections and dead-letter topics.
    updated: Sequence[ConsumedRecord]
    rejected: Sequence[ConsumedRecord]
    dead_letters: Sequence[ConsumedRecord]
    limits: Limits = field(default_factory=Limits)
    #: The dead-letter topic's ``max.message.bytes``: a larger dead letter is cut to fit.
    dead_letter_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: How the workers authorized commands (signed mode, or unsigned when None).
    authorizer: Authorizer | None = None
    #: Signed mode's key, for the oracle (which does not use the service's authorizer).
    jwt_key: str | None = None
    #: The workers' ``EVENT_CONTENT_MODE``: how every event and rejection must travel.
    event_content_mode: str = "structured"
    #: Everything read (read_committed) from the ``customer.state`` topic: the relay's
    #: record of each update and the backfill's.
    state: Sequence[ConsumedRecord] = ()


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    message: str


@dataclass
class CheckResult:
    commands: int = 0
    #: Distinct command ids with a customer.updated event.
    applied: int = 0
    #: Records accounted for by a rejection event.
    rejected: int = 0
    #: Records accounted for by a dead letter.
    dead_lettered: int = 0
    #: Records that resend a command id whose outcome is already accounted for.
    resent: int = 0
    unaccounted: int = 0
    #: Outputs beyond one per outcome: republished events, rejections or dead letters,
    #: and second events for one command id.
    duplicate_events: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {violation.kind for violation in self.violations}

    def add(self, kind: str, message: str) -> None:
        self.violations.append(Violation(kind, message))

    def summary(self, per_kind: int = MAX_EXAMPLES_PER_KIND) -> list[str]:
        """The violations, at most ``per_kind`` of each kind spelt out."""
        lines: list[str] = []
        by_kind: dict[str, list[Violation]] = defaultdict(list)
        for violation in self.violations:
            by_kind[violation.kind].append(violation)
        for kind, found in by_kind.items():
            lines.extend(f"{kind}: {violation.message}" for violation in found[:per_kind])
            if len(found) > per_kind:
                lines.append(f"{kind}: ... and {len(found) - per_kind} more")
        return lines


# -- reading the outputs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Updated:
    record: ConsumedRecord
    event_id: str
    customer_id: str
    version: int
    command_id: str
    object: dict[str, Any]
    previous_attributes: Any = None
    #: The ``traceparent`` attribute (None when absent).
    traceparent: Any = None


@dataclass(frozen=True, slots=True)
class _Rejection:
    record: ConsumedRecord
    event_id: str
    customer_id: str
    command_id: str | None
    code: str
    param: Any = None
    traceparent: Any = None
    #: ``data.record``: the topic and the position of the command it names (None when
    #: the rejection has none, or it is not an object of the three).
    topic: str | None = None
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    record: ConsumedRecord
    position: Position | None
    topic: str | None
    code: str | None


def envelope(record: ConsumedRecord) -> dict[str, Any] | None:
    """The CloudEvent an output record holds, in either content mode, as structured JSON."""
    if record.value is None:
        return None
    try:
        body = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    if record.header("ce_specversion") is None:
        return body if isinstance(body, dict) else None
    # Binary mode: each attribute in a ce_ header, datacontenttype in content-type, and
    # the value is the data alone. A doubled header is output_headers' to report.
    event: dict[str, Any] = {
        name.removeprefix("ce_"): (value or b"").decode("utf-8", "replace")
        for name, value in record.headers
        if name.startswith("ce_")
    }
    content_type = record.header("content-type")
    if content_type is not None:
        event["datacontenttype"] = content_type.decode("utf-8", "replace")
    event["data"] = body
    return event


def _read_updated(record: ConsumedRecord, result: CheckResult) -> _Updated | None:
    body = envelope(record)
    try:
        assert body is not None
        updated = _Updated(
            record,
            event_id=str(body["id"]),
            customer_id=str(body["subject"]),
            version=int(body["sequence"]),
            command_id=str(body["causationid"]),
            object=dict(body["data"]["object"]),
            previous_attributes=body["data"].get("previous_attributes"),
            traceparent=body.get("traceparent"),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        result.add("malformed_output", f"{record.where()} is not a readable customer.updated")
        return None
    if record.key != updated.customer_id.encode():
        result.add(
            "malformed_output",
            f"{record.where()} is keyed {record.key!r} but is about {updated.customer_id!r}",
        )
    return updated


def _read_rejection(record: ConsumedRecord, result: CheckResult) -> _Rejection | None:
    body = envelope(record)
    try:
        assert body is not None
        data = body["data"]
        command_id = data["command_id"]
        named = data.get("record")
        topic, position = None, None
        if isinstance(named, dict) and isinstance(named.get("topic"), str):
            topic = named["topic"]
            if isinstance(named.get("partition"), int) and isinstance(named.get("offset"), int):
                position = (named["partition"], named["offset"])
        return _Rejection(
            record,
            event_id=str(body["id"]),
            customer_id=str(data["customer_id"]),
            command_id=None if command_id is None else str(command_id),
            code=str(data["error"]["code"]),
            param=data["error"].get("param"),
            traceparent=body.get("traceparent"),
            topic=topic,
            position=position,
        )
    except (AssertionError, KeyError, TypeError):
        result.add("malformed_output", f"{record.where()} is not a readable rejection")
        return None


def _read_dead_letter(record: ConsumedRecord) -> _DeadLetter:
    def text(name: str) -> str | None:
        value = record.header(name)
        return None if value is None else value.decode("utf-8", errors="replace")

    partition, offset = text(DLT_ORIGINAL_PARTITION), text(DLT_ORIGINAL_OFFSET)
    position = None
    if partition is not None and offset is not None and partition.isdigit() and offset.isdigit():
        position = (int(partition), int(offset))
    return _DeadLetter(record, position, text(DLT_TOPIC), text(DLT_ERROR_CODE))


# -- what the checks share ---------------------------------------------------------------


def _first_per(items: Iterable[Any], key: Callable[[Any], object]) -> list[Any]:
    seen: set[object] = set()
    kept = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    return kept


_Output = TypeVar("_Output", _Updated, _Rejection)


def _in_log_order(items: Iterable[_Output]) -> list[_Output]:
    return sorted(items, key=lambda item: (item.record.partition, item.record.offset))


class _Facts:
    """The outputs matched to the records they are about, computed once for all checks.

    Counting happens here, not in the checks, so that the counts do not depend on which
    checks run.
    """

    def __init__(self, history: History, result: CheckResult) -> None:
        self.history = history
        topic = history.commands_topic
        self.produced = sorted(history.produced, key=lambda command: command.position)
        self.by_position = {command.position: command for command in self.produced}
        self.classified: dict[Position, Classified] = {
            command.position: classify_produced(command, topic, history.limits, history.authorizer)
            for command in self.produced
        }

        updated = [_read_updated(record, result) for record in history.updated]
        #: Every customer.updated record, in log order (duplicates included).
        self.updated: list[_Updated] = _in_log_order(item for item in updated if item)
        rejections = [_read_rejection(record, result) for record in history.rejected]
        self.rejections: list[_Rejection] = _in_log_order(item for item in rejections if item)
        self.dead_letters = sorted(
            (_read_dead_letter(record) for record in history.dead_letters),
            key=lambda letter: (letter.record.partition, letter.record.offset),
        )

        self.events_by_command: dict[str, list[_Updated]] = defaultdict(list)
        for event in self.updated:
            self.events_by_command[event.command_id].append(event)
        #: One rejection per event id: a republished copy is a duplicate, not an outcome.
        self.distinct_rejections: list[_Rejection] = _first_per(
            self.rejections, lambda item: item.event_id
        )
        self.rejections_by_command: dict[str, list[_Rejection]] = defaultdict(list)
        self.idless_rejections: dict[str, list[_Rejection]] = defaultdict(list)
        for rejection in self.distinct_rejections:
            if rejection.command_id is None:
                self.idless_rejections[rejection.customer_id].append(rejection)
            else:
                self.rejections_by_command[rejection.command_id].append(rejection)

        self.letters_by_position: dict[Position, list[_DeadLetter]] = defaultdict(list)
        self.stray_letters: list[_DeadLetter] = []
        for letter in self.dead_letters:
            if letter.position in self.by_position and letter.topic == topic:
                self.letters_by_position[letter.position].append(letter)
            else:
                self.stray_letters.append(letter)

        #: Records not dead-lettered, by command id, in partition order.
        self.copies: dict[str, list[ProducedCommand]] = defaultdict(list)
        self.idless: dict[str | None, list[ProducedCommand]] = defaultdict(list)
        for command in self.produced:
            if command.position in self.letters_by_position:
                continue
            if command.command_id is not None:
                self.copies[command.command_id].append(command)
            else:
                self.idless[command.customer_id].append(command)

        self._account(result)
        self._fold()

    # -- accounting --------------------------------------------------------------------

    def _account(self, result: CheckResult) -> None:
        result.commands = len(self.produced)
        result.dead_lettered = len(self.letters_by_position)
        #: Each produced record that has no outcome and is not a resend of an accounted id.
        self.unaccounted: list[ProducedCommand] = []
        #: Rejections beyond the records that carry their id, per command id.
        self.excess_rejections: dict[str, int] = {}
        for command_id, copies in self.copies.items():
            applied = 1 if self.events_by_command.get(command_id) else 0
            rejections = len(self.rejections_by_command.get(command_id, ()))
            if applied + rejections == 0:
                self.unaccounted.extend(copies)
                continue
            used = min(rejections, len(copies) - applied)
            if rejections > used:
                self.excess_rejections[command_id] = rejections - used
            result.applied += applied
            result.rejected += used
            result.resent += len(copies) - applied - used

        #: Id-less records paired with the id-less rejection that names their position.
        self.idless_pairs: list[tuple[ProducedCommand, _Rejection]] = []
        naming: dict[Position, _Rejection] = {}
        self.unpaired_rejections: list[_Rejection] = []
        for keyed in self.idless_rejections.values():
            for rejection in keyed:
                if rejection.position is None or rejection.position in naming:
                    self.unpaired_rejections.append(rejection)
                else:
                    naming[rejection.position] = rejection
        for key in sorted(self.idless, key=lambda key: key or ""):
            for command in self.idless[key]:
                match = naming.pop(command.position, None)
                if match is None:
                    self.unaccounted.append(command)
                else:
                    self.idless_pairs.append((command, match))
        self.unpaired_rejections.extend(naming.values())
        result.rejected += len(self.idless_pairs)
        self.unaccounted.sort(key=lambda command: command.position)
        result.unaccounted = len(self.unaccounted)

        republished_rejections = len(self.rejections) - len(self.distinct_rejections)
        result.duplicate_events = (
            sum(len(events) - 1 for events in self.events_by_command.values())
            + republished_rejections
            + sum(self.excess_rejections.values())
            + sum(len(letters) - 1 for letters in self.letters_by_position.values())
        )

    # -- the fold ------------------------------------------------------------------------

    def applied_copy(self, command_id: str) -> ProducedCommand | None:
        """The record of ``command_id`` that the service applied: the first that is a
        valid command (an earlier invalid copy is refused without taking the id)."""
        copies = self.copies.get(command_id, [])
        for command in copies:
            if isinstance(self.classified[command.position], Valid):
                return command
        return None

    def _fold(self) -> None:
        #: Accepted commands per customer, in partition order.
        self.accepted: dict[str, list[ProducedCommand]] = defaultdict(list)
        #: Commands with an event but no record that could have been applied.
        self.unfoldable: list[str] = []
        for command_id in self.events_by_command:
            if command_id not in self.copies:
                continue  # no such record: reported as unexpected output
            copy = self.applied_copy(command_id)
            if copy is None or copy.customer_id is None:
                self.unfoldable.append(command_id)
                continue
            self.accepted[copy.customer_id].append(copy)
        for commands in self.accepted.values():
            commands.sort(key=lambda command: command.position)

        #: The fold's state right before and right after each accepted command, and at
        #: the end.
        self.before: dict[str, CustomerState] = {}
        self.after: dict[str, CustomerState] = {}
        self.folded: dict[str, CustomerState] = {}
        for customer_id, commands in self.accepted.items():
            state = self.history.seeded.get(customer_id)
            if state is None:
                continue
            for command in commands:
                assert command.body is not None
                assert command.command_id is not None
                body = CustomerUpdateCommand.model_validate(command.body).data
                self.before[command.command_id] = state
                state = merge(state, body)
                self.after[command.command_id] = state
            self.folded[customer_id] = state

    def expected_row(self, customer_id: str) -> CustomerState | None:
        return self.folded.get(customer_id, self.history.seeded.get(customer_id))

    def distinct_events_of(self) -> dict[str, list[_Updated]]:
        """Each customer's events, one per event id, in log order."""
        found: dict[str, list[_Updated]] = defaultdict(list)
        for event in _first_per(self.updated, lambda item: item.event_id):
            found[event.customer_id].append(event)
        return found


# -- the checks --------------------------------------------------------------------------


def check_applied_once(facts: _Facts, result: CheckResult) -> None:
    history = facts.history
    for command_id in facts.unfoldable:
        result.add(
            "unexpected_output",
            f"customer.updated for command {command_id}, none of whose records is a valid "
            "command that could have been applied",
        )
    for customer_id in sorted(set(history.seeded) | set(history.final) | set(facts.accepted)):
        seeded = history.seeded.get(customer_id)
        final = history.final.get(customer_id)
        accepted = facts.accepted.get(customer_id, [])
        if seeded is None or final is None:
            if accepted:
                result.add(
                    "row_mismatch",
                    f"customer {customer_id} has {len(accepted)} accepted command(s) but "
                    f"{'was never seeded' if seeded is None else 'has no row at the end'}",
                )
            continue
        expected = facts.expected_row(customer_id)
        assert expected is not None
        if final.version < expected.version:
            lost = [
                command.command_id
                for command in accepted
                if command.command_id is not None
                and facts.after[command.command_id].version > final.version
            ]
            result.add(
                "lost_update",
                f"customer {customer_id}: {len(accepted)} command(s) were accepted (published "
                f"as customer.updated) so the row should be at version {expected.version}, "
                f"but it is at version {final.version}; missing the effect of {lost}",
            )
        elif final.version > expected.version:
            result.add(
                "extra_update",
                f"customer {customer_id}: the row is at version {final.version} but only "
                f"{len(accepted)} command(s) were accepted, so it should be at "
                f"{expected.version}: an update was applied twice or without an event",
            )
        differences = _differences(final, expected)
        if differences:
            result.add(
                "row_mismatch",
                f"customer {customer_id}: the row differs from the seeded row folded with "
                f"its {len(accepted)} accepted command(s): {'; '.join(differences)}",
            )
    for command_id, events in facts.events_by_command.items():
        state = facts.after.get(command_id)
        if state is None:
            continue
        event = events[0]
        published = {k: v for k, v in event.object.items() if k != "subscriptions"}
        # Through JSON, as the event went, so both sides have the same types.
        folded = orjson.loads(orjson.dumps(state.to_object()))
        folded.pop("subscriptions", None)
        if published != folded:
            changed = sorted(
                name
                for name in published.keys() | folded.keys()
                if published.get(name) != folded.get(name)
            )
            result.add(
                "event_content",
                f"{event.record.where()} (command {command_id}) carries a customer that differs "
                f"from the fold after that command in {changed}",
            )


def _differences(final: CustomerState, expected: CustomerState) -> list[str]:
    return [
        f"{item.name} is {getattr(final, item.name)!r}, expected {getattr(expected, item.name)!r}"
        for item in fields(CustomerState)
        if item.name != "version" and getattr(final, item.name) != getattr(expected, item.name)
    ]


def check_one_event_per_command(facts: _Facts, result: CheckResult) -> None:
    for command_id, events in facts.events_by_command.items():
        if len(events) > 1:
            where = ", ".join(
                f"{event.record.where()} (id {event.event_id}, version {event.version})"
                for event in events
            )
            result.add(
                "duplicate_event",
                f"command {command_id} has {len(events)} customer.updated events: {where}",
            )
    seen: dict[str, _Rejection] = {}
    for rejection in facts.rejections:
        first = seen.setdefault(rejection.event_id, rejection)
        if first is not rejection:
            result.add(
                "duplicate_event",
                f"rejection {rejection.event_id} (command {rejection.command_id}) was published "
                f"again at {rejection.record.where()} after {first.record.where()}",
            )
    for command_id, excess in facts.excess_rejections.items():
        result.add(
            "duplicate_event",
            f"command {command_id} has {excess} more rejection(s) than records carrying it",
        )
    for position, letters in facts.letters_by_position.items():
        if len(letters) > 1:
            result.add(
                "duplicate_event",
                f"the record at {position[0]}:{position[1]} was dead-lettered {len(letters)} "
                f"times: {', '.join(letter.record.where() for letter in letters)}",
            )


def check_versions(facts: _Facts, result: CheckResult) -> None:
    for customer_id, events in sorted(facts.distinct_events_of().items()):
        seeded = facts.history.seeded.get(customer_id)
        if seeded is None:
            continue  # reported by applied_once
        previous = seeded.version
        for event in events:
            if event.version <= previous:
                result.add(
                    "version_not_increasing",
                    f"customer {customer_id}: {event.record.where()} (command "
                    f"{event.command_id}) has version {event.version} after version {previous}",
                )
            elif event.version != previous + 1:
                result.add(
                    "version_gap",
                    f"customer {customer_id}: {event.record.where()} (command "
                    f"{event.command_id}) has version {event.version} right after version "
                    f"{previous}{' (the seeded one)' if previous == seeded.version else ''}",
                )
            previous = max(previous, event.version)


def check_partition_order(facts: _Facts, result: CheckResult) -> None:
    for customer_id, events in sorted(facts.distinct_events_of().items()):
        published = _first_per(
            (event for event in events if event.command_id in facts.after),
            lambda event: event.command_id,
        )
        accepted = facts.accepted.get(customer_id, [])
        for index, (event, command) in enumerate(zip(published, accepted, strict=False)):
            if event.command_id != command.command_id:
                actual = facts.applied_copy(event.command_id)
                at = f"{actual.partition}:{actual.offset}" if actual else "?"
                result.add(
                    "reordered",
                    f"customer {customer_id}: event #{index + 1} ({event.record.where()}, "
                    f"version {event.version}) is for command {event.command_id} at {at}, but "
                    f"the next accepted command in partition order is {command.describe()}",
                )
                break


def check_accounted(facts: _Facts, result: CheckResult) -> None:
    for command in facts.unaccounted:
        result.add(
            "unaccounted",
            f"{command.describe()} has no customer.updated, no rejection and no dead letter, "
            "and is not a resend of an accounted command id",
        )
    produced_ids = set(facts.copies)
    for command_id, events in facts.events_by_command.items():
        if command_id not in produced_ids:
            result.add(
                "unexpected_output",
                f"{events[0].record.where()} is for command {command_id}, which no record "
                "that was not dead-lettered carries",
            )
    for command_id, rejections in facts.rejections_by_command.items():
        if command_id not in produced_ids:
            result.add(
                "unexpected_output",
                f"{rejections[0].record.where()} rejects command {command_id}, which no record "
                "that was not dead-lettered carries",
            )
    for rejection in facts.unpaired_rejections:
        result.add(
            "unexpected_output",
            f"{rejection.record.where()} rejects a command without id for key "
            f"{rejection.customer_id!r} at {rejection.position}, but no record without id "
            "is left there to match it",
        )
    for letter in facts.stray_letters:
        result.add(
            "unexpected_output",
            f"dead letter {letter.record.where()} points at {letter.topic}"
            f"[{letter.position}], which is not a produced record",
        )


def check_rejection_record(facts: _Facts, result: CheckResult) -> None:
    """Every rejection names the record it answers (``data.record``) and carries that
    record's id: what a producer matches a rejection on, even for a command without id."""
    topic = facts.history.commands_topic
    for rejection in facts.distinct_rejections:
        named = facts.by_position.get(rejection.position) if rejection.position else None
        if rejection.topic != topic or named is None:
            result.add(
                "unmatchable_rejection",
                f"{rejection.record.where()} names the command record {rejection.topic}"
                f"{list(rejection.position or ())}, which was not produced: its producer "
                "cannot match it",
            )
        elif named.command_id != rejection.command_id:
            result.add(
                "unmatchable_rejection",
                f"{rejection.record.where()} is for command {rejection.command_id!r}, but "
                f"names the record at {rejection.position}, whose id is {named.command_id!r}",
            )


def check_outcomes(facts: _Facts, result: CheckResult) -> None:
    history = facts.history
    expected = expected_outcomes(
        facts.produced,
        history.seeded,
        topic=history.commands_topic,
        limits=history.limits,
        authorizer=history.authorizer,
    )

    def describe(command: ProducedCommand) -> str:
        outcome = expected[command.position]
        return f"{command.describe()}: {outcome.outcome} {outcome.code or ''}".rstrip()

    for position, letters in facts.letters_by_position.items():
        model = expected[position]
        code = letters[0].code
        if model.outcome != "dead_lettered" or model.code != code:
            result.add(
                "wrong_outcome",
                f"{facts.by_position[position].describe()} was dead-lettered ({code}) but the "
                f"model expects {_expectation(model)}",
            )
    for command_id, copies in facts.copies.items():
        wanted = [expected[command.position] for command in copies]
        applied = bool(facts.events_by_command.get(command_id))
        codes = Counter(r.code for r in facts.rejections_by_command.get(command_id, ()))
        wanted_codes = Counter(item.code for item in wanted if item.outcome == "rejected")
        wanted_applied = any(item.outcome == "applied" for item in wanted)
        wanted_letters = any(item.outcome == "dead_lettered" for item in wanted)
        if applied != wanted_applied or codes != wanted_codes or wanted_letters:
            result.add(
                "wrong_outcome",
                f"command {command_id}: {'applied' if applied else 'not applied'}, rejections "
                f"{dict(codes)}, no dead letter; the model expects "
                f"[{'; '.join(describe(command) for command in copies)}]",
            )
    for command, rejection in facts.idless_pairs:
        model = expected[command.position]
        if model.outcome != "rejected" or model.code != rejection.code:
            result.add(
                "wrong_outcome",
                f"{command.describe()} was rejected ({rejection.code}) but the model expects "
                f"{_expectation(model)}",
            )


def check_customer_partition(facts: _Facts, result: CheckResult) -> None:
    partitions: dict[str, set[int]] = defaultdict(set)
    for event in facts.updated:
        partitions[event.customer_id].add(event.record.partition)
    for customer_id, found in sorted(partitions.items()):
        if len(found) > 1:
            where = ", ".join(
                f"{event.record.where()} (version {event.version})"
                for event in facts.updated
                if event.customer_id == customer_id
            )
            result.add(
                "partition_split",
                f"customer {customer_id}'s events are on partitions {sorted(found)}, so a "
                f"subscriber may read them in any order: {where}",
            )


def check_event_details(facts: _Facts, result: CheckResult) -> None:
    mode = facts.history.event_content_mode
    for kind, outputs in ((UPDATED, facts.updated), (REJECTED, facts.rejections)):
        for output in outputs:
            problems = _envelope_problems(output.record, kind, mode)
            if problems:
                result.add("envelope", f"{output.record.where()}: {'; '.join(problems)}")
    for command_id, events in facts.events_by_command.items():
        before, after = facts.before.get(command_id), facts.after.get(command_id)
        copy = facts.applied_copy(command_id)
        if before is None or after is None or copy is None:
            continue  # reported by applied_once or accounted
        expected = _previous_attributes(before, after)
        traceparent = _traceparent(facts.classified[copy.position])
        for event in events:
            if event.previous_attributes != expected:
                result.add(
                    "previous_attributes",
                    f"{event.record.where()} (command {command_id}) has previous_attributes "
                    f"{_compact(event.previous_attributes)}; the customer before it had "
                    f"{_compact(expected)} in the fields the command changed",
                )
            problems = _header_problems(event.record, event.traceparent, [traceparent], mode)
            if problems:
                result.add(
                    "output_headers",
                    f"{event.record.where()} (command {command_id}): {'; '.join(problems)}",
                )
    records_of: dict[str, list[ProducedCommand]] = {
        command_id: copies for command_id, copies in facts.copies.items()
    }
    paired = {id(rejection): command for command, rejection in facts.idless_pairs}
    for rejection in facts.rejections:
        if rejection.command_id is not None:
            candidates = records_of.get(rejection.command_id, [])
        else:
            command = paired.get(id(rejection))
            candidates = [] if command is None else [command]
        if not candidates:
            continue  # reported by accounted
        traceparents = [_traceparent(facts.classified[c.position]) for c in candidates]
        problems = _header_problems(rejection.record, rejection.traceparent, traceparents, mode)
        if problems:
            result.add(
                "output_headers",
                f"{rejection.record.where()} (rejection of "
                f"{rejection.command_id or 'a command without id'}): {'; '.join(problems)}",
            )


def _previous_attributes(before: CustomerState, after: CustomerState) -> dict[str, Any]:
    """Each field of the customer object that differs after the command, as it was before
    (through JSON, as the event went)."""
    old = orjson.loads(orjson.dumps(before.to_object()))
    new = orjson.loads(orjson.dumps(after.to_object()))
    return {name: value for name, value in old.items() if new.get(name) != value}


def _traceparent(item: Classified) -> str | None:
    """The trace context a command carries, as the service reads it."""
    return None if isinstance(item, Poison) else item.traceparent


def _header_problems(
    record: ConsumedRecord, attribute: object, traceparents: Sequence[str | None], mode: str
) -> list[str]:
    """What is wrong with the headers of an event or rejection in content ``mode`` whose
    command carried one of ``traceparents`` (several when several records carry its
    command id)."""
    problems = []
    relay_ids = [value for name, value in record.headers if name == contract.OUTBOX_ID]
    if len(relay_ids) != 1 or relay_ids[0] is None or not _ROW_ID.fullmatch(relay_ids[0]):
        problems.append(f"{contract.OUTBOX_ID} headers {relay_ids}, not one row id")
    others = [(name, value) for name, value in record.headers if name != contract.OUTBOX_ID]
    if mode == "binary":
        carried = [(n, v) for n, v in others if n.startswith("ce_") or n == "content-type"]
        names = [name for name, _ in carried]
        if len(set(names)) != len(names) or "ce_specversion" not in names:
            problems.append(f"binary-mode attribute headers {names}, not each attribute once")
        if record.header("content-type") != BINARY_CONTENT_TYPE:
            problems.append(f"content-type {record.header('content-type')!r} in binary mode")
        others = [header for header in others if header not in carried]
        framing: list[tuple[str, bytes | None]] = []
    else:
        framing = [("content-type", STRUCTURED_CONTENT_TYPE)]
    allowed = [
        framing + ([] if traceparent is None else [(contract.TRACEPARENT, traceparent.encode())])
        for traceparent in traceparents
    ]
    if others not in allowed:
        problems.append(f"headers {others}, expected {' or '.join(map(str, allowed))}")
    if attribute not in traceparents:
        problems.append(f"traceparent attribute {attribute!r}, expected one of {traceparents}")
    return problems


def _envelope_problems(record: ConsumedRecord, kind: str, mode: str) -> list[str]:
    """What is wrong with the envelope of an output of ``kind`` (its attributes, and in
    binary mode the order of their headers)."""
    body = envelope(record)
    if body is None:
        return []  # reported as malformed_output
    order = ENVELOPE_ORDER[kind]
    problems = []
    unknown = [name for name in body if name not in order]
    if unknown:
        problems.append(f"attributes {unknown} that a {kind} does not have")
    missing = [
        name for name in order if name not in body and name not in _OPTIONAL_ATTRIBUTES[kind]
    ]
    if missing:
        problems.append(f"no {', '.join(missing)}")
    if mode == "binary":
        sent = [
            "datacontenttype" if name == "content-type" else name.removeprefix("ce_")
            for name, _ in record.headers
            if name.startswith("ce_") or name == "content-type"
        ]
        if sent != [name for name in order if name in sent]:
            problems.append(f"attribute headers in the order {sent}, not the envelope's")
        names = {name for name, _ in record.headers}
        carried_twice = [name for name in ("ce_data", "ce_datacontenttype") if name in names]
        if carried_twice:
            problems.append(
                f"{carried_twice}: in binary mode the value and content-type carry those"
            )
    expected = {"specversion": "1.0", "type": kind, "datacontenttype": "application/json"}
    for name, value in expected.items():
        if name in body and body[name] != value:
            problems.append(f"{name} {body[name]!r}, not {value!r}")
    if "time" in body and not _is_time(body["time"]):
        problems.append(f"time {body['time']!r} is not an RFC 3339 time")
    if "source" in body and (not isinstance(body["source"], str) or not body["source"]):
        problems.append(f"source {body['source']!r}")
    sequence = body.get("sequence")
    if kind == UPDATED and "sequence" in body and not _SEQUENCE.fullmatch(str(sequence)):
        problems.append(f"sequence {sequence!r} is not 20 digits")
    if kind == REJECTED:
        data = body.get("data")
        command_id = data.get("command_id") if isinstance(data, dict) else None
        if body.get("causationid") != command_id:
            problems.append(
                f"causationid {body.get('causationid')!r} but data.command_id {command_id!r}"
            )
    return problems


def _is_time(value: object) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _compact(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def check_dead_letter_content(facts: _Facts, result: CheckResult) -> None:
    limit = facts.history.dead_letter_max_bytes
    for position, letters in sorted(facts.letters_by_position.items()):
        original = facts.by_position[position]
        for letter in letters:
            problems = _dead_letter_problems(letter.record, original, limit)
            if problems:
                result.add(
                    "dead_letter_content",
                    f"dead letter {letter.record.where()} of {original.describe()}: "
                    + "; ".join(problems),
                )


def _dead_letter_problems(
    letter: ConsumedRecord, original: ProducedCommand, max_bytes: int
) -> list[str]:
    problems: list[str] = []
    relay_ids = [value for name, value in letter.headers if name == contract.OUTBOX_ID]
    if len(relay_ids) != 1 or relay_ids[0] is None or not _ROW_ID.fullmatch(relay_ids[0]):
        problems.append(f"{contract.OUTBOX_ID} headers {relay_ids}, not one row id")
    own = Counter(name for name, _ in letter.headers if name.startswith(contract.DLT_PREFIX))
    known = (*DLT_PROVENANCE, *contract.DLT_OPTIONAL)
    missing = [name for name in DLT_PROVENANCE if own[name] == 0]
    if missing:
        problems.append(f"no {missing} header")
    strange = sorted(name for name, count in own.items() if name not in known or count > 1)
    if strange:
        problems.append(
            f"headers of the service's namespace that it writes once or never: {strange}"
        )
    carried = [
        (name, value)
        for name, value in letter.headers
        if name != contract.OUTBOX_ID and not name.startswith(contract.DLT_PREFIX)
    ]
    kept, dropped = _kept_headers(original.headers)
    dropped_header = letter.header(contract.DLT_HEADERS_DROPPED)
    expected_dropped = str(dropped).encode() if dropped else None
    if dropped_header != expected_dropped:
        problems.append(
            f"{contract.DLT_HEADERS_DROPPED} is {dropped_header!r}; the original has {dropped} "
            "header name(s) that are not UTF-8 or hold NUL"
        )
    if letter.header(contract.DLT_TRUNCATED) is None:
        if letter.key != original.key:
            problems.append(
                f"the key is {_bytes(letter.key)}, the original's {_bytes(original.key)}"
            )
        if letter.value != original.value:
            problems.append(
                f"the value is {_bytes(letter.value)}, the original's {_bytes(original.value)}"
            )
        if carried != kept:
            problems.append(f"the original headers are {_names(carried)}, expected {_names(kept)}")
        return problems
    problems.extend(_cut_problems(letter, original, carried, kept, max_bytes))
    return problems


def _cut_problems(
    letter: ConsumedRecord,
    original: ProducedCommand,
    carried: list[tuple[str, bytes | None]],
    kept: list[tuple[str, bytes | None]],
    max_bytes: int,
) -> list[str]:
    """What is wrong with a dead letter cut to fit its topic."""
    problems = []
    if letter.header(contract.DLT_TRUNCATED) != b"true":
        problems.append(f"{contract.DLT_TRUNCATED} is {letter.header(contract.DLT_TRUNCATED)!r}")
    whole = record_size(original.key, original.value, [*kept, *letter.headers])
    if whole <= max_bytes - CUT_SLACK_BYTES:
        problems.append(f"it was cut, but whole it takes {whole} bytes of the {max_bytes} allowed")
    if carried:
        problems.append(f"a cut dead letter carries original headers {_names(carried)}")
    key, value = original.key or b"", original.value or b""
    described = {
        contract.DLT_ORIGINAL_KEY_SIZE: str(len(key)).encode(),
        contract.DLT_ORIGINAL_VALUE_SIZE: str(len(value)).encode(),
        contract.DLT_ORIGINAL_SHA256: hashlib.sha256(value).hexdigest().encode(),
    }
    for name, expected in described.items():
        if letter.header(name) != expected:
            problems.append(f"{name} is {letter.header(name)!r}, expected {expected!r}")
    for what, cut, whole_bytes in (
        ("key", letter.key, original.key),
        ("value", letter.value, original.value),
    ):
        if not _starts(whole_bytes, cut):
            problems.append(
                f"the {what} ({_bytes(cut)}) is not the start of the original's "
                f"({_bytes(whole_bytes)})"
            )
    return problems


def _starts(whole: bytes | None, cut: bytes | None) -> bool:
    """Whether ``cut`` is the start of ``whole`` (null only for null)."""
    if whole is None or cut is None:
        return whole is cut
    return whole.startswith(cut)


def _kept_headers(
    headers: Iterable[tuple[str, bytes | None]],
) -> tuple[list[tuple[str, bytes | None]], int]:
    """The headers of a record as its dead letter must carry them, and how many the
    contract leaves out."""
    kept: list[tuple[str, bytes | None]] = []
    dropped = 0
    for name, value in headers:
        if name == UNREADABLE_BATCH_HEADER:
            continue  # made up by the reader, not a header of the record
        if not valid_header_name(name):
            dropped += 1
        elif contract.is_reserved(name):
            kept.append((contract.ORIGINAL_PREFIX + name, value))
        else:
            kept.append((name, value))
    return kept, dropped


def _bytes(data: bytes | None) -> str:
    if data is None:
        return "null"
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"{len(data)} bytes ({data[:24]!r}{'...' if len(data) > 24 else ''}, sha256 {digest})"


def _names(headers: Sequence[tuple[str, bytes | None]]) -> str:
    return "[" + ", ".join(f"{name!r}={_bytes(value)}" for name, value in headers) + "]"


def _expectation(expected: Expected) -> str:
    return f"{expected.outcome} ({expected.code})" if expected.code else expected.outcome


def oracle_customer(state: CustomerState) -> dict[str, Any]:
    """A stored customer as ``faults.oracle`` holds one: its object (through JSON, as
    events carry it), version and last invoice number."""
    return {
        **orjson.loads(orjson.dumps(state.to_object())),
        "version": state.version,
        "last_invoice_sequence": state.last_invoice_sequence,
    }


def check_oracle(facts: _Facts, result: CheckResult) -> None:
    history = facts.history
    expected, final = oracle.expected_outcomes(
        facts.produced,
        {customer_id: oracle_customer(state) for customer_id, state in history.seeded.items()},
        oracle.Limits(**dataclasses.asdict(history.limits)),
        history.jwt_key,
    )

    def wanted(commands: Iterable[ProducedCommand]) -> str:
        return "; ".join(
            f"{c.partition}:{c.offset} {expected[c.position].describe()}" for c in commands
        )

    for position, letters in sorted(facts.letters_by_position.items()):
        want, code = expected[position], letters[0].code
        if want.outcome != "dead_lettered" or want.code != code:
            result.add(
                "oracle_outcome",
                f"{facts.by_position[position].describe()} was dead-lettered ({code}); the "
                f"oracle expects {want.describe()}",
            )
    for command_id, copies in facts.copies.items():
        wants = [expected[command.position] for command in copies]
        events = facts.events_by_command.get(command_id, [])
        rejections = facts.rejections_by_command.get(command_id, [])
        got = Counter((rejection.code, rejection.param) for rejection in rejections)
        applied = [want for want in wants if want.outcome == "applied"]
        if (
            bool(events) != bool(applied)
            or got != Counter((w.code, w.param) for w in wants if w.outcome == "rejected")
            or any(want.outcome == "dead_lettered" for want in wants)
        ):
            outcomes = [f"applied (version {e.version})" for e in events[:1]] + [
                f"rejected {r.code} at {r.param}" for r in rejections
            ]
            result.add(
                "oracle_outcome",
                f"command {command_id}: {', '.join(outcomes) or 'no outcome'} and no dead "
                f"letter; the oracle expects [{wanted(copies)}]",
            )
        elif events:
            _compare_event(events[0], applied[0], result)
    for command, rejection in facts.idless_pairs:
        want = expected[command.position]
        if (want.outcome, want.code, want.param) != ("rejected", rejection.code, rejection.param):
            result.add(
                "oracle_outcome",
                f"{command.describe()} was rejected {rejection.code} at {rejection.param}; the "
                f"oracle expects {want.describe()}",
            )
    for customer_id, state in sorted(final.items()):
        row = history.final.get(customer_id)
        if row is None:
            continue  # reported by applied_once
        differences = _mapping_differences(oracle_customer(row), state)
        if differences:
            result.add(
                "oracle_state",
                f"customer {customer_id}: the final row differs from the oracle's: "
                f"{'; '.join(differences)}",
            )


def _compare_event(event: _Updated, want: oracle.Expected, result: CheckResult) -> None:
    assert want.customer is not None
    published = {name: value for name, value in event.object.items() if name != "subscriptions"}
    differences = _mapping_differences(
        {**published, "version": event.version},
        {**oracle.public(want.customer), "version": want.customer["version"]},
    )
    if event.previous_attributes != want.previous_attributes:
        differences.append(
            f"previous_attributes is {event.previous_attributes!r}, expected "
            f"{want.previous_attributes!r}"
        )
    if ("subscriptions" in event.object) != want.expanded:
        differences.append(f"subscriptions {'absent' if want.expanded else 'present'}")
    if differences:
        result.add(
            "oracle_state",
            f"{event.record.where()} (command {event.command_id}) carries a customer that "
            f"differs from the oracle's: {'; '.join(differences)}",
        )


def _mapping_differences(got: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    return [
        f"{name} is {got.get(name)!r}, expected {want.get(name)!r}"
        for name in sorted(got.keys() | want.keys())
        if got.get(name) != want.get(name)
    ]


# -- the state topic ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _State:
    record: ConsumedRecord
    customer_id: str
    version: int
    outbox_id: bytes | None
    #: The command that made this version (None on a backfill's record).
    causationid: str | None
    #: ``data.object`` as the record holds it (JSON).
    object: dict[str, Any]


def _read_state(record: ConsumedRecord, result: CheckResult) -> _State | None:
    """A ``customer.state`` record, if it is a valid ``CustomerStateEvent`` keyed by its
    subject with one ``outbox-id`` (a ``malformed_state`` violation otherwise)."""
    body = envelope(record)
    if body is None:
        result.add("malformed_state", f"{record.where()} is not a readable customer.state")
        return None
    try:
        event = CustomerStateEvent.model_validate(body)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(record)'}: {error['msg']}"
            for error in exc.errors()[:3]
        )
        result.add(
            "malformed_state", f"{record.where()} is not a valid CustomerStateEvent: {errors}"
        )
        return None
    problems = []
    if record.key != event.subject.encode():
        problems.append(f"is keyed {record.key!r} but is about {event.subject!r}")
    ids = [value for name, value in record.headers if name == contract.OUTBOX_ID]
    if len(ids) != 1:
        problems.append(f"carries outbox-id headers {ids} (one expected)")
    if problems:
        result.add("malformed_state", f"{record.where()} {' and '.join(problems)}")
        return None
    return _State(
        record,
        customer_id=event.subject,
        version=int(event.sequence),
        outbox_id=ids[0],
        causationid=event.causationid,
        object=dict(body["data"]["object"]),
    )


def check_customer_state(facts: _Facts, result: CheckResult) -> None:
    history = facts.history
    read = [_read_state(record, result) for record in history.state]
    states = sorted(
        (state for state in read if state is not None),
        key=lambda state: (state.record.partition, state.record.offset),
    )
    by_customer: dict[str, list[_State]] = defaultdict(list)
    for state in states:
        by_customer[state.customer_id].append(state)

    for customer_id, records in sorted(by_customer.items()):
        partitions = sorted({state.record.partition for state in records})
        if len(partitions) > 1:
            result.add(
                "state_partition_split",
                f"customer {customer_id}'s customer.state records are on partitions "
                f"{partitions}: its latest record is not defined",
            )
        highest: dict[int, _State] = {}
        for state in records:
            top = highest.get(state.record.partition)
            if top is not None and state.version < top.version:
                result.add(
                    "state_went_backwards",
                    f"customer {customer_id}: {state.record.where()} has version "
                    f"{state.version} after version {top.version} at {top.record.where()}",
                )
            elif top is None or state.version > top.version:
                highest[state.record.partition] = state

    for customer_id in sorted(set(history.final) | set(by_customer)):
        row = history.final.get(customer_id)
        records = by_customer.get(customer_id, [])
        if row is None:
            result.add(
                "state_mismatch",
                f"customer {customer_id} has {len(records)} customer.state record(s) (the "
                f"latest {records[-1].record.where()}, version {records[-1].version}) but "
                "no row in the database",
            )
            continue
        if not records:
            result.add(
                "state_missing",
                f"customer {customer_id} (version {row.version} in the database) has no "
                "record on customer.state",
            )
            continue
        latest = records[-1]
        # Through JSON, as the record went, so both sides have the same types.
        differences = _mapping_differences(
            latest.object, orjson.loads(orjson.dumps(row.to_object()))
        )
        if latest.version != row.version:
            differences.insert(0, f"version is {latest.version}, expected {row.version}")
        if differences:
            result.add(
                "state_mismatch",
                f"customer {customer_id}: the latest customer.state record "
                f"{latest.record.where()} differs from the final row: {'; '.join(differences)}",
            )

    by_outbox_id: dict[bytes | None, list[_State]] = defaultdict(list)
    for state in states:
        by_outbox_id[state.outbox_id].append(state)
    for event in facts.updated:
        ids = [value for name, value in event.record.headers if name == contract.OUTBOX_ID]
        if len(ids) != 1 or ids[0] is None:
            continue  # output_headers reports it; there is nothing to pair it by
        candidates = by_outbox_id.get(ids[0], [])
        row_id = ids[0].decode(errors="replace")
        if any(
            (state.customer_id, state.version, state.causationid)
            == (event.customer_id, event.version, event.command_id)
            for state in candidates
        ):
            continue
        found = ", ".join(
            f"{state.record.where()} (customer {state.customer_id}, version {state.version}, "
            f"causationid {state.causationid})"
            for state in candidates
        )
        result.add(
            "state_unpaired",
            f"{event.record.where()} (customer {event.customer_id}, version {event.version}, "
            f"command {event.command_id}, outbox-id {row_id}) has no customer.state "
            f"record of its outbox row with that version; records with its outbox-id: "
            f"{found or 'none'}",
        )


Check = Callable[[_Facts, CheckResult], None]

#: Every check by name, in the order they run.
CHECKS: dict[str, Check] = {
    "applied_once": check_applied_once,
    "one_event_per_command": check_one_event_per_command,
    "versions": check_versions,
    "partition_order": check_partition_order,
    "accounted": check_accounted,
    "outcomes": check_outcomes,
    "oracle": check_oracle,
    "customer_partition": check_customer_partition,
    "event_details": check_event_details,
    "dead_letter_content": check_dead_letter_content,
    "rejection_record": check_rejection_record,
    "customer_state": check_customer_state,
}


def check(history: History, *, skip: Iterable[str] = ()) -> CheckResult:
    """Run every check (but those named in ``skip``) over ``history``."""
    skipped = set(skip)
    unknown = skipped - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {sorted(CHECKS)}")
    result = CheckResult()
    try:
        facts = _Facts(history, result)
    except ValidationError as exc:
        # Cannot happen while classify and the fold read commands the same way.
        result.add("malformed_output", f"an accepted command could not be folded: {exc}")
        return result
    for name, run in CHECKS.items():
        if name not in skipped:
            run(facts, result)
    return result


def accounting(history: History) -> CheckResult:
    """Only the counts (cheap enough to poll while waiting for a run to settle)."""
    result = CheckResult()
    _Facts(history, result)
    return result
