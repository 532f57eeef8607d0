"""The backfill use case against a fake store: every customer's state once, in id order,
through the outbox, resumed after a stop, never an update event."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest

from schemas.topics import Topics
from service.application.backfill import ALL, Backfill, BackfillBusyError, BackfillConfig
from service.application.errors import TransientError
from service.application.ports import BackfillRun
from service.domain.customer import CustomerState
from service.domain.events import OutboundMessage
from tests.unit.builders import customer

TOPICS = Topics(state="states")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class CrashError(Exception):
    """The process dies inside a transaction."""


@dataclass
class FakeDatabase:
    customers: dict[str, CustomerState]
    outbox: list[OutboundMessage] = field(default_factory=list)
    runs: dict[str, BackfillRun] = field(default_factory=dict)
    #: Transactions that may still commit before the next one crashes (None: all).
    commits_left: int | None = None
    #: Commits that fail as the database going away does, before the next ones succeed.
    transient_failures: int = 0
    transactions: int = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnit]:
        self.transactions += 1
        yield FakeUnit(self)


class FakeUnit:
    """Writes are kept apart until ``commit``, as in a transaction."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self._outbox: list[OutboundMessage] = []
        self._runs: dict[str, BackfillRun] = {}

    async def share_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
        return {i: self._db.customers[i] for i in customer_ids if i in self._db.customers}

    async def share_customers_after(self, after_id: str | None, limit: int) -> list[CustomerState]:
        ids = sorted(i for i in self._db.customers if after_id is None or i > after_id)
        return [self._db.customers[i] for i in ids[:limit]]

    async def count_after(self, after_id: str | None) -> int:
        return len([i for i in self._db.customers if after_id is None or i > after_id])

    async def run(self, name: str) -> BackfillRun | None:
        return self._db.runs.get(name)

    async def save_run(self, name: str, run: BackfillRun) -> None:
        self._runs[name] = run

    async def save_outbox(self, messages: Sequence[OutboundMessage]) -> None:
        self._outbox.extend(messages)

    async def commit(self) -> None:
        if self._db.transient_failures:
            self._db.transient_failures -= 1
            raise TransientError("the database restarted")
        if self._db.commits_left is not None:
            if self._db.commits_left == 0:
                raise CrashError
            self._db.commits_left -= 1
        self._db.outbox.extend(self._outbox)
        self._db.runs.update(self._runs)


def database(count: int) -> FakeDatabase:
    people = [customer(id=f"cus_{n:03d}", version=n % 4 + 1) for n in range(count)]
    return FakeDatabase({person.id: person for person in reversed(people)})


def backfill(db: FakeDatabase, *, batch_size: int = 3, paced: list[int] | None = None) -> Backfill:
    ids = (f"evt-{n}" for n in itertools.count())

    async def pace(count: int) -> None:
        if paced is not None:
            paced.append(count)

    return Backfill(
        db.transaction,
        BackfillConfig(
            source="tests", topics=TOPICS, batch_size=batch_size, retry_initial_delay=0.001
        ),
        clock=lambda: NOW,
        new_id=lambda: next(ids),
        pace=pace,
    )


def published(db: FakeDatabase) -> list[tuple[str, int]]:
    states = [orjson.loads(message.value or b"") for message in db.outbox]
    return [(state["subject"], int(state["sequence"])) for state in states]


async def test_every_customer_is_published_once_in_id_order_as_a_state_only() -> None:
    db = database(7)
    paced: list[int] = []
    progress: list[int] = []
    fill = backfill(db, paced=paced)

    started = await fill.start_all()
    run, mine = await fill.all(progress.append)

    assert (started.resumed, started.remaining) == (None, 7)
    assert published(db) == [(f"cus_{n:03d}", n % 4 + 1) for n in range(7)]
    assert {message.topic for message in db.outbox} == {"states"}
    assert all(message.state is None for message in db.outbox), "no event rides along"
    assert all(
        orjson.loads(message.value or b"")["type"] == "customer.state" for message in db.outbox
    )
    assert run == BackfillRun("cus_006", 7, finished=True)
    assert mine == 7
    assert progress == [3, 3, 1]
    assert paced == [3, 3, 3, 3], "every transaction waits for the rate limit first"


