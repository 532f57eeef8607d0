"""The benchmark's load: ``customer.update`` commands with a realistic, seeded mix.

Every command names its expected outcome (``kind``), so the benchmark can check that a
worker did the right thing with each one, not only that something came out:

* ``valid``: several profile fields, often an address, sometimes the invoice settings
  or an expansion; applied.
* ``invalid``: breaks the contract (bad country, unknown field, bad
  ``next_invoice_sequence``, bad email ...); rejected before any state is read.
* ``conflict``: a valid update with a stale ``expectedversion``; rejected by state.
* ``missing``: a valid update of a customer that does not exist; rejected by state.
* ``poison``: not JSON at all; dead-lettered.

Customers are picked with a Zipf-like skew: customer of rank ``k`` (1-based) is chosen
with weight ``1 / k ** skew``, so ``skew = 0`` is uniform and ``skew = 1`` makes the
hottest customer about ``N / ln N`` times as busy as an average one. Which customer has
which rank is shuffled (seeded), so hot customers spread over the partitions.

Nothing depends on the clock or on ``PYTHONHASHSEED``: the same spec, prefix and count
give the same bytes on every run. Outcomes never depend on how partitions interleave
(new invoice prefixes are unique per command), so two correct workers give every
command the same outcome and every customer the same final state.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, Literal

import orjson

from schemas.command import AUTHORIZATION_ACTION
from service.adapters.postgres.seed import demo_id

Kind = Literal["valid", "invalid", "conflict", "missing", "poison"]
Outcome = Literal["applied", "rejected", "dead_lettered"]

EXPECTED_OUTCOME: dict[Kind, Outcome] = {
    "valid": "applied",
    "invalid": "rejected",
    "conflict": "rejected",
    "missing": "rejected",
    "poison": "dead_lettered",
}

#: Header put on poison records only: their dead letter keeps it, and the benchmark
#: reads it to tell which command a dead letter is (the value is not JSON).
INDEX_HEADER = "bench-index"

#: An ``expectedversion`` no customer reaches during a run.
STALE_VERSION = 1_000_000_000

_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Perlman")
_WORDS = (
    "priority", "account", "renewal", "billing", "contact", "enterprise", "monthly",
    "annual", "support", "migrated", "partner", "region", "invoice", "review", "pending",
)  # fmt: skip
_CITIES = (
    ("Rome", "RM", "IT", "00184"), ("Turin", "TO", "IT", "10121"),
    ("Paris", None, "FR", "75002"), ("Berlin", None, "DE", "10115"),
    ("Madrid", "M", "ES", "28013"), ("Austin", "TX", "US", "73301"),
    ("Toronto", "ON", "CA", "M5H 2N2"), ("Osaka", None, "JP", "530-0001"),
)  # fmt: skip
_LOCALES = ("en-US", "en-GB", "it-IT", "fr-FR", "de-DE", "es-ES", "ja-JP", "pt-BR")
_PROFILE_FIELDS = ("name", "email", "phone", "description", "preferred_locales", "tax_exempt")
_CLEARABLE = frozenset({"phone", "description"})
_INVALID_VARIANTS = (
    "bad_country",
    "unknown_field",
    "bad_next_invoice_sequence",
    "bad_email",
    "bad_locale",
    "clear_invoice_prefix",
    "bad_tax_exempt",
    "missing_permission",
    "subject_mismatch",
    "name_too_long",
)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to generate; ``seed`` and the ratios fix the whole stream."""

    customers: int = 2000
    seed: int = 1
    #: Zipf exponent of the customer choice; 0 is uniform.
    skew: float = 0.0
    invalid_ratio: float = 0.05
    conflict_ratio: float = 0.01
    missing_ratio: float = 0.005
    poison_ratio: float = 0.001

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be at least 1")
        if self.skew < 0:
            raise ValueError("skew must not be negative")
        ratios = (self.invalid_ratio, self.conflict_ratio, self.missing_ratio, self.poison_ratio)
        if any(ratio < 0 for ratio in ratios) or sum(ratios) > 1:
            raise ValueError("the ratios must be non-negative and add up to at most 1")


