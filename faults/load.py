"""A deterministic mixed load of ``customer.update`` records, and a paced producer for it.

``build_load`` draws, from one seed, a sequence of records for the seeded customers:
valid updates of several fields (address merges included), commands refused for every
kind of reason, resends of earlier records, ``expectedversion`` commands that match or
conflict, (for the poison scenario) records that cannot be read as commands at all, and
(for the hostile-records scenario) records built to break a consumer rather than a
rule: header names with NUL or not UTF-8 (sent with kcat, since our client cannot write
them), forged ``outbox-id`` and ``kafka_dlt-*`` headers, too many headers, a key and a value
near Kafka's own size limit, and permissions split by a no-break space.

Some records carry user headers (a name that is UTF-8 but not ASCII, a null value, a
binary one, one as large as allowed, a name twice, a ``traceparent`` valid or not), some
commands a ``traceparent`` attribute, and some keys are as large as the service allows
(``MAX_KEY_BYTES``): refused commands for a kilobyte key, and every command for the
customer ``LONG_CUSTOMER_ID``, whose id is 255 characters and over 1,000 bytes, if it is
seeded. With ``signing_key`` the load is for workers in signed mode (``AUTH_JWT_KEY``):
every command carries a JWT, and refusals are made with tokens that lack the permission,
are signed with another key, have expired or are missing; ``principal`` and
``permissions`` attributes that would grant it are ignored, and a resend with a fresh
token is the same command.

Two rules keep the reference model exact (see ``faults.model``): a command id is only
ever sent under one key, and an invoice prefix is only ever asked for by one customer
(fresh prefixes are unique; the one contested prefix belongs to customer 0, whose prefix
no command changes).

``LoadProducer`` sends the records at a steady rate in the background, resending what
the broker did not acknowledge, and keeps every acknowledgement for the durability
cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from devstack.kcat import produce_raw
from faults.model import SIGNING_ALGORITHM, ReferenceModel, produced_command, signed_authorizer
from schemas.command import AUTHORIZATION_ACTION
from service.domain.customer import CustomerState
from service.domain.inbound import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HEADER_VALUE_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
)

log = structlog.get_logger(__name__)

SOURCE = "faults-load"
PRINCIPAL = "svc-faults"

CITIES = ("Rome", "Turin", "Paris", "Berlin", "Madrid", "Austin", "Leeds", "Lyon")
COUNTRIES = ("IT", "FR", "DE", "ES", "US", "GB", "NL", "PT")
STATES = ("Lazio", "Piemonte", "Ile-de-France", "Texas", None)
LOCALES: tuple[list[str] | None, ...] = (
    ["en-US"],
    ["it-IT", "en-GB"],
    ["fr-FR"],
    ["de-DE", "en-US"],
    [],
    None,
)
TAX = ("exempt", "none", "reverse")

#: Relative weights of each kind of record in the load.
MIX: dict[str, int] = {
    "update": 62,
    "resend": 8,
    "expected_version": 4,
    "version_conflict": 3,
    "invalid": 14,
    "unknown_customer": 2,
    "id_reused": 2,
}
#: Share of poison records when the load includes poison.
POISON_SHARE = 0.04
#: Share of hostile records when the load includes them.
HOSTILE_SHARE = 0.06
#: Share of records with user headers, and of commands with a ``traceparent`` attribute.
HEADER_SHARE = 0.2
TRACED_SHARE = 0.1
#: Share of plain updates sent in CloudEvents binary content mode (attributes in ce_
#: headers, data alone in the value), as CloudEvents SDKs send them.
BINARY_SHARE = 0.25
#: Extra kinds of record in signed mode, with their weights.
SIGNED_MIX: dict[str, int] = {
    "signed:bad_signature": 2,
    "signed:expired": 2,
    "signed:scope": 3,
    "signed:scope_nbsp": 1,
    "signed:new_token": 3,
}
#: A seeded customer with a key as large as the service takes: 255 characters (the most
#: an id may have), four UTF-8 bytes each but for ``cus_``: 1,008 bytes.
LONG_CUSTOMER_ID = "cus_" + "\U0001d518" * 251


def signing_key(seed: int) -> str:
    """The HMAC key of signed mode's tokens (HS256 wants 32 bytes at least)."""
    return f"faults-signing-key-{seed:020d}-hs256"


