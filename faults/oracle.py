"""An independent oracle: what the contract says each command record should come to.

``faults.model`` runs the service's own ``classify`` and ``decide_batch``, so a wrong
rule in the service is the same wrong rule in the model, and no run can show it. This
module is the contract written out again from the README ("The contract", "The command",
"Authorization", "The event", "The rejection", "Dead letters") and the JSON Schema it
publishes (``schemas/json/customer.update.schema.json``: lengths, nullability), and
nothing else: it imports nothing from ``service/`` or ``schemas/``. Only the standard
library, plus the two libraries the README itself names as the authority for a rule:
an email address is what email-validator accepts, and a language tag's subtags are
looked up in the IANA registry by langcodes. The ISO 3166-1 list is written out below.

Where the README's rules left a choice, the behaviour was read off the service and then
written into the README ("When the rules above leave a choice"); the comments mark those
places with ``README, choice``.

Give it the seeded customers and the command records in offset order, partition by
partition (``Oracle.step`` or ``expected_outcomes``). Command ids and invoice prefixes
are global, so like the model it is exact when every command id and every invoice prefix
a command asks for belongs to one partition: records of different partitions are
processed in an order nobody controls. ``faults.load`` keeps to that.

Both authorization modes are covered: unsigned, and signed with the suite's HS256 key
(PyJWT verifies the token, as the README's "Authorization" describes).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol

import email_validator
import jwt
import langcodes

Outcome = Literal["applied", "rejected", "duplicate", "dead_lettered"]
Position = tuple[int, int]

#: A customer as the oracle holds it: the customer object as an event shows it (README,
#: "The event", without ``subscriptions``), plus ``version`` (how many updates were
#: applied) and ``last_invoice_sequence`` (the last invoice number already issued).
Customer = Mapping[str, Any]
#: Keys of ``Customer`` that are not part of the customer object.
BOOKKEEPING = ("version", "last_invoice_sequence")

ACTION = "pay:customers:update"

#: ISO 3166-1 alpha-2: the 249 officially assigned codes.
_ISO_3166 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """
COUNTRIES = frozenset(_ISO_3166.split())

