"""Demo customers, so that a newcomer can watch an update flow through the service."""

from __future__ import annotations

import asyncpg

DEMO_PREFIX = "cus_demo_"


def demo_id(number: int) -> str:
    return f"{DEMO_PREFIX}{number:06d}"


async def seed_customers(connection: asyncpg.Connection, count: int, *, start: int = 1) -> int:
    """Create demo customers ``start`` .. ``start + count - 1`` (existing ones are left
    alone) with one subscription each; return how many were created."""
    numbers = list(range(start, start + count))
    created: list[str] = await connection.fetchval(
        """
        WITH inserted AS (
            INSERT INTO customers (id, name, email, invoice_prefix, preferred_locales)
            SELECT 'cus_demo_' || lpad(n::text, 6, '0'),
                   'Demo Customer ' || n,
                   'demo' || n || '@example.com',
                   'DEMO' || lpad(n::text, 6, '0'),
                   ARRAY['en-US']
            FROM unnest($1::int[]) AS n
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), subscribed AS (
            INSERT INTO subscriptions (id, customer_id, status, current_period_end)
            SELECT 'sub_' || substr(id, 5), id, 'active', now() + interval '30 days'
            FROM inserted
            ON CONFLICT (id) DO NOTHING
        )
        SELECT coalesce(array_agg(id), '{}') FROM inserted
        """,
        numbers,
    )
    return len(created)
