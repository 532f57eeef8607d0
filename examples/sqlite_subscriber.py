"""A subscriber that keeps a local SQLite table of every customer in sync.

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 python -m examples.sqlite_subscriber \\
        --group my-team-customers --database customers.sqlite

Each change is written in its own SQLite transaction, and the Kafka offsets are committed
only after it: a crash between the two delivers the change again, and the version the
table already holds skips it (the known versions are loaded from the table at start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from schemas.topics import Topics
from service.entrypoints.subscriber import Change, GapPolicy, Subscriber

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    object TEXT NOT NULL  -- JSON: the whole customer object at that version
)
"""


class CustomerTable:
    """The ``customers`` table of one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        # Autocommit mode: every transaction below is opened and closed explicitly.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def versions(self) -> dict[str, int]:
        """The version of every customer held: what the subscriber skips on start."""
        return dict(self._db.execute("SELECT id, version FROM customers").fetchall())

    def apply(self, change: Change) -> None:
        """Store ``change`` in one transaction, unless a later version is already there."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO customers (id, version, object) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
                " object = excluded.object WHERE excluded.version > customers.version",
                (change.customer_id, change.version, orjson.dumps(change.object).decode()),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def rows(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every row: ``{id: (version, object)}``."""
        return {
            customer_id: (version, orjson.loads(obj))
            for customer_id, version, obj in self._db.execute(
                "SELECT id, version, object FROM customers"
            )
        }


async def mirror(
    subscriber: Subscriber,
    table: CustomerTable,
    *,
    until: Callable[[Change], bool] | None = None,
) -> None:
    """Apply every change of ``subscriber`` (entered, and built with
    ``versions=table.versions()``) to ``table``, committing offsets after each; return
    after the change for which ``until`` is true, else run until cancelled.

    Raises:
        SequenceGap: with the subscriber's ``on_gap="raise"``, when versions were missed.
    """
    async for change in subscriber:
        table.apply(change)
        # After the table's commit, never before: offsets name only what is durable.
        await subscriber.commit()
        if change.gap is not None:
            print(f"warning: {change.gap}; applied version {change.version} anyway")
        if until is not None and until(change):
            return


async def run(
    bootstrap_servers: str,
    *,
    group_id: str,
    database: Path,
    topics: Topics,
    on_gap: GapPolicy,
) -> None:
    table = CustomerTable(database)
    try:
        subscriber = Subscriber.plaintext(
            bootstrap_servers,
            group_id=group_id,
            topics=topics,
            versions=table.versions(),
            on_gap=on_gap,
        )
        async with subscriber:
            await mirror(subscriber, table)
    finally:
        table.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        help="Kafka, host:port[,host:port] (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--group", required=True, help="the consumer group for the offsets")
    parser.add_argument("--database", type=Path, default=Path("customers.sqlite"))
    parser.add_argument("--updated-topic", default=Topics().events)
    parser.add_argument("--state-topic", default=Topics().state)
    parser.add_argument("--on-gap", choices=["raise", "report"], default="raise")
    args = parser.parse_args(argv)
    topics = Topics(events=args.updated_topic, state=args.state_topic)
    # Ctrl-C stops it: every change applied so far is in the table, and what was not
    # committed to Kafka yet is delivered again and skipped by version.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run(
                args.bootstrap_servers,
                group_id=args.group,
                database=args.database,
                topics=topics,
                on_gap=args.on_gap,
            )
        )


if __name__ == "__main__":
    main()
