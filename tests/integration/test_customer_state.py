"""The compacted ``customer.state`` topic on the real broker and database: created
compacted, written with every event in the same transaction, and kept in order when a row
is parked."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.event import CustomerStateEvent, CustomerUpdatedEvent
from schemas.headers import OUTBOX_ID
from service.adapters.kafka.clients import connection_options, create_topics
from service.adapters.kafka.publisher import partition_for
from service.adapters.postgres.outbox import OutboxStore, save_outbox
from service.adapters.postgres.seed import demo_id, seed_customers
from service.domain.events import OutboundMessage, StateRecord
from service.infrastructure.settings import Settings
from tests.conftest import TEST_PARTITIONS
from tests.support import (
    CLI,
    Received,
    cli,
    command,
    environment,
    eventually,
    insert_customer,
    outbox_size,
    produce_commands,
    read_everything,
    running_worker,
    waiting_for_a_lock,
)


async def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(_code, _message, _type, _name, entries)] = response.resources
    return {entry[0]: entry[1] for entry in entries}


async def test_the_state_topic_is_created_compacted_keeping_records_a_day(
    settings: Settings,
) -> None:
    config = await topic_config(settings, settings.topic_state)
    assert config["cleanup.policy"] == "compact"
    assert config["min.compaction.lag.ms"] == "86400000"
    assert (await topic_config(settings, settings.topic_events))["cleanup.policy"] == "delete"


async def test_with_publish_state_off_the_state_topic_is_not_created(settings: Settings) -> None:
    suffix = uuid.uuid4().hex[:8]
    off = settings.model_copy(
        update={
            "publish_state": False,
            "topic_commands": f"c.{suffix}",
            "topic_events": f"e.{suffix}",
            "topic_rejections": f"r.{suffix}",
            "topic_dead_letters": f"d.{suffix}",
            "topic_state": f"s.{suffix}",
        }
    )
    created = await create_topics(off, partitions=1)
    assert created == [f"c.{suffix}", f"e.{suffix}", f"r.{suffix}", f"d.{suffix}"]


async def test_every_event_goes_out_with_its_state_at_the_same_version(
    settings: Settings, db: asyncpg.Connection
) -> None:
    for n in range(3):
        await insert_customer(db, f"cus_st{n}", invoice_prefix=f"STA{n}")
    commands = [command(f"cus_st{n % 3}", {"description": f"d{n}"}) for n in range(12)]
    async with running_worker(settings):
        await produce_commands(settings, commands)
        await eventually(
            lambda: _published_all(db, len(commands)), what="every command applied and published"
        )
    found = await read_everything(settings, [settings.topic_events, settings.topic_state])

    events, states = found[settings.topic_events], found[settings.topic_state]
    assert len(events) == len(states) == 12
    states_by_row = {dict(s.headers)[OUTBOX_ID]: s for s in states}
    for event in events:
        state = states_by_row[dict(event.headers)[OUTBOX_ID]]
        updated = CustomerUpdatedEvent.model_validate_json(event.value or b"")
        snapshot = CustomerStateEvent.model_validate_json(state.value or b"")
        assert (state.key, state.partition) == (event.key, event.partition)
        assert state.partition == partition_for(state.key, TEST_PARTITIONS)
        assert snapshot.sequence == updated.sequence
        assert snapshot.causationid == updated.causationid
        assert snapshot.data.object == updated.data.object
    for n in range(3):
        mine = [
            int(orjson.loads(s.value or b"")["sequence"])
            for s in states
            if s.key == f"cus_st{n}".encode()
        ]
        assert mine == list(range(2, 6)), "a customer's states in version order"


async def _published_all(db: asyncpg.Connection, count: int) -> bool:
    applied = await db.fetchval("SELECT count(*) FROM processed_commands")
    return bool(applied == count and await outbox_size(db) == 0)


async def test_a_state_waits_behind_a_parked_row_of_its_customer_on_either_topic(
    settings: Settings, db: asyncpg.Connection
) -> None:
    events, state, rejections = settings.topic_events, settings.topic_state, "rejected"
    messages = [
        OutboundMessage(events, b"cus_1", b"v5", (), StateRecord(state, b"s5", ())),
        OutboundMessage(state, b"cus_1", b"s6"),  # a backfill behind it
        OutboundMessage(events, b"cus_1", b"v6", (), StateRecord(state, b"s6", ())),
        OutboundMessage(rejections, b"cus_1", b"r"),  # no topic in common
        OutboundMessage(state, b"cus_2", b"s1"),  # another customer
    ]
    await save_outbox(db, messages)
    store = OutboxStore(db)
    first, *_ = await store.publishable(10)
    await store.park(first.id, "refused")

    publishable = await store.publishable(10)
    [parked] = await store.parked()

    assert [(row.topic, row.value) for row in publishable] == [
        (rejections, b"r"),
        (state, b"s1"),
    ]
    assert parked.waiting == 2
    assert parked.size == len(b"v5") + len(b"s5")
    [row] = await store.rows([first.id])
    assert row.state == StateRecord(state, b"s5", ())


# -- backfill -----------------------------------------------------------------------------


def latest_states(records: list[Received]) -> dict[str, list[int]]:
    """Each customer's state versions, in the order the topic holds them."""
    versions: dict[str, list[int]] = {}
    for record in records:
        state = CustomerStateEvent.model_validate_json(record.value or b"")
        versions.setdefault(state.subject, []).append(int(state.sequence))
    return versions


