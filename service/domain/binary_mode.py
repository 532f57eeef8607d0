"""CloudEvents binary content mode on Kafka: the attributes in ``ce_`` headers, the
``data`` alone in the value (the CloudEvents Kafka protocol binding, section 3.2).

Commands are read in either mode; events and rejections are written in the one mode
``EVENT_CONTENT_MODE`` chooses (``encode`` here, or structured), and ``as_structured``
reads either back for the service's own client and operator verbs.

A record is in binary mode when it has a ``ce_specversion`` header and no
``content-type`` says ``application/cloudevents`` (which is structured mode, as is a
record with neither). Header names are read as the binding spells them, in lowercase:
``Content-Type`` or ``CE_ID`` are a transport's headers, not the event's.

Binary mode is read into the same document a structured command is, so that every
rule, error and fingerprint is the same in both modes; only the names in errors differ
(``ce_subject``, ``content-type``), since those are what the producer wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson

from schemas.errors import ErrorObject, invalid
from schemas.headers import CE_PREFIX, CONTENT_TYPE, binary_header

ContentMode = Literal["structured", "binary"]

PREFIX = CE_PREFIX
SPECVERSION = binary_header("specversion")
_STRUCTURED = "application/cloudevents"
#: Integer attributes, sent as their canonical decimal string (CloudEvents type system).
_INTEGERS = frozenset({"expectedversion"})
_DECIMAL = re.compile(r"-?[0-9]{1,20}")
#: CloudEvents attribute names: lowercase letters and digits (spec 1.0, "Attribute Naming").
_ATTRIBUTE = re.compile(r"[a-z0-9]{1,20}")

Headers = tuple[tuple[str, bytes | None], ...]


def is_binary(headers: Headers) -> bool:
    binary = False
    for name, value in headers:
        if name == CONTENT_TYPE and value is not None:
            if value.lower().startswith(_STRUCTURED.encode()):
                return False  # any one of them: structured mode whatever their order
        elif name == SPECVERSION:
            binary = True
    return binary


def text(headers: Headers, name: str) -> str | None:
    """The first header ``name`` as text, if it is UTF-8."""
    for header, value in headers:
        if header == name and value is not None:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def header_name(attribute: str) -> str:
    """Where ``attribute`` of a command travels in binary mode."""
    return attribute if attribute == "data" else binary_header(attribute)


def document(headers: Headers, data: object) -> dict[str, object] | ErrorObject:
    """The command that binary-mode ``headers`` and the parsed value ``data`` make, or
    the refusal of a header that cannot be an attribute."""
    found: dict[str, object] = {}
    for name, value in headers:
        if name == CONTENT_TYPE:
            attribute = "datacontenttype"
        elif name.startswith(PREFIX):
            attribute = name[len(PREFIX) :]
        else:
            continue  # other headers are the transport's, not the event's
        if attribute in ("data", "datacontenttype") and name != CONTENT_TYPE:
            carrier = "the record value" if attribute == "data" else "the content-type header"
            return invalid(
                "parameter_unknown",
                name,
                f"Received unknown parameter: {name} (in binary mode {attribute} is {carrier})",
            )
        if name != CONTENT_TYPE and not _ATTRIBUTE.fullmatch(attribute):
            return invalid(
                "parameter_unknown",
                name,
                f"Received unknown parameter: {name} (attribute names are lowercase letters "
                "and digits)",
            )
        if attribute in found:
            return invalid(
                "parameter_invalid", name, f"Invalid {name}: the header appears more than once"
            )
        if value is None:
            return invalid("parameter_invalid", name, f"Invalid {name}: must not be null")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return invalid("parameter_invalid", name, f"Invalid {name}: must be UTF-8 text")
        found[attribute] = (
            int(text) if attribute in _INTEGERS and _DECIMAL.fullmatch(text) else text
        )
    found["data"] = data
    return found


def encode(event: Mapping[str, Any]) -> tuple[bytes, Headers]:
    """The value and headers of ``event`` (a structured envelope, as plain data) in binary
    mode: ``data`` as the value, ``datacontenttype`` as ``content-type``, every other
    attribute as a ``ce_`` header in the envelope's order, its value as text."""
    headers: list[tuple[str, bytes | None]] = []
    for attribute, value in event.items():
        if attribute == "data":
            continue
        headers.append((header_name(attribute), _header_text(value)))
    return orjson.dumps(event["data"], option=orjson.OPT_UTC_Z), tuple(headers)


def _header_text(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, datetime):
        # The same RFC 3339 text the structured envelope carries.
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1]
    return str(value).encode()


def as_structured(value: bytes | None, headers: Headers) -> bytes | None:
    """The structured JSON of a record in either mode: ``value`` itself in structured
    mode, else the envelope that the ``ce_`` headers make around the ``data`` in
    ``value``, which is kept as its bytes (not parsed and written again, which could
    change it or fail on what JSON allows: big integers, deep nesting).

    Raises:
        ValueError: a binary-mode record whose headers or value are not an event.
    """
    if value is None or not is_binary(headers):
        return value
    orjson.loads(value)  # raises JSONDecodeError (a ValueError) if it is not JSON
    made = document(headers, None)
    if isinstance(made, ErrorObject):
        raise ValueError(made.message)
    del made["data"]
    try:
        attributes = orjson.dumps(made)
    except TypeError as exc:  # an integer attribute beyond 64 bits
        raise ValueError(f"an attribute JSON cannot hold: {exc}") from None
    head = attributes[:-1] + (b"," if made else b"")
    return head + b'"data":' + value + b"}"
