"""The batch statements round-trip every field through the real PostgreSQL."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from service.adapters.postgres.batch_store import BatchStore
from service.domain.customer import Address, CustomerState
from tests.support import insert_customer


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
