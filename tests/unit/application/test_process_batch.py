"""The batch processor against a fake database: what one transaction keeps, what a failure
keeps (nothing), and how a record that fails for good is isolated and dead-lettered."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.customer import Subscription, SubscriptionList
from schemas.event import format_sequence
from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_ORIGINAL_OFFSET,
    DLT_TRUNCATED,
)
from schemas.topics import Topics
from service.application.errors import ClaimConflictError, TransientError
from service.application.process_batch import BatchProcessor, ProcessorConfig
from service.domain.authorization import UnsignedAuthorizer
from service.domain.batch import Decision, ProcessedCommand
from service.domain.events import OutboundMessage
from service.domain.inbound import InboundRecord, Limits, Valid, classify
from tests.unit.application.fakes import FakeDatabase, FakeUnitOfWork
from tests.unit.builders import (
    CUSTOMER_ID,
    OTHER_CUSTOMER_ID,
    command_document,
    customer,
    record,
    value_of,
)

GROUP = "cs-tests"
SOURCE = "urn:customer-service:tests"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TOPICS = Topics()
COMMANDS = TOPICS.commands


class Ids:
    """Event ids ``evt-1``, ``evt-2``, ... in the order they are asked for."""

    def __init__(self) -> None:
        self.given = 0

    def __call__(self) -> str:
        self.given += 1
        return f"evt-{self.given}"


@pytest.fixture
def db() -> FakeDatabase:
    database = FakeDatabase()
    database.add_customers(customer(), customer(id=OTHER_CUSTOMER_ID))
    return database


@pytest.fixture
def processor(db: FakeDatabase) -> BatchProcessor:
    config = ProcessorConfig(consumer_group=GROUP, source=SOURCE)
    return BatchProcessor(db.begin, config, UnsignedAuthorizer(), clock=lambda: NOW, new_id=Ids())


def update(
    data: dict[str, Any],
    *,
    command_id: str = "cmd-1",
    subject: str = CUSTOMER_ID,
    offset: int = 0,
    partition: int = 0,
    **attributes: Any,
) -> InboundRecord:
    """A ``customer.update`` record holding a valid command (principal and permission
    included, as the unsigned mode wants)."""
    document = command_document(data, id=command_id, subject=subject, **attributes)
    inbound = record(orjson.dumps(document), key=subject.encode(), offset=offset)
    return dataclasses.replace(inbound, partition=partition)


def fingerprint(inbound: InboundRecord) -> bytes:
    classified = classify(inbound, Limits(), UnsignedAuthorizer())
    assert isinstance(classified, Valid), classified
    return classified.fingerprint


def position(db: FakeDatabase, partition: int = 0) -> int | None:
    return db.positions.get((GROUP, COMMANDS, partition))


def outcomes(decisions: list[Decision]) -> list[str]:
    return [decision.outcome for decision in decisions]


def event(message: OutboundMessage) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(value_of(message))
    return parsed


def header(message: OutboundMessage, name: str) -> bytes | None:
    [value] = [value for key, value in message.headers if key == name]
    return value


def on_topic(db: FakeDatabase, topic: str) -> list[OutboundMessage]:
    return [message for message in db.outbox if message.topic == topic]


def naming(command_id: str) -> Callable[[FakeUnitOfWork], bool]:
    """A failure predicate: the unit of work holds the command ``command_id``."""

    def holds(unit: FakeUnitOfWork) -> bool:
        return command_id in unit.command_ids

    return holds


# One transaction per batch


async def test_a_valid_update_is_applied_and_announced_in_one_commit(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    inbound = update({"name": "Ada"}, offset=41)

    decisions = await processor.process([inbound])

    assert outcomes(decisions) == ["applied"]
    assert db.commits == 1
    [message] = db.outbox
    assert (message.topic, message.key) == (TOPICS.events, CUSTOMER_ID.encode())
    published = event(message)
    assert published["type"] == "customer.updated"
    assert published["id"] == "evt-1"
    assert published["source"] == SOURCE
    assert published["time"] == "2026-01-02T03:04:05Z"
    assert published["causationid"] == "cmd-1"
    assert published["sequence"] == format_sequence(2)
    assert published["data"]["object"]["id"] == CUSTOMER_ID
    assert published["data"]["object"]["name"] == "Ada"
    assert published["data"]["previous_attributes"] == {"name": None}
    saved = db.customers[CUSTOMER_ID]
    assert (saved.name, saved.version) == ("Ada", 2)
    assert position(db) == 42
    assert db.processed["cmd-1"] == ProcessedCommand(
        "cmd-1", CUSTOMER_ID, fingerprint(inbound), "applied", 2
    )


async def test_an_empty_batch_begins_no_transaction(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    assert await processor.process([]) == []
    assert db.units == []


async def test_a_record_below_the_stored_position_is_skipped_as_processed_before(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    db.positions[(GROUP, COMMANDS, 0)] = 5
    old = update({"name": "Old"}, command_id="cmd-old", offset=4)
    new = update({"email": "ada@example.com"}, command_id="cmd-new", offset=5)

    decisions = await processor.process([old, new])

    assert [decision.record for decision in decisions] == [new]
    assert [event(message)["causationid"] for message in db.outbox] == ["cmd-new"]
    assert db.customers[CUSTOMER_ID].name is None
    assert set(db.processed) == {"cmd-new"}
    assert position(db) == 6


async def test_a_batch_entirely_below_the_stored_position_changes_nothing(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    db.positions[(GROUP, COMMANDS, 0)] = 10
    before = db.snapshot()

    decisions = await processor.process([update({"name": "Ada"}, offset=3)])

    assert decisions == []
    assert db.snapshot() == before


async def test_a_command_id_processed_before_is_a_duplicate_that_publishes_nothing(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    first = update({"name": "Ada"}, offset=0)
    await processor.process([first])
    resent = dataclasses.replace(first, offset=1)  # the producer sent it again

    decisions = await processor.process([resent])

    assert outcomes(decisions) == ["duplicate"]
    assert len(db.outbox) == 1
    assert db.customers[CUSTOMER_ID].version == 2
    assert position(db) == 2


async def test_each_partition_moves_its_own_position(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=7, partition=0),
        update(
            {"name": "Bob"}, command_id="cmd-2", subject=OTHER_CUSTOMER_ID, offset=3, partition=1
        ),
        update(
            {"phone": "+3312"}, command_id="cmd-3", subject=OTHER_CUSTOMER_ID, offset=4, partition=1
        ),
    ]

    await processor.process(records)

    assert (position(db, 0), position(db, 1)) == (8, 5)
    assert db.customers[OTHER_CUSTOMER_ID].version == 3


async def test_an_update_of_an_unknown_customer_is_rejected_with_an_event(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    decisions = await processor.process([update({"name": "Ada"}, subject="cus_404")])

    assert outcomes(decisions) == ["rejected"]
    [message] = db.outbox
    assert (message.topic, message.key) == (TOPICS.rejections, b"cus_404")
    assert event(message)["data"]["error"]["code"] == "resource_missing"
    assert db.processed["cmd-1"].outcome == "rejected"
    assert position(db) == 1


@pytest.mark.parametrize("given", [{}, {"id": 42}, {"id": "x" * 256}], ids=["none", "int", "long"])
async def test_a_rejection_of_a_command_without_a_usable_id_names_its_record(
    db: FakeDatabase, processor: BatchProcessor, given: dict[str, Any]
) -> None:
    """Its producer has nothing else to match on: the acknowledgement's position is it."""
    document = {**command_document({"name": "Ada"}, id="cmd-1"), **given}
    if not given:
        del document["id"]
    inbound = dataclasses.replace(
        record(orjson.dumps(document), key=CUSTOMER_ID.encode(), offset=7), partition=2
    )

    decisions = await processor.process([inbound])

    assert outcomes(decisions) == ["rejected"]
    [message] = db.outbox
    data = event(message)["data"]
    assert data["command_id"] is None
    assert data["record"] == {"topic": COMMANDS, "partition": 2, "offset": 7}


