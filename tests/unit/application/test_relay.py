"""The outbox relay against fakes of the outbox, the lead, the producer and the topics:
order, recovery after a crash or an unknown outcome, refused rows, retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import structlog.testing

from schemas.headers import OUTBOX_ID
from service.application.errors import TransientError
from service.application.relay import OutboxRelay, RelayConfig
from service.domain.events import StateRecord
from service.domain.outbox import OutboxRow
from service.infrastructure.metrics import Metrics
from tests.unit.application.fakes import (
    FakeLeadership,
    FakeOutboxStore,
    FakeOutboxTopics,
    LoggedRecord,
    Publishers,
    TopicLog,
    eventually,
)

EVENTS = "customer.updated"
REJECTIONS = "customer.update.rejected"
FAST = RelayConfig(retry_initial_delay=0.001, retry_max_delay=0.01, idle_interval=0.01)


@dataclass
class World:
    store: FakeOutboxStore
    leadership: FakeLeadership
    log: TopicLog
    topics: FakeOutboxTopics
    publishers: Publishers
    metrics: Metrics

    def relay(self, config: RelayConfig = FAST) -> OutboxRelay:
        return OutboxRelay(
            config,
            leadership=self.leadership,
            publishers=self.publishers,
            topics=self.topics,
            metrics=self.metrics,
        )

    def published_ids(self) -> list[int | None]:
        return self.log.outbox_ids()

    def sent(self) -> list[int]:
        """Every row id any publisher was handed, refused or not."""
        return [i for p in self.publishers.made for batch in p.batches for i in batch]

    def published_count(self, topic: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "customer_events_published_total", {"topic": topic}
        )

    def retries(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "customer_retries_total", {"component": "relay"}
        )


def world(*, held_by_another: bool = False, limits: dict[str, int] | None = None) -> World:
    store = FakeOutboxStore()
    log = TopicLog()
    return World(
        store=store,
        leadership=FakeLeadership(store, held_by_another=held_by_another),
        log=log,
        topics=FakeOutboxTopics(log, limits),
        publishers=Publishers(log),
        metrics=Metrics(),
    )


@pytest.fixture
def w() -> World:
    return world()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Event]:
    """The relay as a task for the block; then told to stop, and awaited (its error, if it
    failed, comes out here)."""
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        yield stopping
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    stopping.set()
    async with asyncio.timeout(5):
        await task


# Publishing


async def test_rows_are_published_in_id_order_then_forgotten_and_counted_per_topic(
    w: World,
) -> None:
    rows = [
        w.store.add(key=b"cus_1", value=b"1", headers=[("traceparent", b"00-abc")]),
        w.store.add(key=b"cus_2", value=b"2"),
        w.store.add(key=b"cus_1", value=b"3"),
        w.store.add(key=b"cus_2", value=b"4", topic=REJECTIONS),
    ]

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.published_ids() == [1, 2, 3, 4]
    assert [(r.topic, r.key, r.value) for r in w.log.records] == [
        (row.topic, row.key, row.value) for row in rows
    ]
    assert w.log.records[0].headers == (("traceparent", b"00-abc"), (OUTBOX_ID, b"1"))
    assert w.published_count(EVENTS) == 3
    assert w.published_count(REJECTIONS) == 1
    assert all(publisher.stopped for publisher in w.publishers.made)


async def test_a_row_written_later_goes_out_when_the_relay_is_woken(w: World) -> None:
    # An idle interval longer than the test: only the wake-up can make it publish in time.
    relay = w.relay(RelayConfig(retry_initial_delay=0.001, idle_interval=60))

    async with running(relay):
        await eventually(lambda: relay.state == "leading", what="the relay leading")
        w.store.add()
        w.leadership.notify()
        await eventually(lambda: w.published_ids() == [1], what="the new row published")


async def test_a_relay_stands_by_while_another_leads_and_publishes_once_it_leads() -> None:
    w = world(held_by_another=True)
    w.store.add()
    relay = w.relay()

    async with running(relay):
        await eventually(lambda: relay.state == "standby", what="standing by")
        assert w.published_ids() == []
        w.leadership.release()
        await eventually(lambda: w.published_ids() == [1], what="publishing once leading")


def relay_states(metrics: Metrics) -> dict[str, float | None]:
    return {
        state: metrics.registry.get_sample_value("customer_relay_state", {"state": state})
        for state in ("starting", "standby", "leading")
    }


async def test_the_relay_state_metric_follows_the_lead() -> None:
    w = world(held_by_another=True)
    assert relay_states(w.metrics) == dict.fromkeys(("starting", "standby", "leading"))
    relay = w.relay()
    assert relay_states(w.metrics) == {"starting": 1.0, "standby": 0.0, "leading": 0.0}

    async with running(relay):
        await eventually(lambda: relay.state == "standby", what="standing by")
        assert relay_states(w.metrics) == {"starting": 0.0, "standby": 1.0, "leading": 0.0}
        w.leadership.release()
        await eventually(lambda: relay.state == "leading", what="the relay leading")
        assert relay_states(w.metrics) == {"starting": 0.0, "standby": 0.0, "leading": 1.0}


async def test_a_relay_stopped_while_standing_by_publishes_nothing() -> None:
    w = world(held_by_another=True)
    w.store.add()
    relay = w.relay()

    async with running(relay):
        await eventually(lambda: relay.state == "standby", what="standing by")

    assert w.published_ids() == []
    assert w.store.ids == [1]
    assert w.publishers.made == []


async def test_a_relay_told_to_stop_first_publishes_what_is_left(w: World) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    stopping = asyncio.Event()
    stopping.set()

    async with asyncio.timeout(5):
        await w.relay().run(stopping)

    assert w.published_ids() == [1, 2]
    assert w.store.ids == []


# Recovery: what a previous leader published but did not forget


async def test_rows_a_previous_leader_published_are_forgotten_without_publishing_them_again(
    w: World,
) -> None:
    first, second, _ = w.store.add(value=b"1"), w.store.add(value=b"2"), w.store.add(value=b"3")
    w.log.append_row(first)
    w.log.append_row(second)

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.published_ids() == [1, 2, 3]
    assert w.sent() == [3]


@pytest.mark.parametrize(
    "claim",
    [
        OutboxRow(1, EVENTS, b"cus_1", b"forged", []),
        OutboxRow(1, EVENTS, b"cus_2", b"real", []),
        OutboxRow(1, REJECTIONS, b"cus_1", b"real", []),
        OutboxRow(1, EVENTS, b"cus_1", b"real", [("extra", b"x")]),
    ],
    ids=["value", "key", "topic", "headers"],
)
async def test_a_forged_record_claiming_a_rows_id_does_not_get_the_row_forgotten(
    w: World, claim: OutboxRow
) -> None:
    w.store.add(key=b"cus_1", value=b"real")
    w.log.append_row(claim)

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.sent() == [1]
    assert w.published_ids() == [1, 1]
    assert w.log.records[-1] == LoggedRecord(EVENTS, b"cus_1", b"real", ((OUTBOX_ID, b"1"),))


# Refused rows


async def test_a_refused_row_is_found_alone_and_parked_while_the_others_are_published(
    w: World,
) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    w.store.add(key=b"cus_2")
    w.store.add(key=b"cus_3")
    w.publishers.refuse(2, "CorruptRecordException: the broker says no")

    async with running(w.relay()):
        await eventually(lambda: w.published_ids() == [1, 4], what="the others published")
        assert w.store.parked_reasons == {2: "CorruptRecordException: the broker says no"}
        assert w.store.ids == [2, 3], "row 3 waits behind row 2, of the same customer"
        # New rows: those of other customers flow, those of the parked one wait.
        w.store.add(key=b"cus_3")
        w.store.add(key=b"cus_2")
        w.leadership.notify()
        await eventually(lambda: w.published_ids() == [1, 4, 5], what="row 5 published")

    assert w.store.ids == [2, 3, 6]
    assert w.sent().count(3) == 1, "row 3 was only ever in the refused batch"
    assert 6 not in w.sent()
    # The refused batch, then one row at a time by a fresh publisher until row 2 is
    # found (which spoils that one too), then the rest.
    assert [p.batches for p in w.publishers.made] == [[[1, 2, 3, 4]], [[1], [2]], [[4], [5]]]
    assert all(publisher.stopped for publisher in w.publishers.made)


async def test_rows_past_the_suspects_of_a_refused_batch_go_out_in_full_batches_again(
    w: World,
) -> None:
    for key in (b"cus_1", b"cus_2", b"cus_2", b"cus_3", b"cus_4"):
        w.store.add(key=key)
    w.publishers.refuse(2)
    config = RelayConfig(batch_size=3, retry_initial_delay=0.001, idle_interval=0.01)

    async with running(w.relay(config)):
        await eventually(lambda: w.published_ids() == [1, 4, 5], what="the others published")

    assert [p.batches for p in w.publishers.made] == [[[1, 2, 3]], [[1], [2]], [[4, 5]]]


async def test_a_parked_row_retried_by_the_operator_goes_out_before_those_behind_it(
    w: World,
) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    w.publishers.refuse(1)

    async with running(w.relay()):
        await eventually(lambda: w.published_ids() == [3], what="the other customer published")
        del w.publishers.refused[1]
        w.store.unpark(1)
        w.leadership.notify()
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.published_ids() == [3, 1, 2]


async def test_a_row_larger_than_its_topic_allows_is_parked_before_anything_is_sent() -> None:
    w = world(limits={EVENTS: 300})
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2", value=b"x" * 1000)
    w.store.add(key=b"cus_2")
    w.store.add(key=b"cus_3")

    async with running(w.relay()):
        await eventually(lambda: w.published_ids() == [1, 4], what="the others published")

    [(row_id, reason)] = w.store.parked_reasons.items()
    assert row_id == 2
    assert "max.message.bytes of customer.updated is 300" in reason
    assert w.sent() == [1, 4]
    assert w.store.ids == [2, 3]
    assert w.topics.limits_read == 2, "the limits are read again before a row is parked"


async def test_a_limit_raised_since_the_lead_was_taken_lets_a_large_row_through() -> None:
    w = world(limits={EVENTS: 300})
    relay = w.relay()

    async with running(relay):
        await eventually(lambda: relay.state == "leading", what="the relay leading")
        w.topics.limits_given = {EVENTS: 10_000}
        w.store.add(value=b"x" * 1000)
        w.leadership.notify()
        await eventually(lambda: w.published_ids() == [1], what="the large row published")

    assert w.store.parked_reasons == {}


# Failures


async def test_a_transient_error_is_retried_with_a_new_publisher(w: World) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    failure = w.publishers.fail_next(TransientError("broker away"), times=2)

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert failure.raised == 2
    assert w.published_ids() == [1, 2]
    assert len(w.publishers.made) == 3
    assert all(publisher.stopped for publisher in w.publishers.made)
    assert w.leadership.leads == 3
    assert w.retries() == 2


async def test_a_commit_of_unknown_outcome_publishes_no_duplicate(w: World) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    w.publishers.fail_next(
        TransientError("the transaction commit did not answer"), after_commit=True
    )

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.published_ids() == [1, 2]
    assert len(w.publishers.made) == 2
    assert w.publishers.made[1].batches == [], "recovery found the rows published"


async def test_losing_the_database_after_the_kafka_commit_publishes_no_duplicate(
    w: World,
) -> None:
    w.store.add(key=b"cus_1")
    w.store.add(key=b"cus_2")
    failure = w.store.fail_next(TransientError("connection lost"), on="forget")

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert failure.raised == 1
    assert w.published_ids() == [1, 2]


async def test_a_permanent_error_is_not_retried_and_stops_the_relay(w: World) -> None:
    w.store.add()
    w.publishers.fail_next(RuntimeError("a bug"))

    with pytest.raises(RuntimeError, match="a bug"):
        async with asyncio.timeout(5):
            await w.relay().run(asyncio.Event())

    assert len(w.publishers.made) == 1
    assert w.publishers.made[0].stopped
    assert w.store.ids == [1]
    assert w.retries() == 0


async def test_a_drain_that_keeps_failing_is_given_up_after_the_drain_timeout(w: World) -> None:
    w.store.add()
    w.publishers.fail_next(TransientError("broker away"), times=1_000_000)
    stopping = asyncio.Event()
    stopping.set()
    config = RelayConfig(retry_initial_delay=0.001, retry_max_delay=0.005, drain_timeout=0.05)

    async with asyncio.timeout(5):
        await w.relay(config).run(stopping)

    assert w.store.ids == [1], "the row stays for the next leader"
    assert len(w.publishers.made) > 1


# The state topic

STATE = "customer.state"


def a_state(value: bytes = b'{"v": 1}') -> StateRecord:
    return StateRecord(STATE, value, (("content-type", b"application/cloudevents+json"),))


async def test_a_rows_state_goes_out_in_the_same_transaction_under_its_key_and_id(
    w: World,
) -> None:
    w.store.add(key=b"cus_1", value=b"e1", state=a_state(b"s1"))
    w.store.add(key=b"cus_2", value=b"e2")
    w.store.add(key=b"cus_1", value=b"s2", topic=STATE)  # a backfill: a state alone

    async with running(w.relay()):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert [(r.topic, r.key, r.value, r.outbox_id) for r in w.log.records] == [
        (EVENTS, b"cus_1", b"e1", 1),
        (STATE, b"cus_1", b"s1", 1),
        (EVENTS, b"cus_2", b"e2", 2),
        (STATE, b"cus_1", b"s2", 3),
    ]
    assert w.log.records[1].headers[0] == ("content-type", b"application/cloudevents+json")
    batches = [batch for publisher in w.publishers.made for batch in publisher.batches]
    assert batches == [[1, 2, 3]], "a row and its state are handed over as one"
    assert (w.published_count(EVENTS), w.published_count(STATE)) == (2, 2)


async def test_a_state_larger_than_the_state_topic_allows_parks_its_row() -> None:
    w = world(limits={EVENTS: 10_000, STATE: 300})
    w.store.add(key=b"cus_1", value=b"small", state=a_state(b"x" * 1000))
    w.store.add(key=b"cus_2", value=b"other")

    async with running(w.relay()):
        await eventually(lambda: w.published_ids() == [2], what="the other customer published")

    [(row_id, reason)] = w.store.parked_reasons.items()
    assert row_id == 1
    assert f"max.message.bytes of {STATE} is 300" in reason


async def test_a_backfilled_state_waits_behind_a_parked_event_whose_state_it_would_overtake() -> (
    None
):
    w = world(limits={EVENTS: 300})
    w.store.add(key=b"cus_1", value=b"x" * 1000, state=a_state(b"v5"))  # parked: too large
    w.store.add(key=b"cus_1", value=b"v6", topic=STATE)  # a newer state, from a backfill
    w.store.add(key=b"cus_1", value=b"rejected", topic=REJECTIONS)  # no topic in common

    async with running(w.relay()):
        await eventually(lambda: w.published_ids() == [3], what="the unrelated row published")
        assert w.store.ids == [1, 2], "the backfilled state waits for the parked row"
        w.topics.limits_given = {EVENTS: 10_000}
        w.store.unpark(1)
        w.leadership.notify()
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert [(r.topic, r.value) for r in w.log.records[1:]] == [
        (EVENTS, b"x" * 1000),
        (STATE, b"v5"),
        (STATE, b"v6"),
    ]


async def test_with_the_state_topic_off_rows_written_before_go_out_without_their_state() -> None:
    w = world()
    w.store.add(key=b"cus_1", value=b"e1", state=a_state(b"s1"))
    w.store.add(key=b"cus_2", value=b"e2")
    off = RelayConfig(
        retry_initial_delay=0.001,
        retry_max_delay=0.01,
        idle_interval=0.01,
        publish_state=False,
        state_topic=STATE,
    )

    w.store.add(key=b"cus_3", value=b"s3", topic=STATE)  # a backfill's: dropped
    w.store.add(key=b"cus_4", value=b"e4")

    async with running(w.relay(off)):
        await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert [(r.topic, r.value) for r in w.log.records] == [
        (EVENTS, b"e1"),
        (EVENTS, b"e2"),
        (EVENTS, b"e4"),
    ]


async def test_a_missing_topic_holds_the_relay_with_its_name_until_it_is_created(
    w: World,
) -> None:
    w.topics.missing_topics = [STATE]
    w.store.add(state=a_state())
    relay = w.relay()

    with structlog.testing.capture_logs() as logs:
        async with running(relay):
            await eventually(lambda: (w.retries() or 0) >= 2, what="the relay retrying")
            assert w.published_ids() == []
            w.topics.missing_topics = []
            await eventually(lambda: w.store.ids == [], what="the outbox emptied")

    assert w.published_ids() == [1, 1]
    missing = [entry for entry in logs if entry["event"] == "relay_topics_missing"]
    assert missing
    assert missing[0]["topics"] == [STATE]
    retrying = next(entry for entry in logs if entry["event"] == "relay_retrying")
    assert "customer.state do not exist: run `customer-service create-topics`" in retrying["error"]
