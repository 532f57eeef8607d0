"""The outbox relay against the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from devstack.processes import free_port
from service.adapters.postgres.outbox import LEADER_LOCK, OutboxStore
from service.application.errors import TransientError
from service.application.relay import OutboxRelay
from service.bootstrap import build_relay, relay_producer, relay_publishers
from service.domain.outbox import OutboxRow
from service.infrastructure.metrics import Metrics
from service.infrastructure.settings import Settings
from tests.support import (
    TcpForwarder,
    TopicReader,
    command,
    event_topics,
    eventually,
    fill_outbox,
    insert_customer,
    outbox_size,
    produce_commands,
    read_everything,
    running_relay,
    running_worker,
)


async def test_rows_left_in_the_outbox_are_published_on_restart_in_order(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_o", invoice_prefix="OUT1")
    commands = [command("cus_o", {"description": f"d{n}"}) for n in range(8)]
    await fill_outbox(settings, db, commands)

    async with (
        running_relay(build_relay(settings)),
        TopicReader(settings, event_topics(settings)) as reader,
    ):
        events = await reader.wait_for_count(settings.topic_events, 8)

    assert [e.json()["causationid"] for e in events] == [c["id"] for c in commands]
    assert [int(e.json()["sequence"]) for e in events] == list(range(2, 10))
    assert await outbox_size(db) == 0


async def test_a_relay_that_dies_after_publishing_does_not_publish_twice(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_customer(db, "cus_rc", invoice_prefix="RCR1")
    published_then_died = [command("cus_rc", {"description": f"a{n}"}) for n in range(5)]
    later = [command("cus_rc", {"description": f"b{n}"}) for n in range(3)]
    await fill_outbox(settings, db, published_then_died)

    class SimulatedCrashError(Exception):
        """The relay dies after the Kafka commit, before deleting the rows."""

    async def die(self: OutboxRelay, store: OutboxStore, rows: list[OutboxRow]) -> None:
        raise SimulatedCrashError

    monkeypatch.setattr(OutboxRelay, "_published", die)
    with pytest.raises(SimulatedCrashError):
        await build_relay(settings).run(asyncio.Event())
    monkeypatch.undo()
    assert await outbox_size(db) == 5

    async with running_worker(settings) as worker:
        await produce_commands(settings, later)
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            # One customer's events share a partition and arrive in order, so a second
            # copy of an early event would be among the first eight records.
            events = await reader.wait_for_count(settings.topic_events, 8)

    assert [e.json()["causationid"] for e in events] == [
        c["id"] for c in [*published_then_died, *later]
    ]
    assert await outbox_size(db) == 0


async def test_only_one_relay_leads_at_a_time(settings: Settings) -> None:
    first, second = build_relay(settings), build_relay(settings)

    async with running_relay(first):
        await eventually(lambda: first.state == "leading", what="the first relay to lead")
        async with running_relay(second):
            await eventually(lambda: second.state == "standby", what="the second to stand by")
            assert first.state == "leading"
        assert first.state == "leading"
    async with running_relay(second):
        await eventually(lambda: second.state == "leading", what="the second to take over")


async def test_a_drain_that_cannot_reach_kafka_gives_up_in_time_and_keeps_the_rows(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_dr", invoice_prefix="DRN1")
    await fill_outbox(settings, db, [command("cus_dr", {"name": "Pending"})])
    nowhere = settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
            "relay_drain_timeout": 2.0,
            "retry_initial_delay": 0.2,
        }
    )
    metrics = Metrics()
    relay = build_relay(nowhere, metrics)
    stopping = asyncio.Event()
    stopping.set()

    await asyncio.wait_for(relay.run(stopping), timeout=60)

    # It kept trying with backoff through the drain window (not one attempt, not forever).
    retries = metrics.registry.get_sample_value("customer_retries_total", {"component": "relay"})
    assert retries is not None
    assert retries >= 2
    for topic in event_topics(settings):
        published = metrics.registry.get_sample_value(
            "customer_events_published_total", {"topic": topic}
        )
        assert not published
    assert await outbox_size(db) == 1


async def test_a_row_committed_as_the_relay_finds_the_outbox_empty_is_not_left_waiting(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch can commit, and wake the relay, between the relay's read of an empty
    outbox and its idle wait. That wake must not be lost, or the event waits for the
    idle interval (two minutes here) instead of going out at once."""
    slow = settings.model_copy(update={"relay_idle_interval": 120.0})
    await insert_customer(db, "cus_wake", invoice_prefix="WAK1")
    commands = [command("cus_wake", {"description": f"w{n}"}) for n in range(2)]
    await fill_outbox(slow, db, commands)
    held_back = await db.fetchrow(
        "DELETE FROM outbox WHERE id = (SELECT max(id) FROM outbox) "
        "RETURNING topic, key, value, headers::text AS headers"
    )
    relay = build_relay(slow)
    publishable = OutboxStore.publishable

    async def publishable_then_commit_a_batch(
        store: OutboxStore, limit: int, *, parked: bool = True
    ) -> list[OutboxRow]:
        rows = await publishable(store, limit, parked=parked)
        if not rows and held_back is not None:
            # Right after the read found nothing, before the relay goes idle.
            await db.execute(
                "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4::jsonb)",
                *held_back.values(),
            )
            relay.wake()  # what the worker does after each batch commit
        return rows

    monkeypatch.setattr(OutboxStore, "publishable", publishable_then_commit_a_batch)
    async with running_relay(relay), TopicReader(slow, event_topics(slow)) as reader:
        events = await reader.wait_for_count(slow.topic_events, 2, within=20)

    assert [e.json()["causationid"] for e in events] == [c["id"] for c in commands]


