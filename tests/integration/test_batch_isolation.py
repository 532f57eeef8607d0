"""Batch isolation, against the real Kafka and PostgreSQL.

When a batch transaction fails for a reason that retrying will not cure, the worker
processes the batch's records one by one: every other command still applies exactly once,
and only the record that fails on its own is dead-lettered (``processing_failed``).

The failure is real: a trigger in this test's database refuses one customer update with
a non-transient SQLSTATE (``check_violation``), so only the command that sets the marker
name fails, and the set-based batch statement that carries it fails with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_ERROR_MESSAGE,
    DLT_ORIGINAL_CONSUMER_GROUP,
    DLT_ORIGINAL_OFFSET,
    DLT_ORIGINAL_PARTITION,
    DLT_ORIGINAL_TOPIC,
)
from service.adapters.kafka.clients import connection_options
from service.application.process_batch import BatchProcessor
from service.domain.inbound import InboundRecord
from service.infrastructure.settings import Settings
from tests.support import (
    Produced,
    Received,
    TopicReader,
    command,
    encode,
    event_topics,
    insert_customer,
    read_everything,
    running_worker,
)

PARTITION = 0
MARKER = "Refused By Trigger"
REFUSAL = "customer name refused by the test trigger"

REFUSE_MARKER_NAME = f"""
CREATE FUNCTION refuse_marker_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = '{MARKER}' THEN
        RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER refuse_marker_name BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION refuse_marker_name();
"""


async def produce_to_one_partition(
    settings: Settings, commands: Sequence[dict[str, Any]]
) -> list[Produced]:
    """Send ``commands`` (keyed by subject) in order to partition ``PARTITION`` of the
    command topic and wait until all are acknowledged."""
    producer = AIOKafkaProducer(**connection_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for document in commands:
            key, value = document["subject"].encode(), encode(document)
            metadata = await producer.send_and_wait(
                settings.topic_commands, value, key=key, partition=PARTITION
            )
            sent.append(Produced(key, value, metadata.partition, metadata.offset))
    finally:
        await producer.stop()
    return sent


def record_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch the worker hands to the processor (which still runs)."""
    sizes: list[int] = []
    process = BatchProcessor.process

    async def counting(self: BatchProcessor, records: Sequence[InboundRecord]) -> Any:
        sizes.append(len(records))
        return await process(self, records)

    monkeypatch.setattr(BatchProcessor, "process", counting)
    return sizes


def _bodies(records: Sequence[Received], customer_id: str) -> list[dict[str, Any]]:
    return [body for body in (r.json() for r in records) if body["subject"] == customer_id]


