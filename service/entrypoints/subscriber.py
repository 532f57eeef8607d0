"""A client for subscribers in other services: keep a complete, current view of every
customer from ``customer.state`` and ``customer.updated``.

The subscriber first reads the compacted state topic from its start to its end (the
bootstrap: the latest state of every customer), then follows ``customer.updated``, which
carries every later version with its ``previous_attributes``. It also keeps reading the
state topic, but only for customers the view does not know yet: that is how a customer
imported and backfilled after the bootstrap reaches a running subscriber.

Example::

    async with Subscriber(settings, group_id="billing-customers", versions=known) as sub:
        async for change in sub:
            async with db.transaction():
                await save(change.customer_id, change.version, change.object)
            await sub.commit()  # after the caller's own commit: at least once, never lost

**The cut.** The end offsets of ``customer.updated`` are taken first, then those of
``customer.state``; state is read up to its ends while the updated partitions are paused,
and updated is then followed from ``REWIND_SECONDS`` before the ends taken first. Both
reads use ``read_committed``, and aiokafka sends them as ListOffsets with that isolation
level, so each end is the partition's last stable offset: everything before it is
decided. The relay writes an event and its state record in one transaction, but a
transaction does not become visible on every partition at the same instant (its markers
are written one partition at a time, and another open transaction holds a partition's
stable offset back), so one committed around the cut may show its event before the
updated end and its state after the state end. The rewind reads such an event again:
it is longer than the broker lets a relay transaction stay open. Versions read twice are
skipped as already had: nothing is missed and nothing is applied twice.

**Restarts.** ``commit()`` stores, with the group's offsets, each state partition's
bootstrap end in the offset metadata for as long as the bootstrap runs. A subscriber that
starts with such a commit resumes the bootstrap up to those same ends (and follows updated
from its committed positions, which are still the cut); one whose commit has no
bootstrap ends follows both topics from its committed positions; one with no commit at
all takes a new cut. A partition without a commit is read from its start (versions make
that safe). Records redelivered after a crash are skipped by the ``versions`` the caller
seeds from its own store.

The view needs every partition, so partitions are assigned by hand; the group is only
where offsets are kept, and two subscribers must not share one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ConfigDict, ValidationError

from schemas.customer import Customer
from schemas.event import SEQUENCE_DIGITS, STATE_TYPE, UPDATED_TYPE
from schemas.topics import Topics
from service.adapters.kafka import records as kafka_records
from service.adapters.kafka.clients import (
    RELAY_TRANSACTION_TIMEOUT_MS,
    connection_options,
    partitions_of,
    start,
)
from service.domain import binary_mode
from service.infrastructure.settings import Settings

log = structlog.get_logger(__name__)

Source: TypeAlias = Literal["state", "updated"]
GapPolicy: TypeAlias = Literal["raise", "report"]
#: How many recent event ids are remembered to drop a republished copy.
REMEMBERED_IDS = 100_000
#: The offset-metadata key under which a state partition's bootstrap end is committed.
BOOTSTRAP_END = "bootstrap_end"
#: How far before its cut a new subscriber follows ``customer.updated``: longer than a
#: relay transaction may stay open, and a minute of clock skew between relay and here.
REWIND_SECONDS = RELAY_TRANSACTION_TIMEOUT_MS / 1000 + 60
_POLL_TIMEOUT_MS = 500
_MAX_RECORDS = 500


class SequenceGap(Exception):  # noqa: N818 (named for what happened, not "Error")
    """A known customer's ``customer.updated`` version jumped by more than one: versions
    ``expected`` .. ``got - 1`` were never seen (an event parked and discarded by an
    operator, or a topic's retention shorter than the subscriber's absence)."""

    def __init__(self, customer_id: str, expected: int, got: int) -> None:
        super().__init__(f"customer {customer_id}: expected version {expected}, got {got}")
        self.customer_id = customer_id
        self.expected = expected
        self.got = got


@dataclass(frozen=True, slots=True)
class Change:
    """A customer version to apply: ``object`` is the whole customer at ``version``.

    ``previous_attributes`` is what the update changed (None from the state topic, which
    carries no diff). ``during_bootstrap`` marks the changes of the bootstrap, which are
    all from the state topic. ``gap`` is set only with ``on_gap="report"``, when versions
    before this one were missed; the object is still whole, so it may be applied.
    """

    customer_id: str
    version: int
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None
    source: Source
    event_id: str
    causation_id: str | None = None
    during_bootstrap: bool = False
    gap: SequenceGap | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """The part of a ``customer.updated`` or ``customer.state`` record a view needs."""

    customer_id: str
    version: int
    event_id: str
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None
    causation_id: str | None = None


class _KnownCustomer(Customer):
    """A customer object as a later service version may send it: with fields this one
    does not know."""

    model_config = ConfigDict(extra="allow", frozen=True)


_SEQUENCE = re.compile(rf"[0-9]{{{SEQUENCE_DIGITS}}}")


def parse(
    source: Source, key: bytes | None, value: bytes | None, headers: binary_mode.Headers
) -> Event | None:
    """The event a record of ``source``'s topic holds, in either content mode; None for a
    record that is not one (anyone who may write to a topic can write anything), or whose
    key is not its subject (the state topic is compacted by key).

    Only what a view needs is checked, not the whole schema: a later version of the
    service may add attributes or fields, and a subscriber built against this one must
    keep reading its events rather than drop them as unreadable.
    """
    try:
        document = binary_mode.as_structured(value, headers)
        found = orjson.loads(document) if document is not None else None
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(found, dict):
        return None
    data = found.get("data")
    subject, sequence, event_id = found.get("subject"), found.get("sequence"), found.get("id")
    wanted = UPDATED_TYPE if source == "updated" else STATE_TYPE
    if not (
        found.get("type") == wanted
        and isinstance(subject, str)
        and isinstance(event_id, str)
        and isinstance(sequence, str)
        and _SEQUENCE.fullmatch(sequence)
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
        and data["object"].get("id") == subject
        and key == subject.encode()
    ):
        return None
    previous = data.get("previous_attributes") if source == "updated" else None
    if source == "updated" and not isinstance(previous, dict):
        return None
    causation = found.get("causationid")
    # An event of a command that expanded subscriptions carries them, its state never
    # does: a view holds the customer alone, whichever topic a version came from.
    customer = {name: field for name, field in data["object"].items() if name != "subscriptions"}
    try:
        # The fields a view relies on, typed as the contract says; more are allowed.
        _KnownCustomer.model_validate(customer, strict=True)
    except ValidationError:
        return None
    return Event(
        customer_id=subject,
        version=int(sequence),
        event_id=event_id,
        object=customer,
        previous_attributes=previous,
        causation_id=causation if isinstance(causation, str) else None,
    )


@dataclass(frozen=True, slots=True)
class Committed:
    """A group's committed offset of one partition, as the broker returned it."""

    offset: int
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Where to start reading: ``starts`` of every partition (None: its first offset),
    and ``ends`` of the state partitions to bootstrap (None: take a new cut)."""

    starts: dict[TopicPartition, int | None]
    ends: dict[TopicPartition, int] | None
    bootstrap: bool


def bootstrap_metadata(end: int) -> str:
    return orjson.dumps({BOOTSTRAP_END: end}).decode()


def bootstrap_end_of(metadata: str) -> int | None:
    """The bootstrap end a commit's metadata holds; None for any other metadata."""
    try:
        found = orjson.loads(metadata) if metadata else None
    except orjson.JSONDecodeError:
        return None
    end = found.get(BOOTSTRAP_END) if isinstance(found, dict) else None
    return end if isinstance(end, int) and not isinstance(end, bool) and end >= 0 else None


