"""What the use cases need from the world, as Protocols; the adapters implement them.

Grouped by use case: the batch transaction, the outbox relay, the outbox's health, and
what every use case is given (a clock, new ids, tracing). Nothing here names a driver,
so a use case is tested with fakes of these and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from schemas.customer import SubscriptionList
from service.domain.batch import ProcessedCommand
from service.domain.customer import CustomerState
from service.domain.events import OutboundMessage
from service.domain.inbound import InboundRecord
from service.domain.outbox import OutboxRow

#: A (topic, partition) pair.
Partition = tuple[str, int]
#: The time now.
Clock = Callable[[], datetime]
#: A new unique id (an event id).
NewId = Callable[[], str]


class Tracing(Protocol):
    def command_span(
        self, traceparent: str | None, *, name: str, attributes: dict[str, str], start_ns: int
    ) -> str | None:
        """Record a span for one command; return the trace context its event carries."""
        ...


# -- the batch transaction ------------------------------------------------------------


class BatchUnitOfWork(Protocol):
    """One transaction for a batch: nothing of it is kept unless ``commit()`` is called.

    Raises ``TransientError`` when the work may succeed if tried again, ``ClaimConflictError`` when
    another worker claimed a unique value first, anything else when it is permanent."""

    async def claim_positions(
        self, consumer_group: str, first_offsets: dict[Partition, int]
    ) -> dict[Partition, int]:
        """Lock each partition's stored position (created at ``first_offsets`` if new)."""
        ...

    async def save_positions(
        self, consumer_group: str, next_offsets: dict[Partition, int]
    ) -> None: ...

    async def known_commands(self, command_ids: Sequence[str]) -> dict[str, bytes]:
        """The fingerprint of each command id processed before."""
        ...

    async def lock_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]: ...

    async def prefix_owners(self, prefixes: Iterable[str]) -> dict[str, str]: ...

    async def subscriptions(self, customer_ids: Iterable[str]) -> dict[str, SubscriptionList]: ...

    async def save_customers(self, customers: Sequence[CustomerState]) -> None: ...

    async def save_processed(self, processed: Sequence[ProcessedCommand]) -> None: ...

    async def save_outbox(self, messages: Sequence[OutboundMessage]) -> None: ...

    async def save_dead_letter_originals(
        self, consumer_group: str, records: Sequence[InboundRecord]
    ) -> None: ...

    async def commit(self) -> None: ...


#: Starts a batch's unit of work; leaving the block without ``commit()`` rolls it back.
BeginBatch = Callable[[], AbstractAsyncContextManager[BatchUnitOfWork]]


# -- the backfill ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackfillRun:
    """How far a ``backfill --all`` run got: the last customer id published (in the
    database's id order; None before the first), how many so far, whether it finished."""

    after_id: str | None = None
    published: int = 0
    finished: bool = False
    #: Its last batch committed within the last minute: a runner may still be at work.
    recent: bool = False


class BackfillUnitOfWork(Protocol):
    """One transaction of a backfill: customers locked (shared, so that no update of
    theirs commits in between), their states written to the outbox, the run's progress."""

    async def share_customers(self, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
        """The customers, locked ``FOR SHARE``."""
        ...

    async def share_customers_after(self, after_id: str | None, limit: int) -> list[CustomerState]:
        """The next ``limit`` customers after ``after_id`` in id order, locked ``FOR SHARE``."""
        ...

    async def count_after(self, after_id: str | None) -> int: ...

    async def run(self, name: str) -> BackfillRun | None:
        """The run's progress, locked until the commit (one runner at a time)."""
        ...

    async def save_run(self, name: str, run: BackfillRun) -> None: ...

    async def save_outbox(self, messages: Sequence[OutboundMessage]) -> None: ...

    async def commit(self) -> None: ...


# -- the outbox relay -------------------------------------------------------------------


class OutboxStore(Protocol):
    """The outbox as the leading relay works on it."""

    async def publishable(self, limit: int, *, parked: bool = True) -> list[OutboxRow]:
        """The oldest rows that may go out now, in id order. ``parked=False`` says no row
        is parked, which spares the check for rows waiting behind one."""
        ...

    async def rows(self, ids: Sequence[int]) -> list[OutboxRow]: ...

    async def forget(self, ids: Sequence[int]) -> int:
        """Delete published rows; return how many there were."""
        ...

    async def park(self, row_id: int, reason: str) -> None: ...

    async def any_parked(self) -> bool: ...

    async def oldest_created_ms(self) -> int | None:
        """When the oldest row not parked was written, in ms since the epoch."""
        ...


class Leadership(Protocol):
    def lead(
        self,
        stopping: asyncio.Event,
        *,
        on_standby: Callable[[], None],
        on_work: Callable[[], None],
    ) -> AbstractAsyncContextManager[OutboxStore | None]:
        """Wait to be the one relay that publishes (``on_standby`` while another is), then
        hold the lead for the block; ``on_work`` is called whenever new rows are written.
        Yields None when ``stopping`` is set before the lead is won."""
        ...


class OutboxPublisher(Protocol):
    """One transactional producer: started, used for any number of batches, stopped."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, rows: Sequence[OutboxRow], limits: Mapping[str, int]) -> None:
        """Publish ``rows`` in one transaction, each partition's in id order. Raises
        ``RecordRefusedError`` when Kafka refuses a record for good (the publisher is then
        spoiled), ``TransientError`` when the outcome may be retried or is unknown."""
        ...


class OutboxTopics(Protocol):
    """What the relay reads of the topics it publishes to."""

    async def limits(self) -> dict[str, int]:
        """Each topic's ``max.message.bytes``."""
        ...

    async def missing(self) -> list[str]:
        """The topics that do not exist."""
        ...

    async def published_since(self, since_ms: int) -> dict[int, set[bytes]]:
        """The ``row_fingerprint``s of records published with an ``outbox-id`` since
        ``since_ms``, by that id."""
        ...


# -- the outbox's health ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParkedRow:
    id: int
    topic: str
    key: bytes | None
    size: int
    parked_at: datetime
    reason: str
    #: Rows of the same topic and key that wait behind it.
    waiting: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    #: Rows the relay still has to publish (waiting behind a parked row included).
    waiting: int
    parked: int
    #: Age of the oldest row that is not parked; 0 when there is none.
    oldest_seconds: float


#: The outbox's figures and up to that many parked rows.
ReadOutbox = Callable[[int], Awaitable[tuple[OutboxStats, list[ParkedRow]]]]


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pass over the idempotency rows did."""

    #: Period tables made, each with the rows moved into it from the default partition.
    created: tuple[tuple[str, int], ...] = ()
    #: Period tables dropped whole, past the retention.
    dropped: tuple[str, ...] = ()
    #: Rows past the retention deleted one by one (those with no period table).
    deleted: int = 0
    #: Another worker's pass was running, so this one did nothing.
    skipped: bool = False


#: Forget idempotency rows older than that many days and make the coming days' tables.
PruneProcessed = Callable[[int], Awaitable[Pruned]]