# RFC 3339 section 5.6, with its note's space for "T" and lowercase "t" and "z".
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# BCP 47 (RFC 5646 section 2.1): subtags of 1-8 letters or digits joined by hyphens.
_LANGUAGE_TAG = re.compile(r"[A-Za-z0-9]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_INVOICE_PREFIX = re.compile(r"[A-Z0-9]{3,12}")
# Unicode's control characters (category Cc: C0, DEL and C1), and without \t \n \r.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TAX_EXEMPT = ("exempt", "none", "reverse")


@dataclass(frozen=True, slots=True)
class Limits:
    """The README's limits for dead letters (``MAX_RECORD_BYTES`` ...), with its defaults."""

    max_record_bytes: int = 64 * 1024
    max_depth: int = 16
    max_key_bytes: int = 1024
    max_headers: int = 64
    max_header_name_bytes: int = 256
    max_header_value_bytes: int = 16 * 1024


class Record(Protocol):
    """A record of the command topic (``faults.model.ProducedCommand`` is one)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


@dataclass(frozen=True, slots=True)
class Expected:
    """What one record should come to."""

    outcome: Outcome
    #: The rejection's error code, or the dead letter's reason code.
    code: str | None = None
    #: The rejection's ``param``.
    param: str | None = None
    #: After an applied command: the customer, at its new version.
    customer: Customer | None = None
    #: After an applied command: the event's ``data.previous_attributes``.
    previous_attributes: Mapping[str, Any] | None = None
    #: After an applied command: whether the event's object carries ``subscriptions``.
    expanded: bool = False

    def describe(self) -> str:
        if self.outcome == "applied" and self.customer is not None:
            return f"applied (version {self.customer['version']})"
        if self.outcome == "rejected":
            return f"rejected {self.code} at {self.param}"
        if self.outcome == "dead_lettered":
            return f"dead-lettered {self.code}"
        return self.outcome


def public(customer: Customer) -> dict[str, Any]:
    """The customer object part of ``customer``: what an event's ``data.object`` holds."""
    return {name: value for name, value in customer.items() if name not in BOOKKEEPING}


class _RefusalError(Exception):
    def __init__(self, code: str, param: str | None) -> None:
        super().__init__(code, param)
        self.code = code
        self.param = param


def _refuse(code: str, param: str | None) -> NoReturn:
    raise _RefusalError(code, param)


class Oracle:
    """Steps through records in offset order, keeping the customers and the command ids
    that are recorded (README, "The rejection": refusals before any state was read are
    not; those that depend on stored state are)."""

    def __init__(
        self,
        customers: Mapping[str, Customer],
        limits: Limits | None = None,
        jwt_key: str | None = None,
    ) -> None:
        self.customers: dict[str, Customer] = dict(customers)
        self.limits = limits or Limits()
        #: Signed mode's verification key; unsigned mode when None.
        self.jwt_key = jwt_key
        #: What each recorded command id asked for (subject, expectedversion, data).
        self._asked: dict[str, str] = {}

    def step(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> Expected:
        binary = _binary_mode(headers)
        document = _readable(key, value, headers, self.limits, binary=binary)
        if isinstance(document, _Unreadable):
            return Expected("dead_lettered", document.code)
        assert key is not None
        assert value is not None
        if binary:
            try:
                document = _from_headers(headers, document)
            except _RefusalError as refused:  # its param is the header already
                return Expected("rejected", refused.code, refused.param)
        try:
            twice = _repeated_key(value)
            if twice is not None:
                _refuse("parameter_invalid", f"data.{twice}" if binary else twice)
            data = _command(document)
            if document["subject"] != key.decode():
                _refuse("parameter_invalid", "subject")
            _authorize(document, self.jwt_key)
        except _RefusalError as refused:
            param = _header_of(refused.param) if binary else refused.param
            return Expected("rejected", refused.code, param)
        return self._decide(document, data)

    def _decide(self, document: dict[str, Any], data: dict[str, Any]) -> Expected:
        # README, "How it works": "the same id with a different body is refused";
        # "The rejection": different means another subject, data or expectedversion.
        asked = json.dumps(
            [document["subject"], document.get("expectedversion"), document["data"]],
            sort_keys=True,
        )
        earlier = self._asked.get(document["id"])
        if earlier is not None:
            if earlier == asked:
                return Expected("duplicate")
            # README, choice: the param of idempotency_key_reused (the service names "id").
            return Expected("rejected", "idempotency_key_reused", "id")
        self._asked[document["id"]] = asked
        try:
            return self._apply(document, data)
        except _RefusalError as refused:
            return Expected("rejected", refused.code, refused.param)

    def _apply(self, document: dict[str, Any], data: dict[str, Any]) -> Expected:
        # README, choice: the order of the refusals that need stored state, and their params
        # (the service: the customer, then the version, then the fields in table order).
        current = self.customers.get(document["subject"])
        if current is None:
            _refuse("resource_missing", "subject")
        expected_version = document.get("expectedversion")
        if expected_version is not None and expected_version != current["version"]:
            _refuse("version_conflict", "expectedversion")
        prefix = data.get("invoice_prefix")
        taken = {other["invoice_prefix"] for other in self.customers.values()}
        if prefix is not None and prefix != current["invoice_prefix"] and prefix in taken:
            _refuse("parameter_invalid", "data.invoice_prefix")  # by another customer
        sequence = data.get("next_invoice_sequence")
        if sequence is not None and sequence <= current["last_invoice_sequence"]:
            _refuse("parameter_invalid", "data.next_invoice_sequence")

        changes: dict[str, Any] = {}
        for name, value in data.items():
            if name == "expand":
                continue
            if name == "address" and value is not None:
                # Merges: only the given subfields change.
                merged = {**(current["address"] or dict.fromkeys(_ADDRESS)), **value}
                # README, choice: an address whose every subfield is cleared is null (as the
                # service stores it), not an object of nulls.
                value = None if all(v is None for v in merged.values()) else merged
            changes[name] = value
        after = {**current, **changes, "version": current["version"] + 1}
        self.customers[after["id"]] = after
        # README, "The event": the old value of each field the update changed.
        previous = {name: current[name] for name in changes if changes[name] != current[name]}
        expanded = "subscriptions" in (data.get("expand") or ())
        return Expected("applied", customer=after, previous_attributes=previous, expanded=expanded)


def expected_outcomes(
    records: Iterable[Record],
    customers: Mapping[str, Customer],
    limits: Limits | None = None,
    jwt_key: str | None = None,
) -> tuple[dict[Position, Expected], dict[str, Customer]]:
    """Every record's expected outcome by position, and every customer's final state
    (in signed mode with ``jwt_key``)."""
    oracle = Oracle(customers, limits, jwt_key)
    expected = {
        (record.partition, record.offset): oracle.step(record.key, record.value, record.headers)
        for record in sorted(records, key=lambda record: (record.partition, record.offset))
    }
    return expected, oracle.customers


# -- dead letters ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unreadable:
    """A record that is a dead letter, and its reason code."""

    code: str


def _readable(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    limits: Limits,
    *,
    binary: bool = False,
) -> Any:
    """The record's value as JSON (an object unless ``binary``), or why it is a dead
    letter.

    README, choice: which of several reasons is given, and the codes the README does not
    name (it names record_invalid_json, record_too_large and record_key_missing); both
    follow the service. A header name is a ``str``; one that was not UTF-8 on the wire
    holds surrogates (read back with ``surrogateescape``).
    """
    if not key:
        return _Unreadable("record_key_missing")  # README, choice: an empty key is none
    if len(key) > limits.max_key_bytes:
        return _Unreadable("record_key_too_large")
    if len(headers) > limits.max_headers:
        return _Unreadable("record_headers_too_many")
    for name, header_value in headers:
        if "\x00" in name or not _encodes(name):
            return _Unreadable("record_header_invalid")
        if len(name.encode()) > limits.max_header_name_bytes:
            return _Unreadable("record_header_too_large")
        if header_value is not None and len(header_value) > limits.max_header_value_bytes:
            return _Unreadable("record_header_too_large")
    try:
        key.decode()
    except UnicodeDecodeError:
        return _Unreadable("record_key_invalid")  # README, choice: a key that is not UTF-8
    if value is None:
        return _Unreadable("record_value_missing")  # a tombstone
    if len(value) > limits.max_record_bytes:
        return _Unreadable(
            "record_too_large"
        )  # README, choice: the value's size (key and headers have theirs)
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return _Unreadable("record_invalid_utf8")
    try:
        document = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return _Unreadable("record_invalid_json")
    except RecursionError:
        # Deeper than Python's own parser goes, so far beyond the limit (whether or not
        # the rest of it is JSON, which the parser did not get to see).
        deep = text.lstrip().startswith("{")
        return _Unreadable("record_too_deep" if deep else "record_not_object")
    if not binary and not isinstance(document, dict):
        # In binary mode the value is data, judged as data.
        return _Unreadable("record_not_object")
    depth, lone_surrogate = _walk(document)
    if lone_surrogate:
        # README, choice: JSON's grammar allows an escaped lone surrogate, but no UTF-8 text
        # holds one and I-JSON (RFC 7493) forbids it; the service reads it as not JSON.
        return _Unreadable("record_invalid_json")
    if depth > limits.max_depth:
        return _Unreadable("record_too_deep")  # README, choice: the top-level object is level 1
    return document


# -- binary content mode (README, "The command": CloudEvents' Kafka binding) ------------


def _binary_mode(headers: Sequence[tuple[str, bytes | None]]) -> bool:
    """A ``ce_specversion`` header, and no ``content-type`` starting
    ``application/cloudevents`` (which says structured mode); names in lowercase."""
    types = [value for name, value in headers if name == "content-type" and value is not None]
    if any(value.lower().startswith(b"application/cloudevents") for value in types):
        return False
    return any(name == "ce_specversion" for name, _ in headers)


def _from_headers(headers: Sequence[tuple[str, bytes | None]], data: Any) -> dict[str, Any]:
    """The command: each ``ce_<name>`` header an attribute, ``content-type`` the
    datacontenttype, the value its data; integers as decimal strings. A header that
    cannot be an attribute is refused naming the header."""
    document: dict[str, Any] = {}
    for name, value in headers:
        if name == "content-type":
            attribute = "datacontenttype"
        elif name.startswith("ce_"):
            attribute = name[3:]
        else:
            continue
        # README: data is the value and datacontenttype the content-type header; any
        # other attribute name is lowercase letters and digits (CloudEvents' naming rule).
        if attribute in ("data", "datacontenttype") and name != "content-type":
            raise _RefusalError("parameter_unknown", name)
        if name != "content-type" and not re.fullmatch(r"[a-z0-9]{1,20}", attribute):
            raise _RefusalError("parameter_unknown", name)
        if attribute in document or value is None:
            raise _RefusalError("parameter_invalid", name)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _RefusalError("parameter_invalid", name) from None
        if attribute == "expectedversion" and re.fullmatch(r"-?\d{1,20}", text, re.ASCII):
            document[attribute] = int(text)
        else:
            document[attribute] = text
    document["data"] = data
    return document


def _header_of(param: str | None) -> str | None:
    """The name a refusal gives in binary mode: the header the attribute came in."""
    if param is None:
        return None
    first, dot, rest = param.partition(".")
    if first == "data" and (dot or param == "data"):
        return param
    header = "content-type" if first == "datacontenttype" else f"ce_{first}"
    return header + dot + rest


@dataclass(frozen=True)
class _Members:
    pairs: list[tuple[str, Any]]


def _repeated_key(value: bytes) -> str | None:
    """README: a key twice in one object is refused, naming it; the outermost first (an
    object's own keys in order, then what its members hold, in order)."""
    tree = json.loads(value, object_pairs_hook=_Members)

    def search(node: Any, path: list[str]) -> str | None:
        if isinstance(node, _Members):
            keys = [key for key, _ in node.pairs]
            for index, key in enumerate(keys):
                if key in keys[:index]:
                    return ".".join([*path, key])
            children = [(key, child) for key, child in node.pairs]
        elif isinstance(node, list):
            children = [(str(index), child) for index, child in enumerate(node)]
        else:
            return None
        for key, child in children:
            found = search(child, [*path, key])
            if found is not None:
                return found
        return None

    return search(tree, [])


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")  # NaN and Infinity are Python's, not JSON's


def _encodes(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _walk(document: object) -> tuple[int, bool]:
    """How deep ``document`` nests, and whether any string in it holds a lone surrogate."""
    deepest, lone = 0, False
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            lone = lone or _SURROGATE.search(node) is not None
        elif isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((key, depth) for key in node)
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest, lone


# -- the command -------------------------------------------------------------------------


def _command(document: dict[str, Any]) -> dict[str, Any]:
    """Check the envelope and ``data``, in the README's table order (README, choice: which
    refusal a command that breaks several rules gets; the service reports the first in
    that order, and unknown attributes after every known one); return the update."""
    data: dict[str, Any] = {}
    for name, required, check in _ENVELOPE:
        if name not in document:
            if required:
                _refuse("parameter_missing", name)
            continue
        value = document[name]
        if value is None and not required and name != "datacontenttype":
            continue  # the JSON Schema allows null for every optional attribute but that one
        if check is None:
            data = _data(value)
        else:
            check(value, name)
    for name in document:
        if name not in _ENVELOPE_NAMES:
            _refuse("parameter_unknown", name)
    return data


Check = Callable[[object, str], None]


def _constant(expected: str) -> Check:
    def check(value: object, param: str) -> None:
        if value != expected or not isinstance(value, str):
            _refuse("parameter_invalid", param)

    return check


def _identifier(value: object, param: str, limit: int = 255) -> None:
    """``id`` (README) and, by the JSON Schema, ``subject``, ``correlationid``,
    ``principal`` and (to 1024) ``source``: printable characters without whitespace."""
    if not isinstance(value, str):
        _refuse("parameter_invalid", param)
    if value == "":
        _refuse("parameter_invalid_empty", param)
    if len(value) > limit or not value.isprintable() or any(c.isspace() for c in value):
        _refuse("parameter_invalid", param)


def _source(value: object, param: str) -> None:
    # README, choice: "URI-reference" is not checked as such, only as the JSON Schema says.
    _identifier(value, param, limit=1024)


# RFC 9110 5.6.2 and 8.3.1: a token, a quoted string, and "; name=value" parameters.
_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _media_parameters(rest: str) -> list[tuple[str, str]] | None:
    """The parameters after ``type/subtype``, or None when they are not RFC 9110's."""
    found = []
    while rest:
        rest = rest.lstrip(" \t")
        if not rest.startswith(";"):
            return None
        rest = rest[1:].lstrip(" \t")
        name_end = next((i for i, c in enumerate(rest) if c not in _TOKEN_CHARS), len(rest))
        name, rest = rest[:name_end], rest[name_end:]
        if not name or not rest.startswith("="):
            return None
        rest = rest[1:]
        if rest.startswith('"'):
            i, value = 1, ""
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\":
                    i += 1
                if i >= len(rest) or ord(rest[i]) < 0x20 or rest[i] == "\x7f":
                    return None
                value += rest[i]
                i += 1
            if i >= len(rest):
                return None
            rest = rest[i + 1 :]
        else:
            end = next((i for i, c in enumerate(rest) if c not in _TOKEN_CHARS), len(rest))
            value, rest = rest[:end], rest[end:]
            if not value:
                return None
        found.append((name, value))
    return found


def _content_type(value: object, param: str) -> None:
    # README: application/json in any case, with parameters; a charset must be UTF-8.
    if not isinstance(value, str) or len(value) > 255:
        _refuse("parameter_invalid", param)
    if value[:16].lower() != "application/json":
        _refuse("parameter_invalid", param)
    parameters = _media_parameters(value[16:])
    if parameters is None:
        _refuse("parameter_invalid", param)
    for name, given in parameters:
        if name.lower() == "charset" and given.lower() not in ("utf-8", "utf8"):
            _refuse("parameter_invalid", param)


def _absolute_uri(value: object, param: str) -> None:
    # README: an absolute URI (RFC 3986 4.3: a scheme, ":", then printable ASCII).
    if value == "":
        _refuse("parameter_invalid_empty", param)  # as every empty attribute
    if not isinstance(value, str) or len(value) > 1024 or ":" not in value:
        _refuse("parameter_invalid", param)
    scheme, _, rest = value.partition(":")
    if not (scheme[:1].isascii() and scheme[:1].isalpha()) or not all(
        c.isascii() and (c.isalnum() or c in "+-.") for c in scheme
    ):
        _refuse("parameter_invalid", param)
    if not all("!" <= c <= "~" for c in rest):
        _refuse("parameter_invalid", param)


def _time(value: object, param: str) -> None:
    found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        _refuse("parameter_invalid", param)
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    offset_hour, offset_minute = (int(part or 0) for part in found.groups()[7:])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if not (
        1 <= month <= 12
        and 1 <= day <= days[month - 1]
        and hour <= 23
        and minute <= 59
        and second <= 60  # a leap second
        and offset_hour <= 23
        and offset_minute <= 59
    ):
        _refuse("parameter_invalid", param)


def _version(value: object, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse("parameter_invalid_integer", param)
    if value < 1:  # README, choice: versions start at 1 (JSON Schema minimum)
        _refuse("parameter_invalid", param)
    if value > 2**63 - 1:  # README: a version is a PostgreSQL bigint
        _refuse("parameter_invalid", param)


def _traceparent(value: object, param: str) -> None:
    # README, choice: an attribute that is not a W3C traceparent is refused (not ignored).
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value) or value[:2] == "ff":
        _refuse("parameter_invalid", param)


def _string(limit: int) -> Check:
    def check(value: object, param: str) -> None:
        if not isinstance(value, str) or len(value) > limit:
            _refuse("parameter_invalid", param)

    return check


#: Each attribute in the README's order: whether it is required, and its check (``data``
#: is checked by ``_data``).
_ENVELOPE: tuple[tuple[str, bool, Check | None], ...] = (
    ("specversion", True, _constant("1.0")),
    ("id", True, _identifier),
    ("source", True, _source),
    ("type", True, _constant("customer.update")),
    ("subject", True, _identifier),
    ("time", False, _time),
    ("datacontenttype", False, _content_type),
    ("dataschema", False, _absolute_uri),
    ("expectedversion", False, _version),
    ("correlationid", False, _identifier),
    ("traceparent", False, _traceparent),
    ("tracestate", False, _string(512)),
    ("principal", False, _identifier),
    ("permissions", False, _string(4096)),
    ("authtoken", False, _string(8192)),
    ("data", True, None),
)
_ENVELOPE_NAMES = frozenset(name for name, _, _ in _ENVELOPE)


#: The algorithm of the fault suite's signed mode.
SIGNING_ALGORITHM = "HS256"


def _authorize(document: Mapping[str, Any], jwt_key: str | None) -> None:
    if jwt_key is None:
        _authorize_unsigned(document)
        return
    # Signed mode: ``authtoken`` is a JWT verified with the key, with ``sub`` and ``exp``;
    # its ``permissions`` claim (a list) or ``scope`` claim (space-separated) must hold
    # the action; the ``principal`` and ``permissions`` attributes are ignored.
    token = document.get("authtoken")
    if token is None:
        _refuse("permission_denied", "authtoken")
    try:
        claims = jwt.decode(
            token, jwt_key, algorithms=[SIGNING_ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError:
        _refuse("permission_denied", "authtoken")
    listed, scope = claims.get("permissions"), claims.get("scope")
    if isinstance(listed, list):
        granted = {item for item in listed if isinstance(item, str)}
    else:
        granted = set(scope.split(" ")) if isinstance(scope, str) else set()
    if ACTION not in granted:
        _refuse("permission_denied", "authtoken")


def _authorize_unsigned(document: Mapping[str, Any]) -> None:
    """Unsigned mode: the principal's space-separated permissions must hold the action."""
    # README, choice: the params (the service names the attribute that falls short), and
    # that only U+0020 separates permissions (RFC 6749's scope syntax).
    if document.get("principal") is None:
        _refuse("permission_denied", "principal")
    if ACTION not in (document.get("permissions") or "").split(" "):
        _refuse("permission_denied", "permissions")


# -- data ----------------------------------------------------------------------------------

_ADDRESS = ("city", "country", "line1", "line2", "postal_code", "state")
_ADDRESS_LIMITS = {"city": 200, "line1": 200, "line2": 200, "postal_code": 20, "state": 200}
_TEXT_LIMITS = {"description": 5000, "email": 512, "name": 256, "phone": 20}
_FIELDS = (
    "address",
    "description",
    "email",
    "invoice_prefix",
    "next_invoice_sequence",
    "name",
    "phone",
    "preferred_locales",
    "tax_exempt",
    "expand",
)


def _data(value: object) -> dict[str, Any]:
    """The update ``data`` asks for: each given field with its new value (None for a
    cleared one, [] for cleared locales, the given subfields for an address)."""
    if not isinstance(value, dict):
        _refuse("parameter_invalid", "data")
    update: dict[str, Any] = {}
    for name in _FIELDS:
        if name in value:
            update[name] = _field(name, value[name], f"data.{name}")
    for name in value:
        if name not in _FIELDS:
            _refuse("parameter_unknown", f"data.{name}")
    return update


def _field(name: str, value: Any, param: str) -> Any:
    cleared = value is None or value == ""
    if name == "address":
        return None if cleared else _address(value, param)
    if name in _TEXT_LIMITS:
        text = _text(value, param, _TEXT_LIMITS[name], lines=name == "description")
        # README, choice: an email longer than 512 is parameter_invalid, not email_invalid.
        if text is not None and name == "email":
            try:
                email_validator.validate_email(text, check_deliverability=False)
            except email_validator.EmailNotValidError:
                _refuse("email_invalid", param)
        return text
    if name == "preferred_locales":
        return [] if cleared else _locales(value, param)
    if name == "expand":
        if value is None:
            return None
        if not isinstance(value, list):
            _refuse("parameter_invalid", param)
        for index, item in enumerate(value):
            if item != "subscriptions":
                _refuse("parameter_invalid", f"{param}.{index}")
        if len(value) > 1:
            _refuse("parameter_invalid", param)  # "subscriptions" twice
        return value
    # invoice_prefix, next_invoice_sequence, tax_exempt: they cannot be cleared.
    if cleared:
        _refuse("parameter_invalid_empty", param)
    if name == "next_invoice_sequence":
        if isinstance(value, bool) or not isinstance(value, int):
            _refuse("parameter_invalid_integer", param)
        if not 1 <= value <= 1_000_000_000:
            _refuse("parameter_invalid", param)
    elif name == "invoice_prefix":
        if not isinstance(value, str) or not _INVOICE_PREFIX.fullmatch(value):
            _refuse("parameter_invalid", param)
    elif value not in _TAX_EXEMPT or not isinstance(value, str):
        _refuse("parameter_invalid", param)
    return value


def _text(value: object, param: str, limit: int, *, lines: bool = False) -> str | None:
    """A clearable text field: None when cleared. README: no control characters, but
    newline and tab in ``description``. README, choice: a carriage return counts as part
    of a newline there (the service allows it)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        _refuse("parameter_invalid", param)
    if (_CONTROL_BUT_LINES if lines else _CONTROL).search(value):
        _refuse("parameter_invalid", param)
    return value


def _address(value: object, param: str) -> dict[str, str | None]:
    if not isinstance(value, dict):
        _refuse("parameter_invalid", param)
    given: dict[str, str | None] = {}
    for name in _ADDRESS:
        if name not in value:
            continue
        where = f"{param}.{name}"
        if name != "country":
            given[name] = _text(value[name], where, _ADDRESS_LIMITS[name])
        elif value[name] is None or value[name] == "":
            given[name] = None
        elif isinstance(value[name], str) and value[name] in COUNTRIES:
            given[name] = value[name]
        else:
            _refuse("parameter_invalid", where)
    for name in value:
        if name not in _ADDRESS:
            _refuse("parameter_unknown", f"{param}.{name}")
    return given


def _locales(value: object, param: str) -> list[str]:
    if not isinstance(value, list):
        _refuse("parameter_invalid", param)
    for index, tag in enumerate(value):
        # README, choice: at most 35 characters (the JSON Schema; RFC 5646 4.4.1's minimum
        # buffer), and BCP 47's own syntax before the registry (langcodes also takes "_").
        if not isinstance(tag, str) or len(tag) > 35 or not _registered(tag):
            _refuse("parameter_invalid", f"{param}.{index}")
    # "No tag twice": language tags ignore case (RFC 5646 2.1.1).
    if len({tag.casefold() for tag in value}) != len(value):
        _refuse("parameter_invalid", param)
    return list(value)


@functools.lru_cache(maxsize=1024)
def _registered(tag: str) -> bool:
    return _LANGUAGE_TAG.fullmatch(tag) is not None and langcodes.tag_is_valid(tag)
