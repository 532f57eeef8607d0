"""Migrations against a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from devstack.stack import Stack
from service.adapters.postgres import migrations
from service.adapters.postgres.migrations import Migration, MigrationError, load_migrations, migrate
from tests.support import database_url_for


@pytest.fixture
async def empty_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    name = f"cs_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    connection = await asyncpg.connect(database_url_for(stack.database_url, name))
    try:
        yield connection
    finally:
        await connection.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrate_applies_every_file_once_and_records_it(empty_db: asyncpg.Connection) -> None:
    first = await migrate(empty_db)
    second = await migrate(empty_db)

    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert second == []
    recorded = await empty_db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["checksum"]) for r in recorded] == [
        (m.version, m.checksum) for m in load_migrations()
    ]


async def test_customers_table_holds_every_field_with_defaults(
    empty_db: asyncpg.Connection,
) -> None:
    await migrate(empty_db)
    await empty_db.execute("INSERT INTO customers (id) VALUES ('cus_1')")

    row = await empty_db.fetchrow("SELECT * FROM customers WHERE id = 'cus_1'")

    assert row is not None
    expected_columns = {
        "id", "created", "delinquent", "address_city", "address_country", "address_line1",
        "address_line2", "address_postal_code", "address_state", "description", "email",
        "invoice_prefix", "next_invoice_sequence", "last_invoice_sequence", "name", "phone",
        "preferred_locales", "tax_exempt", "version", "updated",
    }  # fmt: skip
    assert set(row.keys()) == expected_columns
    assert row["next_invoice_sequence"] == 1
    assert row["tax_exempt"] == "none"
    assert row["delinquent"] is False
    assert row["preferred_locales"] == []
    assert row["version"] == 1


async def test_an_edited_applied_migration_is_refused(
    empty_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_db)
    original = load_migrations()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
    monkeypatch.setattr(migrations, "load_migrations", lambda: edited)

    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await migrate(empty_db)