async def test_an_unreadable_record_is_dead_lettered_and_its_position_moves_on(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    decisions = await processor.process([record(b"not json", offset=9)])

    assert outcomes(decisions) == ["dead_lettered"]
    [message] = db.outbox
    assert (message.topic, message.value) == (TOPICS.dead_letters, b"not json")
    assert header(message, DLT_ERROR_CODE) == b"record_invalid_json"
    assert db.processed == {}
    assert position(db) == 10


async def test_an_update_that_expands_subscriptions_carries_them(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    subscription = Subscription(id="sub_1", status="active", created=1, current_period_end=None)
    db.subscriptions[CUSTOMER_ID] = SubscriptionList(
        data=[subscription], has_more=False, url="/v1/customers/cus_1/subscriptions"
    )

    await processor.process([update({"name": "Ada", "expand": ["subscriptions"]})])

    [message] = db.outbox
    carried = event(message)["data"]["object"]["subscriptions"]
    assert [item["id"] for item in carried["data"]] == ["sub_1"]


async def test_a_dead_letter_cut_to_fit_keeps_its_original_whole_in_the_database(
    db: FakeDatabase,
) -> None:
    config = ProcessorConfig(consumer_group=GROUP, source=SOURCE, dead_letter_max_bytes=2000)
    processor = BatchProcessor(db.begin, config, UnsignedAuthorizer(), clock=lambda: NOW)
    original = record(b"x" * 5000, offset=3)

    await processor.process([original])

    [dead_letter] = db.outbox
    assert header(dead_letter, DLT_TRUNCATED) == b"true"
    assert len(value_of(dead_letter)) < 2000
    assert db.dead_letter_originals == [(GROUP, original)]


class Spans:
    """A ``Tracing`` that names each span after the command it records."""

    def __init__(self) -> None:
        self.parents: list[str | None] = []

    def command_span(
        self, traceparent: str | None, *, name: str, attributes: dict[str, str], start_ns: int
    ) -> str | None:
        self.parents.append(traceparent)
        command_id = attributes["messaging.message.id"]
        return f"00-{command_id.encode().hex():0>32}-{len(self.parents):016x}-01"


async def test_with_tracing_each_event_carries_the_context_of_its_own_span(
    db: FakeDatabase,
) -> None:
    spans = Spans()
    config = ProcessorConfig(consumer_group=GROUP, source=SOURCE)
    processor = BatchProcessor(
        db.begin, config, UnsignedAuthorizer(), clock=lambda: NOW, tracing=spans
    )
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=0, traceparent=parent),
        update({"name": "Bob"}, command_id="cmd-2", subject="cus_404", offset=1),
        record(b"not json", offset=2),
    ]

    await processor.process(records)

    assert spans.parents == [parent, None], "one span per command; none for a dead letter"
    applied, rejected, dead_letter = db.outbox
    assert event(applied)["traceparent"].endswith("-0000000000000001-01")
    assert header(applied, "traceparent") == event(applied)["traceparent"].encode()
    assert event(rejected)["traceparent"].endswith("-0000000000000002-01")
    assert "traceparent" not in dict(dead_letter.headers)


