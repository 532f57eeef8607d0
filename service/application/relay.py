"""The outbox relay: publishes outbox rows to Kafka in id order, then deletes them.

Order. One relay publishes at a time: the leader holds the lead (``Leadership``: a
PostgreSQL advisory lock on a connection of its own); the others wait for it. The leader
reads the oldest rows, publishes them in one Kafka transaction and deletes them after
the commit. Rows of one customer are inserted in version order (each update holds the
customer's row lock until its commit), so publishing in id order publishes each
customer's events in version order.

Atomicity. A batch becomes visible to ``read_committed`` consumers all at once or not
at all; when publishing fails the transaction is aborted and the rows, still in the
outbox, are published again in the same order. The shared ``transactional_id`` also
fences off a former leader that lost its lock but still runs.

Crash recovery. If the relay dies after the Kafka commit but before deleting the rows,
the next leader reads the tail of the topics back (``outbox-id`` header) and deletes the
rows already published before publishing the rest, so no event is published twice. A
row is deleted only when the record read back is that row (same topic, key, value and
headers): anyone who may write to a topic can write an ``outbox-id`` header, and a row
deleted on a forged one would be an event lost.

Unknown outcomes. A transaction commit or abort that does not answer within
``transaction_timeout`` may or may not have happened. The producer is then closed and a
new one started with the same ``transactional.id`` (which completes or aborts what the
old one left), and recovery decides from what the topics hold; aiokafka has no KIP-890,
so reusing the old producer's transaction state is not safe.

Refused rows. A row that Kafka refuses for good (larger than its topic's
``max.message.bytes``, or refused by the broker with an error that names the record
rather than the connection) is *parked* with the reason instead of being retried
forever, and the relay goes on. Later rows of the same topic and key wait behind it, so
a customer's events never go out of order; other customers flow. ``customer-service
outbox retry`` unparks a row, ``outbox discard`` drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from tenacity import RetryCallState

from service.application.errors import RecordRefusedError, TransientError
from service.application.ports import Leadership, OutboxPublisher, OutboxStore, OutboxTopics
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES, record_size
from service.domain.outbox import OutboxRow, row_fingerprint, shown_key
from service.infrastructure import failpoints
from service.infrastructure.metrics import Metrics, RelayState
from service.infrastructure.retrying import retrying

log = structlog.get_logger(__name__)

#: Room for the ``outbox-id`` header the publisher adds to every row.
_OUTBOX_HEADER_BYTES = 40
# How far before the oldest pending row the recovery scan starts, for clock skew between
# the database and the relay.
_RECOVERY_MARGIN_MS = 60_000


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int = 2000
    idle_interval: float = 1.0
    retry_initial_delay: float = 0.1
    retry_max_delay: float = 30.0
    #: Seconds a shutdown keeps retrying to publish what is left before giving up.
    drain_timeout: float = 30.0
    #: Seconds a publisher may take to stop before it is left behind.
    stop_timeout: float = 30.0
    #: Off, rows written while it was on go out without their state records, and rows of
    #: the state topic itself (a backfill's) are dropped: the topic is no longer kept (it
    #: may not even exist), and a backfill repairs it once it is on again.
    publish_state: bool = True
    state_topic: str = "customer.state"


class _PublisherSpoiledError(Exception):
    """The publisher must be replaced before anything else is sent."""


class OutboxRelay:
    def __init__(
        self,
        config: RelayConfig,
        *,
        leadership: Leadership,
        publishers: Callable[[], OutboxPublisher],
        topics: OutboxTopics,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._leadership = leadership
        self._publishers = publishers
        self._topics = topics
        self._metrics = metrics
        self._limits: dict[str, int] = {}
        #: Rows of a batch that Kafka refused, to be published one at a time.
        self._suspects: set[int] = set()
        #: Whether any row may be parked. Only a leading relay parks rows, so it is read
        #: when taking the lead, set when parking, and read again whenever the outbox
        #: runs dry (an operator may have retried or discarded them).
        self._parked = True
        self._wakeup = asyncio.Event()
        self.state = "starting"

    @property
    def state(self) -> RelayState:
        """ "starting", then "standby" while another instance leads, or "leading"."""
        return self._state

    @state.setter
    def state(self, state: RelayState) -> None:
        self._state = state
        self._metrics.relay_in(state)

    def wake(self) -> None:
        """Tell the relay there is new work (called after a batch commits)."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until ``stopping`` is set, then drain what is left and return.

        A drain that keeps failing (Kafka or PostgreSQL down during shutdown) is abandoned
        after ``drain_timeout`` seconds: the rows stay in the outbox for the next leader.
        """
        stopped_at: list[float] = []

        def give_up() -> bool:
            if not stopping.is_set():
                return False
            if not stopped_at:
                stopped_at.append(time.monotonic())
            return time.monotonic() - stopped_at[0] > self._config.drain_timeout

        attempts = retrying(
            on=(TransientError,),
            initial_delay=self._config.retry_initial_delay,
            max_delay=self._config.retry_max_delay,
            stopping=stopping,
            before_sleep=self._retrying,
            give_up=give_up,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    await self._lead(stopping)
        except TransientError as exc:
            if not stopping.is_set():
                raise
            log.warning("relay_drain_abandoned", error=repr(exc))

    def _retrying(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("relay_retrying", attempt=state.attempt_number, error=repr(error))
        self._metrics.retries.labels("relay").inc()

    def _standby(self) -> None:
        self.state = "standby"

    async def _lead(self, stopping: asyncio.Event) -> None:
        leading = self._leadership.lead(stopping, on_standby=self._standby, on_work=self.wake)
        async with leading as store:
            if store is None:
                return
            self.state = "leading"
            log.info("relay_leading")
            try:
                missing = await self._topics.missing()
                if missing:
                    # Nothing can go out in order until they exist: a missing topic would
                    # hold every row behind its first one anyway. Retried with backoff.
                    log.error("relay_topics_missing", topics=missing)
                    raise TransientError(
                        f"topic(s) {', '.join(missing)} do not exist: run "
                        "`customer-service create-topics` (or, for the state topic, set "
                        "PUBLISH_STATE=false)"
                    )
                self._limits = await self._topics.limits()
                self._parked = await store.any_parked()
                recovered = False
                while True:
                    publisher = self._publishers()
                    try:
                        # Inside the try: a publisher whose start failed still holds a client.
                        await publisher.start()
                        if not recovered:
                            await self._recover(store)
                            recovered = True
                        await self._publish_until_drained(store, publisher, stopping)
                        return
                    except _PublisherSpoiledError:
                        continue  # a fresh publisher, and on with the same leadership
                    finally:
                        with contextlib.suppress(TimeoutError, TransientError):
                            async with asyncio.timeout(self._config.stop_timeout):
                                await publisher.stop()
            finally:
                self.state = "starting"

    async def _publish_until_drained(
        self, store: OutboxStore, publisher: OutboxPublisher, stopping: asyncio.Event
    ) -> None:
        while True:
            # Cleared before reading the outbox, not when going idle: a batch committed
            # while this one is read or published must still wake the wait below.
            self._wakeup.clear()
            published = await self._publish_batch(store, publisher)
            if published:
                continue
            if stopping.is_set():
                return  # drained: nothing publishable is left
            await self._idle(stopping)

    async def _idle(self, stopping: asyncio.Event) -> None:
        waiters = [
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self._config.idle_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _publish_batch(self, store: OutboxStore, publisher: OutboxPublisher) -> int:
        """Publish the next rows; return how many rows were dealt with (published or
        parked), 0 when nothing is publishable.

        Raises:
            _PublisherSpoiledError: Kafka refused a record; the rows it may have been are
                published one at a time from now on, by a fresh publisher.
        """
        size = 1 if self._suspects else self._config.batch_size
        rows = await store.publishable(size, parked=self._parked)
        if rows and self._suspects and rows[0].id > max(self._suspects):
            self._suspects.clear()
            rows = await store.publishable(self._config.batch_size, parked=self._parked)
        if rows and not self._config.publish_state:
            rows, dropped = await self._without_state(store, rows)
            if dropped and not rows:
                return dropped
        if not rows:
            self._suspects.clear()
            if self._parked:
                self._parked = await store.any_parked()
            return 0
        too_large = [row for row in rows if self._oversize(row)]
        if too_large:
            # Read the limits again first: an operator may have raised one since, and then
            # retried the rows parked under the old one.
            self._limits = await self._topics.limits()
            too_large = [row for row in rows if self._oversize(row)]
        if too_large:
            # Parked before anything is sent, the first of each topic and key only: the next
            # read leaves out the rows behind it, which wait for it whatever their size.
            firsts = {(row.topic, row.key): row for row in reversed(too_large)}
            for row in sorted(firsts.values(), key=lambda row: row.id):
                await self._park(store, row, self._oversize(row) or "")
            return len(firsts)
        try:
            await publisher.publish(rows, self._limits)
        except RecordRefusedError as exc:
            # The idempotent producer's sequence numbers no longer match the broker's after
            # a refused batch, so it cannot go on; the next one finds the culprit alone.
            if len(rows) == 1:
                await self._park(store, rows[0], str(exc))
                self._suspects.discard(rows[0].id)
            else:
                log.warning("relay_batch_refused", rows=len(rows), error=repr(exc))
                self._suspects = {row.id for row in rows}
            raise _PublisherSpoiledError from exc
        failpoints.reached(failpoints.AFTER_RELAY_PUBLISH)
        await self._published(store, rows)
        self._suspects.difference_update(row.id for row in rows)
        return len(rows)

    async def _without_state(
        self, store: OutboxStore, rows: list[OutboxRow]
    ) -> tuple[list[OutboxRow], int]:
        """``rows`` with the state topic off: their state records left out, the rows of
        the state topic forgotten (and counted)."""
        state_rows = [row.id for row in rows if row.topic == self._config.state_topic]
        if state_rows:
            await store.forget(state_rows)
            log.warning(
                "relay_state_rows_dropped", rows=len(state_rows), reason="PUBLISH_STATE off"
            )
        kept = [
            dataclasses.replace(row, state=None)
            for row in rows
            if row.topic != self._config.state_topic
        ]
        return kept, len(state_rows)

    async def _park(self, store: OutboxStore, row: OutboxRow, reason: str) -> None:
        log.error(
            "outbox_row_parked",
            outbox_id=row.id,
            topic=row.topic,
            key=shown_key(row.key),
            reason=reason,
        )
        await store.park(row.id, reason)
        self._parked = True

    async def _published(self, store: OutboxStore, rows: Sequence[OutboxRow]) -> None:
        await store.forget([row.id for row in rows])
        for topic, count in Counter(topic for row in rows for topic in row.topics).items():
            self._metrics.published.labels(topic).inc(count)

    def _limit(self, topic: str) -> int:
        return self._limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES)

    def _oversize(self, row: OutboxRow) -> str | None:
        """Why ``row`` cannot go out (one of its records exceeds its topic's
        ``max.message.bytes``), or None."""
        records = [(row.topic, record_size(row.key, row.value, row.headers))]
        if row.state is not None:
            state = row.state
            records.append((state.topic, record_size(row.key, state.value, state.headers)))
        for topic, size in records:
            size += _OUTBOX_HEADER_BYTES
            if size > self._limit(topic):
                return (
                    f"the record takes about {size} bytes; max.message.bytes of "
                    f"{topic} is {self._limit(topic)}"
                )
        return None

    async def _recover(self, store: OutboxStore) -> None:
        """Delete pending rows that a previous leader published but did not delete."""
        oldest = await store.oldest_created_ms()
        if oldest is None:
            return
        published = await self._topics.published_since(oldest - _RECOVERY_MARGIN_MS)
        if not published:
            return
        pending = await store.rows(sorted(published))
        matching = [row.id for row in pending if row_fingerprint(row) in published[row.id]]
        forged = len(pending) - len(matching)
        if forged:
            log.warning("relay_recovery_ignored_records", records=forged)
        removed = await store.forget(matching) if matching else 0
        if removed:
            log.warning("relay_recovered", already_published=removed)
