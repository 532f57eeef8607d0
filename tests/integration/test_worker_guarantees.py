"""The worker's guarantees, against the real Kafka and PostgreSQL.

Every applied command changes the row once and has exactly one event; events of a
customer carry consecutive versions; refusals become rejection events; unreadable records
become dead letters; and none of it stops the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from asyncpg.exceptions import InternalClientError

from service.adapters.kafka.clients import connection_options
from service.adapters.postgres.batch_store import BatchStore
from service.entrypoints.kafka_consumer import OffsetCommits
from service.infrastructure.settings import Settings
from tests.support import (
    TopicReader,
    command,
    event_topics,
    freeze_until_session_ends,
    insert_customer,
    produce,
    produce_commands,
    running_worker,
)


@dataclass
class FaultAfterOutbox:
    """Runs ``fault`` inside the batch transaction, right after the outbox rows are
    written, for the next ``times`` batches."""

    fault: Callable[[BatchStore], Awaitable[None]]
    times: int

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FaultAfterOutbox:
        original = BatchStore.save_outbox

        async def save_outbox_then_fault(store: BatchStore, messages: Any) -> None:
            await original(store, messages)
            if self.times:
                self.times -= 1
                await self.fault(store)

        monkeypatch.setattr(BatchStore, "save_outbox", save_outbox_then_fault)
        return self


def _bodies(reader: TopicReader, topic: str) -> list[dict[str, Any]]:
    return [record.json() for record in reader.on(topic)]


def _versions(reader: TopicReader, settings: Settings, customer_id: str) -> list[int]:
    return [
        int(body["sequence"])
        for body in _bodies(reader, settings.topic_events)
        if body["subject"] == customer_id
    ]


async def test_commands_apply_in_order_with_one_event_each(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_a", invoice_prefix="AAA1")
    commands = [command("cus_a", {"description": f"step {n}"}) for n in range(1, 21)]

    async with running_worker(settings) as worker:
        await produce_commands(settings, commands)
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_for_count(settings.topic_events, 20)

    bodies = _bodies(reader, settings.topic_events)
    assert [body["causationid"] for body in bodies] == [c["id"] for c in commands]
    assert _versions(reader, settings, "cus_a") == list(range(2, 22))
    assert [body["data"]["object"]["description"] for body in bodies] == [
        f"step {n}" for n in range(1, 21)
    ]
    row = await db.fetchrow("SELECT description, version FROM customers WHERE id = 'cus_a'")
    assert row is not None
    assert (row["description"], row["version"]) == ("step 20", 21)


async def test_a_redelivered_command_changes_nothing_and_publishes_nothing(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_dup", invoice_prefix="DUP1")
    first = command("cus_dup", {"name": "Once"})
    later = command("cus_dup", {"phone": "+39 06 000"})

    async with running_worker(settings) as worker:
        # The same command three times, then another one: events of one customer share a
        # partition, so once the later event is seen any duplicate would have shown up.
        await produce_commands(settings, [first, first, first, later])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_until(
                lambda r: any(
                    b["causationid"] == later["id"] for b in _bodies(r, settings.topic_events)
                ),
                what="the later command's event",
            )

    assert [b["causationid"] for b in _bodies(reader, settings.topic_events)] == [
        first["id"],
        later["id"],
    ]
    assert reader.on(settings.topic_rejections) == []
    assert await db.fetchval("SELECT version FROM customers WHERE id = 'cus_dup'") == 3


async def test_a_reused_command_id_with_another_body_is_refused(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_reuse", invoice_prefix="REU1")
    original = command("cus_reuse", {"name": "First"})
    reused = {**original, "data": {"name": "Second"}}

    async with running_worker(settings) as worker:
        await produce_commands(settings, [original, reused])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            [rejection] = await reader.wait_for_count(settings.topic_rejections, 1)

    assert rejection.json()["data"]["error"]["type"] == "idempotency_error"
    assert rejection.json()["data"]["error"]["code"] == "idempotency_key_reused"
    assert rejection.json()["data"]["command_id"] == original["id"]
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_reuse'") == "First"


@pytest.mark.parametrize(
    ("arrange", "attributes", "data", "code", "param"),
    [
        (False, {}, {"name": "Nobody"}, "resource_missing", "subject"),
        (True, {"expectedversion": 7}, {"name": "Late"}, "version_conflict", "expectedversion"),
        (
            True,
            {"permissions": "pay:customers:read"},
            {"name": "X"},
            "permission_denied",
            "permissions",
        ),
        (True, {}, {"address": {"country": "XX"}}, "parameter_invalid", "data.address.country"),
        (True, {}, {"nickname": "Bob"}, "parameter_unknown", "data.nickname"),
    ],
    ids=[
        "unknown-customer",
        "version-conflict",
        "permission-denied",
        "invalid-field",
        "unknown-field",
    ],
)
async def test_a_refused_command_gets_a_rejection_and_changes_nothing(
    settings: Settings,
    db: asyncpg.Connection,
    arrange: bool,
    attributes: dict[str, Any],
    data: dict[str, Any],
    code: str,
    param: str,
) -> None:
    if arrange:
        await insert_customer(db, "cus_r", name="Unchanged", invoice_prefix="REJ1")
    refused = command("cus_r", data, correlationid="corr-1", **attributes)

    async with running_worker(settings) as worker:
        await produce_commands(settings, [refused])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            [rejection] = await reader.wait_for_count(settings.topic_rejections, 1)

    body = rejection.json()
    assert rejection.key == b"cus_r"
    assert body["type"] == "customer.update.rejected"
    assert body["causationid"] == refused["id"]
    assert body["correlationid"] == "corr-1"
    assert body["data"]["command_id"] == refused["id"]
    assert body["data"]["customer_id"] == "cus_r"
    assert (body["data"]["error"]["code"], body["data"]["error"]["param"]) == (code, param)
    assert reader.on(settings.topic_events) == []
    if arrange:
        row = await db.fetchrow("SELECT name, version FROM customers WHERE id = 'cus_r'")
        assert row is not None
        assert (row["name"], row["version"]) == ("Unchanged", 1)


async def test_poison_records_are_dead_lettered_and_the_worker_carries_on(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_p", invoice_prefix="POI1")
    nested: Any = "x"
    for _ in range(40):
        nested = {"n": nested}
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"cus_p", b"\xff\xfe not utf-8"),
        (b"cus_p", b"{not json"),
        (b"cus_p", b"[1, 2]"),
        (b"cus_p", b"{" + b'"a":"' + b"x" * 70_000 + b'"}'),
        (b"cus_p", orjson.dumps(nested)),
        (None, orjson.dumps(command("cus_p", {"name": "no key"}))),
    ]
    after = command("cus_p", {"name": "Still running"})

    async with running_worker(settings) as worker:
        sent = await produce(
            settings, [*poison, (b"cus_p", orjson.dumps(after))], headers=[("h", b"1")]
        )
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            letters = await reader.wait_for_count(settings.topic_dead_letters, len(poison))
            await reader.wait_for_count(settings.topic_events, 1)

    by_offset = {
        (
            int(dict(r.headers)["kafka_dlt-original-partition"]),
            int(dict(r.headers)["kafka_dlt-original-offset"]),
        ): r
        for r in letters
    }
    codes = []
    for original in sent[: len(poison)]:
        letter = by_offset[(original.partition, original.offset)]
        headers = dict(letter.headers)
        assert letter.key == original.key
        assert letter.value == original.value
        assert headers["h"] == b"1"
        assert headers["kafka_dlt-original-topic"] == settings.topic_commands.encode()
        assert (
            headers["kafka_dlt-original-consumer-group"] == settings.kafka_consumer_group.encode()
        )
        assert headers["kafka_dlt-exception-message"]
        codes.append(headers["kafka_dlt-exception-cause-fqcn"].decode())
    assert codes == [
        "record_invalid_utf8",
        "record_invalid_json",
        "record_not_object",
        "record_too_large",
        "record_too_deep",
        "record_key_missing",
    ]
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_p'") == "Still running"


async def test_redelivery_after_a_crash_between_database_and_offset_commit_applies_nothing_twice(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_customer(db, "cus_crash", invoice_prefix="CRA1")
    commands = [command("cus_crash", {"description": f"v{n}"}) for n in range(5)]
    await produce_commands(settings, commands)

    class SimulatedCrashError(Exception):
        """The process dies after the database commit, before the offset commit."""

    def crash(self: OffsetCommits, offsets: object) -> None:
        raise SimulatedCrashError

    monkeypatch.setattr(OffsetCommits, "submit", crash)
    with pytest.raises(ExceptionGroup) as crashed:
        async with running_worker(settings) as task:
            await task
    assert crashed.group_contains(SimulatedCrashError)
    assert await db.fetchval("SELECT version FROM customers WHERE id = 'cus_crash'") == 6
    monkeypatch.undo()

    follow_up = command("cus_crash", {"description": "after restart"})
    async with running_worker(settings) as worker:
        await produce_commands(settings, [follow_up])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_until(
                lambda r: any(
                    b["causationid"] == follow_up["id"] for b in _bodies(r, settings.topic_events)
                ),
                what="the follow-up event",
            )

    assert [b["causationid"] for b in _bodies(reader, settings.topic_events)] == [
        *(c["id"] for c in commands),
        follow_up["id"],
    ]
    assert _versions(reader, settings, "cus_crash") == [2, 3, 4, 5, 6, 7]
    assert await db.fetchval("SELECT version FROM customers WHERE id = 'cus_crash'") == 7


async def test_a_transient_database_failure_is_retried_without_loss_or_duplicates(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_customer(db, "cus_t", invoice_prefix="TRA1")
    commands = [command("cus_t", {"description": f"t{n}"}) for n in range(10)]

    async def lose_the_connection(store: BatchStore) -> None:
        # A real failure from the server: it ends this session mid-transaction.
        await store.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    failures = FaultAfterOutbox(lose_the_connection, times=3).install(monkeypatch)
    async with running_worker(settings) as worker:
        await produce_commands(settings, commands)
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_until(
                lambda r: any(
                    b["causationid"] == commands[-1]["id"]
                    for b in _bodies(r, settings.topic_events)
                ),
                what="the last command's event",
            )

    assert failures.times == 0
    assert [b["causationid"] for b in _bodies(reader, settings.topic_events)] == [
        c["id"] for c in commands
    ]
    assert _versions(reader, settings, "cus_t") == list(range(2, 12))
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_worker_waking_from_a_freeze_retries_its_batch_not_dead_letters_it(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen inside a batch transaction past DATABASE_IDLE_IN_TRANSACTION_TIMEOUT, the
    worker wakes to a session the server has ended. asyncpg then reports the statement
    it had under way as an InternalClientError (as seen in the fault suite's
    worker-pause scenario), and the rollback fails as well. That is a lost connection:
    the batch is retried, even a batch of one command, which a permanent error would
    park in the dead-letter topic."""
    settings = settings.model_copy(update={"database_idle_in_transaction_timeout": 0.2})
    await insert_customer(db, "cus_woke", invoice_prefix="WOK1")
    only = command("cus_woke", {"name": "Woken"})

    async def freeze_and_wake(store: BatchStore) -> None:
        backend = await store.connection.fetchval("SELECT pg_backend_pid()")
        freeze_until_session_ends(settings.database_url.get_secret_value(), backend)
        raise InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    freezes = FaultAfterOutbox(freeze_and_wake, times=1).install(monkeypatch)
    async with running_worker(settings) as worker:
        await produce_commands(settings, [only])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_until(
                lambda r: bool(r.on(settings.topic_events) or r.on(settings.topic_dead_letters)),
                what="the command's outcome",
            )

    assert freezes.times == 0
    assert reader.on(settings.topic_dead_letters) == []
    assert [b["causationid"] for b in _bodies(reader, settings.topic_events)] == [only["id"]]
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_woke'") == "Woken"