# Failures that a retry may cure: nothing is kept


@pytest.mark.parametrize(
    "method",
    [
        "claim_positions",
        "lock_customers",
        "known_commands",
        "save_customers",
        "save_processed",
        "save_outbox",
        "save_positions",
        "commit",
    ],
)
async def test_a_transient_error_propagates_and_nothing_is_committed(
    db: FakeDatabase, processor: BatchProcessor, method: str
) -> None:
    failure = db.fail_next(TransientError("the server went away"), on=method)
    before = db.snapshot()
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=0),
        update({"name": "Bob"}, command_id="cmd-2", subject=OTHER_CUSTOMER_ID, offset=1),
    ]

    with pytest.raises(TransientError, match="went away"):
        await processor.process(records)

    assert failure.raised == 1
    assert db.snapshot() == before
    assert len(db.units) == 1, "a transient error must not isolate the records"


async def test_a_transient_error_while_isolating_propagates_and_the_retry_skips_what_was_kept(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=0),
        update({"name": "Bob"}, command_id="cmd-2", subject=OTHER_CUSTOMER_ID, offset=1),
    ]
    db.fail_next(ValueError("the whole batch fails"), on="save_outbox")
    db.fail_next(TransientError("gone"), on="save_outbox", when=naming("cmd-2"))

    with pytest.raises(TransientError):
        await processor.process(records)
    # The first record was kept alone; the caller rewinds and hands over the batch again.
    assert (position(db), db.customers[CUSTOMER_ID].version) == (1, 2)
    decisions = await processor.process(records)

    assert [decision.command_id for decision in decisions] == ["cmd-2"]
    assert outcomes(decisions) == ["applied"]
    assert [event(message)["causationid"] for message in db.outbox] == ["cmd-1", "cmd-2"]
    assert db.customers[CUSTOMER_ID].version == 2
    assert position(db) == 2


