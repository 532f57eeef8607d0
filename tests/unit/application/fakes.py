"""In-memory fakes of the application's ports, for tests that need no Kafka and no
PostgreSQL.

``FakeDatabase`` holds what the batch transaction reads and writes; its unit of work keeps
its writes apart and applies them only on ``commit()``, as a transaction would. The relay's
fakes share one ``TopicLog``: what the "topics" hold, written by ``FakePublisher`` (as the
real one does, with an ``outbox-id`` header) and read back by ``FakeOutboxTopics``.

Every fake can be told to fail: ``fail_next(error, on=method, times=n, when=predicate)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.customer import SubscriptionList
from schemas.headers import OUTBOX_ID
from service.application.errors import ClaimConflictError, RecordRefusedError
from service.application.ports import Partition
from service.domain.batch import ProcessedCommand
from service.domain.customer import CustomerState
from service.domain.events import OutboundMessage, StateRecord
from service.domain.inbound import InboundRecord
from service.domain.outbox import OutboxRow, row_fingerprint

Context = TypeVar("Context")

#: The time the fakes' rows and records carry, in ms since the epoch.
NOW_MS = 1_767_225_600_000


async def eventually(
    condition: Callable[[], bool], *, what: str = "the condition", within: float = 2.0
) -> None:
    """Wait until ``condition()`` holds, giving the other tasks the loop meanwhile."""
    try:
        async with asyncio.timeout(within):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {within}s") from None


# -- failures -----------------------------------------------------------------------------


@dataclass
class Failure(Generic[Context]):
    """An error a fake raises from method ``on`` (any method with None), ``times`` times
    (None: every time), only when ``when(context)`` holds if given."""

    error: Exception
    on: str | None
    times: int | None
    when: Callable[[Context], bool] | None
    #: How many times it was raised.
    raised: int = 0

    def applies(self, method: str, context: Context) -> bool:
        if self.times is not None and self.raised >= self.times:
            return False
        if self.on is not None and self.on != method:
            return False
        return self.when is None or self.when(context)


class Failures(Generic[Context]):
    def __init__(self) -> None:
        self._scripted: list[Failure[Context]] = []

    def add(
        self,
        error: Exception,
        *,
        on: str | None,
        times: int | None,
        when: Callable[[Context], bool] | None,
    ) -> Failure[Context]:
        failure = Failure(error, on, times, when)
        self._scripted.append(failure)
        return failure

    def check(self, method: str, context: Context) -> None:
        for failure in self._scripted:
            if failure.applies(method, context):
                failure.raised += 1
                raise failure.error


# -- the batch transaction ----------------------------------------------------------------


@dataclass
class FakeDatabase:
    """What the batch transaction sees: customers, idempotency rows, the outbox, the
    consumers' positions (by consumer group, topic and partition), the kept originals of
    partial dead letters, and subscriptions."""

    customers: dict[str, CustomerState] = field(default_factory=dict)
    processed: dict[str, ProcessedCommand] = field(default_factory=dict)
    outbox: list[OutboundMessage] = field(default_factory=list)
    positions: dict[tuple[str, str, int], int] = field(default_factory=dict)
    dead_letter_originals: list[tuple[str, InboundRecord]] = field(default_factory=list)
    subscriptions: dict[str, SubscriptionList] = field(default_factory=dict)
    #: Every unit of work begun, in order.
    units: list[FakeUnitOfWork] = field(default_factory=list)
    failures: Failures[FakeUnitOfWork] = field(default_factory=Failures)
    #: Actions to run once, on entering a unit of work's method: what another worker
    #: commits in the meantime.
    meanwhile: dict[str, list[Callable[[], None]]] = field(default_factory=dict)

    def add_customers(self, *customers: CustomerState) -> None:
        for customer in customers:
            self.customers[customer.id] = customer

    @property
    def prefix_owners(self) -> dict[str, str]:
        return {c.invoice_prefix: c.id for c in self.customers.values() if c.invoice_prefix}

    @property
    def commits(self) -> int:
        return sum(unit.committed for unit in self.units)

    def snapshot(self) -> tuple[object, ...]:
        """Everything a unit of work may change, for comparing before and after."""
        return (
            dict(self.customers),
            dict(self.processed),
            list(self.outbox),
            dict(self.positions),
            list(self.dead_letter_originals),
        )

    def fail_next(
        self,
        error: Exception,
        *,
        on: str | None = None,
        times: int | None = 1,
        when: Callable[[FakeUnitOfWork], bool] | None = None,
    ) -> Failure[FakeUnitOfWork]:
        """Raise ``error`` from the unit of work's method ``on`` (a write fails after its
        rows are staged: the whole transaction is lost anyway). ``when`` sees the unit of
        work: what it read (``command_ids``, ``customer_ids``, ``offsets``) and staged."""
        return self.failures.add(error, on=on, times=times, when=when)

    def interleave(self, on: str, action: Callable[[], None]) -> None:
        """Run ``action`` once, when a unit of work next enters its method ``on`` (after
        what it read before, before what it writes there)."""
        self.meanwhile.setdefault(on, []).append(action)

    def commit_elsewhere(
        self, *customers: CustomerState, processed: Sequence[ProcessedCommand] = ()
    ) -> None:
        """What another worker's committed transaction leaves."""
        self.add_customers(*customers)
        for row in processed:
            self.processed[row.command_id] = row

    def begin(self) -> AbstractAsyncContextManager[FakeUnitOfWork]:
        return self._transaction()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        unit = FakeUnitOfWork(self)
        self.units.append(unit)
        try:
            yield unit
        finally:
            unit.closed = True


