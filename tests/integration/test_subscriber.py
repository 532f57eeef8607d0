"""The subscriber client against the real broker: hand-made ``customer.state`` and
``customer.updated`` records, written in Kafka transactions as the relay writes them.

Waiting is by barrier: sentinel records of new customers on every partition of both
topics, committed after the records under test; once the subscriber has delivered all of
them, it has decided everything before them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.stack import Stack
from examples.sqlite_subscriber import CustomerTable, mirror
from schemas.event import format_sequence
from service.adapters.kafka.clients import connection_options, create_topics
from service.adapters.kafka.publisher import partition_for
from service.domain import binary_mode
from service.entrypoints.subscriber import Change, GapPolicy, SequenceGap, Subscriber
from service.infrastructure.settings import Settings

PARTITIONS = 3
WITHIN = 30.0


@dataclass(frozen=True)
class Record:
    topic: str
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...] = ()
    partition: int | None = None


def customer(customer_id: str, version: int) -> dict[str, Any]:
    # The email names the version, so that a row shows which version it holds.
    return {
        "id": customer_id, "object": "customer", "created": 1_700_000_000, "delinquent": False,
        "address": None, "description": None, "email": f"v{version}@example.com",
        "invoice_prefix": None, "next_invoice_sequence": 1, "name": None, "phone": None,
        "preferred_locales": [], "tax_exempt": "none",
    }  # fmt: skip


def event(kind: str, customer_id: str, version: int, *, backfill: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"object": customer(customer_id, version)}
    if kind == "updated":
        data["previous_attributes"] = {"email": f"v{version - 1}@example.com"}
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "customer-service",
        "subject": customer_id,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "type": f"customer.{kind}",
        "sequence": format_sequence(version),
        "data": data,
    }
    if not backfill:
        document["causationid"] = f"cmd-{customer_id}-{version}"
    return document


class Topics:
    """Builds this test's records."""

    def __init__(self, settings: Settings) -> None:
        self.updated = settings.topic_events
        self.state = settings.topic_state

    def record(
        self,
        kind: str,
        customer_id: str,
        version: int,
        *,
        binary: bool = False,
        backfill: bool = False,
        partition: int | None = None,
    ) -> Record:
        document = event(kind, customer_id, version, backfill=backfill)
        topic = self.updated if kind == "updated" else self.state
        if binary:
            value, headers = binary_mode.encode(document)
            return Record(topic, customer_id, value, headers, partition)
        return Record(topic, customer_id, orjson.dumps(document), (), partition)

    def applied(self, customer_id: str, version: int, *, binary: bool = False) -> list[Record]:
        """What the relay publishes for one applied update: the event and its state."""
        return [
            self.record("updated", customer_id, version, binary=binary),
            self.record("state", customer_id, version, binary=binary),
        ]


async def send(producer: AIOKafkaProducer, records: list[Record]) -> None:
    for record in records:
        await producer.send_and_wait(
            record.topic,
            record.value,
            key=record.key.encode(),
            headers=list(record.headers),
            partition=record.partition,
        )


async def publish(producer: AIOKafkaProducer, *records: Record, abort: bool = False) -> None:
    """``records`` in one Kafka transaction, committed (or aborted)."""
    await producer.begin_transaction()
    await send(producer, list(records))
    if abort:
        await producer.abort_transaction()
    else:
        await producer.commit_transaction()


class Reader:
    """Iterates a subscriber in a task, keeping every change."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.changes: list[Change] = []
        self._arrived = asyncio.Condition()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for change in self.subscriber:
                self.changes.append(change)
                async with self._arrived:
                    self._arrived.notify_all()
        finally:
            async with self._arrived:
                self._arrived.notify_all()

    async def until(self, done: Callable[[list[Change]], bool]) -> None:
        async with asyncio.timeout(WITHIN), self._arrived:
            await self._arrived.wait_for(lambda: done(self.changes) or self.task.done())
        if self.task.done():
            self.task.result()  # raises what ended it
        assert done(self.changes)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def of(self, customer_id: str) -> list[tuple[int, str, bool]]:
        return [
            (change.version, change.source, change.during_bootstrap)
            for change in self.changes
            if change.customer_id == customer_id
        ]

    def view(self) -> dict[str, int]:
        return {change.customer_id: change.version for change in self.changes}


async def barrier(producer: AIOKafkaProducer, topics: Topics, reader: Reader) -> None:
    """Return once ``reader`` has decided every record committed before this call."""
    tag = uuid.uuid4().hex[:8]
    sentinels = [
        topics.record(kind, f"sentinel-{tag}-{kind}-{partition}", 1, partition=partition)
        for kind in ("updated", "state")
        for partition in range(PARTITIONS)
    ]
    await publish(producer, *sentinels)
    names = {record.key for record in sentinels}
    await reader.until(lambda changes: names <= {change.customer_id for change in changes})


@pytest.fixture
async def kafka(stack: Stack) -> Settings:
    """This test's own topics (the state topic compacted, as ``create_topics`` makes it)."""
    suffix = uuid.uuid4().hex[:10]
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        topic_commands=f"sub.update.{suffix}",
        topic_events=f"sub.updated.{suffix}",
        topic_rejections=f"sub.rejected.{suffix}",
        topic_dead_letters=f"sub.dlq.{suffix}",
        topic_state=f"sub.state.{suffix}",
        _env_file=None,
    )
    await create_topics(settings, partitions=PARTITIONS)
    return settings


