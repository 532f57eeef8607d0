"""Folding a batch of records into decisions, state changes and idempotency rows."""

from __future__ import annotations

from typing import Any

import orjson

from service.domain.authorization import UnsignedAuthorizer
from service.domain.batch import (
    BatchState,
    Decision,
    ProcessedCommand,
    decide_batch,
    requested_prefixes,
)
from service.domain.customer import CustomerState
from service.domain.inbound import Classified, InboundRecord, Limits, Poison, Valid, classify
from tests.unit.builders import CUSTOMER_ID, OTHER_CUSTOMER_ID, command_document, customer, record

Item = tuple[InboundRecord, Classified]


class Batch:
    """Records of one partition, numbered by offset in the order they are added."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def command(
        self,
        data: dict[str, Any],
        *,
        command_id: str,
        subject: str = CUSTOMER_ID,
        **attributes: Any,
    ) -> Item:
        document = command_document(data, id=command_id, subject=subject, **attributes)
        return self.raw(orjson.dumps(document), key=subject.encode())

    def raw(self, value: bytes | None, *, key: bytes | None = CUSTOMER_ID.encode()) -> Item:
        inbound = record(value, key=key, offset=len(self.items))
        item = (inbound, classify(inbound, Limits(), UnsignedAuthorizer()))
        self.items.append(item)
        return item


def fingerprint_of(item: Item) -> bytes:
    classified = item[1]
    assert isinstance(classified, Valid), classified
    return classified.fingerprint


def state(*customers: CustomerState, known: dict[str, bytes] | None = None) -> BatchState:
    owners = {c.invoice_prefix: c.id for c in customers if c.invoice_prefix is not None}
    return BatchState(
        customers={c.id: c for c in customers}, prefix_owners=owners, known_commands=known or {}
    )


def outcomes(decisions: list[Decision]) -> list[str]:
    return [decision.outcome for decision in decisions]


# Several commands for one customer


def test_two_commands_for_one_customer_get_consecutive_versions() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.command({"email": "ada@example.com"}, command_id="cmd-2")
    result = decide_batch(batch.items, state(customer(version=7)))

    assert outcomes(result.decisions) == ["applied", "applied"]
    versions = [d.applied.after.version for d in result.decisions if d.applied is not None]
    assert versions == [8, 9]
    assert [(row.command_id, row.outcome, row.version) for row in result.processed] == [
        ("cmd-1", "applied", 8),
        ("cmd-2", "applied", 9),
    ]


def test_the_final_state_holds_every_change_of_the_batch() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.command({"email": "ada@example.com"}, command_id="cmd-2")
    result = decide_batch(batch.items, state(customer(version=7)))

    final = result.changed[CUSTOMER_ID]
    assert (final.name, final.email, final.version) == ("Ada", "ada@example.com", 9)


def test_the_second_command_sees_the_first_ones_result() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.command({"name": "Ada King"}, command_id="cmd-2", expectedversion=2)
    result = decide_batch(batch.items, state(customer(name="Lovelace")))

    second = result.decisions[1].applied
    assert second is not None
    assert second.previous_attributes == {"name": "Ada"}


def test_decisions_keep_the_order_and_records_of_the_batch() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.raw(b"not json")
    batch.command({"name": "Ada"}, command_id="cmd-3", subject=OTHER_CUSTOMER_ID)
    result = decide_batch(batch.items, state(customer(), customer(id=OTHER_CUSTOMER_ID)))

    assert [d.record for d in result.decisions] == [item[0] for item in batch.items]
    assert outcomes(result.decisions) == ["applied", "dead_lettered", "applied"]
    assert set(result.changed) == {CUSTOMER_ID, OTHER_CUSTOMER_ID}


def test_an_applied_decision_names_its_command() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1", correlationid="corr-1")
    decision = decide_batch(batch.items, state(customer())).decisions[0]

    assert (decision.customer_id, decision.command_id, decision.correlationid) == (
        CUSTOMER_ID,
        "cmd-1",
        "corr-1",
    )
    assert decision.command is not None
    assert decision.error is None


# Idempotency


def test_a_repeated_command_in_the_batch_is_a_duplicate() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.command({"name": "Ada"}, command_id="cmd-1", time="2024-05-02T00:00:00Z")
    result = decide_batch(batch.items, state(customer(version=7)))

    assert outcomes(result.decisions) == ["applied", "duplicate"]
    assert [row.command_id for row in result.processed] == ["cmd-1"]
    assert result.changed[CUSTOMER_ID].version == 8
    assert result.decisions[1].applied is None


def test_a_command_processed_before_is_a_duplicate() -> None:
    batch = Batch()
    item = batch.command({"name": "Ada"}, command_id="cmd-1")
    result = decide_batch(
        batch.items, state(customer(version=7), known={"cmd-1": fingerprint_of(item)})
    )

    assert outcomes(result.decisions) == ["duplicate"]
    assert result.decisions[0].command_id == "cmd-1"
    assert result.processed == []
    assert result.changed == {}


def test_a_command_id_reused_in_the_batch_for_another_update_is_refused() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1")
    batch.command({"name": "Grace"}, command_id="cmd-1")
    result = decide_batch(batch.items, state(customer(version=7)))

    assert outcomes(result.decisions) == ["applied", "rejected"]
    error = result.decisions[1].error
    assert error is not None
    assert (error.type, error.code, error.param) == (
        "idempotency_error",
        "idempotency_key_reused",
        "id",
    )
    assert "cmd-1" in error.message
    assert [row.command_id for row in result.processed] == ["cmd-1"]
    assert result.changed[CUSTOMER_ID].name == "Ada"


def test_a_command_id_processed_before_for_another_update_is_refused() -> None:
    batch = Batch()
    batch.command({"name": "Grace"}, command_id="cmd-1")
    result = decide_batch(batch.items, state(customer(), known={"cmd-1": b"another fingerprint"}))

    decision = result.decisions[0]
    assert decision.outcome == "rejected"
    assert decision.error is not None
    assert (decision.error.type, decision.error.code) == (
        "idempotency_error",
        "idempotency_key_reused",
    )
    assert result.processed == []
    assert result.changed == {}


def test_a_repeated_refused_command_is_a_duplicate() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1", expectedversion=5)
    batch.command({"name": "Ada"}, command_id="cmd-1", expectedversion=5)
    result = decide_batch(batch.items, state(customer(version=1)))

    assert outcomes(result.decisions) == ["rejected", "duplicate"]
    assert len(result.processed) == 1


# Poison, invalid and refused commands


def test_poison_is_dead_lettered_without_a_processed_row() -> None:
    batch = Batch()
    batch.raw(b"[1, 2]")
    result = decide_batch(batch.items, state(customer()))

    decision = result.decisions[0]
    assert decision.outcome == "dead_lettered"
    assert isinstance(decision.poison, Poison)
    assert decision.poison.code == "record_not_object"
    assert result.processed == []
    assert result.changed == {}


def test_an_invalid_command_is_rejected_with_its_error() -> None:
    batch = Batch()
    batch.command({"citty": "Rome"}, command_id="cmd-1", correlationid="corr-1")
    decision = decide_batch(batch.items, state(customer())).decisions[0]

    assert decision.outcome == "rejected"
    assert (decision.customer_id, decision.command_id, decision.correlationid) == (
        CUSTOMER_ID,
        "cmd-1",
        "corr-1",
    )
    assert decision.error is not None
    assert (decision.error.code, decision.error.param) == ("parameter_unknown", "data.citty")


def test_a_refused_command_gets_a_rejected_processed_row() -> None:
    batch = Batch()
    item = batch.command({"name": "Ada"}, command_id="cmd-1", expectedversion=3)
    result = decide_batch(batch.items, state(customer(version=1)))

    decision = result.decisions[0]
    assert decision.outcome == "rejected"
    assert decision.error is not None
    assert decision.error.code == "version_conflict"
    assert result.processed == [
        ProcessedCommand("cmd-1", CUSTOMER_ID, fingerprint_of(item), "rejected", None)
    ]
    assert result.changed == {}


def test_a_command_for_an_unknown_customer_gets_a_rejected_processed_row() -> None:
    batch = Batch()
    batch.command({"name": "Ada"}, command_id="cmd-1", subject="cus_missing")
    result = decide_batch(batch.items, state(customer()))

    assert result.decisions[0].error is not None
    assert result.decisions[0].error.code == "resource_missing"
    assert [(row.customer_id, row.outcome) for row in result.processed] == [
        ("cus_missing", "rejected")
    ]


def test_a_refused_command_does_not_move_the_version() -> None:
    batch = Batch()
    batch.command({"next_invoice_sequence": 1}, command_id="cmd-1")
    batch.command({"name": "Ada"}, command_id="cmd-2")
    result = decide_batch(batch.items, state(customer(version=4, last_invoice_sequence=9)))

    assert outcomes(result.decisions) == ["rejected", "applied"]
    assert result.changed[CUSTOMER_ID].version == 5


# Invoice prefixes within a batch

A = CUSTOMER_ID
B = OTHER_CUSTOMER_ID


def test_a_released_prefix_can_be_taken_later_in_the_batch() -> None:
    batch = Batch()
    batch.command({"invoice_prefix": "QQQ"}, command_id="cmd-1", subject=A)
    batch.command({"invoice_prefix": "PPP"}, command_id="cmd-2", subject=B)
    result = decide_batch(batch.items, state(customer(id=A, invoice_prefix="PPP"), customer(id=B)))

    assert outcomes(result.decisions) == ["applied", "applied"]
    assert result.changed[A].invoice_prefix == "QQQ"
    assert result.changed[B].invoice_prefix == "PPP"


def test_a_prefix_taken_earlier_in_the_batch_is_refused() -> None:
    batch = Batch()
    batch.command({"invoice_prefix": "QQQ"}, command_id="cmd-1", subject=A)
    batch.command({"invoice_prefix": "QQQ"}, command_id="cmd-2", subject=B)
    result = decide_batch(batch.items, state(customer(id=A, invoice_prefix="PPP"), customer(id=B)))

    assert outcomes(result.decisions) == ["applied", "rejected"]
    error = result.decisions[1].error
    assert error is not None
    assert (error.code, error.param) == ("parameter_invalid", "data.invoice_prefix")
    assert B not in result.changed


def test_a_prefix_is_not_free_before_its_holder_releases_it() -> None:
    batch = Batch()
    batch.command({"invoice_prefix": "PPP"}, command_id="cmd-1", subject=B)
    batch.command({"invoice_prefix": "QQQ"}, command_id="cmd-2", subject=A)
    result = decide_batch(batch.items, state(customer(id=A, invoice_prefix="PPP"), customer(id=B)))

    assert outcomes(result.decisions) == ["rejected", "applied"]


def test_a_prefix_held_outside_the_batch_is_refused() -> None:
    batch = Batch()
    batch.command({"invoice_prefix": "ZZZ"}, command_id="cmd-1", subject=A)
    batch_state = state(customer(id=A))
    batch_state.prefix_owners["ZZZ"] = "cus_elsewhere"
    result = decide_batch(batch.items, batch_state)

    assert outcomes(result.decisions) == ["rejected"]


def test_requested_prefixes_are_those_valid_commands_set() -> None:
    batch = Batch()
    batch.command({"invoice_prefix": "PPP"}, command_id="cmd-1")
    batch.command({"invoice_prefix": "QQQ", "name": "Ada"}, command_id="cmd-2")
    batch.command({"name": "Ada"}, command_id="cmd-3")
    batch.command({"invoice_prefix": "bad"}, command_id="cmd-4")
    assert requested_prefixes(item for _, item in batch.items) == {"PPP", "QQQ"}