def plan(
    topics: Topics,
    partitions: Iterable[TopicPartition],
    committed: Mapping[TopicPartition, Committed],
) -> Plan:
    """How a subscriber with ``committed`` offsets starts (see the module's "Restarts")."""
    partitions = list(partitions)
    found = {tp: c for tp, c in committed.items() if tp in partitions and c.offset >= 0}
    if not found:
        return Plan(starts=dict.fromkeys(partitions), ends=None, bootstrap=True)
    starts: dict[TopicPartition, int | None] = {
        tp: found[tp].offset if tp in found else None for tp in partitions
    }
    ends = {
        tp: end
        for tp, c in found.items()
        if tp.topic == topics.state and (end := bootstrap_end_of(c.metadata)) is not None
    }
    if not ends:
        return Plan(starts=starts, ends=None, bootstrap=False)
    # A state partition with no bootstrap end of its own (added since) is read to the end
    # it has now; the caller fills it in.
    return Plan(starts=starts, ends=ends, bootstrap=True)


class Tracker:
    """The subscriber's decisions, without I/O: which record becomes a change, the known
    version of each customer, recent event ids, the bootstrap boundary, and the position
    after everything decided (what ``commit`` stores)."""

    def __init__(
        self,
        topics: Topics,
        *,
        versions: Mapping[str, int] | None = None,
        on_gap: GapPolicy = "raise",
        remembered_ids: int = REMEMBERED_IDS,
    ) -> None:
        if on_gap not in ("raise", "report"):
            raise ValueError(f"on_gap must be 'raise' or 'report', not {on_gap!r}")
        if remembered_ids < 1:
            raise ValueError("remembered_ids must be at least 1")
        self.topics = topics
        self.on_gap: GapPolicy = on_gap
        self._versions: dict[str, int] = dict(versions or {})
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._remembered_ids = remembered_ids
        self._positions: dict[TopicPartition, int] = {}
        #: The bootstrap end of every state partition, for as long as the bootstrap runs.
        self._ends: dict[TopicPartition, int] = {}
        #: The state partitions still below their end.
        self._open: set[TopicPartition] = set()
        self._bootstrapping = False
        #: A gap the caller accepted (``accept_gap``): decided, not raised, next time.
        self._accepted: tuple[str, int, int] | None = None

    # -- the boundary ------------------------------------------------------------------

    def begin(
        self, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> None:
        """Start reading every partition at ``starts``; with ``ends`` (every state
        partition's), bootstrap to them first; without, follow at once."""
        self._positions = dict(starts)
        self._ends = dict(ends)
        self._open = {tp for tp, end in ends.items() if starts[tp] < end}
        self._bootstrapping = bool(ends)
        self._finish_if_done()

    @property
    def bootstrapped(self) -> bool:
        return not self._bootstrapping

    @property
    def bootstrapping(self) -> frozenset[TopicPartition]:
        """The state partitions still to read to their bootstrap end."""
        return frozenset(self._open)

    def beyond_end(self, tp: TopicPartition, offset: int) -> bool:
        """Whether a record at ``offset`` is past ``tp``'s bootstrap end: it belongs to the
        following, after every state partition reached its end."""
        return tp in self._open and offset >= self._ends[tp]

    def reached(self, tp: TopicPartition, position: int) -> bool:
        """Note that ``tp``'s records before ``position`` are all decided (a consumer's
        position may pass transaction markers and compacted-away offsets, which no record
        marks). Returns whether ``tp`` is now at its bootstrap end."""
        self._positions[tp] = max(self._positions.get(tp, 0), position)
        if tp in self._open and position >= self._ends[tp]:
            self._open.discard(tp)
            self._finish_if_done()
            return True
        return False

    def _finish_if_done(self) -> None:
        if self._bootstrapping and not self._open:
            self._bootstrapping = False
            self._ends = {}

    # -- records -----------------------------------------------------------------------

    def version(self, customer_id: str) -> int | None:
        return self._versions.get(customer_id)

    @property
    def versions(self) -> Mapping[str, int]:
        return self._versions

    def decide(self, tp: TopicPartition, offset: int, event: Event | None) -> Change | None:
        """The change the record at ``tp``/``offset`` makes, or None when it is skipped
        (not an event, an id seen recently, a version already had, or a state record of a
        known customer after the bootstrap). Either way the record counts as decided.

        Raises:
            SequenceGap: with ``on_gap="raise"``, when a known customer's updated version
                jumps; the record is then not decided, and deciding it again raises again.
        """
        change = None if event is None else self._change(tp.topic, event)
        self._positions[tp] = max(self._positions.get(tp, 0), offset + 1)
        if event is not None:
            self._remember(event.event_id)
        if change is not None:
            self._versions[change.customer_id] = change.version
        return change

    def _change(self, topic: str, event: Event) -> Change | None:
        source: Source = "updated" if topic == self.topics.events else "state"
        if event.event_id in self._ids:
            return None
        known = self._versions.get(event.customer_id)
        if known is not None and event.version <= known:
            return None
        gap = None
        if source == "state" and known is not None and self.bootstrapped:
            # The updated event published with it carries this version, with its diff.
            return None
        if source == "updated" and known is not None and event.version > known + 1:
            gap = SequenceGap(event.customer_id, known + 1, event.version)
            accepted = self._accepted == (gap.customer_id, gap.expected, gap.got)
            if self.on_gap == "raise" and not accepted:
                raise gap
            self._accepted = None
        return Change(
            customer_id=event.customer_id,
            version=event.version,
            object=event.object,
            previous_attributes=event.previous_attributes,
            source=source,
            event_id=event.event_id,
            causation_id=event.causation_id,
            during_bootstrap=not self.bootstrapped,
            gap=gap,
        )

    def accept_gap(self, gap: SequenceGap) -> None:
        """Let the record that raised ``gap`` through (with the gap reported on it)."""
        self._accepted = (gap.customer_id, gap.expected, gap.got)

    def _remember(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self._remembered_ids:
            self._ids.popitem(last=False)

    def offsets(self) -> dict[TopicPartition, tuple[int, str]]:
        """What to commit: the position after everything decided, and while the bootstrap
        runs, each state partition's bootstrap end as metadata."""
        return {
            tp: (position, bootstrap_metadata(self._ends[tp]) if tp in self._ends else "")
            for tp, position in self._positions.items()
        }


class Subscriber:
    """Yields a ``Change`` for every customer version, bootstrap first; see the module.

    Iterate it once at a time; iterating again after an error resumes where it stopped
    (a ``SequenceGap`` raised is raised again: the record is not passed over).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        topics: Topics | None = None,
        versions: Mapping[str, int] | None = None,
        on_gap: GapPolicy = "raise",
        remembered_ids: int = REMEMBERED_IDS,
    ) -> None:
        """
        Arguments:
            settings: the Kafka connection (``connection_options``: TLS, SASL).
            group_id: where offsets are committed; this subscriber's own.
            topics: the topic names; ``settings.topics`` by default.
            versions: the version of each customer the caller already holds, e.g. loaded
                from its own table: records at or below it are skipped.
            on_gap: ``"raise"`` a ``SequenceGap``, or ``"report"`` it on the change.
        """
        self._settings = settings
        self._group_id = group_id
        self._topics = topics or settings.topics
        self._tracker = Tracker(
            self._topics, versions=versions, on_gap=on_gap, remembered_ids=remembered_ids
        )
        kafka_records.install()
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Only for a committed offset out of range (retention): read what is left.
            auto_offset_reset="earliest",
        )
        self._pending: deque[ConsumerRecord[bytes, bytes]] = deque()
        self._partitions: list[TopicPartition] = []
        self._bootstrapped = asyncio.Event()

    @classmethod
    def plaintext(
        cls,
        bootstrap_servers: str,
        *,
        group_id: str,
        topics: Topics | None = None,
        versions: Mapping[str, int] | None = None,
        on_gap: GapPolicy = "raise",
    ) -> Subscriber:
        """A subscriber of an unsecured cluster at ``bootstrap_servers`` (``host:port``,
        comma-separated), with the default topic names unless ``topics`` says otherwise.
        Nothing is read from the environment."""
        settings = Settings.model_construct(
            kafka_bootstrap_servers=bootstrap_servers, kafka_client_id="customer-subscriber"
        )
        return cls(settings, group_id=group_id, topics=topics or Topics(), versions=versions,
                   on_gap=on_gap)  # fmt: skip

    async def __aenter__(self) -> Subscriber:
        try:
            await self._start()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    @property
    def bootstrapped(self) -> bool:
        """Whether the bootstrap is over: every change yielded from now on follows it."""
        return self._tracker.bootstrapped

    async def wait_bootstrapped(self) -> None:
        """Return once the bootstrap is over (for another task than the iterating one)."""
        await self._bootstrapped.wait()

    @property
    def versions(self) -> Mapping[str, int]:
        """The known version of each customer (seeded, then as yielded)."""
        return self._tracker.versions

    def accept_gap(self, gap: SequenceGap) -> None:
        """Go on past a ``SequenceGap`` that was raised: iterating again yields its change
        with ``.gap`` set (it holds the whole customer) instead of raising again. For when
        the missing versions are known to be gone for good (an event an operator
        discarded, a retention shorter than an absence)."""
        self._tracker.accept_gap(gap)

    async def commit(self) -> None:
        """Commit the position after every record yielded or skipped so far. Call it after
        the changes are durable in the caller's own store, from the iterating task: the
        change yielded last counts as done.

        Raises:
            aiokafka.errors.KafkaError: the commit failed; the records since the last
                commit will be delivered again after a restart (and skipped by version).
        """
        await self._consumer.commit(self._tracker.offsets())

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Change:
        """The next change. A method rather than a generator, so that the subscriber is
        still usable after it raised (a ``SequenceGap``, then ``accept_gap``)."""
        while True:
            if not self._pending:
                await self._fetch()
                continue
            record = self._pending[0]
            tp = TopicPartition(record.topic, record.partition)
            if self._tracker.beyond_end(tp, record.offset):
                self._hold_back(tp, record.offset)
                continue
            source: Source = "updated" if record.topic == self._topics.events else "state"
            event = parse(source, record.key, record.value, tuple(record.headers))
            if event is None:
                log.warning(
                    "subscriber_record_unreadable",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            change = self._tracker.decide(tp, record.offset, event)
            self._pending.popleft()
            if change is not None:
                if change.gap is not None:
                    log.warning("subscriber_sequence_gap", error=str(change.gap))
                return change

    async def _start(self) -> None:
        topics = self._topics
        await start(self._consumer, self._settings)
        self._partitions = await partitions_of(self._settings, [topics.events, topics.state])
        for name in (topics.events, topics.state):
            if not any(tp.topic == name for tp in self._partitions):
                raise LookupError(f"topic {name} does not exist")
        updated = [tp for tp in self._partitions if tp.topic == topics.events]
        state = [tp for tp in self._partitions if tp.topic == topics.state]
        self._consumer.assign(self._partitions)
        decided = plan(topics, self._partitions, await self._committed())
        cut: dict[TopicPartition, int] = {}
        # Taken before the cut: the rewind counts back from the moment the ends are read.
        since = max(int((time.time() - REWIND_SECONDS) * 1000), 0)
        if decided.bootstrap and decided.ends is None:
            # The order is the cut: updated first, then state (see the module).
            cut = await self._consumer.end_offsets(updated)
        ends: dict[TopicPartition, int] = {}
        if decided.bootstrap:
            ends = dict(decided.ends or {})
            if ends:
                # A bootstrap resumed: its ends were stored when the topic held more (it
                # was recreated since, say); an end past the log would never be reached.
                now = await self._consumer.end_offsets(list(ends))
                beyond = {tp: end for tp, end in ends.items() if end > now[tp]}
                if beyond:
                    log.warning("subscriber_bootstrap_ends_past_the_log", partitions=len(beyond))
                    ends.update({tp: now[tp] for tp in beyond})
            missing = [tp for tp in state if tp not in ends]
            if missing:
                ends.update(await self._consumer.end_offsets(missing))
        if cut:
            cut = await self._rewound(cut, since)
        firsts = await self._consumer.beginning_offsets(self._partitions)
        starts = {
            tp: cut.get(tp, firsts[tp]) if start is None else start
            for tp, start in decided.starts.items()
        }
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)
        self._tracker.begin(starts, ends)
        if self._tracker.bootstrapped:
            self._bootstrapped.set()
        else:
            self._consumer.pause(*updated)
            self._consumer.pause(*(tp for tp in state if tp not in self._tracker.bootstrapping))
        log.info(
            "subscriber_started",
            group_id=self._group_id,
            bootstrap=not self._tracker.bootstrapped,
            resumed=any(start is not None for start in decided.starts.values()),
        )

    async def _rewound(
        self, cut: dict[TopicPartition, int], since: int
    ) -> dict[TopicPartition, int]:
        """``cut`` moved back to the first record at or after ``since`` (ms)."""
        found = await self._consumer.offsets_for_times(dict.fromkeys(cut, since))
        return {
            tp: min(end, found[tp].offset) if found.get(tp) is not None else end
            for tp, end in cut.items()
        }

    async def _committed(self) -> dict[TopicPartition, Committed]:
        # The consumer's committed() gives the offset alone; the admin gives the metadata.
        admin = AIOKafkaAdminClient(**connection_options(self._settings))
        try:
            await start(admin, self._settings)
            found = await admin.list_consumer_group_offsets(
                self._group_id, partitions=self._partitions
            )
        finally:
            await admin.close()
        return {tp: Committed(entry.offset, entry.metadata or "") for tp, entry in found.items()}

    async def _fetch(self) -> None:
        # Everything fetched before has been decided, so each position now is safe to
        # commit, and says whether a state partition reached its bootstrap end.
        for tp in self._partitions:
            position = await self._consumer.position(tp)
            if self._tracker.reached(tp, position):
                self._consumer.pause(tp)
        if not self._tracker.bootstrapped:
            batch = await self._consumer.getmany(
                *self._tracker.bootstrapping, timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS
            )
        else:
            if not self._bootstrapped.is_set():
                self._consumer.resume(*self._partitions)
                self._bootstrapped.set()
                log.info("subscriber_bootstrapped", customers=len(self._tracker.versions))
            batch = await self._consumer.getmany(
                timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS
            )
        for records in batch.values():
            self._pending.extend(records)

    def _hold_back(self, tp: TopicPartition, offset: int) -> None:
        """Keep ``tp``'s records from ``offset`` on for the following: read them again once
        every state partition reached its end."""
        self._pending = deque(
            record
            for record in self._pending
            if TopicPartition(record.topic, record.partition) != tp
        )
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)
        self._tracker.reached(tp, offset)