async def test_a_run_stopped_half_way_resumes_after_the_last_committed_batch() -> None:
    db = database(10)
    db.commits_left = 3  # the run's start and two batches commit; the third batch dies
    first = backfill(db)
    await first.start_all()
    with pytest.raises(CrashError):
        await first.all()
    assert published(db) == [(f"cus_{n:03d}", n % 4 + 1) for n in range(6)]

    db.commits_left = None
    again = backfill(db)
    started = await again.start_all()
    run, mine = await again.all()

    assert started.resumed == BackfillRun("cus_005", 6)
    assert started.remaining == 4
    subjects = [subject for subject, _ in published(db)]
    assert subjects == [f"cus_{n:03d}" for n in range(10)], "each customer exactly once"
    assert run == BackfillRun("cus_009", 10, finished=True)
    assert mine == 4, "only what this run published counts as its own"


async def test_a_finished_run_starts_over_and_restart_starts_over_a_stopped_one() -> None:
    db = database(4)
    fill = backfill(db)
    await fill.start_all()
    await fill.all()
    assert (await fill.start_all()).resumed is None
    await fill.all()
    assert len(db.outbox) == 8

    db.runs[ALL] = BackfillRun("cus_001", 2)
    started = await fill.start_all(restart=True)
    assert (started.resumed, started.remaining) == (None, 4)


async def test_a_second_runner_finding_the_run_finished_stops_at_once() -> None:
    db = database(3)
    fill = backfill(db)
    await fill.start_all()
    await fill.all()
    transactions = db.transactions
    assert await backfill(db).all() == (BackfillRun("cus_002", 3, finished=True), 0)
    assert db.transactions == transactions + 1
    assert len(db.outbox) == 3


async def test_named_customers_are_published_once_each_and_missing_ones_named() -> None:
    db = database(5)
    count, missing = await backfill(db, batch_size=2).customers(
        ["cus_003", "cus_nope", "cus_001", "cus_003", "cus_004"]
    )
    assert count == 3
    assert missing == ["cus_nope"]
    assert published(db) == [("cus_003", 4), ("cus_001", 2), ("cus_004", 1)]


async def test_restart_is_refused_while_another_runner_seems_at_work() -> None:
    db = database(4)
    db.runs[ALL] = BackfillRun("cus_001", 2, recent=True)
    with pytest.raises(BackfillBusyError, match="stop it before --restart"):
        await backfill(db).start_all(restart=True)
    assert db.runs[ALL] == BackfillRun("cus_001", 2, recent=True)

    resumed = await backfill(db).start_all()  # resuming alongside it is fine: they take turns
    assert resumed.resumed == BackfillRun("cus_001", 2, recent=True)


async def test_a_batch_the_database_fails_transiently_is_tried_again_and_counted_once() -> None:
    db = database(5)
    fill = backfill(db, batch_size=2)
    await fill.start_all()
    db.transient_failures = 3
    run, mine = await fill.all()

    assert run == BackfillRun("cus_004", 5, finished=True)
    assert mine == 5
    assert [subject for subject, _ in published(db)] == [f"cus_{n:03d}" for n in range(5)]

    db.transient_failures = 2
    assert await fill.customers(["cus_001", "cus_nope"]) == (1, ["cus_nope"])


async def test_a_database_away_for_longer_than_retry_for_ends_the_run_with_its_error() -> None:
    db = database(2)
    fill = Backfill(
        db.transaction,
        BackfillConfig(source="tests", topics=TOPICS, retry_for=0, retry_initial_delay=0.001),
        clock=lambda: NOW,
        new_id=lambda: "evt",
        pace=_no_pace,
    )
    await fill.start_all()
    db.transient_failures = 1_000
    with pytest.raises(TransientError, match="the database restarted"):
        await fill.all()
    assert db.outbox == []


async def _no_pace(_: int) -> None:
    return None