#: ``exp`` of the tokens: valid ones for long, expired ones since 2020.
TOKEN_EXPIRES = 4_102_444_800
TOKEN_EXPIRED = 1_577_836_800

INVALID_KINDS = (
    "bad_country",
    "unknown_field",
    "bad_email",
    "permission_denied",
    "subject_mismatch",
    "lowercase_prefix",
    "clear_prefix",
    "zero_invoice_sequence",
    "bad_locale",
    "taken_prefix",
    "missing_id",
    "missing_principal",
    "key_at_limit",
)
POISON_KINDS = (
    "invalid_utf8",
    "too_large",
    "too_deep",
    "not_json",
    "no_key",
    "json_array",
    "tombstone",
    "key_not_utf8",
)


HOSTILE_KINDS = (
    "header_name_nul",
    "header_name_not_utf8",
    "forged_outbox_id",
    "forged_outbox_id_text",
    "forged_dead_letter_header",
    "too_many_headers",
    "permissions_nbsp",
    "value_near_kafka_limit",
    "key_too_large",
)
#: Kinds sent at most once per load: each is about a megabyte, or a third of one.
_HOSTILE_ONCE = ("value_near_kafka_limit", "key_too_large")
#: The largest value that still fits Kafka's default max.message.bytes in a batch of its own.
NEAR_KAFKA_LIMIT = 1_048_400


@dataclass(frozen=True, slots=True)
class LoadRecord:
    key: bytes | None
    value: bytes | None
    #: What the record is meant to exercise (for the summary only).
    kind: str
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: Headers whose names our client cannot write: the record is sent with kcat.
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class LoadPlan:
    records: list[LoadRecord]

    def kinds(self) -> Counter[str]:
        return Counter(record.kind for record in self.records)


def _binary_headers(document: dict[str, Any]) -> tuple[tuple[str, bytes | None], ...]:
    """The attributes of ``document`` as binary content mode's headers (text; integers
    in decimal), and its data's content type."""
    headers: list[tuple[str, bytes | None]] = [("content-type", b"application/json")]
    for name, value in document.items():
        if name != "data":
            headers.append((f"ce_{name}", str(value).encode()))
    return tuple(headers)


