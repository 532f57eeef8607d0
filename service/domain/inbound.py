"""From a Kafka record's bytes to a command, a rejection, or a dead letter.

Records that cannot be read as a command at all (no key, a key or headers too large or
too many, a header name that is not UTF-8 or holds NUL, a value that is not UTF-8, not
JSON, not an object, too large or too deeply nested) are *poison*: they go to the
dead-letter topic with their original bytes. A readable object that breaks the contract
is *invalid*: the producer gets a ``customer.update.rejected`` event saying which field and why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

import orjson
from pydantic import ValidationError

from schemas import headers
from schemas.command import CustomerUpdateCommand
from schemas.errors import ErrorObject, from_validation_error, invalid
from schemas.fields import TRACEPARENT
from service.domain import binary_mode
from service.domain.authorization import Authorizer, Principal
from service.domain.duplicate_keys import duplicate_key

DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_NAME_BYTES = 256
DEFAULT_MAX_HEADER_VALUE_BYTES = 16 * 1024
#: The one header of a record that the Kafka adapter made up because the record batch it
#: came in could not be read at all (an unknown codec, corrupt compressed data): its
#: value says why. No name read off the wire can equal it, since a lone surrogate of the
#: high range comes out of no UTF-8 decoding, strict or ``surrogateescape``.
UNREADABLE_BATCH_HEADER = "\ud800unreadable-batch"
#: How much of an offending header name a poison message quotes.
_QUOTED_NAME_BYTES = 64

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A consumed Kafka record, free of the client library's types."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    #: A name that was not UTF-8 on the wire holds surrogates (see ``valid_header_name``);
    #: a value may be null.
    headers: Headers = ()

    @property
    def position(self) -> tuple[str, int, int]:
        """Topic, partition and offset: what the producer's acknowledgement named."""
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Limits:
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    max_header_name_bytes: int = DEFAULT_MAX_HEADER_NAME_BYTES
    max_header_value_bytes: int = DEFAULT_MAX_HEADER_VALUE_BYTES


@dataclass(frozen=True, slots=True)
class Poison:
    """Unreadable: goes to the dead-letter topic. ``code`` is machine-readable."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Readable but refused before touching any state."""

    error: ErrorObject
    customer_id: str
    command_id: str | None
    correlationid: str | None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Valid:
    command: CustomerUpdateCommand
    principal: Principal
    #: Hash of what the command asks for; the same id with another fingerprint is refused.
    fingerprint: bytes
    #: The command's trace context: its ``traceparent`` attribute, else the record header.
    traceparent: str | None = None


Classified = Poison | Invalid | Valid


def classify(record: InboundRecord, limits: Limits, authorizer: Authorizer) -> Classified:
    """Decide what ``record`` is. Pure: no I/O, no clock."""
    if record.headers and record.headers[0][0] == UNREADABLE_BATCH_HEADER:
        reason = (record.headers[0][1] or b"").decode("utf-8", "replace")
        return Poison("record_batch_unreadable", f"The record batch cannot be read: {reason}")
    if not record.key:
        return Poison(
            "record_key_missing", "The record has no key; the key must be the customer id"
        )
    if len(record.key) > limits.max_key_bytes:
        return Poison(
            "record_key_too_large",
            f"The record key is {len(record.key)} bytes; the limit is {limits.max_key_bytes}",
        )
    if record.headers:
        refused = _check_headers(record.headers, limits)
        if refused is not None:
            return refused
    try:
        customer_id = record.key.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Poison("record_key_invalid", f"The record key is not valid UTF-8: {exc}")
    if record.value is None:
        return Poison("record_value_missing", "The record has no value (a tombstone)")
    if len(record.value) > limits.max_record_bytes:
        return Poison(
            "record_too_large",
            f"The record value is {len(record.value)} bytes; the limit is "
            f"{limits.max_record_bytes}",
        )
    try:
        record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Poison("record_invalid_utf8", f"The record value is not valid UTF-8: {exc}")
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        return Poison("record_invalid_json", f"The record value is not valid JSON: {exc}")
    # In binary mode the value is ``data`` alone, and any JSON the model then judges.
    binary = bool(record.headers) and binary_mode.is_binary(record.headers)
    if not binary and not isinstance(document, dict):
        return Poison(
            "record_not_object",
            f"The record value is a JSON {_json_kind(document)}, not an object",
        )
    # Nesting needs an opening bracket per level: with fewer brackets in the whole record
    # than the limit, the walk over the document can be skipped.
    brackets = record.value.count(b"{") + record.value.count(b"[")
    if brackets > limits.max_depth and _depth_exceeds(document, limits.max_depth):
        return Poison(
            "record_too_deep", f"The record value nests deeper than {limits.max_depth} levels"
        )
    header_traceparent = _header_traceparent(record)
    if not binary:
        return _parse(record.value, document, customer_id, header_traceparent, authorizer)
    built = binary_mode.document(record.headers, document)
    if isinstance(built, ErrorObject):
        # Still what the producer can match on, where those headers are readable.
        return Invalid(
            built,
            customer_id,
            _echo(binary_mode.text(record.headers, "ce_id")),
            _echo(binary_mode.text(record.headers, "ce_correlationid")),
            header_traceparent,
        )
    return _parse(
        record.value,
        built,
        customer_id,
        header_traceparent,
        authorizer,
        names=binary_mode.header_name,
    )


