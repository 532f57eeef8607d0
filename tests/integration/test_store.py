"""The batch statements round-trip every field through the real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

import asyncpg
import pytest

from service.adapters.postgres.batch_store import BatchStore
from service.adapters.postgres.outbox import OutboxStore
from service.domain.batch import ProcessedCommand
from service.domain.customer import Address, CustomerState
from service.domain.events import OutboundMessage, StateRecord
from tests.support import eventually, insert_customer, waiting_for_a_lock


@pytest.mark.parametrize(
    "changes",
    [
        {
            "address": Address("Zürich", "CH", "Bahnhofstrasse 1", "c/o \"Ada\" 'K'", "8001", "ZH"),
            "description": "line one\nline two\twith tab — and ünïcödé ✓",
            "email": "ada@example.com",
            "invoice_prefix": "ADA2026",
            "next_invoice_sequence": 1_000_000_000,
            "name": "Ada Lovelace",
            "phone": "+41 44 000 00 00",
            "preferred_locales": ("de-CH", "en", "zh-Hant-TW"),
            "tax_exempt": "reverse",
            "version": 9,
        },
        {
            "address": Address(city="Rome"),
            "description": None,
            "email": None,
            "invoice_prefix": "X9Z",
            "next_invoice_sequence": 1,
            "name": None,
            "phone": None,
            "preferred_locales": (),
            "tax_exempt": "exempt",
            "version": 2,
        },
        {"address": None, "preferred_locales": ("en",), "version": 3},
    ],
    ids=["every-field", "mostly-cleared", "no-address"],
)
async def test_saved_customers_read_back_identically(
    db: asyncpg.Connection, changes: dict[str, object]
) -> None:
    await insert_customer(
        db, "cus_store", invoice_prefix="OLD1", address_city="Paris", preferred_locales=["fr"]
    )
    async with db.transaction():
        store = BatchStore(db)
        before = (await store.lock_customers(["cus_store"]))["cus_store"]
        after = dataclasses.replace(before, **changes)  # type: ignore[arg-type]
        await store.save_customers([after])
        stored: CustomerState = (await store.lock_customers(["cus_store"]))["cus_store"]

    assert stored == after


TRACEPARENT = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"


def _messages(count: int) -> list[OutboundMessage]:
    """Every shape a batch writes: events with their state records (one with a trace
    header and a header without a value), rejections, and dead letters that kept no key,
    or no value (a tombstone), or arbitrary bytes."""
    shapes = [
        lambda n: OutboundMessage(
            "customer.updated",
            f"cus_{n}".encode(),
            b'{"sequence": "%d"}' % n,
            (("content-type", b"application/cloudevents+json"),),
            StateRecord("customer.state", b'{"state": %d}' % n, (("content-type", b"x"),)),
        ),
        lambda n: OutboundMessage(
            "customer.updated",
            f"cus_{n}".encode(),
            b"{}",
            (("content-type", b"a"), ("traceparent", TRACEPARENT), ("empty", None)),
            StateRecord("customer.state", b"{}"),
        ),
        lambda n: OutboundMessage("customer.update.rejected", f"cus_{n}".encode(), b"{}", ()),
        lambda n: OutboundMessage("customer.update.dlt", None, bytes(range(256)), (("x", b"\0"),)),
        lambda n: OutboundMessage("customer.update.dlt", b"\xff\x00k", None, ()),
    ]
    return [shapes[n % len(shapes)](n) for n in range(count)]


async def test_outbox_rows_read_back_identically_and_in_the_order_saved(
    db: asyncpg.Connection,
) -> None:
    messages = _messages(503)
    async with db.transaction():
        await BatchStore(db).save_outbox(messages)
    ids = [row["id"] for row in await db.fetch("SELECT id FROM outbox ORDER BY id")]
    rows = sorted(await OutboxStore(db).rows(ids), key=lambda row: row.id)

    # The relay publishes in id order: the ids follow the order of the batch's decisions.
    assert [
        OutboundMessage(row.topic, row.key, row.value, tuple(row.headers), row.state)
        for row in rows
    ] == messages


async def test_idempotency_rows_read_back_identically(db: asyncpg.Connection) -> None:
    outcomes: list[tuple[Literal["applied", "rejected"], int | None]] = [
        ("applied", 3),
        ("rejected", None),
    ]
    processed = [
        ProcessedCommand(f"cmd-{n}", f"cus_{n % 7}", bytes([n % 256]) * 32, outcome, version)
        for n, (outcome, version) in enumerate(outcomes * 260)
    ]
    async with db.transaction():
        await BatchStore(db).save_processed(processed)
    rows = await db.fetch(
        "SELECT command_id, customer_id, fingerprint, outcome, version, "
        "processed_on = (now() AT TIME ZONE 'UTC')::date AS today FROM processed_commands"
    )

    assert {row["today"] for row in rows} == {True}
    stored = {
        ProcessedCommand(
            row["command_id"], row["customer_id"], bytes(row["fingerprint"]), row["outcome"],
            row["version"],
        )
        for row in rows
    }  # fmt: skip
    assert len(rows) == len(processed)
    assert stored == set(processed)


GROUP, TOPIC = "g", "customer.update"


async def test_claiming_creates_a_new_position_at_the_first_offset_and_keeps_a_stored_one(
    db: asyncpg.Connection,
) -> None:
    async with db.transaction():
        await BatchStore(db).save_positions(GROUP, {(TOPIC, 1): 40})  # nothing stored yet
    async with db.transaction():
        store = BatchStore(db)
        first = await store.claim_positions(GROUP, {(TOPIC, 0): 7, (TOPIC, 1): 7})
        await store.save_positions(GROUP, {(TOPIC, 0): 9, (TOPIC, 1): 9})
    async with db.transaction():
        again = await BatchStore(db).claim_positions(GROUP, {(TOPIC, 0): 3, (TOPIC, 1): 3})

    assert first == {(TOPIC, 0): 7, (TOPIC, 1): 7}
    assert again == {(TOPIC, 0): 9, (TOPIC, 1): 9}


@pytest.mark.parametrize("stored_before", [True, False], ids=["stored", "new"])
async def test_a_second_claim_waits_for_the_first_and_gets_its_committed_position(
    db: asyncpg.Connection, database_url: str, stored_before: bool
) -> None:
    """The fence between two workers that both think they own a partition (one still
    finishing a batch after a rebalance): the later one must not read the position the
    earlier one is about to move, whether the row existed or the earlier one creates it."""
    if stored_before:
        async with db.transaction():
            await BatchStore(db).claim_positions(GROUP, {(TOPIC, 0): 0})
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        holding = first.transaction()
        await holding.start()
        assert await BatchStore(first).claim_positions(GROUP, {(TOPIC, 0): 0}) == {(TOPIC, 0): 0}

        async def claim_later() -> dict[tuple[str, int], int]:
            async with second.transaction():
                return await BatchStore(second).claim_positions(GROUP, {(TOPIC, 0): 0})

        later = asyncio.create_task(claim_later())
        await eventually(lambda: waiting_for_a_lock(db), what="the second claim waiting")
        assert not later.done()
        await BatchStore(first).save_positions(GROUP, {(TOPIC, 0): 500})
        await holding.commit()

        assert await later == {(TOPIC, 0): 500}
    finally:
        await first.close()
        await second.close()