# Failures that no retry cures: the record is isolated and dead-lettered


async def test_one_record_that_fails_for_good_is_dead_lettered_and_the_others_applied(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    bad = update({"name": "Bob"}, command_id="cmd-2", subject=OTHER_CUSTOMER_ID, offset=1)
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=0),
        bad,
        update({"email": "ada@example.com"}, command_id="cmd-3", offset=2),
    ]
    failure = db.fail_next(
        ValueError("violates check constraint"),
        on="save_customers",
        times=None,
        when=naming("cmd-2"),
    )

    decisions = await processor.process(records)

    assert failure.raised == 2  # the batch, then the record alone
    assert outcomes(decisions) == ["applied", "dead_lettered", "applied"]
    assert [event(m)["causationid"] for m in on_topic(db, TOPICS.events)] == ["cmd-1", "cmd-3"]
    [dead_letter] = on_topic(db, TOPICS.dead_letters)
    assert (dead_letter.key, dead_letter.value) == (bad.key, bad.value)
    assert header(dead_letter, DLT_ERROR_CODE) == b"processing_failed"
    assert header(dead_letter, DLT_ERROR_MESSAGE) == b"ValueError: violates check constraint"
    assert header(dead_letter, DLT_ORIGINAL_OFFSET) == b"1"
    assert db.customers[OTHER_CUSTOMER_ID].version == 1
    assert db.customers[CUSTOMER_ID].version == 3
    assert set(db.processed) == {"cmd-1", "cmd-3"}
    assert position(db) == 3


