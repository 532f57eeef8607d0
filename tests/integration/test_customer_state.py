"""The compacted ``customer.state`` topic on the real broker and database: created
compacted, written with every event in the same transaction, and kept in order when a row
is parked."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.event import CustomerStateEvent, CustomerUpdatedEvent
from schemas.headers import OUTBOX_ID
from service.adapters.kafka.clients import connection_options, create_topics
from service.adapters.kafka.publisher import partition_for
from service.adapters.postgres.outbox import OutboxStore, save_outbox
from service.domain.events import OutboundMessage, StateRecord
from service.infrastructure.settings import Settings
from tests.conftest import TEST_PARTITIONS
from tests.support import (
    command,
    eventually,
    insert_customer,
    outbox_size,
    produce_commands,
    read_everything,
    running_worker,
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