async def test_a_batch_slower_than_the_batch_timeout_is_rolled_back_and_retried(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_customer(db, "cus_slow", invoice_prefix="SLO1")
    sent = command("cus_slow", {"name": "Eventually"})

    async def stall(store: BatchStore) -> None:
        await store.connection.execute("SELECT pg_sleep(120)")

    stalls = FaultAfterOutbox(stall, times=1).install(monkeypatch)
    quick = settings.model_copy(update={"batch_timeout": 1.0})
    async with running_worker(quick) as worker:
        await produce_commands(settings, [sent])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            [event] = await reader.wait_for_count(settings.topic_events, 1)

    assert stalls.times == 0
    assert event.json()["causationid"] == sent["id"]
    assert await db.fetchval("SELECT version FROM customers WHERE id = 'cus_slow'") == 2


async def test_batches_do_not_wait_for_kafka_commits_and_stopping_finishes_them(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Kafka offset commit is held back until the worker starts to stop. All the
    commands are still processed meanwhile (the database positions are the fence, not
    Kafka's offsets), and stopping waits for the held commit, so Kafka's offsets match
    the database's positions once the worker is gone."""
    gate = asyncio.Event()
    commit, flush = AIOKafkaConsumer.commit, OffsetCommits.flush

    async def commit_when_stopping(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        await gate.wait()
        await commit(self, offsets)

    async def open_the_gate_then_flush(self: OffsetCommits) -> None:
        if self._sending is not None and not self._sending.done():
            gate.set()  # not on the empty revocation before the first assignment
        await flush(self)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_when_stopping)
    monkeypatch.setattr(OffsetCommits, "flush", open_the_gate_then_flush)
    await insert_customer(db, "cus_off", invoice_prefix="OFF1")
    commands = [command("cus_off", {"description": f"o{n}"}) for n in range(30)]
    async with running_worker(settings) as worker:
        produced = await produce_commands(settings, commands)
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_for_count(settings.topic_events, len(commands))
        assert not gate.is_set()

    expected: dict[int, int] = {}
    for record in produced:
        expected[record.partition] = max(expected.get(record.partition, 0), record.offset + 1)
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.kafka_consumer_group)
    finally:
        await admin.close()
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == expected
    positions = await db.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1",
        settings.kafka_consumer_group,
    )
    assert {row["partition"]: row["next_offset"] for row in positions} == expected
