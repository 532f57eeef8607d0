"""Publishing customers' current state to the state topic, through the outbox.

A customer created outside the service (the seed, a migration, an import) has no record
on ``customer.state`` until it is first updated; a backfill publishes one, and never a
``customer.updated`` event (nothing changed).

Order. Each batch locks its customers (``FOR SHARE``) in the same transaction that writes
their states to the outbox, so an update of one of them commits either before (the state
read is the update's) or after (its outbox row comes later): the relay publishes a
customer's rows in order, so the state topic never goes back in version.

Resuming. ``--all`` keeps its place (the last id published) in the database, committed
with each batch: a run stopped half way (a crash, a deployment) goes on from there when
started again; two runs at once take turns batch by batch instead of repeating each
other. A run that finished starts over.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog
from tenacity import RetryCallState

from schemas.topics import Topics
from service.application.errors import TransientError
from service.application.ports import BackfillRun, BackfillUnitOfWork
from service.domain.binary_mode import ContentMode
from service.domain.customer import CustomerState
from service.domain.events import EventContext, OutboundMessage, state_message
from service.infrastructure.retrying import retrying

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: The one resumable run: ``backfill --all``.
ALL = "all"


class BackfillBusyError(Exception):
    """``--restart`` while another runner seems to be at work: both would start over."""


Transactions = Callable[[], AbstractAsyncContextManager[BackfillUnitOfWork]]


@dataclass(frozen=True)
class BackfillConfig:
    source: str
    topics: Topics
    content_mode: ContentMode = "structured"
    #: Customers per transaction: each holds their row locks until it commits.
    batch_size: int = 200
    #: A batch that fails transiently (the database restarting) is tried again for this
    #: long, with backoff, before the error ends the run (which then resumes when rerun).
    retry_for: float = 300.0
    retry_initial_delay: float = 0.1
    retry_max_delay: float = 5.0


@dataclass(frozen=True, slots=True)
class Started:
    """What ``backfill_all`` found before its first batch."""

    resumed: BackfillRun | None
    remaining: int


class Backfill:
    def __init__(
        self,
        transactions: Transactions,
        config: BackfillConfig,
        *,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        pace: Callable[[int], Awaitable[None]],
    ) -> None:
        """``pace(n)`` returns when ``n`` more states may be published (the rate limit)."""
        self._transactions = transactions
        self._config = config
        self._clock = clock
        self._new_id = new_id
        self._pace = pace

    async def start_all(self, *, restart: bool = False) -> Started:
        """Where ``all`` begins: after the last run's place, unless it finished or
        ``restart`` says to start over; and how many customers are left."""
        async with self._transactions() as unit:
            run = await unit.run(ALL)
            if restart and run is not None and not run.finished and run.recent:
                raise BackfillBusyError(
                    f"a backfill --all committed a batch within the last minute (after "
                    f"{run.after_id}, {run.published} published): stop it before --restart"
                )
            if run is None or run.finished or restart:
                run = BackfillRun()
                await unit.save_run(ALL, run)
                resumed = None
            else:
                resumed = run
            remaining = await unit.count_after(run.after_id)
            await unit.commit()
        return Started(resumed, remaining)

    async def all(
        self, progress: Callable[[int], None] = lambda _: None
    ) -> tuple[BackfillRun, int]:
        """Publish every customer after the run's place, one batch per transaction;
        ``progress(n)`` after each batch. Call ``start_all`` first. Returns the finished
        run and how many states this call published (another runner may share the run)."""
        mine = 0
        while True:
            await self._pace(self._config.batch_size)
            run, published = await self._retried(self._next_batch)
            mine += published
            if run.finished:
                return run, mine
            progress(published)

    async def _next_batch(self) -> tuple[BackfillRun, int]:
        async with self._transactions() as unit:
            run = await unit.run(ALL) or BackfillRun()
            if run.finished:
                return run, 0  # another runner got to the end first
            customers = await unit.share_customers_after(run.after_id, self._config.batch_size)
            if customers:
                await unit.save_outbox(self._messages(customers))
                run = BackfillRun(customers[-1].id, run.published + len(customers))
            else:
                run = BackfillRun(run.after_id, run.published, finished=True)
            await unit.save_run(ALL, run)
            await unit.commit()
        return run, len(customers)

    async def customers(self, ids: Iterable[str]) -> tuple[int, list[str]]:
        """Publish the named customers; return how many, and the ids that do not exist."""
        wanted = list(dict.fromkeys(ids))
        published = 0
        missing: list[str] = []
        size = self._config.batch_size
        for first in range(0, len(wanted), size):
            chunk = wanted[first : first + size]
            await self._pace(len(chunk))
            found = await self._retried(functools.partial(self._named_batch, chunk))
            published += len(found)
            missing.extend(i for i in chunk if i not in found)
        return published, missing

    async def _named_batch(self, chunk: list[str]) -> set[str]:
        async with self._transactions() as unit:
            found = await unit.share_customers(chunk)
            await unit.save_outbox(self._messages([found[i] for i in chunk if i in found]))
            await unit.commit()
        return set(found)

    async def _retried(self, batch: Callable[[], Awaitable[T]]) -> T:
        """``batch()``, tried again on a transient error for ``retry_for`` seconds: each
        batch is its own transaction, so a failed one left nothing behind."""
        config = self._config
        started = time.monotonic()
        attempts = retrying(
            on=(TransientError,),
            initial_delay=config.retry_initial_delay,
            max_delay=config.retry_max_delay,
            stopping=asyncio.Event(),  # the verb stops by its process ending
            before_sleep=_retrying,
            give_up=lambda: time.monotonic() - started > config.retry_for,
        )
        async for attempt in attempts:
            with attempt:
                return await batch()
        raise AssertionError("tenacity neither returned nor raised")  # pragma: no cover

    def _messages(self, customers: Sequence[CustomerState]) -> list[OutboundMessage]:
        config = self._config
        context = EventContext(
            source=config.source,
            time=self._clock(),
            topics=config.topics,
            content_mode=config.content_mode,
        )
        return [
            state_message(customer, event_id=self._new_id(), context=context)
            for customer in customers
        ]


def _retrying(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("backfill_retrying", attempt=state.attempt_number, error=repr(error))
