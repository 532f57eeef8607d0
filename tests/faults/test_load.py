"""The load generator: deterministic, mixed as promised, and within the rules that keep
the reference model exact."""

from __future__ import annotations

import re
from collections import defaultdict

import orjson

from faults.load import INVALID_KINDS, POISON_KINDS, build_load
from faults.model import expected_outcomes, produced_command
from service.domain.customer import CustomerState
from tests.faults.histories import customer

TOPIC = "customer.update"
#: Customer 0's prefix, which the load asks for on purpose to get a refusal.
TAKEN = {"DEMO000001"}


def seeded(count: int = 12) -> dict[str, CustomerState]:
    ids = [f"cus_demo_{n:06d}" for n in range(1, count + 1)]
    return {i: customer(i, invoice_prefix=f"DEMO{i[-6:]}") for i in ids}


def test_the_same_seed_gives_the_same_load_and_another_seed_another() -> None:
    first = build_load(seed=1, commands=500, seeded=seeded(), topic=TOPIC, poison=True)
    again = build_load(seed=1, commands=500, seeded=seeded(), topic=TOPIC, poison=True)
    other = build_load(seed=2, commands=500, seeded=seeded(), topic=TOPIC, poison=True)

    assert first == again
    assert first != other
    assert len(first.records) == 500


def test_the_load_mixes_every_kind_of_record() -> None:
    plan = build_load(seed=3, commands=4000, seeded=seeded(), topic=TOPIC, poison=True)
    kinds = plan.kinds()

    for kind in (
        "update",
        "resend",
        "expected_version",
        "version_conflict",
        "unknown_customer",
        "id_reused",
    ):
        assert kinds[kind] > 0, kind
    assert {f"invalid:{kind}" for kind in INVALID_KINDS} <= set(kinds)
    assert set(POISON_KINDS) <= set(kinds)
    clean = build_load(seed=3, commands=4000, seeded=seeded(), topic=TOPIC)
    assert not set(POISON_KINDS) & set(clean.kinds())


def test_the_model_gives_every_outcome_to_the_load() -> None:
    plan = build_load(seed=4, commands=2000, seeded=seeded(), topic=TOPIC, poison=True)
    produced = [produced_command(0, n, r.key, r.value) for n, r in enumerate(plan.records)]
    expected = expected_outcomes(produced, seeded(), topic=TOPIC)

    outcomes = {(item.outcome, item.code) for item in expected.values()}

    assert {outcome for outcome, _ in outcomes} == {
        "applied",
        "rejected",
        "duplicate",
        "dead_lettered",
    }
    for code in ("version_conflict", "idempotency_key_reused", "resource_missing"):
        assert ("rejected", code) in outcomes


def test_ids_and_invoice_prefixes_never_span_two_keys() -> None:
    plan = build_load(seed=5, commands=3000, seeded=seeded(), topic=TOPIC, poison=True)
    keys_of_id: dict[str, set[bytes | None]] = defaultdict(set)
    customers_of_prefix: dict[str, set[str]] = defaultdict(set)
    for record in plan.records:
        if record.kind in POISON_KINDS or record.value is None:
            continue
        body = orjson.loads(record.value)
        if "id" in body:
            keys_of_id[body["id"]].add(record.key)
        prefix = body["data"].get("invoice_prefix")
        # Only prefixes that can be granted (not the deliberately invalid or taken ones).
        if (
            isinstance(prefix, str)
            and re.fullmatch(r"[A-Z0-9]{3,12}", prefix)
            and prefix not in TAKEN
        ):
            customers_of_prefix[prefix].add(body["subject"])

    assert all(len(keys) == 1 for keys in keys_of_id.values())
    assert all(len(owners) == 1 for owners in customers_of_prefix.values())