@dataclass(frozen=True, slots=True)
class Command:
    index: int
    command_id: str
    key: bytes
    value: bytes
    kind: Kind
    #: The seeded customer's number (``service.adapters.postgres.seed.demo_id``), 0 when it
    #: does not exist.
    customer: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def expected(self) -> Outcome:
        return EXPECTED_OUTCOME[self.kind]


def command_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:08d}"


def index_of(command_id: str, prefix: str) -> int | None:
    """The index of a command id made by ``command_id(prefix, ...)``, else None."""
    head, _, number = command_id.rpartition("-")
    if head != prefix or not number.isdigit():
        return None
    return int(number)


class LoadGenerator:
    """Yields commands ``0, 1, 2, ...`` of one stream; ``prefix`` names the stream (and
    starts every command id), so streams of one seed differ but are each reproducible."""

    def __init__(self, spec: LoadSpec, *, prefix: str) -> None:
        self.spec = spec
        self.prefix = prefix
        self._rng = random.Random(f"{spec.seed}/{prefix}")
        # The ranking depends on the seed only: every stream of a run has the same hot
        # customers.
        ranked = list(range(1, spec.customers + 1))
        random.Random(f"{spec.seed}/ranking").shuffle(ranked)
        self._ranked = ranked
        self._cumulative = list(
            accumulate(1.0 / rank**spec.skew for rank in range(1, spec.customers + 1))
        )
        self._thresholds = list(
            accumulate(
                (spec.poison_ratio, spec.invalid_ratio, spec.conflict_ratio, spec.missing_ratio)
            )
        )
        self._next = 0

    def take(self, count: int) -> list[Command]:
        return [self.next() for _ in range(count)]

    def stream(self, count: int) -> Iterator[Command]:
        for _ in range(count):
            yield self.next()

    def next(self) -> Command:
        index = self._next
        self._next += 1
        rng = self._rng
        kind = self._kind(rng.random())
        customer = rng.choices(self._ranked, cum_weights=self._cumulative)[0]
        identifier = command_id(self.prefix, index)
        if kind == "poison":
            key = demo_id(customer).encode()
            # Cut short: not JSON, so the worker dead-letters it with the bytes as they are.
            value = b'{"specversion": "1.0", "id": "' + identifier.encode() + b'", "data": {'
            headers = ((INDEX_HEADER, str(index).encode()),)
            return Command(index, identifier, key, value, kind, customer, headers)
        if kind == "missing":
            customer = 0
            subject = f"cus_bench_missing_{index:08d}"
        else:
            subject = demo_id(customer)
        document = self._envelope(identifier, subject, index)
        document["data"] = self._valid_data(index)
        if kind == "conflict":
            document["expectedversion"] = STALE_VERSION
        elif kind == "invalid":
            self._break(document, rng.choice(_INVALID_VARIANTS))
        return Command(index, identifier, subject.encode(), orjson.dumps(document), kind, customer)

    # -- internals ------------------------------------------------------------------

    def _kind(self, draw: float) -> Kind:
        poison, invalid, conflict, missing = self._thresholds
        if draw < poison:
            return "poison"
        if draw < invalid:
            return "invalid"
        if draw < conflict:
            return "conflict"
        if draw < missing:
            return "missing"
        return "valid"

    def _envelope(self, identifier: str, subject: str, index: int) -> dict[str, Any]:
        sent = _BASE_TIME + timedelta(milliseconds=index)
        document: dict[str, Any] = {
            "specversion": "1.0",
            "id": identifier,
            "source": "bench-loadgen",
            "type": "customer.update",
            "subject": subject,
            "time": sent.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "principal": "svc-bench",
            "permissions": AUTHORIZATION_ACTION,
        }
        if self._rng.random() < 0.3:
            document["correlationid"] = f"corr-{self.prefix}-{index:08d}"
        return document

    def _valid_data(self, index: int) -> dict[str, Any]:
        rng = self._rng
        data: dict[str, Any] = {}
        for field in rng.sample(_PROFILE_FIELDS, k=rng.randint(1, 4)):
            if field in _CLEARABLE and rng.random() < 0.05:
                data[field] = None
            else:
                data[field] = self._value(field)
        draw = rng.random()
        if draw < 0.15:
            city, state, country, postal_code = rng.choice(_CITIES)
            data["address"] = {
                "line1": f"{rng.randint(1, 300)} {rng.choice(_LAST)} Street",
                "city": city,
                "state": state,
                "country": country,
                "postal_code": postal_code,
            }
        elif draw < 0.25:
            city, _, _, postal_code = rng.choice(_CITIES)
            data["address"] = {"city": city, "postal_code": postal_code}
        elif draw < 0.26:
            data["address"] = None
        draw = rng.random()
        if draw < 0.02:
            data["next_invoice_sequence"] = rng.randint(2, 100_000)
        elif draw < 0.03:
            # Unique per command, so no two customers ever race for one prefix.
            data["invoice_prefix"] = f"BN{index:010d}"
        if rng.random() < 0.05:
            data["expand"] = ["subscriptions"]
        return data

    def _value(self, field: str) -> Any:
        rng = self._rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        if field == "name":
            return f"{first} {last}"
        if field == "email":
            return f"{first.lower()}.{last.lower()}{rng.randint(1, 9999)}@example.com"
        if field == "phone":
            return f"+39 0{rng.randint(10, 99)} {rng.randint(100_000, 9_999_999)}"
        if field == "description":
            return " ".join(rng.choices(_WORDS, k=rng.randint(3, 16))).capitalize() + "."
        if field == "preferred_locales":
            return rng.sample(_LOCALES, k=rng.randint(1, 3))
        if field == "tax_exempt":
            return rng.choice(("none", "exempt", "reverse"))
        raise ValueError(f"no generator for {field}")

    def _break(self, document: dict[str, Any], variant: str) -> None:
        rng = self._rng
        data: dict[str, Any] = document["data"]
        if variant == "bad_country":
            data["address"] = {"city": "Nowhere", "country": rng.choice(("XX", "usa", "Italy"))}
        elif variant == "unknown_field":
            data["nickname"] = "Ace"
        elif variant == "bad_next_invoice_sequence":
            data["next_invoice_sequence"] = rng.choice((0, -3, 1_000_000_001, "42"))
        elif variant == "bad_email":
            data["email"] = "not-an-email"
        elif variant == "bad_locale":
            data["preferred_locales"] = ["en-US", "english please"]
        elif variant == "clear_invoice_prefix":
            data["invoice_prefix"] = None
        elif variant == "bad_tax_exempt":
            data["tax_exempt"] = "sometimes"
        elif variant == "missing_permission":
            document["permissions"] = "pay:customers:read"
        elif variant == "subject_mismatch":
            document["subject"] = document["subject"] + "_other"
        elif variant == "name_too_long":
            data["name"] = "N" * 300
        else:
            raise ValueError(f"unknown invalid variant {variant}")


def generate(spec: LoadSpec, count: int, *, prefix: str) -> list[Command]:
    return LoadGenerator(spec, prefix=prefix).take(count)


def expected_outcomes(commands: list[Command]) -> dict[str, int]:
    counts = Counter(command.expected for command in commands)
    return {outcome: counts.get(outcome, 0) for outcome in ("applied", "rejected", "dead_lettered")}


def describe(commands: list[Command]) -> dict[str, Any]:
    """A summary of the load for the report: the mix and how skewed it came out."""
    kinds = Counter(command.kind for command in commands)
    per_customer = Counter(command.customer for command in commands if command.customer)
    busiest = per_customer.most_common(1)
    return {
        "commands": len(commands),
        "kinds": {kind: kinds.get(kind, 0) for kind in EXPECTED_OUTCOME},
        "expected_outcomes": expected_outcomes(commands),
        "customers_touched": len(per_customer),
        "busiest_customer_commands": busiest[0][1] if busiest else 0,
        "mean_commands_per_customer": round(sum(per_customer.values()) / len(per_customer), 2)
        if per_customer
        else 0.0,
        "mean_value_bytes": round(sum(len(c.value) for c in commands) / len(commands), 1)
        if commands
        else 0.0,
    }