async def test_a_commit_whose_outcome_is_unknown_gets_a_fresh_producer_and_no_duplicate(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The first commit goes through but never answers (as after a lost response): the
    relay must not reuse that producer's transaction state. It starts a new producer with
    the same transactional.id, and recovery finds the rows already published."""
    await insert_customer(db, "cus_unknown")
    commands = [command("cus_unknown", {"description": f"u{n}"}) for n in range(4)]
    await fill_outbox(settings, db, commands)
    made: list[AIOKafkaProducer] = []

    def producer() -> AIOKafkaProducer:
        made_now = relay_producer(settings)
        if not made:
            commit = made_now.commit_transaction

            async def commit_then_hang() -> None:
                await commit()
                await asyncio.Event().wait()

            made_now.commit_transaction = commit_then_hang
        made.append(made_now)
        return made_now

    relay = build_relay(
        settings,
        publishers=relay_publishers(settings, producer=producer, transaction_timeout=1.0),
    )
    async with (
        running_relay(relay) as task,
        TopicReader(settings, event_topics(settings), task) as reader,
    ):
        await reader.wait_for_count(settings.topic_events, len(commands))
        await eventually(lambda: _outbox_empty(db), what="an empty outbox", within=60)

    assert len(made) >= 2
    published = await read_everything(settings, [settings.topic_events])
    events = published[settings.topic_events]
    assert [e.json()["causationid"] for e in events] == [c["id"] for c in commands]


async def _outbox_empty(db: asyncpg.Connection) -> bool:
    return await outbox_size(db) == 0


async def forwarded_database(settings: Settings) -> tuple[TcpForwarder, str]:
    """An open forwarder to the test's database, and a database URL that goes through it:
    the link a test can cut."""
    real = urlsplit(settings.database_url.get_secret_value())
    assert real.hostname is not None
    assert real.port is not None
    forwarder = TcpForwarder(real.hostname, real.port, free_port())
    await forwarder.open()
    through = urlunsplit(real._replace(netloc=f"{real.username}@127.0.0.1:{forwarder.port}"))
    return forwarder, through


async def test_a_leader_cut_off_inside_a_statement_loses_the_lead_within_the_takeover_bound(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A partition can fall between two messages of one statement: asyncpg sends Parse and
    Describe, then waits for the answer before it binds. PostgreSQL then waits for the
    rest, "active" and not idle, so ``idle_session_timeout`` never ends that session; the
    standby must end it once it has been silent for the bound."""
    takeover = 2.0
    quick = settings.model_copy(
        update={"relay_takeover_seconds": takeover, "relay_idle_interval": 0.2}
    )
    forwarder, through = await forwarded_database(quick)
    # A leader's session, with the timeout the relay gives its own.
    holder = await asyncpg.connect(
        through, server_settings={"idle_session_timeout": str(round(takeover * 1000))}
    )
    stuck: asyncio.Task[object] | None = None
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LEADER_LOCK)
        forwarder.cut_after_next_send()
        stuck = asyncio.create_task(holder.fetchval("SELECT $1::int + 1", 1))
        await eventually(
            lambda: db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                "WHERE state = 'active' AND query = 'SELECT $1::int + 1')"
            ),
            what="the holder's session to wait inside its statement",
        )
        relay = build_relay(quick)
        async with running_relay(relay):
            await eventually(
                lambda: relay.state == "leading",
                within=takeover + 20,
                what="the relay to take the lead from the silent session",
            )
        ended = await db.fetchval(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT $1::int + 1')"
        )
        assert ended, "the silent session should have been ended"
    finally:
        if stuck is not None:
            stuck.cancel()
        holder.terminate()
        await forwarder.close()