async def test_a_record_whose_dead_letter_fails_too_is_dead_lettered_bare(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    bad = update({"name": "Ada"}, offset=4)
    db.fail_next(RuntimeError("broken"), on="save_customers", times=None, when=naming("cmd-1"))

    def holds_its_copy(unit: FakeUnitOfWork) -> bool:
        return any(message.value == bad.value for message in unit.outbox)

    db.fail_next(RuntimeError("no room"), on="save_outbox", times=None, when=holds_its_copy)

    decisions = await processor.process([bad])

    assert outcomes(decisions) == ["dead_lettered"]
    [dead_letter] = db.outbox
    assert (dead_letter.topic, dead_letter.key, dead_letter.value) == (
        TOPICS.dead_letters,
        None,
        None,
    )
    assert header(dead_letter, DLT_ERROR_CODE) == b"processing_failed"
    assert header(dead_letter, DLT_ERROR_MESSAGE) == (
        b"RuntimeError: broken; its dead letter failed too: RuntimeError"
    )
    assert header(dead_letter, DLT_ORIGINAL_OFFSET) == b"4"
    assert position(db) == 5


async def test_a_claim_conflict_is_tried_once_more_and_then_applies(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    failure = db.fail_next(ClaimConflictError("taken meanwhile"), on="save_processed")

    decisions = await processor.process([update({"name": "Ada"})])

    assert failure.raised == 1
    assert outcomes(decisions) == ["applied"]
    assert on_topic(db, TOPICS.dead_letters) == []
    assert [m.topic for m in db.outbox] == [TOPICS.events]
    assert db.customers[CUSTOMER_ID].version == 2
    assert db.commits == 1


async def test_two_claim_conflicts_in_a_row_dead_letter_the_record_as_processing_failed(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    failure = db.fail_next(ClaimConflictError("taken again"), on="save_processed", times=2)

    decisions = await processor.process([update({"name": "Ada"})])

    assert failure.raised == 2
    assert outcomes(decisions) == ["dead_lettered"]
    [dead_letter] = db.outbox
    assert dead_letter.topic == TOPICS.dead_letters
    assert header(dead_letter, DLT_ERROR_CODE) == b"processing_failed"
    assert header(dead_letter, DLT_ERROR_MESSAGE) == b"ClaimConflictError: taken again"
    assert db.customers[CUSTOMER_ID].version == 1
    assert position(db) == 1


async def test_a_claim_conflict_in_a_batch_isolates_the_records_and_all_apply(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    db.fail_next(ClaimConflictError("taken meanwhile"), on="save_processed")
    records = [
        update({"name": "Ada"}, command_id="cmd-1", offset=0),
        update({"name": "Bob"}, command_id="cmd-2", subject=OTHER_CUSTOMER_ID, offset=1),
    ]

    decisions = await processor.process(records)

    assert outcomes(decisions) == ["applied", "applied"]
    assert db.commits == 2
    assert on_topic(db, TOPICS.dead_letters) == []
    assert position(db) == 2


async def test_an_invoice_prefix_another_worker_took_meanwhile_is_refused_on_the_retry(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    # Between this batch's read of the prefix owners and its write, another worker gives
    # the prefix to another customer and commits: the unique index says so.
    db.interleave(
        "save_customers",
        lambda: db.commit_elsewhere(
            customer(id=OTHER_CUSTOMER_ID, invoice_prefix="ACME", version=2)
        ),
    )

    decisions = await processor.process([update({"invoice_prefix": "ACME"})])

    assert outcomes(decisions) == ["rejected"]
    [message] = db.outbox
    assert message.topic == TOPICS.rejections
    assert event(message)["data"]["error"]["param"] == "data.invoice_prefix"
    assert db.customers[CUSTOMER_ID].invoice_prefix is None
    assert db.prefix_owners == {"ACME": OTHER_CUSTOMER_ID}


async def test_a_command_another_worker_processed_meanwhile_is_a_duplicate_on_the_retry(
    db: FakeDatabase, processor: BatchProcessor
) -> None:
    # A command for a customer that does not exist locks no row, so two workers can both
    # decide it; the second one's idempotency row collides with the first one's.
    inbound = update({"name": "Ada"}, subject="cus_404")
    theirs = ProcessedCommand("cmd-1", "cus_404", fingerprint(inbound), "rejected", None)
    db.interleave("save_processed", lambda: db.commit_elsewhere(processed=[theirs]))

    decisions = await processor.process([inbound])

    assert outcomes(decisions) == ["duplicate"]
    assert db.outbox == [], "the other worker published the rejection already"
    assert db.processed == {"cmd-1": theirs}
    assert position(db) == 1


# The fake unit of work keeps its promise: nothing without commit()


async def test_the_fake_unit_of_work_keeps_nothing_without_commit(db: FakeDatabase) -> None:
    before = db.snapshot()
    async with db.begin() as unit:
        await unit.claim_positions(GROUP, {(COMMANDS, 0): 0})
        await unit.save_customers([customer(name="Ada", version=2)])
        await unit.save_outbox([OutboundMessage(TOPICS.events, b"cus_1", b"{}")])
        await unit.save_positions(GROUP, {(COMMANDS, 0): 1})
        assert (await unit.lock_customers([CUSTOMER_ID]))[CUSTOMER_ID].name == "Ada"
    assert db.snapshot() == before


async def test_the_fake_unit_of_work_keeps_nothing_when_its_block_raises(
    db: FakeDatabase,
) -> None:
    before = db.snapshot()

    async def leave_early() -> None:
        async with db.begin() as unit:
            await unit.save_customers([customer(name="Ada", version=2)])
            raise RuntimeError("left early")

    with pytest.raises(RuntimeError, match="left early"):
        await leave_early()
    assert db.snapshot() == before


async def test_the_fake_unit_of_work_keeps_its_writes_on_commit(db: FakeDatabase) -> None:
    async with db.begin() as unit:
        await unit.claim_positions(GROUP, {(COMMANDS, 0): 0})
        await unit.save_customers([customer(name="Ada", version=2)])
        await unit.save_positions(GROUP, {(COMMANDS, 0): 1})
        await unit.commit()
        with pytest.raises(AssertionError):
            await unit.save_outbox([])
    assert db.customers[CUSTOMER_ID].name == "Ada"
    assert position(db) == 1