def _parse(
    raw: bytes,
    document: dict[str, object],
    customer_id: str,
    header_traceparent: str | None,
    authorizer: Authorizer,
    *,
    names: Callable[[str], str] | None = None,
) -> Classified:
    """``names`` says what an attribute was called in the record (binary mode's headers);
    ``raw`` is the record's value: the command, or in binary mode its ``data``."""
    command_id = _echo(document.get("id"))
    correlationid = _echo(document.get("correlationid"))
    attribute = document.get("traceparent")
    traceparent = attribute if _is_traceparent(attribute) else header_traceparent

    def refused(error: ErrorObject) -> Invalid:
        return Invalid(_named(error, names), customer_id, command_id, correlationid, traceparent)

    twice = duplicate_key(raw, document if names is None else document["data"])
    if twice is not None:
        twice = twice if names is None else f"data.{twice}"
        return Invalid(
            invalid(
                "parameter_invalid",
                twice,
                f"Invalid {twice}: the key appears twice in one object, and JSON readers "
                "disagree on which value counts",
            ),
            customer_id,
            command_id,
            correlationid,
            traceparent,
        )
    try:
        command = CustomerUpdateCommand.model_validate(document)
    except ValidationError as exc:
        return refused(from_validation_error(exc))
    if command.subject != customer_id:
        return refused(
            invalid(
                "parameter_invalid",
                "subject",
                f"Invalid subject: '{command.subject}' differs from the record key '{customer_id}'",
            )
        )
    principal = authorizer.authorize(command)
    if isinstance(principal, ErrorObject):
        return refused(principal)
    return Valid(command, principal, fingerprint(document), traceparent)


def _named(error: ErrorObject, names: Callable[[str], str] | None) -> ErrorObject:
    """``error`` with its param as the producer wrote it (a binary mode header)."""
    if names is None or error.param is None:
        return error
    first, dot, rest = error.param.partition(".")
    param = names(first) + dot + rest
    if param == error.param:
        return error
    # The param as a whole word of the message ("Invalid id:"), not inside another word.
    word = re.compile(rf"(?<![\w.]){re.escape(error.param)}(?![\w.])")
    return error.model_copy(update={"param": param, "message": word.sub(param, error.message, 1)})


def _check_headers(record_headers: Headers, limits: Limits) -> Poison | None:
    if len(record_headers) > limits.max_headers:
        return Poison(
            "record_headers_too_many",
            f"The record has {len(record_headers)} headers; the limit is {limits.max_headers}",
        )
    for name, value in record_headers:
        if not valid_header_name(name):
            return Poison(
                "record_header_invalid",
                f"The header name {_quoted(name)} is not valid UTF-8 or contains NUL",
            )
        size = len(name.encode())
        if size > limits.max_header_name_bytes:
            return Poison(
                "record_header_too_large",
                f"The header name {_quoted(name)} is {size} bytes; the limit is "
                f"{limits.max_header_name_bytes}",
            )
        if value is not None and len(value) > limits.max_header_value_bytes:
            return Poison(
                "record_header_too_large",
                f"The value of header {_quoted(name)} is {len(value)} bytes; the limit is "
                f"{limits.max_header_value_bytes}",
            )
    return None


def valid_header_name(name: str) -> bool:
    """A header name that other clients can read and PostgreSQL can store: UTF-8 (not read
    back with ``surrogateescape``, as the Kafka adapter does for one that is not) and
    without NUL."""
    if "\x00" in name:
        return False
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _quoted(name: str) -> str:
    """The name's bytes as a Python literal, shortened: printable, and safe in any log."""
    raw = name.encode("utf-8", "surrogateescape")
    quoted = repr(raw[:_QUOTED_NAME_BYTES])
    return quoted + "..." if len(raw) > _QUOTED_NAME_BYTES else quoted


def _is_traceparent(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and TRACEPARENT.fullmatch(value) is not None


def _header_traceparent(record: InboundRecord) -> str | None:
    """A ``traceparent`` record header, as OpenTelemetry's Kafka instrumentation sets it;
    an invalid one is ignored, as W3C Trace Context asks."""
    for name, value in record.headers:
        if name == headers.TRACEPARENT and value is not None:
            text = value.decode("ascii", errors="replace")
            return text if _is_traceparent(text) else None
    return None


def fingerprint(document: dict[str, object]) -> bytes:
    """What makes two commands with one id the same request: subject, data and
    expectedversion. Envelope details (time, source, tokens) may differ on a resend."""
    essence = {key: document.get(key) for key in ("subject", "expectedversion", "data")}
    return hashlib.sha256(orjson.dumps(essence, option=orjson.OPT_SORT_KEYS)).digest()


def _echo(value: object) -> str | None:
    """An attribute worth echoing back in a rejection: a short printable string."""
    if isinstance(value, str) and 0 < len(value) <= 255 and value.isprintable():
        return value
    return None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _depth_exceeds(document: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, dict | list)
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False