async def test_one_command_failing_in_the_database_is_dead_lettered_and_the_rest_apply_once(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_customer(db, "cus_iso_a", name="Ada", invoice_prefix="ISOA")
    await insert_customer(db, "cus_iso_b", name="Bob", invoice_prefix="ISOB")
    await db.execute(REFUSE_MARKER_NAME)

    a1 = command("cus_iso_a", {"description": "a1"})
    b1 = command("cus_iso_b", {"description": "b1"})
    a2 = command("cus_iso_a", {"email": "ada@example.com"})
    poisoned = command("cus_iso_b", {"name": MARKER})
    a3 = command("cus_iso_a", {"description": "a3"})
    b3 = command("cus_iso_b", {"phone": "+39 06 123"})
    b4 = command("cus_iso_b", {"description": "b4"})
    batch = [a1, b1, a2, poisoned, a3, b3, b4]
    later = command("cus_iso_b", {"description": "later"})
    applied = {"cus_iso_a": [a1, a2, a3], "cus_iso_b": [b1, b3, b4, later]}

    # Produced before the worker starts, to one partition: its first poll gets them all.
    sent = await produce_to_one_partition(settings, batch)
    poisoned_sent = sent[batch.index(poisoned)]
    batch_sizes = record_batch_sizes(monkeypatch)

    async with (
        running_worker(settings) as worker,
        TopicReader(settings, event_topics(settings), worker) as reader,
    ):
        await reader.wait_for_count(settings.topic_dead_letters, 1)
        await reader.wait_for_count(settings.topic_events, len(batch) - 1)
        [later_sent] = await produce_to_one_partition(settings, [later])
        await reader.wait_until(
            lambda r: any(
                body["causationid"] == later["id"]
                for body in (e.json() for e in r.on(settings.topic_events))
            ),
            what="the later command's event",
        )
        assert not worker.done(), "the worker stopped after the failing record"

    # The whole batch went to the processor at once (so the isolation path ran), then the
    # later command on its own.
    assert batch_sizes == [len(batch), 1]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    published = await read_everything(settings, event_topics(settings))

    # Every other command applied once, in order, with consecutive versions per customer.
    events = published[settings.topic_events]
    assert sorted(e.json()["causationid"] for e in events) == sorted(
        c["id"] for commands in applied.values() for c in commands
    )
    assert all(e.key == e.json()["subject"].encode() for e in events)
    for customer_id, commands in applied.items():
        bodies = _bodies(events, customer_id)
        assert [b["causationid"] for b in bodies] == [c["id"] for c in commands], customer_id
        assert [int(b["sequence"]) for b in bodies] == list(range(2, 2 + len(commands)))
    a_objects = [b["data"]["object"] for b in _bodies(events, "cus_iso_a")]
    assert [o["description"] for o in a_objects] == ["a1", "a1", "a3"]
    assert [o["email"] for o in a_objects] == [None, "ada@example.com", "ada@example.com"]
    b_objects = [b["data"]["object"] for b in _bodies(events, "cus_iso_b")]
    assert [o["name"] for o in b_objects] == ["Bob"] * 4
    assert [o["description"] for o in b_objects] == ["b1", "b1", "b4", "later"]
    assert [o["phone"] for o in b_objects] == [None, "+39 06 123", "+39 06 123", "+39 06 123"]

    rows = {
        row["id"]: row
        for row in await db.fetch(
            "SELECT id, name, email, phone, description, version FROM customers ORDER BY id"
        )
    }
    assert set(rows) == {"cus_iso_a", "cus_iso_b"}
    a, b = rows["cus_iso_a"], rows["cus_iso_b"]
    assert (a["name"], a["email"], a["description"], a["version"]) == (
        "Ada",
        "ada@example.com",
        "a3",
        4,
    )
    assert (b["name"], b["phone"], b["description"], b["version"]) == (
        "Bob",
        "+39 06 123",
        "later",
        5,
    )
    processed = await db.fetch("SELECT command_id, outcome FROM processed_commands")
    assert {row["command_id"]: row["outcome"] for row in processed} == {
        c["id"]: "applied" for commands in applied.values() for c in commands
    }
    assert await db.fetchval(
        "SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND partition = $2",
        settings.kafka_consumer_group,
        PARTITION,
    ) == (later_sent.offset + 1)

    # The failing command alone is dead-lettered, bytes untouched, with the database error.
    [letter] = published[settings.topic_dead_letters]
    headers = dict(letter.headers)
    assert letter.key == poisoned_sent.key == b"cus_iso_b"
    assert letter.value == poisoned_sent.value
    assert headers[DLT_ERROR_CODE] == b"processing_failed"
    message = headers[DLT_ERROR_MESSAGE].decode()
    assert "CheckViolationError" in message
    assert REFUSAL in message
    assert headers[DLT_ORIGINAL_TOPIC] == settings.topic_commands.encode()
    assert headers[DLT_ORIGINAL_PARTITION] == str(poisoned_sent.partition).encode()
    assert headers[DLT_ORIGINAL_OFFSET] == str(poisoned_sent.offset).encode()
    assert headers[DLT_ORIGINAL_CONSUMER_GROUP] == settings.kafka_consumer_group.encode()

    # Nothing was refused: the topic of rejections never had a record.
    assert published[settings.topic_rejections] == []
