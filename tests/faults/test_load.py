"""The load generator: deterministic, mixed as promised, and within the rules that keep
the reference model exact."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import orjson

from faults.load import (
    HOSTILE_KINDS,
    INVALID_KINDS,
    LONG_CUSTOMER_ID,
    POISON_KINDS,
    LoadPlan,
    LoadRecord,
    build_load,
    signing_key,
)
from faults.model import expected_outcomes, produced_command, signed_authorizer
from service.domain.customer import CustomerState
from service.domain.inbound import DEFAULT_MAX_HEADER_VALUE_BYTES, DEFAULT_MAX_KEY_BYTES
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


def document_of(record: LoadRecord) -> dict[str, Any]:
    """The command a record holds, in either content mode (as the checker reads it)."""
    body = produced_command(0, 0, record.key, record.value, record.headers).body
    assert body is not None, record
    return dict(body)


def user_headers(record: LoadRecord) -> list[tuple[str, bytes | None]]:
    """The headers a producer added, not those binary content mode carries the event in."""
    return [(n, v) for n, v in record.headers if not n.startswith("ce_") and n != "content-type"]


def test_ids_and_invoice_prefixes_never_span_two_keys() -> None:
    plan = build_load(seed=5, commands=3000, seeded=seeded(), topic=TOPIC, poison=True)
    keys_of_id: dict[str, set[bytes | None]] = defaultdict(set)
    customers_of_prefix: dict[str, set[str]] = defaultdict(set)
    for record in plan.records:
        if record.kind in POISON_KINDS or record.value is None:
            continue
        body = document_of(record)
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


def with_long_customer(count: int = 12) -> dict[str, CustomerState]:
    return {
        **seeded(count),
        LONG_CUSTOMER_ID: customer(LONG_CUSTOMER_ID, invoice_prefix="LONGKEY"),
    }


def outcomes_by_kind(
    plan: LoadPlan, customers: dict[str, CustomerState], *, key: str | None = None
) -> Counter[tuple[str, str, str | None]]:
    produced = [
        produced_command(0, n, r.key, r.value, r.headers) for n, r in enumerate(plan.records)
    ]
    authorizer = None if key is None else signed_authorizer(key)
    expected = expected_outcomes(produced, customers, topic=TOPIC, authorizer=authorizer)
    return Counter(
        (record.kind, expected[command.position].outcome, expected[command.position].code)
        for record, command in zip(plan.records, produced, strict=True)
    )


def test_some_records_carry_user_headers_and_trace_context() -> None:
    plan = build_load(seed=6, commands=2000, seeded=seeded(), topic=TOPIC, poison=True)
    headers = [header for record in plan.records for header in user_headers(record)]
    names = {name for name, _ in headers}

    assert 0.1 < sum(1 for r in plan.records if user_headers(r)) / len(plan.records) < 0.3
    assert {"x-request-id", "x-r\u00e9gion", "x-null", "x-large", "traceparent"} <= names
    assert ("x-null", None) in headers
    assert max(len(value or b"") for _, value in headers) <= DEFAULT_MAX_HEADER_VALUE_BYTES
    assert any(r.headers for r in plan.records if r.kind in POISON_KINDS)
    assert any(
        r.kind == "update" and str(document_of(r).get("traceparent")).startswith("00-")
        for r in plan.records
    )
    # A record with a name twice.
    assert any(len({n for n, _ in user_headers(r)}) < len(user_headers(r)) for r in plan.records)


def test_keys_as_large_as_allowed_are_refused_or_applied_but_never_dead_letters() -> None:
    customers = with_long_customer()
    plan = build_load(seed=7, commands=3000, seeded=customers, topic=TOPIC)
    outcomes = outcomes_by_kind(plan, customers)

    assert len(LONG_CUSTOMER_ID.encode()) > 1000
    assert len(LONG_CUSTOMER_ID) == 255
    assert {len(r.key or b"") for r in plan.records if r.kind == "invalid:key_at_limit"} == {
        DEFAULT_MAX_KEY_BYTES
    }
    assert outcomes[("invalid:key_at_limit", "rejected", "parameter_invalid")] > 0
    long_customer = [
        r for r in plan.records if r.key == LONG_CUSTOMER_ID.encode() and r.kind == "update"
    ]
    assert long_customer
    assert not any(outcome == "dead_lettered" for (_, outcome, _) in outcomes)


def test_a_signed_load_carries_a_token_per_command_and_is_judged_by_it() -> None:
    key = signing_key(8)
    plan = build_load(seed=8, commands=3000, seeded=seeded(), topic=TOPIC, signing_key=key)
    outcomes = outcomes_by_kind(plan, seeded(), key=key)
    documents = [document_of(r) for r in plan.records if r.kind == "update"]

    assert all("authtoken" in document for document in documents)
    for kind in ("signed:bad_signature", "signed:expired", "signed:scope_nbsp"):
        assert outcomes[(kind, "rejected", "permission_denied")] > 0, kind
        assert not any(k == kind and outcome != "rejected" for (k, outcome, _) in outcomes)
    # The permissions attribute would grant it, the token does not; no token at all.
    assert outcomes[("invalid:permission_denied", "rejected", "permission_denied")] > 0
    assert outcomes[("invalid:missing_principal", "rejected", "permission_denied")] > 0
    assert outcomes[("signed:scope", "applied", None)] > 0
    # The same command with a fresh token is the same command.
    assert outcomes[("signed:new_token", "duplicate", None)] > 0
    assert outcomes[("update", "applied", None)] > 1000
    # Judged by its tokens, not by its attributes: unsigned, the same load differs.
    assert outcomes_by_kind(plan, seeded()) != outcomes


def test_even_a_small_load_holds_every_poison_and_hostile_kind() -> None:
    for seed in range(5):
        poisoned = build_load(seed=seed, commands=60, seeded=seeded(), topic=TOPIC, poison=True)
        hostile = build_load(seed=seed, commands=60, seeded=seeded(), topic=TOPIC, hostile=True)

        assert set(POISON_KINDS) <= set(poisoned.kinds()), seed
        assert {f"hostile:{kind}" for kind in HOSTILE_KINDS} <= set(hostile.kinds()), seed


def test_a_quarter_of_the_plain_updates_come_in_binary_content_mode() -> None:
    plan = build_load(seed=9, commands=3000, seeded=seeded(), topic=TOPIC)
    updates = [r for r in plan.records if r.kind == "update"]
    binary = [r for r in updates if ("ce_specversion", b"1.0") in r.headers]
    outcomes = outcomes_by_kind(plan, seeded())

    assert 0.15 < len(binary) / len(updates) < 0.35
    assert all(orjson.loads(r.value or b"") == document_of(r)["data"] for r in binary)
    assert outcomes[("update", "applied", None)] > 1000
    assert not any(k == "update" and o == "rejected" for (k, o, _) in outcomes)
