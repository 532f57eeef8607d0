"""CloudEvents binary content mode on Kafka: the attributes in ``ce_`` headers, the
``data`` alone in the value (the CloudEvents Kafka protocol binding, section 3.2).

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

from schemas.errors import ErrorObject, invalid

#: Header names of the binding, and the attribute that ``content-type`` carries.
PREFIX = "ce_"
SPECVERSION = "ce_specversion"
CONTENT_TYPE = "content-type"
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
    if attribute == "data":
        return attribute
    return CONTENT_TYPE if attribute == "datacontenttype" else PREFIX + attribute


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