@dataclass
class _Generator:
    rng: random.Random
    seed: int
    customers: list[str]
    model: ReferenceModel
    records: list[LoadRecord] = field(default_factory=list)
    #: Earlier records per customer key, resendable as they are.
    sent: dict[str, list[LoadRecord]] = field(default_factory=dict)
    #: Earlier valid-looking commands per customer: (id, data).
    commands: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    counter: int = 0
    #: Poison and hostile kinds sent so far.
    sent_once: set[str] = field(default_factory=set)
    #: Signed mode: the key every valid token is signed with.
    signing_key: str | None = None
    #: Earlier plain updates per customer, as sent (signed mode resends them).
    documents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: int = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"cmd-{self.seed}-{self.counter:06d}"

    def emit(
        self,
        key: bytes | None,
        value: bytes | None,
        kind: str,
        *,
        headers: tuple[tuple[str, bytes | None], ...] = (),
        raw_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        record = LoadRecord(key, value, kind, headers, raw_headers)
        self.records.append(record)
        # As a consumer reads them (see service.adapters.kafka.records).
        read = headers + tuple((n.decode("utf-8", "surrogateescape"), v) for n, v in raw_headers)
        # The model only needs the order of each key's records, which a single
        # producer keeps; the partition and offset here are placeholders.
        self.model.step(produced_command(0, len(self.records), key, value, read))
        if key is not None and kind not in POISON_KINDS and kind not in HOSTILE_KINDS:
            self.sent.setdefault(key.decode("utf-8", errors="replace"), []).append(record)

    def command(
        self,
        customer_id: str,
        data: dict[str, Any],
        *,
        kind: str,
        key: str | None = None,
        command_id: str | None = "",
        headers: tuple[tuple[str, bytes | None], ...] | None = None,
        raw_headers: tuple[tuple[bytes, bytes], ...] = (),
        **attributes: Any,
    ) -> None:
        """A command record; ``headers`` None for user headers at random. In signed mode
        it carries a valid token unless ``authtoken`` is given (None: no token)."""
        if self.signing_key is not None and "authtoken" not in attributes:
            attributes["authtoken"] = self.token()
        if "traceparent" not in attributes and self.rng.random() < TRACED_SHARE:
            attributes["traceparent"] = self.traceparent()
        document: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.next_id() if command_id == "" else command_id,
            "source": SOURCE,
            "type": "customer.update",
            "subject": customer_id,
            "time": "2026-01-31T09:30:00Z",
            "principal": PRINCIPAL,
            "permissions": AUTHORIZATION_ACTION,
            "correlationid": f"corr-{self.seed}-{self.counter}",
            "data": data,
            **attributes,
        }
        if document["id"] is None:
            del document["id"]
        if document.get("authtoken", "") is None:
            del document["authtoken"]
        if kind in ("update", "expected_version"):
            self.commands.setdefault(customer_id, []).append((document["id"], data))
        if kind == "update":
            self.documents.setdefault(customer_id, []).append(document)
        extra = self.user_headers() if headers is None else headers
        value = orjson.dumps(document)
        if kind in ("update", "expected_version") and self.rng.random() < BINARY_SHARE:
            value, extra = orjson.dumps(data), (*extra, *_binary_headers(document))
        self.emit(
            (key or customer_id).encode(), value, kind, headers=extra, raw_headers=raw_headers
        )

    def user_headers(self) -> tuple[tuple[str, bytes | None], ...]:
        """None, mostly; else a few headers a producer may well send."""
        rng = self.rng
        if rng.random() >= HEADER_SHARE:
            return ()
        choices: list[tuple[str, bytes | None]] = [
            ("x-request-id", f"req-{self.seed}-{self.counter}".encode()),
            ("x-tenant", rng.choice([b"acme", b"globex", b""])),
            ("x-r\u00e9gion", "\u00eele-de-France".encode()),
            ("x-null", None),
            ("x-binary", rng.randbytes(12)),
            ("x-large", b"v" * rng.randint(1024, DEFAULT_MAX_HEADER_VALUE_BYTES)),
            ("traceparent", self.traceparent().encode()),
            # Ignored (W3C Trace Context asks so); the event then has no trace context.
            ("traceparent", b"00-not-a-trace-01"),
        ]
        picked = rng.sample(choices, rng.randint(1, 3))
        if rng.random() < 0.2:
            picked.append(picked[0])  # one name twice
        return tuple(picked)

    def traceparent(self) -> str:
        return f"00-{self.rng.getrandbits(128):032x}-{self.rng.getrandbits(64):016x}-01"

    def token(
        self,
        *,
        permissions: list[str] | None = None,
        scope: str | None = None,
        key: str | None = None,
        expires: int = TOKEN_EXPIRES,
    ) -> str:
        """A JWT for the load's principal; by default signed with the workers' key and
        holding the permission."""
        assert self.signing_key is not None
        self.tokens += 1
        claims: dict[str, Any] = {"sub": PRINCIPAL, "exp": expires, "jti": f"t{self.tokens}"}
        if scope is not None:
            claims["scope"] = scope
        else:
            claims["permissions"] = [AUTHORIZATION_ACTION] if permissions is None else permissions
        return jwt.encode(claims, key or self.signing_key, algorithm=SIGNING_ALGORITHM)

    # -- kinds of record -----------------------------------------------------------------

    def update_data(self, index: int) -> dict[str, Any]:
        rng = self.rng
        n = self.counter + 1
        candidates: list[Callable[[], tuple[str, Any]]] = [
            lambda: ("name", rng.choice([f"Customer {n}", f"Ditta {n} S.r.l.", None])),
            lambda: ("email", rng.choice([f"user{n}@example.com", None])),
            lambda: ("phone", rng.choice([f"+39 06 {n:07d}", ""])),
            lambda: ("description", rng.choice([f"note {n}\nsecond line", None])),
            lambda: ("preferred_locales", rng.choice(LOCALES)),
            lambda: ("tax_exempt", rng.choice(TAX)),
            lambda: ("address", self.address()),
            lambda: ("next_invoice_sequence", rng.randint(1, 10_000)),
        ]
        if index != 0:
            # A fresh prefix nobody else ever asks for.
            candidates.append(lambda: ("invoice_prefix", f"P{index:04d}X{n:06d}"))
        data = dict(rng.choice(candidates)() for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.1:
            data["expand"] = ["subscriptions"]
        return data

    def address(self) -> dict[str, Any] | None:
        rng = self.rng
        if rng.random() < 0.08:
            return None  # clears the whole address
        fields: dict[str, Any] = {
            "city": rng.choice(CITIES),
            "country": rng.choice(COUNTRIES),
            "line1": f"Via {rng.randint(1, 200)}",
            "line2": rng.choice([f"Scala {rng.choice('ABC')}", None, ""]),
            "postal_code": f"{rng.randint(10000, 99999)}",
            "state": rng.choice(STATES),
        }
        # A merge: only some fields, the others stay as they are.
        chosen = rng.sample(sorted(fields), rng.randint(1, 3))
        return {name: fields[name] for name in chosen}

    def add(self, kind: str) -> None:
        rng = self.rng
        index = rng.randrange(len(self.customers))
        customer_id = self.customers[index]
        current = self.model.customers.get(customer_id)
        version = current.version if current is not None else 1

        if kind == "resend" and self.sent.get(customer_id):
            record = rng.choice(self.sent[customer_id])
            # Headers and all: a binary-mode command is its headers as much as its value.
            self.emit(
                record.key,
                record.value,
                "resend",
                headers=record.headers,
                raw_headers=record.raw_headers,
            )
        elif kind == "expected_version":
            data = self.update_data(index)
            self.command(customer_id, data, kind=kind, expectedversion=version)
        elif kind == "version_conflict":
            stale = rng.randint(1, version - 1) if version > 1 else version + 5
            data = self.update_data(index)
            self.command(customer_id, data, kind=kind, expectedversion=stale)
        elif kind == "unknown_customer":
            missing = f"cus_missing_{rng.randint(1, 5):03d}"
            self.command(missing, {"name": "Nobody"}, kind=kind)
        elif kind == "id_reused" and self.commands.get(customer_id):
            command_id, data = rng.choice(self.commands[customer_id])
            changed = {**data, "description": f"reused {self.counter}"}
            self.command(customer_id, changed, kind=kind, command_id=command_id)
        elif kind == "invalid":
            self.invalid(rng.choice(INVALID_KINDS), index)
        elif kind.startswith("signed:"):
            self.signed(kind, customer_id, index)
        else:
            self.command(customer_id, self.update_data(index), kind="update")

    def signed(self, kind: str, customer_id: str, index: int) -> None:
        """A command about the token itself (signed mode only)."""
        other_key = f"{self.signing_key}-but-another-one"
        rule = f"pay:customers:read\u00a0{AUTHORIZATION_ACTION}"
        match kind:
            case "signed:bad_signature":
                token = self.token(key=other_key)
            case "signed:expired":
                token = self.token(expires=TOKEN_EXPIRED)
            case "signed:scope":
                token = self.token(scope=f"pay:customers:read {AUTHORIZATION_ACTION}")
            case "signed:scope_nbsp":
                token = self.token(scope=rule)
            case _ if self.documents.get(customer_id):
                # The same command again, with a token of its own: a duplicate.
                document = self.rng.choice(self.documents[customer_id])
                fresh = {**document, "authtoken": self.token()}
                self.emit(customer_id.encode(), orjson.dumps(fresh), kind)
                return
            case _:
                token = self.token()
        self.command(customer_id, self.update_data(index), kind=kind, authtoken=token)

    def invalid(self, kind: str, index: int) -> None:
        customer_id = self.customers[index]
        other = self.customers[(index + 1) % len(self.customers)]
        holder = self.model.customers.get(self.customers[0])
        taken = holder.invoice_prefix if holder is not None else None
        data: dict[str, Any]
        attributes: dict[str, Any] = {}
        key = None
        command_id: str | None = ""
        match kind:
            case "bad_country":
                data = {"address": {"country": "XX", "city": "Nowhere"}}
            case "unknown_field":
                data = {"nickname": "Bob"}
            case "bad_email":
                data = {"email": "not-an-email"}
            case "permission_denied":
                data = {"name": "Mallory"}
                attributes["permissions"] = "pay:customers:read"
                if self.signing_key is not None:
                    # The attribute is ignored; the token decides.
                    attributes["permissions"] = AUTHORIZATION_ACTION
                    attributes["authtoken"] = self.token(permissions=["pay:customers:read"])
            case "missing_principal":
                data = {"name": "Nobody"}
                attributes["principal"] = None
                if self.signing_key is not None:
                    # No token: the attributes, which would grant it, are ignored.
                    attributes["principal"] = PRINCIPAL
                    attributes["authtoken"] = None
            case "key_at_limit":
                # As large a key as the service takes; too long an id to be a customer's.
                key = "cus_" + "k" * (DEFAULT_MAX_KEY_BYTES - 4)
                customer_id = key
                data = {"name": "Long key"}
            case "subject_mismatch":
                data = {"name": "Elsewhere"}
                key = other
            case "lowercase_prefix":
                data = {"invoice_prefix": "lower1"}
            case "clear_prefix":
                data = {"invoice_prefix": None}
            case "zero_invoice_sequence":
                data = {"next_invoice_sequence": 0}
            case "bad_locale":
                data = {"preferred_locales": ["english please"]}
            case "taken_prefix" if index != 0 and taken is not None:
                data = {"invoice_prefix": taken}
            case "missing_id":
                data = {"name": "No id"}
                command_id = None
            case _:
                data = {"address": {"country": "ZZ"}}
        self.command(
            customer_id, data, kind=f"invalid:{kind}", key=key, command_id=command_id, **attributes
        )

    def poison(self) -> None:
        rng = self.rng
        customer_id = rng.choice(self.customers)
        key = customer_id.encode()
        # Every kind once, in order, then at random.
        unsent = [kind for kind in POISON_KINDS if kind not in self.sent_once]
        kind = unsent[0] if unsent else rng.choice(POISON_KINDS)
        self.sent_once.add(kind)
        value: bytes | None
        match kind:
            case "invalid_utf8":
                value = b'{"id": "\xff\xfe", "subject": "' + key + b'"}'
            case "too_large":
                filler = "x" * (DEFAULT_MAX_RECORD_BYTES + 1024)
                value = orjson.dumps({"id": self.next_id(), "data": {"description": filler}})
            case "too_deep":
                nested: Any = {"name": "deep"}
                for _ in range(DEFAULT_MAX_DEPTH + 4):
                    nested = {"n": nested}
                value = orjson.dumps({"id": self.next_id(), "subject": customer_id, "data": nested})
            case "not_json":
                value = b"{this is not json"
            case "no_key":
                key_less = {"id": self.next_id(), "subject": customer_id, "data": {"name": "x"}}
                self.emit(None, orjson.dumps(key_less), kind)
                return
            case "json_array":
                value = b'["customer", "update"]'
            case "tombstone":
                value = None
            case _:
                key = b"\xffcus"
                value = orjson.dumps({"id": self.next_id(), "data": {}})
        self.emit(key, value, kind, headers=self.user_headers())

    def hostile(self) -> None:
        rng = self.rng
        customer_id = rng.choice(self.customers)
        # Every kind once, in order, then the repeatable ones at random.
        unsent = [kind for kind in HOSTILE_KINDS if kind not in self.sent_once]
        repeatable = [kind for kind in HOSTILE_KINDS if kind not in _HOSTILE_ONCE]
        kind = unsent[0] if unsent else rng.choice(repeatable)
        self.sent_once.add(kind)
        data = {"description": f"hostile {kind}"}
        label = f"hostile:{kind}"
        match kind:
            case "header_name_nul":
                self.command(customer_id, data, kind=label, headers=(("x-\x00-name", b"v"),))
            case "header_name_not_utf8":
                self.command(customer_id, data, kind=label, raw_headers=((b"x-\xff\xfe", b"v"),))
            case "forged_outbox_id":
                forged = str(rng.randint(1, 20_000)).encode()
                self.emit(customer_id.encode(), b"[1]", label, headers=(("outbox-id", forged),))
            case "forged_outbox_id_text":
                self.emit(customer_id.encode(), b"[1]", label, headers=(("outbox-id", b"x1"),))
            case "forged_dead_letter_header":
                forged_code = ("kafka_dlt-exception-cause-fqcn", b"forged")
                self.emit(customer_id.encode(), b"{oops", label, headers=(forged_code,))
            case "too_many_headers":
                many = tuple((f"x-{n}", b"v") for n in range(DEFAULT_MAX_HEADERS + 1))
                self.command(customer_id, data, kind=label, headers=many)
            case "permissions_nbsp":
                sneaky = f"pay:customers:read\u00a0{AUTHORIZATION_ACTION}"
                if self.signing_key is not None:
                    self.command(customer_id, data, kind=label, authtoken=self.token(scope=sneaky))
                else:
                    self.command(customer_id, data, kind=label, permissions=sneaky)
            case "value_near_kafka_limit":
                self.emit(customer_id.encode(), b"x" * NEAR_KAFKA_LIMIT, label)
            case _:
                document = {"id": self.next_id(), "subject": customer_id, "data": data}
                self.emit(b"k" * 340_000, orjson.dumps(document), label)


def build_load(
    *,
    seed: int,
    commands: int,
    seeded: Mapping[str, CustomerState],
    topic: str,
    poison: bool = False,
    hostile: bool = False,
    hot_share: float = 0.0,
    signing_key: str | None = None,
) -> LoadPlan:
    """``commands`` records for the customers in ``seeded``, the same for the same seed;
    ``hot_share`` of them update the first customer (a hot key), kind ``hot``; for
    workers in signed mode with ``signing_key``."""
    customers = sorted(seeded)
    if len(customers) < 2:
        raise ValueError("the load needs at least two seeded customers")
    generator = _Generator(
        rng=random.Random(seed),
        seed=seed,
        customers=customers,
        model=ReferenceModel(
            seeded,
            topic=topic,
            authorizer=None if signing_key is None else signed_authorizer(signing_key),
        ),
        signing_key=signing_key,
    )
    mix = MIX if signing_key is None else {**MIX, **SIGNED_MIX}
    kinds = list(mix)
    weights = [mix[kind] for kind in kinds]
    # However small the load, every poison and hostile kind is in it: one of each at
    # these positions at least, spread over the load.
    poison_at = _spread(commands, len(POISON_KINDS)) if poison else set()
    hostile_at = _spread(commands, len(HOSTILE_KINDS)) if hostile else set()
    while len(generator.records) < commands:
        at = len(generator.records)
        if poison and (at in poison_at or generator.rng.random() < POISON_SHARE):
            generator.poison()
        elif hostile and (at in hostile_at or generator.rng.random() < HOSTILE_SHARE):
            generator.hostile()
        elif hot_share and generator.rng.random() < hot_share:
            generator.command(customers[0], generator.update_data(0), kind="hot")
        else:
            generator.add(generator.rng.choices(kinds, weights)[0])
    return LoadPlan(generator.records[:commands])


def _spread(commands: int, count: int) -> set[int]:
    """``count`` positions spread evenly over ``commands`` records."""
    return {commands * (n + 1) // (count + 1) for n in range(count)}


# -- sending -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    index: int
    partition: int
    offset: int


class LoadProducer:
    """Sends a plan at ``rate`` records a second; resends records that were not
    acknowledged (as any at-least-once producer would), up to ``max_attempts``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        plan: LoadPlan,
        *,
        rate: float,
        max_attempts: int = 5,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._plan = plan
        self._rate = rate
        self._max_attempts = max_attempts
        self.handed_over = 0
        self.acks: list[Ack] = []
        self.failures: list[str] = []
        self.resent = 0
        self.abandoned: list[int] = []
        self._queue: list[tuple[int, int]] = []
        self._outstanding = 0
        self._kcat_sends: list[asyncio.Task[None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def plan(self) -> LoadPlan:
        return self._plan

    @property
    def total(self) -> int:
        return len(self._plan.records)

    @property
    def progress(self) -> float:
        return self.handed_over / self.total if self.total else 1.0

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-producer")

    async def wait(self) -> None:
        """Until every record is acknowledged or abandoned; re-raises a producer crash."""
        assert self._task is not None
        await self._task

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reached(self, fraction: float, *, within: float = 300.0) -> None:
        """Return once ``fraction`` of the plan has been handed to the producer."""
        deadline = time.monotonic() + within
        while self.progress < fraction and not self.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load did not reach {fraction:.0%} in {within:.0f}s")
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id="faults-load",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30_000,
        )
        await producer.start()
        try:
            started = time.monotonic()
            self._queue = [(index, 1) for index in reversed(range(self.total))]
            while self._queue or self._outstanding:
                due = int((time.monotonic() - started) * self._rate) + 1
                while self._queue and self.handed_over < due:
                    index, attempt = self._queue.pop()
                    if attempt == 1:
                        self.handed_over += 1
                    await self._send(producer, index, attempt)
                # Pacing the load, not waiting for a condition.
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, index: int, attempt: int) -> None:
        record = self._plan.records[index]
        self._outstanding += 1
        if record.raw_headers:
            self._kcat_sends.append(asyncio.create_task(self._send_with_kcat(index)))
            return
        try:
            future = await producer.send(
                self._topic, record.value, key=record.key, headers=list(record.headers)
            )
        except KafkaError as exc:
            self._failed(index, attempt, exc)
            return
        future.add_done_callback(functools.partial(self._delivered, index, attempt))

    async def _send_with_kcat(self, index: int) -> None:
        """A record our client cannot write, sent by librdkafka's kcat. kcat reports no
        offset, so the durability cross-check leaves it out; the checker still finds it."""
        record = self._plan.records[index]
        # Such records carry no null header value (kcat cannot write one).
        named = [(name.encode(), value or b"") for name, value in record.headers]
        try:
            await produce_raw(
                self._bootstrap_servers,
                self._topic,
                key=record.key,
                value=record.value,
                headers=[*named, *record.raw_headers],
            )
        except (RuntimeError, OSError) as exc:
            self.failures.append(f"record {index} (kcat): {exc!r}")
            self.abandoned.append(index)
            log.warning("load_record_abandoned", index=index, error=repr(exc))
        finally:
            self._outstanding -= 1

    def _delivered(self, index: int, attempt: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._outstanding -= 1
            return
        error = future.exception()
        if error is None:
            metadata = future.result()
            self.acks.append(Ack(index, metadata.partition, metadata.offset))
            self._outstanding -= 1
            return
        self._failed(index, attempt, error)

    def _failed(self, index: int, attempt: int, error: BaseException) -> None:
        self._outstanding -= 1
        self.failures.append(f"record {index} attempt {attempt}: {error!r}")
        if isinstance(error, KafkaError) and attempt < self._max_attempts:
            self.resent += 1
            # Resent next, ahead of newer records, as a retrying client would.
            self._queue.append((index, attempt + 1))
        else:
            self.abandoned.append(index)
            log.warning("load_record_abandoned", index=index, error=repr(error))