async def database_versions(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT id, version FROM customers")
    return {row["id"]: row["version"] for row in rows}


async def test_backfill_publishes_every_customers_state_and_no_event(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_customers(db, 25)
    await db.execute("UPDATE customers SET version = 3 WHERE id = $1", demo_id(7))

    async with running_worker(settings):
        result = await cli(settings, "backfill", "--all", "--batch-size", "10")
        await eventually(lambda: _outbox_empty(db), what="the outbox drained")
    found = await read_everything(settings, [settings.topic_events, settings.topic_state])

    assert result.code == 0, result.err
    assert result.out.strip() == f"published the state of 25 customer(s) to {settings.topic_state}"
    assert found[settings.topic_events] == []
    states = latest_states(found[settings.topic_state])
    assert states == {
        customer: [version] for customer, version in (await database_versions(db)).items()
    }
    first = CustomerStateEvent.model_validate_json(found[settings.topic_state][0].value or b"")
    assert first.causationid is None
    row = await db.fetchrow("SELECT name, email FROM customers WHERE id = $1", first.subject)
    assert (first.data.object.name, first.data.object.email) == (row["name"], row["email"])


async def _outbox_empty(db: asyncpg.Connection) -> bool:
    return await outbox_size(db) == 0


async def test_backfill_of_named_customers_names_the_missing_ones(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_customers(db, 3)
    result = await cli(settings, "backfill", demo_id(2), "cus_nobody", demo_id(3))
    assert result.code == 1
    assert "published the state of 2 customer(s)" in result.out
    assert result.err.strip().endswith("no such customer: cus_nobody")
    rows = await db.fetch("SELECT key FROM outbox ORDER BY id")
    assert [row["key"] for row in rows] == [demo_id(2).encode(), demo_id(3).encode()]


async def test_backfill_refuses_no_target_and_a_turned_off_state_topic(settings: Settings) -> None:
    for rate in ("nan", "inf", "-1"):
        refused = await cli(settings, "backfill", "--all", "--rate", rate)
        assert refused.code == 2
        assert "Invalid value for '--rate'" in refused.err
    neither = await cli(settings, "backfill")
    off = await cli(
        settings, "backfill", "--all", env={**environment(settings), "PUBLISH_STATE": "false"}
    )
    assert (neither.code, neither.err.strip()) == (2, "name customer ids, or pass --all")
    assert off.code == 2
    assert "PUBLISH_STATE is false" in off.err


async def test_a_backfill_killed_half_way_resumes_and_publishes_each_customer_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_customers(db, 600)
    process = await asyncio.create_subprocess_exec(
        CLI,
        "backfill",
        "--all",
        "--rate",
        "200",
        "--batch-size",
        "50",
        env=environment(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: _run_published(db, 150), what="three batches committed")
    finally:
        process.kill()
        await process.wait()
    stopped_at = await db.fetchval("SELECT published FROM backfill_runs WHERE name = 'all'")
    assert stopped_at < 600, "the run must be stopped half way for this test to mean anything"

    resumed = await cli(settings, "backfill", "--all", "--rate", "0")

    assert resumed.code == 0, resumed.err
    assert f"({stopped_at} published before)" in resumed.err
    assert f"published the state of {600 - stopped_at} customer(s)" in resumed.out
    keys = [
        row["key"]
        for row in await db.fetch("SELECT key FROM outbox WHERE topic = $1", settings.topic_state)
    ]
    assert sorted(keys) == sorted(demo_id(n).encode() for n in range(1, 601))


async def _run_published(db: asyncpg.Connection, count: int) -> bool:
    published = await db.fetchval("SELECT published FROM backfill_runs WHERE name = 'all'")
    return published is not None and published >= count


async def test_a_backfill_during_updates_never_sends_a_customers_state_back_in_version(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_customers(db, 40)
    commands = [command(demo_id(n % 40 + 1), {"description": f"d{n}"}) for n in range(400)]

    async with running_worker(settings):
        sending = asyncio.create_task(produce_commands(settings, commands))
        backfills = [
            await cli(settings, "backfill", "--all", "--rate", "0", "--batch-size", "7")
            for _ in range(3)
        ]
        await sending
        await eventually(
            lambda: _published_all(db, len(commands)), within=60, what="every update published"
        )
    found = await read_everything(settings, [settings.topic_events, settings.topic_state])

    assert all(result.code == 0 for result in backfills), [r.err for r in backfills]
    states = latest_states(found[settings.topic_state])
    versions = await database_versions(db)
    assert set(states) == set(versions)
    for customer, seen in states.items():
        assert seen == sorted(seen), f"{customer}'s states went back in version: {seen}"
        assert seen[-1] == versions[customer]
    assert len(found[settings.topic_events]) == 400


@pytest.mark.parametrize("target", [["--all"], [demo_id(1)]], ids=["all", "named"])
async def test_a_backfill_waits_for_an_update_in_flight_and_publishes_its_version_after_it(
    settings: Settings, db: asyncpg.Connection, database_url: str, target: list[str]
) -> None:
    await seed_customers(db, 1)
    update = await asyncpg.connect(database_url)
    try:
        # What a batch does, held open: the customer locked and changed, its event written.
        transaction = update.transaction()
        await transaction.start()
        await update.execute("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE", demo_id(1))
        await update.execute("UPDATE customers SET version = 2 WHERE id = $1", demo_id(1))
        await update.execute(
            "INSERT INTO outbox (topic, key, value) VALUES ($1, $2, 'the update')",
            settings.topic_state,
            demo_id(1).encode(),
        )
        backfill = asyncio.create_task(cli(settings, "backfill", *target))
        await eventually(lambda: waiting_for_a_lock(db), what="the backfill waiting for the lock")
        await transaction.commit()
        result = await backfill
    finally:
        await update.close()

    assert result.code == 0, result.err
    rows = await db.fetch("SELECT value FROM outbox ORDER BY id")
    assert rows[0]["value"] == b"the update"
    state = CustomerStateEvent.model_validate_json(rows[1]["value"])
    assert state.sequence == "00000000000000000002", "the backfill read the committed update"


async def test_create_topics_warns_of_a_state_topic_someone_made_without_compaction(
    settings: Settings,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {**environment(settings), "TOPIC_STATE": f"s.{suffix}"}
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"s.{suffix}", 1, 1)])
    finally:
        await admin.close()

    result = await cli(settings, "create-topics", env=env)
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, f"s.{suffix}", {"cleanup.policy": "compact,delete"}
                )
            ]
        )
    finally:
        await admin.close()
    both = await cli(settings, "create-topics", env=env)
    compacted = await cli(settings, "create-topics")

    assert result.code == 0
    assert f"warning: s.{suffix} has cleanup.policy=delete" in result.err
    assert f"warning: s.{suffix} has cleanup.policy=compact,delete" in both.err
    assert compacted.code == 0
    assert "warning" not in compacted.err


async def test_backfill_against_a_database_that_is_away_says_so_and_how_to_resume(
    settings: Settings,
) -> None:
    from devstack.processes import free_port

    away = {**environment(settings), "DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x"}
    result = await cli(settings, "backfill", "--all", env=away)
    assert result.code == 1
    assert result.err.strip().startswith("error: PostgreSQL is unavailable")
    assert "resumes where this one stopped" in result.err
    assert "Traceback" not in result.err