class FakeUnitOfWork:
    """``ports.BatchUnitOfWork`` over a ``FakeDatabase``: reads see the database and this
    unit's own writes, writes are kept here until ``commit()``."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self.committed = False
        self.closed = False
        #: What the unit was asked about, for failures that depend on the batch.
        self.command_ids: set[str] = set()
        self.customer_ids: set[str] = set()
        self.offsets: dict[Partition, int] = {}
        #: Staged writes.
        self.customers: dict[str, CustomerState] = {}
        self.processed: dict[str, ProcessedCommand] = {}
        self.outbox: list[OutboundMessage] = []
        self.positions: dict[tuple[str, str, int], int] = {}
        self.dead_letter_originals: list[tuple[str, InboundRecord]] = []

    def _enter(self, method: str) -> None:
        if self.closed or self.committed:
            raise AssertionError(f"{method} on a unit of work that is over")
        for action in self._db.meanwhile.pop(method, []):
            action()

    def _call(self, method: str) -> None:
        self._db.failures.check(method, self)

    def _customer(self, customer_id: str) -> CustomerState | None:
        return self.customers.get(customer_id) or self._db.customers.get(customer_id)

    def _all_customers(self) -> dict[str, CustomerState]:
        return {**self._db.customers, **self.customers}

    async def claim_positions(
        self, consumer_group: str, first_offsets: dict[Partition, int]
    ) -> dict[Partition, int]:
        self._enter("claim_positions")
        self.offsets.update(first_offsets)
        claimed: dict[Partition, int] = {}
        for (topic, partition), first in first_offsets.items():
            key = (consumer_group, topic, partition)
            stored = self.positions.get(key, self._db.positions.get(key))
            if stored is None:
                stored = self.positions[key] = first
            claimed[(topic, partition)] = stored
        self._call("claim_positions")
        return claimed

    async def save_positions(self, consumer_group: str, next_offsets: dict[Partition, int]) -> None:
        self._enter("save_positions")
        for (topic, partition), offset in next_offsets.items():
            if (topic, partition) not in self.offsets:
                raise AssertionError(f"position of {topic}/{partition} saved without a claim")
            self.positions[(consumer_group, topic, partition)] = offset
        self._call("save_positions")

    async def known_commands(self, command_ids: Sequence[str]) -> dict[str, bytes]:
        self._enter("known_commands")
        self.command_ids.update(command_ids)
        processed = {**self._db.processed, **self.processed}
        known = {i: processed[i].fingerprint for i in command_ids if i in processed}
        self._call("known_commands")
        return known

    async def lock_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
        self._enter("lock_customers")
        wanted = set(customer_ids)
        self.customer_ids.update(wanted)
        found = {i: c for i in wanted if (c := self._customer(i)) is not None}
        self._call("lock_customers")
        return found

    async def prefix_owners(self, prefixes: Iterable[str]) -> dict[str, str]:
        self._enter("prefix_owners")
        wanted = set(prefixes)
        owners = {
            c.invoice_prefix: c.id
            for c in self._all_customers().values()
            if c.invoice_prefix in wanted and c.invoice_prefix is not None
        }
        self._call("prefix_owners")
        return owners

    async def subscriptions(self, customer_ids: Iterable[str]) -> dict[str, SubscriptionList]:
        self._enter("subscriptions")
        # As the real one: every customer asked about has a list, if only an empty one.
        found = {
            i: self._db.subscriptions.get(
                i, SubscriptionList(data=[], has_more=False, url=f"/v1/customers/{i}/subscriptions")
            )
            for i in set(customer_ids)
        }
        self._call("subscriptions")
        return found

    async def save_customers(self, customers: Sequence[CustomerState]) -> None:
        self._enter("save_customers")
        for customer in customers:
            if customer.id not in self._db.customers and customer.id not in self.customers:
                raise AssertionError(f"saved customer {customer.id} that does not exist")
            self.customers[customer.id] = customer
        # The unique index on invoice_prefix: a violation is what the adapter reports so.
        owners: dict[str, str] = {}
        for customer in self._all_customers().values():
            prefix = customer.invoice_prefix
            if prefix is not None and owners.setdefault(prefix, customer.id) != customer.id:
                raise ClaimConflictError(f"invoice prefix {prefix} is taken")
        self._call("save_customers")

    async def save_processed(self, processed: Sequence[ProcessedCommand]) -> None:
        self._enter("save_processed")
        for row in processed:
            # The primary key, against what is committed now (another worker's included).
            if row.command_id in self._db.processed or row.command_id in self.processed:
                raise ClaimConflictError(f"command {row.command_id} is processed already")
            self.processed[row.command_id] = row
        self._call("save_processed")

    async def save_outbox(self, messages: Sequence[OutboundMessage]) -> None:
        self._enter("save_outbox")
        self.outbox.extend(messages)
        self._call("save_outbox")

    async def save_dead_letter_originals(
        self, consumer_group: str, records: Sequence[InboundRecord]
    ) -> None:
        self._enter("save_dead_letter_originals")
        self.dead_letter_originals.extend((consumer_group, record) for record in records)
        self._call("save_dead_letter_originals")

    async def commit(self) -> None:
        self._enter("commit")
        self._call("commit")
        db = self._db
        db.customers.update(self.customers)
        db.processed.update(self.processed)
        db.outbox.extend(self.outbox)
        db.positions.update(self.positions)
        db.dead_letter_originals.extend(self.dead_letter_originals)
        self.committed = True


# -- the relay ----------------------------------------------------------------------------


@dataclass
class StoredRow:
    row: OutboxRow
    created_ms: int
    parked_reason: str | None = None


class FakeOutboxStore:
    """``ports.OutboxStore`` over rows held in memory, ids given in insertion order."""

    def __init__(self) -> None:
        self._rows: dict[int, StoredRow] = {}
        self._next_id = 1
        self.failures: Failures[None] = Failures()

    def add(
        self,
        *,
        key: bytes | None = b"cus_1",
        value: bytes | None = b'{"n": 0}',
        topic: str = "customer.updated",
        headers: Sequence[tuple[str, bytes | None]] = (),
        created_ms: int = NOW_MS,
        state: StateRecord | None = None,
    ) -> OutboxRow:
        row = OutboxRow(self._next_id, topic, key, value, list(headers), state)
        self._next_id += 1
        self._rows[row.id] = StoredRow(row, created_ms)
        return row

    @property
    def ids(self) -> list[int]:
        return sorted(self._rows)

    @property
    def parked_reasons(self) -> dict[int, str]:
        return {i: s.parked_reason for i, s in self._rows.items() if s.parked_reason is not None}

    def unpark(self, row_id: int) -> None:
        """What ``outbox retry`` does."""
        self._rows[row_id].parked_reason = None

    def fail_next(
        self, error: Exception, *, on: str | None = None, times: int | None = 1
    ) -> Failure[None]:
        return self.failures.add(error, on=on, times=times, when=None)

    def _waiting(self, stored: StoredRow) -> bool:
        """Parked, or behind a parked row of the same key with a topic in common (a null
        key is equal to no other, as in SQL)."""
        if stored.parked_reason is not None:
            return True
        row = stored.row
        return row.key is not None and any(
            other.parked_reason is not None
            and other.row.id < row.id
            and set(other.row.topics) & set(row.topics)
            and other.row.key == row.key
            for other in self._rows.values()
        )

    async def publishable(self, limit: int, *, parked: bool = True) -> list[OutboxRow]:
        self.failures.check("publishable", None)
        rows = [self._rows[i] for i in self.ids]
        if parked:
            rows = [stored for stored in rows if not self._waiting(stored)]
        # parked=False is the caller's word that nothing is parked: not checked, as in SQL.
        return [stored.row for stored in rows[:limit]]

    async def rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        self.failures.check("rows", None)
        return [self._rows[i].row for i in ids if i in self._rows]

    async def forget(self, ids: Sequence[int]) -> int:
        self.failures.check("forget", None)
        present = [i for i in set(ids) if i in self._rows]
        for i in present:
            del self._rows[i]
        return len(present)

    async def park(self, row_id: int, reason: str) -> None:
        self.failures.check("park", None)
        if row_id in self._rows:
            self._rows[row_id].parked_reason = reason

    async def any_parked(self) -> bool:
        self.failures.check("any_parked", None)
        return any(stored.parked_reason is not None for stored in self._rows.values())

    async def oldest_created_ms(self) -> int | None:
        self.failures.check("oldest_created_ms", None)
        created = [s.created_ms for s in self._rows.values() if s.parked_reason is None]
        return min(created, default=None)


class FakeLeadership:
    """``ports.Leadership``: leads at once, unless ``held_by_another`` until ``release()``."""

    def __init__(self, store: FakeOutboxStore, *, held_by_another: bool = False) -> None:
        self.store = store
        self._free = asyncio.Event()
        if not held_by_another:
            self._free.set()
        self._on_work: Callable[[], None] | None = None
        #: Leads taken (each retry of the relay takes the lead again).
        self.leads = 0

    def release(self) -> None:
        """The other relay lets go of the lead."""
        self._free.set()

    def notify(self) -> None:
        """New rows were written (PostgreSQL's NOTIFY)."""
        if self._on_work is not None:
            self._on_work()

    def lead(
        self,
        stopping: asyncio.Event,
        *,
        on_standby: Callable[[], None],
        on_work: Callable[[], None],
    ) -> AbstractAsyncContextManager[FakeOutboxStore | None]:
        return self._lead(stopping, on_standby, on_work)

    @contextlib.asynccontextmanager
    async def _lead(
        self, stopping: asyncio.Event, on_standby: Callable[[], None], on_work: Callable[[], None]
    ) -> AsyncIterator[FakeOutboxStore | None]:
        while not self._free.is_set():
            on_standby()
            if stopping.is_set():
                yield None
                return
            waiters = [
                asyncio.ensure_future(self._free.wait()),
                asyncio.ensure_future(stopping.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        self.leads += 1
        self._on_work = on_work
        try:
            yield self.store
        finally:
            self._on_work = None


@dataclass(frozen=True)
class LoggedRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int = NOW_MS

    @property
    def outbox_id(self) -> int | None:
        ids = [value for name, value in self.headers if name == OUTBOX_ID]
        if len(ids) != 1 or ids[0] is None or not ids[0].isdigit():
            return None
        return int(ids[0])


@dataclass
class TopicLog:
    """What the topics hold, committed records only, in the order they were written."""

    records: list[LoggedRecord] = field(default_factory=list)

    def append_row(self, row: OutboxRow) -> None:
        """``row`` as the publisher writes it: its headers and its ``outbox-id``."""
        outbox_id = (OUTBOX_ID, str(row.id).encode())
        self.records.append(LoggedRecord(row.topic, row.key, row.value, (*row.headers, outbox_id)))
        if row.state is not None:
            state = row.state
            headers = (*state.headers, outbox_id)
            self.records.append(LoggedRecord(state.topic, row.key, state.value, headers))

    def outbox_ids(self) -> list[int | None]:
        return [record.outbox_id for record in self.records]


class FakeOutboxTopics:
    """``ports.OutboxTopics`` over a ``TopicLog``; ``limits`` may be changed at any time."""

    def __init__(self, log: TopicLog, limits: Mapping[str, int] | None = None) -> None:
        self._log = log
        self.limits_given: dict[str, int] = dict(limits or {})
        self.limits_read = 0
        #: The topics ``missing`` names; an operator may create them at any time.
        self.missing_topics: list[str] = []

    async def missing(self) -> list[str]:
        return list(self.missing_topics)

    async def limits(self) -> dict[str, int]:
        self.limits_read += 1
        return dict(self.limits_given)

    async def published_since(self, since_ms: int) -> dict[int, set[bytes]]:
        published: dict[int, set[bytes]] = {}
        for record in self._log.records:
            row_id = record.outbox_id
            if row_id is None or record.timestamp_ms < since_ms:
                continue
            others = [(name, value) for name, value in record.headers if name != OUTBOX_ID]
            row = OutboxRow(row_id, record.topic, record.key, record.value, others)
            published.setdefault(row_id, set()).add(row_fingerprint(row))
        return published


@dataclass
class PublishFailure:
    error: Exception
    times: int
    #: The transaction committed before the error: its rows are in the log.
    after_commit: bool
    raised: int = 0


class FakePublisher:
    """``ports.OutboxPublisher`` writing into its maker's ``TopicLog``."""

    def __init__(self, maker: Publishers) -> None:
        self._maker = maker
        self.started = False
        self.stopped = False
        self.spoiled = False
        #: The row ids of each batch it was asked to publish.
        self.batches: list[list[int]] = []

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def publish(self, rows: Sequence[OutboxRow], limits: Mapping[str, int]) -> None:
        if not self.started or self.stopped:
            raise AssertionError("publish on a publisher that is not running")
        if self.spoiled:
            raise AssertionError("publish on a publisher spoiled by a refused record")
        ids = [row.id for row in rows]
        if ids != sorted(ids):
            raise AssertionError(f"rows not in id order: {ids}")
        self.batches.append(ids)
        maker = self._maker
        refused = [row.id for row in rows if row.id in maker.refused]
        if refused:
            self.spoiled = True
            raise RecordRefusedError(maker.refused[refused[0]])
        failure = next((f for f in maker.failures if f.raised < f.times), None)
        if failure is not None:
            failure.raised += 1
            if failure.after_commit:
                maker.commit(rows)
            raise failure.error
        maker.commit(rows)


class Publishers:
    """The relay's publisher factory: every ``FakePublisher`` it makes shares one log and
    one script of refusals and failures."""

    def __init__(self, log: TopicLog) -> None:
        self.log = log
        self.made: list[FakePublisher] = []
        #: Row id -> the reason Kafka refuses it, whenever it is in a batch.
        self.refused: dict[int, str] = {}
        self.failures: list[PublishFailure] = []

    def __call__(self) -> FakePublisher:
        publisher = FakePublisher(self)
        self.made.append(publisher)
        return publisher

    def refuse(self, row_id: int, reason: str = "CorruptRecordException: refused") -> None:
        self.refused[row_id] = reason

    def fail_next(
        self, error: Exception, *, times: int = 1, after_commit: bool = False
    ) -> PublishFailure:
        failure = PublishFailure(error, times, after_commit)
        self.failures.append(failure)
        return failure

    def commit(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            self.log.append_row(row)