async def test_a_leader_cut_off_from_postgresql_loses_the_lead_within_the_takeover_bound(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The leader's connection goes silent without closing (a partition, or a frozen
    host): PostgreSQL must end its session, so that a standby leads and publishes, within
    seconds (RELAY_TAKEOVER_SECONDS plus the standby's poll), not when TCP keepalives
    give up."""
    takeover = 3.0
    quick = settings.model_copy(
        update={"relay_takeover_seconds": takeover, "relay_idle_interval": 0.2}
    )
    forwarder, through = await forwarded_database(quick)
    # A short drain: once stopped, the cut-off relay cannot publish anything anyway.
    cut_off = quick.model_copy(
        update={"database_url": SecretStr(through), "relay_drain_timeout": 1.0}
    )
    first, second = build_relay(cut_off), build_relay(quick)
    await insert_customer(db, "cus_takeover", invoice_prefix="TKO1")
    commands = [command("cus_takeover", {"description": f"k{n}"}) for n in range(3)]
    try:
        async with running_relay(first):
            await eventually(lambda: first.state == "leading", what="the first relay to lead")
            async with running_relay(second):
                await eventually(lambda: second.state == "standby", what="the second to wait")
                forwarder.cut()
                # The bound plus room for a loaded machine: without the timeout the lead
                # would not move for as long as TCP keepalives take (hours), so a wait of
                # seconds still fails.
                await eventually(
                    lambda: second.state == "leading",
                    within=takeover + 20,
                    what="the second relay to take the lead",
                )
                # The events go through the outbox to the only relay left leading. (Not
                # fill_outbox: it waits for all of them in the outbox at once, which the
                # leader, publishing each batch as it lands, may never let happen.)
                consumer_only = quick.model_copy(update={"relay_enabled": False})
                async with (
                    TopicReader(quick, event_topics(quick)) as reader,
                    running_worker(consumer_only),
                ):
                    await produce_commands(quick, commands)
                    events = await reader.wait_for_count(quick.topic_events, len(commands))
            # Connections reset: the cut-off relay fails fast now, and gives up its drain.
            await forwarder.close()
    finally:
        await forwarder.close()

    assert [e.json()["causationid"] for e in events] == [c["id"] for c in commands]


async def test_a_fenced_publisher_fails_transient_and_stops_cleanly(settings: Settings) -> None:
    """A relay leader frozen past the takeover wakes with a producer the new leader has
    fenced. aiokafka then asserts its transaction state (FATAL_ERROR cannot abort): that
    must be the transient fencing error, which makes the relay start over, and never an
    AssertionError, which failed the whole process."""
    publishers = relay_publishers(settings, transaction_timeout=10.0)
    woken, newer = publishers(), publishers()
    row = OutboxRow(1, settings.topic_events, b"cus_fenced", b"{}", [])
    await woken.start()
    try:
        await newer.start()  # the same transactional.id: fences the first
        try:
            with pytest.raises(TransientError):
                await woken.publish([row], {})
            with pytest.raises(TransientError):
                await woken.publish([row], {})  # and again: still not an assertion
            await newer.publish([row], {})  # the newer one publishes
        finally:
            await newer.stop()
    finally:
        await woken.stop()
