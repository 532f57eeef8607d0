"""The set-based statements of a batch, in one transaction that commits only when told to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import asyncpg
import orjson
from asyncpg.transaction import Transaction

from schemas.customer import Subscription, SubscriptionList
from service.adapters.postgres.copy import copy_rows
from service.adapters.postgres.errors import translated
from service.adapters.postgres.outbox import encode_raw_headers, save_outbox
from service.domain.batch import ProcessedCommand
from service.domain.customer import Address, CustomerState
from service.domain.events import OutboundMessage
from service.domain.inbound import InboundRecord

#: Expanded subscriptions per customer, as the public API's list default.
SUBSCRIPTIONS_PAGE = 10

TopicPartition = tuple[str, int]


CUSTOMER_COLUMNS = """
    id, extract(epoch FROM created)::bigint AS created, delinquent,
    address_city, address_country, address_line1, address_line2, address_postal_code,
    address_state, description, email, invoice_prefix, next_invoice_sequence,
    last_invoice_sequence, name, phone, preferred_locales, tax_exempt, version
"""


def customer_from_row(row: asyncpg.Record) -> CustomerState:
    address = Address(
        city=row["address_city"],
        country=row["address_country"],
        line1=row["address_line1"],
        line2=row["address_line2"],
        postal_code=row["address_postal_code"],
        state=row["address_state"],
    )
    return CustomerState(
        id=row["id"],
        created=row["created"],
        delinquent=row["delinquent"],
        address=None if address.is_empty() else address,
        description=row["description"],
        email=row["email"],
        invoice_prefix=row["invoice_prefix"],
        next_invoice_sequence=row["next_invoice_sequence"],
        name=row["name"],
        phone=row["phone"],
        preferred_locales=tuple(row["preferred_locales"]),
        tax_exempt=row["tax_exempt"],
        last_invoice_sequence=row["last_invoice_sequence"],
        version=row["version"],
    )


class BatchStore:
    """The statements of one batch, run on one connection inside one transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @property
    def connection(self) -> asyncpg.Connection:
        """The connection the batch runs on, for a statement of the caller's own."""
        return self._connection

    async def claim_positions(
        self, consumer_group: str, first_offsets: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Lock the stored position of each partition (creating it at the batch's first
        offset if new) and return it. Holding the lock fences off any other worker that
        still processes the same partition after a rebalance."""
        keys = sorted(first_offsets)
        # One round trip: ON CONFLICT DO UPDATE locks the stored row, waiting for any
        # other transaction that holds it, and RETURNING gives its latest committed
        # position (the update keeps the value, at the cost of a row version per claim,
        # a HOT update of a tiny table). Rows are taken in key order, so two batches
        # cannot deadlock on each other.
        rows = await self._connection.fetch(
            """
            INSERT INTO consumer_offsets AS o (consumer_group, topic, partition, next_offset)
            SELECT $1, topic, partition, next_offset
            FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next_offset)
            ON CONFLICT (consumer_group, topic, partition)
                DO UPDATE SET next_offset = o.next_offset
            RETURNING o.topic, o.partition, o.next_offset
            """,
            consumer_group,
            [topic for topic, _ in keys],
            [partition for _, partition in keys],
            [first_offsets[key] for key in keys],
        )
        return {(row["topic"], row["partition"]): row["next_offset"] for row in rows}

    async def save_positions(
        self, consumer_group: str, next_offsets: dict[TopicPartition, int]
    ) -> None:
        keys = sorted(next_offsets)
        await self._connection.execute(
            """
            UPDATE consumer_offsets o SET next_offset = u.next_offset, updated = now()
            FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next_offset)
            WHERE o.consumer_group = $1 AND o.topic = u.topic AND o.partition = u.partition
            """,
            consumer_group,
            [topic for topic, _ in keys],
            [partition for _, partition in keys],
            [next_offsets[key] for key in keys],
        )

    async def known_commands(self, command_ids: Sequence[str]) -> dict[str, bytes]:
        if not command_ids:
            return {}
        # An id is unique per day (migration 0008), so two rows can hold one id reused
        # across midnight; the first written owns it, and comes last into the dict.
        rows = await self._connection.fetch(
            "SELECT command_id, fingerprint FROM processed_commands "
            "WHERE command_id = ANY($1::text[]) ORDER BY processed_at DESC",
            list(command_ids),
        )
        return {row["command_id"]: bytes(row["fingerprint"]) for row in rows}

    async def lock_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
        """Load and lock the customers, in id order so that concurrent batches cannot
        deadlock on each other."""
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        rows = await self._connection.fetch(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ANY($1::text[]) "
            "ORDER BY id FOR UPDATE",
            ids,
        )
        return {row["id"]: customer_from_row(row) for row in rows}

    async def prefix_owners(self, prefixes: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(prefixes))
        if not wanted:
            return {}
        rows = await self._connection.fetch(
            "SELECT invoice_prefix, id FROM customers WHERE invoice_prefix = ANY($1::text[])",
            wanted,
        )
        return {row["invoice_prefix"]: row["id"] for row in rows}

    async def subscriptions(self, customer_ids: Iterable[str]) -> dict[str, SubscriptionList]:
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        rows = await self._connection.fetch(
            """
            SELECT customer_id, id, status, created, current_period_end, more FROM (
                SELECT customer_id, id, status,
                       extract(epoch FROM created)::bigint AS created,
                       extract(epoch FROM current_period_end)::bigint AS current_period_end,
                       row_number() OVER w AS n,
                       count(*) OVER (PARTITION BY customer_id) > $2 AS more
                FROM subscriptions WHERE customer_id = ANY($1::text[])
                WINDOW w AS (PARTITION BY customer_id ORDER BY created DESC, id)
            ) s
            WHERE n <= $2
            ORDER BY customer_id, n
            """,
            ids,
            SUBSCRIPTIONS_PAGE,
        )
        found: dict[str, list[asyncpg.Record]] = {customer_id: [] for customer_id in ids}
        for row in rows:
            found[row["customer_id"]].append(row)
        return {
            customer_id: SubscriptionList(
                data=[
                    Subscription(
                        id=row["id"],
                        status=row["status"],
                        created=row["created"],
                        current_period_end=row["current_period_end"],
                    )
                    for row in customer_rows
                ],
                has_more=bool(customer_rows) and customer_rows[0]["more"],
                url=f"/v1/customers/{customer_id}/subscriptions",
            )
            for customer_id, customer_rows in found.items()
        }

    async def save_customers(self, customers: Sequence[CustomerState]) -> None:
        if not customers:
            return
        # One JSON document rather than sixteen arrays: asyncpg encodes an array element by
        # element in Python, PostgreSQL parses the document in C.
        rows = [
            {
                "id": customer.id,
                "address": None if customer.address is None else customer.address.to_object(),
                "description": customer.description,
                "email": customer.email,
                "invoice_prefix": customer.invoice_prefix,
                "next_invoice_sequence": customer.next_invoice_sequence,
                "name": customer.name,
                "phone": customer.phone,
                "preferred_locales": customer.preferred_locales,
                "tax_exempt": customer.tax_exempt,
                "version": customer.version,
            }
            for customer in customers
        ]
        await self._connection.execute(
            """
            UPDATE customers c SET
                address_city = u.address->>'city',
                address_country = u.address->>'country',
                address_line1 = u.address->>'line1',
                address_line2 = u.address->>'line2',
                address_postal_code = u.address->>'postal_code',
                address_state = u.address->>'state',
                description = u.description, email = u.email, invoice_prefix = u.invoice_prefix,
                next_invoice_sequence = u.next_invoice_sequence, name = u.name, phone = u.phone,
                preferred_locales = u.preferred_locales, tax_exempt = u.tax_exempt,
                version = u.version, updated = now()
            FROM jsonb_to_recordset($1::jsonb) AS u(
                id text, address jsonb, description text, email text, invoice_prefix text,
                next_invoice_sequence bigint, name text, phone text, preferred_locales text[],
                tax_exempt text, version bigint
            )
            WHERE c.id = u.id
            """,
            orjson.dumps(rows).decode(),
        )

    async def save_processed(self, processed: Sequence[ProcessedCommand]) -> None:
        if not processed:
            return
        # By COPY, as save_outbox: a fraction of the client's CPU of five unnest arrays.
        # Each row lands in its day's table (the default of ``processed_on``).
        await copy_rows(
            self._connection,
            "processed_commands",
            ("command_id", "customer_id", "fingerprint", "outcome", "version"),
            [
                (row.command_id, row.customer_id, row.fingerprint, row.outcome, row.version)
                for row in processed
            ],
        )

    async def save_outbox(self, messages: Sequence[OutboundMessage]) -> None:
        if not messages:
            return
        await save_outbox(self._connection, messages)

    async def save_dead_letter_originals(
        self, consumer_group: str, records: Sequence[InboundRecord]
    ) -> None:
        """Keep whole the records whose dead letters are partial copies."""
        if not records:
            return
        await self._connection.executemany(
            """
            INSERT INTO dead_letter_originals
                (consumer_group, topic, partition, "offset", key, value, headers)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
            ON CONFLICT DO NOTHING
            """,
            [
                (
                    consumer_group,
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    encode_raw_headers(record.headers),
                )
                for record in records
            ],
        )


class PostgresUnitOfWork(BatchStore):
    """A ``BatchStore`` whose transaction commits only when told to (``commit()``)."""

    def __init__(self, connection: asyncpg.Connection, transaction: Transaction) -> None:
        super().__init__(connection)
        self._transaction = transaction
        self.committed = False

    async def commit(self) -> None:
        await self._transaction.commit()
        self.committed = True


Unit = TypeVar("Unit", bound=PostgresUnitOfWork)


@asynccontextmanager
async def batch_transaction(pool: asyncpg.Pool) -> AsyncIterator[PostgresUnitOfWork]:
    """A batch's transaction: see ``unit_of_work``."""
    async with unit_of_work(pool, PostgresUnitOfWork) as unit:
        yield unit


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, unit_type: type[Unit]) -> AsyncIterator[Unit]:
    """One transaction, rolled back when the block ends without ``await uow.commit()``:
    an early ``return`` or an error commits nothing of a half-done batch. asyncpg's errors,
    the block's included, come out as ``application.errors`` (``postgres.errors``).

    The block's own error is what propagates, since it is what tells a transient failure
    from a permanent one. When the server has ended the session the rollback fails too
    (in one of several ways, depending on how far asyncpg has noticed), and that second
    error must not replace the first; the pool discards the broken connection.
    """
    with translated():
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            unit = unit_type(connection, transaction)
            try:
                yield unit
            finally:
                if not unit.committed:
                    with suppress(Exception):
                        await transaction.rollback()