@pytest.fixture
def topics(kafka: Settings) -> Topics:
    return Topics(kafka)


async def transactional(settings: Settings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        **connection_options(settings), transactional_id=f"sub-test-{uuid.uuid4().hex}"
    )
    await producer.start()
    return producer


@pytest.fixture
async def producer(kafka: Settings) -> AsyncIterator[AIOKafkaProducer]:
    made = await transactional(kafka)
    try:
        yield made
    finally:
        await made.stop()


@pytest.fixture
def group() -> str:
    return f"sub-test-{uuid.uuid4().hex[:10]}"


def subscriber(
    settings: Settings,
    group: str,
    *,
    versions: dict[str, int] | None = None,
    on_gap: GapPolicy = "raise",
) -> Subscriber:
    return Subscriber(settings, group_id=group, versions=versions, on_gap=on_gap)


@pytest.fixture
async def following(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> AsyncIterator[Reader]:
    """A subscriber past an empty bootstrap, with customer ``cus_a`` at version 1 (from
    its updated event or its state record, whichever came first: it was not known)."""
    async with subscriber(kafka, group) as entered:
        reader = Reader(entered)
        await entered.wait_bootstrapped()
        await publish(producer, *topics.applied("cus_a", 1))
        await barrier(producer, topics, reader)
        try:
            yield reader
        finally:
            await reader.stop()


async def test_the_bootstrap_ends_with_the_latest_state_of_every_customer(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    await publish(producer, *topics.applied("cus_a", 2, binary=True))
    await publish(producer, *topics.applied("cus_b", 1, binary=True))
    await publish(producer, topics.record("state", "cus_c", 3, backfill=True))

    async with subscriber(kafka, group) as entered:
        assert not entered.bootstrapped
        reader = Reader(entered)
        await entered.wait_bootstrapped()
        await barrier(producer, topics, reader)
        await reader.stop()

    assert reader.of("cus_a") == [(1, "state", True), (2, "state", True)]
    assert reader.of("cus_b") == [(1, "state", True)]
    assert reader.of("cus_c") == [(3, "state", True)]
    last = {change.customer_id: change for change in reader.changes}
    assert last["cus_a"].object == customer("cus_a", 2)
    assert last["cus_c"].causation_id is None
    # The updated events before the cut are not delivered again after it.
    ours = [c for c in reader.changes if not c.customer_id.startswith("sentinel")]
    assert [c for c in ours if c.source == "updated"] == []


async def test_following_delivers_each_update_once_with_its_diff(
    following: Reader, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 2))
    await publish(producer, *topics.applied("cus_a", 3, binary=True))
    await barrier(producer, topics, following)

    # Version 1 came from whichever of its two records was read first.
    assert following.of("cus_a")[1:] == [(2, "updated", False), (3, "updated", False)]
    third = next(c for c in following.changes if (c.customer_id, c.version) == ("cus_a", 3))
    assert third.previous_attributes == {"email": "v2@example.com"}
    assert third.object == customer("cus_a", 3)
    assert following.subscriber.versions["cus_a"] == 3


async def test_a_transaction_committed_between_the_two_cuts_is_applied_once(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    # An open transaction on cus_a's updated partition holds that partition's last stable
    # offset before everything after it, while the state topic's moves on: the update
    # committed next is then inside the state read and past the updated cut.
    holder = await transactional(kafka)
    try:
        await holder.begin_transaction()
        partition = partition_for(b"cus_a", PARTITIONS)
        await send(holder, [topics.record("updated", "cus_z", 1, partition=partition)])
        await publish(producer, *topics.applied("cus_a", 2))

        async with subscriber(kafka, group) as entered:
            reader = Reader(entered)
            await entered.wait_bootstrapped()
            assert reader.of("cus_a") == [(1, "state", True), (2, "state", True)]
            # Committed after the cut: an end offset past it (a high watermark, not the
            # last stable offset) would have lost it.
            await holder.commit_transaction()
            await publish(producer, *topics.applied("cus_a", 3))
            await barrier(producer, topics, reader)
            await reader.stop()
    finally:
        await holder.stop()

    assert reader.of("cus_a") == [(1, "state", True), (2, "state", True), (3, "updated", False)]
    assert reader.of("cus_z") == [(1, "updated", False)]


async def test_an_update_whose_state_shows_after_the_state_cut_is_followed_from_the_rewind(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    # Now the open transaction holds cus_a's *state* partition back: update 2, committed
    # before the cut, shows its event before the updated end and its state after the
    # state end. Only following updated from before the cut finds it.
    holder = await transactional(kafka)
    try:
        await holder.begin_transaction()
        partition = partition_for(b"cus_a", PARTITIONS)
        await send(holder, [topics.record("state", "cus_z", 1, partition=partition)])
        await publish(producer, *topics.applied("cus_a", 2))

        async with subscriber(kafka, group, on_gap="report") as entered:
            reader = Reader(entered)
            await entered.wait_bootstrapped()
            await holder.commit_transaction()
            await publish(producer, *topics.applied("cus_a", 3))
            await barrier(producer, topics, reader)
            await reader.stop()
    finally:
        await holder.stop()

    assert reader.of("cus_a") == [(1, "state", True), (2, "updated", False), (3, "updated", False)]
    assert [c.gap for c in reader.changes] == [None] * len(reader.changes)


async def test_a_version_jump_raises_a_sequence_gap(
    following: Reader, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 3))

    with pytest.raises(SequenceGap) as raised:
        await following.until(lambda changes: False)

    assert (raised.value.customer_id, raised.value.expected, raised.value.got) == ("cus_a", 2, 3)
    # Iterating again does not pass over it, until the gap is accepted: then the same
    # iterator goes on with that change, and the next.
    iterator = aiter(following.subscriber)
    with pytest.raises(SequenceGap):
        await anext(iterator)
    following.subscriber.accept_gap(raised.value)
    change = await anext(iterator)
    assert (change.customer_id, change.version) == ("cus_a", 3)
    assert change.gap is not None
    await publish(producer, *topics.applied("cus_a", 4))
    assert (await anext(iterator)).version == 4


async def test_a_version_jump_is_reported_on_the_change(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    async with subscriber(kafka, group, on_gap="report") as entered:
        reader = Reader(entered)
        await entered.wait_bootstrapped()
        await publish(producer, *topics.applied("cus_a", 4))
        await publish(producer, *topics.applied("cus_a", 5))
        await barrier(producer, topics, reader)
        await reader.stop()

    jumped, after = (c for c in reader.changes if c.customer_id == "cus_a" and c.version > 1)
    assert jumped.gap is not None
    assert (jumped.gap.expected, jumped.gap.got, jumped.object) == (2, 4, customer("cus_a", 4))
    assert after.gap is None
    assert after.version == 5


async def test_a_restart_resumes_from_the_committed_positions(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    async with subscriber(kafka, group) as first:
        reader = Reader(first)
        await first.wait_bootstrapped()
        await publish(producer, *topics.applied("cus_a", 2))
        await barrier(producer, topics, reader)
        await first.commit()
        # Delivered after the commit: a restart delivers it again, and the caller's
        # versions skip it.
        await publish(producer, *topics.applied("cus_b", 1))
        await barrier(producer, topics, reader)
        await reader.stop()
        held = dict(first.versions)
    assert held["cus_b"] == 1

    await publish(producer, *topics.applied("cus_a", 3))
    async with subscriber(kafka, group, versions=held) as second:
        assert second.bootstrapped  # the commit was made after the bootstrap
        resumed = Reader(second)
        await barrier(producer, topics, resumed)
        await resumed.stop()

    assert resumed.of("cus_a") == [(3, "updated", False)]
    assert resumed.of("cus_b") == []


async def test_a_restart_during_the_bootstrap_resumes_it_to_its_first_ends(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    customers = [f"cus_{n}" for n in range(12)]
    await publish(producer, *(topics.record("state", name, 1, backfill=True) for name in customers))
    async with subscriber(kafka, group) as first:
        seen = []
        async for change in first:
            seen.append(change)
            break  # a crash after one change
        await first.commit()
        held = dict(first.versions)
    assert len(seen) == 1
    # Published after the crash: a new bootstrap would read version 2 from the state
    # topic; the resumed one stops at its first ends and takes it from the updates.
    await publish(producer, *topics.applied("cus_0", 2), *topics.applied("cus_1", 2))

    async with subscriber(kafka, group, versions=held) as second:
        assert not second.bootstrapped
        reader = Reader(second)
        await second.wait_bootstrapped()
        await barrier(producer, topics, reader)
        await reader.stop()

    during = {c.customer_id for c in reader.changes if c.during_bootstrap}
    assert during == set(customers) - {seen[0].customer_id}
    assert all(c.version == 1 for c in reader.changes if c.during_bootstrap)
    assert [reader.of(name)[-1] for name in ("cus_0", "cus_1")] == [(2, "updated", False)] * 2


async def test_aborted_transactions_are_never_seen(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, *topics.applied("cus_x", 1), abort=True)
    await publish(producer, *topics.applied("cus_b", 1))
    async with subscriber(kafka, group) as entered:
        reader = Reader(entered)
        await entered.wait_bootstrapped()
        await publish(producer, *topics.applied("cus_b", 2, binary=True), abort=True)
        await publish(producer, *topics.applied("cus_y", 1), abort=True)
        await barrier(producer, topics, reader)
        await reader.stop()

    assert reader.of("cus_b") == [(1, "state", True)]
    assert reader.of("cus_x") == reader.of("cus_y") == []


async def test_a_customer_backfilled_after_the_bootstrap_comes_from_the_state_topic(
    following: Reader, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, topics.record("state", "cus_new", 1, backfill=True, binary=True))
    # A backfill of a known customer publishes its version again: nothing to apply.
    await publish(producer, topics.record("state", "cus_a", 1, backfill=True))
    await publish(producer, *topics.applied("cus_new", 2))
    await barrier(producer, topics, following)

    assert following.of("cus_new") == [(1, "state", False), (2, "updated", False)]
    assert [version for version, _source, _ in following.of("cus_a")] == [1]


async def test_a_missing_topic_is_refused(kafka: Settings, group: str) -> None:
    elsewhere = kafka.model_copy(update={"topic_state": f"missing.{uuid.uuid4().hex}"})

    with pytest.raises(LookupError, match="does not exist"):
        async with subscriber(elsewhere, group):
            pass


async def test_the_sqlite_example_mirrors_the_topics_row_for_row(
    kafka: Settings, group: str, topics: Topics, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    await publish(producer, *topics.applied("cus_a", 1))
    await publish(producer, *topics.applied("cus_a", 2, binary=True))
    await publish(producer, topics.record("state", "cus_b", 5, backfill=True))
    path = tmp_path / "customers.sqlite"
    table = CustomerTable(path)
    try:
        async with subscriber(kafka, group, versions=table.versions()) as entered:
            await asyncio.wait_for(mirror(entered, table, until=version_of("cus_b", 5)), WITHIN)
            await publish(producer, *topics.applied("cus_a", 3))
            await publish(producer, topics.record("state", "cus_c", 1, backfill=True))
            await asyncio.wait_for(
                mirror(entered, table, until=seen({"cus_a": 3, "cus_c": 1})), WITHIN
            )
        rows = table.rows()
    finally:
        table.close()

    assert rows == {
        "cus_a": (3, customer("cus_a", 3)),
        "cus_b": (5, customer("cus_b", 5)),
        "cus_c": (1, customer("cus_c", 1)),
    }
    # A restart loads the table's versions and applies only what is new.
    await publish(producer, *topics.applied("cus_b", 6))
    table = CustomerTable(path)
    try:
        # As the example's command line builds it: plain bootstrap servers.
        restarted = Subscriber.plaintext(
            kafka.kafka_bootstrap_servers,
            group_id=group,
            topics=kafka.topics,
            versions=table.versions(),
        )
        async with restarted as entered:
            assert entered.bootstrapped
            applied: list[Change] = []

            def first_of_b(change: Change) -> bool:
                applied.append(change)
                return change.customer_id == "cus_b"

            await asyncio.wait_for(mirror(entered, table, until=first_of_b), WITHIN)
        rows = table.rows()
    finally:
        table.close()
    assert [(c.customer_id, c.version) for c in applied] == [("cus_b", 6)]
    assert rows["cus_b"] == (6, customer("cus_b", 6))
    assert rows["cus_a"] == (3, customer("cus_a", 3))


def version_of(customer_id: str, version: int) -> Callable[[Change], bool]:
    return lambda change: (change.customer_id, change.version) == (customer_id, version)


def seen(wanted: dict[str, int]) -> Callable[[Change], bool]:
    """True once every customer of ``wanted`` reached its version (in any order)."""
    missing = dict(wanted)

    def check(change: Change) -> bool:
        if missing.get(change.customer_id) == change.version:
            del missing[change.customer_id]
        return not missing

    return check
