"""Every ``customer-service`` verb, run as a subprocess against the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
import pytest

from devstack.stack import Stack
from service.infrastructure.settings import Settings
from tests.support import (
    CLI,
    TopicReader,
    cli,
    command,
    database_url_for,
    encode,
    environment,
    event_topics,
    insert_customer,
    produce,
    running_worker,
)

VERBS = [
    "migrate", "create-topics", "seed", "worker", "relay", "send", "tail", "dlq list", "dlq replay",
    "outbox list", "outbox retry", "outbox discard", "backfill",
]  # fmt: skip


@pytest.mark.parametrize("verb", VERBS)
async def test_every_verb_explains_itself_with_examples(settings: Settings, verb: str) -> None:
    result = await cli(settings, *verb.split(), "--help")
    assert result.code == 0
    assert "Example" in result.out


async def test_migrate_applies_once_then_reports_up_to_date(
    stack: Stack, settings: Settings
) -> None:
    name = f"cs_cli_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**environment(settings), "DATABASE_URL": database_url_for(stack.database_url, name)}
        first = await cli(settings, "migrate", env=env)
        second = await cli(settings, "migrate", env=env)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    assert first.code == 0
    assert "applied: 0001_customers" in first.out
    assert (second.code, second.out.strip()) == (0, "database is up to date")


async def test_create_topics_creates_the_four_topics_once(settings: Settings) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **environment(settings),
        "TOPIC_COMMANDS": f"c.{suffix}",
        "TOPIC_EVENTS": f"e.{suffix}",
        "TOPIC_REJECTIONS": f"r.{suffix}",
        "TOPIC_DEAD_LETTERS": f"d.{suffix}",
        "TOPIC_STATE": f"s.{suffix}",
    }
    first = await cli(settings, "create-topics", "--partitions", "2", env=env)
    second = await cli(settings, "create-topics", env=env)
    assert first.code == 0
    assert first.out.strip() == (
        f"created: c.{suffix}, e.{suffix}, r.{suffix}, d.{suffix}, s.{suffix}"
    )
    assert second.out.strip() == "topics exist"


async def test_seed_creates_demo_customers_and_leaves_existing_ones(
    settings: Settings, db: asyncpg.Connection
) -> None:
    first = await cli(settings, "seed", "--count", "3")
    again = await cli(settings, "seed", "--count", "4")
    assert "created 3 customers" in first.out
    assert "created 1 customers" in again.out
    assert await db.fetchval("SELECT count(*) FROM customers WHERE id LIKE 'cus_demo_%'") == 4


#: The worker's EVENT_CONTENT_MODE; the verbs are not told it and read either.
CONTENT_MODES = pytest.mark.parametrize("content_mode", ["structured", "binary"])


@CONTENT_MODES
async def test_send_prints_the_event_or_the_rejection(
    settings: Settings, db: asyncpg.Connection, content_mode: str
) -> None:
    await insert_customer(db, "cus_cli", invoice_prefix="CLI1", phone="+1 555 0100")
    worker_settings = settings.model_copy(update={"event_content_mode": content_mode})
    async with running_worker(worker_settings):
        applied = await cli(
            settings, "send", "cus_cli", "--email", "ada@example.com",
            "--address.city", "Rome", "--address.country", "IT", "--clear", "phone",
            "--expand", "subscriptions", "--correlation-id", "corr-9",
        )  # fmt: skip
        rejected = await cli(settings, "send", "cus_nobody", "--name", "Ghost")
        refused = await cli(settings, "send", "cus_cli", "--address.country", "it")
        late = await cli(settings, "send", "cus_cli", "--name", "Late", "--expected-version", "1")

    assert applied.code == 0, applied.err
    event = orjson.loads(applied.out)
    assert event["type"] == "customer.updated"
    assert event["correlationid"] == "corr-9"
    assert event["data"]["object"]["email"] == "ada@example.com"
    assert event["data"]["object"]["phone"] is None
    assert event["data"]["object"]["address"]["country"] == "IT"
    assert event["data"]["object"]["subscriptions"]["object"] == "list"
    assert rejected.code == 1
    assert orjson.loads(rejected.out)["data"]["error"]["code"] == "resource_missing"
    assert refused.code == 2
    assert "data.address.country" in refused.err
    assert late.code == 1
    assert orjson.loads(late.out)["data"]["error"]["code"] == "version_conflict"
    assert (
        await db.fetchval("SELECT email FROM customers WHERE id = 'cus_cli'") == "ada@example.com"
    )


@CONTENT_MODES
async def test_tail_prints_one_readable_line_per_event(
    settings: Settings, db: asyncpg.Connection, content_mode: str
) -> None:
    await insert_customer(db, "cus_tail", invoice_prefix="TAI1")
    worker_settings = settings.model_copy(update={"event_content_mode": content_mode})
    async with running_worker(worker_settings) as worker:
        await cli(settings, "send", "cus_tail", "--name", "Tailed")
        await cli(settings, "send", "cus_none", "--name", "Nobody")
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_for_count(settings.topic_rejections, 1)
    result = await cli(settings, "tail", "--from-beginning", "--count", "2")
    assert result.code == 0
    updated, rejected = sorted(result.out.splitlines(), key=lambda line: "rejected" in line)
    assert "updated" in updated
    assert "cus_tail" in updated
    assert "changed: name" in updated
    assert "rejected" in rejected
    assert "resource_missing subject" in rejected
    as_json = await cli(settings, "tail", "--from-beginning", "--count", "2", "--json")
    assert as_json.code == 0, as_json.err
    envelopes = [orjson.loads(line) for line in as_json.out.splitlines()]
    assert sorted(envelope["type"] for envelope in envelopes) == [
        "customer.update.rejected",
        "customer.updated",
    ]
    assert all(envelope["subject"] in ("cus_tail", "cus_none") for envelope in envelopes)


async def test_dlq_lists_dead_letters_and_replays_the_chosen_one(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with running_worker(settings) as worker:
        [sent] = await produce(settings, [(b"cus_x", b"{broken")], headers=[("origin", b"crm")])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            [letter] = await reader.wait_for_count(settings.topic_dead_letters, 1)
            listed = await cli(settings, "dlq", "list")
            replayed = await cli(settings, "dlq", "replay", f"{letter.partition}:{letter.offset}")
            missing = await cli(settings, "dlq", "replay", "99:99")
            letters = await reader.wait_for_count(settings.topic_dead_letters, 2)

    assert listed.code == 0
    assert f"from {settings.topic_commands}[{sent.partition}]@{sent.offset}" in listed.out
    assert "record_invalid_json" in listed.out
    assert "1 dead letter(s)" in listed.err
    assert replayed.code == 0
    assert "replayed 1 dead letter(s)" in replayed.out
    assert missing.code == 2
    assert "no dead letter at 99:99" in missing.err
    again = dict(letters[1].headers)
    assert letters[1].value == b"{broken"
    assert again["origin"] == b"crm"
    assert (
        again["dlq-replayed-from"]
        == f"{settings.topic_dead_letters}:{letter.partition}:{letter.offset}".encode()
    )


async def test_an_invalid_setting_stops_the_worker_with_its_name(settings: Settings) -> None:
    result = await cli(
        settings, "worker", env={**environment(settings), "BATCH_MAX_RECORDS": "many"}
    )
    assert result.code == 2
    assert "BATCH_MAX_RECORDS" in result.err


async def test_the_relay_runs_on_its_own_beside_workers_without_one(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_rel", invoice_prefix="REL1")
    relay = await asyncio.create_subprocess_exec(
        CLI, "relay", env=environment(settings), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with running_worker(settings.model_copy(update={"relay_enabled": False})) as worker:
            await produce(settings, [(b"cus_rel", encode(command("cus_rel", {"name": "Relayed"})))])
            async with TopicReader(settings, event_topics(settings), worker) as reader:
                [event] = await reader.wait_for_count(settings.topic_events, 1)
    finally:
        relay.terminate()
        code = await asyncio.wait_for(relay.wait(), timeout=60)
    assert event.json()["data"]["object"]["name"] == "Relayed"
    assert code == 0


async def park(db: asyncpg.Connection, key: bytes, reason: str) -> int:
    row_id: int = await db.fetchval(
        "INSERT INTO outbox (topic, key, value, parked_at, parked_reason) "
        "VALUES ('customer.updated', $1, 'v', now(), $2) RETURNING id",
        key,
        reason,
    )
    return row_id


async def test_outbox_lists_retries_and_discards_parked_messages(
    settings: Settings, db: asyncpg.Connection
) -> None:
    first = await park(db, b"cus_parked_1", "MessageSizeTooLargeError: too big")
    second = await park(db, b"cus_parked_2", "the record takes about 9000 bytes")
    await db.execute(
        "INSERT INTO outbox (topic, key, value) VALUES ('customer.updated', 'cus_parked_1', 'w')"
    )

    listed = await cli(settings, "outbox", "list")
    retried = await cli(settings, "outbox", "retry", str(first))
    no_ids = await cli(settings, "outbox", "retry")
    discarded = await cli(settings, "outbox", "discard", str(second), "--yes")
    not_parked = await cli(settings, "outbox", "discard", str(first), "--yes")

    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(first))
    assert "key=cus_parked_1" in lines[0]
    assert "waiting-behind=1" in lines[0]
    assert "MessageSizeTooLargeError: too big" in lines[0]
    assert "2 parked; 1 waiting" in listed.err
    assert (retried.code, retried.out.strip()) == (0, "unparked 1 message(s)")
    assert no_ids.code == 2
    assert "--all" in no_ids.err
    assert (discarded.code, discarded.out.strip()) == (0, "discarded 1 message(s)")
    assert not_parked.code == 1
    remaining = await db.fetch("SELECT id, parked_at FROM outbox ORDER BY id")
    assert [row["id"] for row in remaining][:1] == [first]
    assert second not in [row["id"] for row in remaining]
    assert all(row["parked_at"] is None for row in remaining)
