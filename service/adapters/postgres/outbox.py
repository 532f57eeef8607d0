"""The outbox table: the rows the relay publishes, parks and forgets, who leads the
relays, the outbox's figures, and how headers are stored."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import asyncpg
import orjson
import structlog

from service.adapters.postgres.connection import Database
from service.adapters.postgres.copy import copy_rows
from service.adapters.postgres.errors import translated
from service.application.ports import OutboxStats, ParkedRow
from service.domain.events import OutboundMessage, StateRecord
from service.domain.outbox import OutboxRow

log = structlog.get_logger(__name__)

#: The channel a batch notifies when it has written outbox rows.
OUTBOX_CHANNEL = "outbox"
#: Advisory lock key of the relay leader; any constant shared by all instances.
LEADER_LOCK = 0x6375_7374_7265_6C


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """Headers as jsonb text, ``[[name, base64 value or null], ...]``. Names must be valid
    UTF-8 without NUL (``inbound.valid_header_name``), which jsonb can hold."""
    if isinstance(headers, tuple) and len(headers) == 1:
        # Most events and states carry the same one header (the structured content type):
        # its text is made once, not twice for every command. Others (a traceparent, a
        # dead letter's) are mostly unique, and a cache would only add to their cost.
        return _encoded(headers)
    return _encode(headers)


@functools.lru_cache(maxsize=64)
def _encoded(headers: tuple[tuple[str, bytes | None], ...]) -> str:
    return _encode(headers)


def _encode(headers: Sequence[tuple[str, bytes | None]]) -> str:
    return orjson.dumps(
        [[name, None if value is None else _b64(value)] for name, value in headers]
    ).decode()


def decode_headers(stored: str | list[list[str | None]]) -> list[tuple[str, bytes | None]]:
    if isinstance(stored, str) and len(stored) <= _COMMON_HEADERS_TEXT:
        # The relay reads the same one-header text on most rows, twice with their states.
        return list(_decoded(stored))
    return _decode(stored)


#: Longer than the text of the structured content type and a short header or two.
_COMMON_HEADERS_TEXT = 128


@functools.lru_cache(maxsize=64)
def _decoded(stored: str) -> tuple[tuple[str, bytes | None], ...]:
    return tuple(_decode(stored))


def _decode(stored: str | list[list[str | None]]) -> list[tuple[str, bytes | None]]:
    pairs = orjson.loads(stored) if isinstance(stored, str) else stored
    return [
        (str(name), None if value is None else base64.b64decode(value)) for name, value in pairs
    ]


def encode_raw_headers(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """Any headers, names too as base64 of their bytes (a name read with
    ``surrogateescape`` turns back into the bytes it came as)."""
    return orjson.dumps(
        [[_b64(_raw(name)), None if value is None else _b64(value)] for name, value in headers]
    ).decode()


def _raw(name: str) -> bytes:
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding made, such as the adapter's own
        return name.encode("utf-8", "surrogatepass")


def decode_raw_headers(stored: str | list[list[str | None]]) -> list[tuple[bytes, bytes | None]]:
    pairs = orjson.loads(stored) if isinstance(stored, str) else stored
    return [
        (base64.b64decode(str(name)), None if value is None else base64.b64decode(value))
        for name, value in pairs
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


#: The columns ``save_outbox`` fills; ``id`` and ``created`` take their defaults.
_SAVED_COLUMNS = ("topic", "key", "value", "headers", "state_topic", "state_value", "state_headers")


async def save_outbox(connection: asyncpg.Connection, messages: Sequence[OutboundMessage]) -> None:
    """Insert the messages as outbox rows, in order, and wake the relay (at commit).

    A binary COPY rather than an ``INSERT`` over seven ``unnest`` arrays: asyncpg encodes
    the arrays value by value in Python, and PostgreSQL unpacks them again. Measured on
    500 events with their state records, the COPY took a third of the client's CPU and
    half the time (bench/README.md, "Outbox and idempotency rows by COPY"). The rows get
    their ids (the relay's order) in the order they are sent."""
    rows = [
        (
            message.topic,
            message.key,
            message.value,
            encode_headers(message.headers),
            *(
                (None, None, None)
                if message.state is None
                else (
                    message.state.topic,
                    message.state.value,
                    encode_headers(message.state.headers),
                )
            ),
        )
        for message in messages
    ]
    await copy_rows(connection, "outbox", _SAVED_COLUMNS, rows)
    await connection.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


_ROW_COLUMNS = "id, topic, key, value, headers, state_topic, state_value, state_headers"


def _outbox_row(row: asyncpg.Record) -> OutboxRow:
    state = None
    if row["state_topic"] is not None:
        state = StateRecord(
            row["state_topic"], row["state_value"], tuple(decode_headers(row["state_headers"]))
        )
    return OutboxRow(
        row["id"], row["topic"], row["key"], row["value"], decode_headers(row["headers"]), state
    )


class Statements(Protocol):
    """The calls ``OutboxStore`` makes: an asyncpg connection, or the leader's shared one."""

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...


class OutboxStore:
    """The outbox statements of the relay and the ``outbox`` verbs, on one connection."""

    def __init__(self, connection: Statements) -> None:
        self._connection = connection

    async def publishable(self, limit: int, *, parked: bool = True) -> list[OutboxRow]:
        """The oldest rows that may go out now, in id order: not parked, and not behind a
        parked row of the same topic and key (which keeps a customer's events in order
        while a row of theirs is parked). ``parked=False`` says no row is parked, which
        spares the database the check (the relay's usual case)."""
        if parked:
            # Behind a parked row means: the same key, and a topic in common (either of the
            # row's two), so that neither a customer's events nor its states overtake it.
            query = f"""
                SELECT {_ROW_COLUMNS} FROM outbox o
                WHERE o.parked_at IS NULL
                  AND NOT EXISTS (
                    SELECT 1 FROM outbox p
                    WHERE p.parked_at IS NOT NULL AND p.key = o.key AND p.id < o.id
                      AND (p.topic IN (o.topic, o.state_topic)
                           OR p.state_topic IN (o.topic, o.state_topic))
                  )
                ORDER BY o.id LIMIT $1
            """
        else:
            query = f"SELECT {_ROW_COLUMNS} FROM outbox ORDER BY id LIMIT $1"
        rows = await self._connection.fetch(query, limit)
        return [_outbox_row(row) for row in rows]

    async def rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        found = await self._connection.fetch(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id = ANY($1::bigint[])", list(ids)
        )
        return [_outbox_row(row) for row in found]

    async def forget(self, ids: Sequence[int]) -> int:
        """Delete published rows; returns how many there were."""
        status = await self._connection.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(ids)
        )
        return int(status.split()[-1])

    async def park(self, row_id: int, reason: str) -> None:
        await self._connection.execute(
            "UPDATE outbox SET parked_at = clock_timestamp(), parked_reason = $2 WHERE id = $1",
            row_id,
            reason,
        )

    async def unpark(self, ids: Sequence[int] | None) -> int:
        """Let parked rows (all of them with None) be published again."""
        status = await self._connection.execute(
            "UPDATE outbox SET parked_at = NULL, parked_reason = NULL "
            "WHERE parked_at IS NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))",
            None if ids is None else list(ids),
        )
        return int(status.split()[-1])

    async def discard(self, ids: Sequence[int]) -> int:
        """Delete parked rows: they will never be published."""
        status = await self._connection.execute(
            "DELETE FROM outbox WHERE parked_at IS NOT NULL AND id = ANY($1::bigint[])",
            list(ids),
        )
        return int(status.split()[-1])

    async def parked(self, limit: int | None = None) -> list[ParkedRow]:
        rows = await self._connection.fetch(
            """
            SELECT p.id, p.topic, p.key, p.parked_at, p.parked_reason,
                   octet_length(p.value) + coalesce(octet_length(p.state_value), 0) AS size,
                   (SELECT count(*) FROM outbox o
                    WHERE o.key = p.key AND o.id > p.id
                      AND (p.topic IN (o.topic, o.state_topic)
                           OR p.state_topic IN (o.topic, o.state_topic))) AS waiting
            FROM outbox p WHERE p.parked_at IS NOT NULL ORDER BY p.id LIMIT $1
            """,
            limit,
        )
        return [
            ParkedRow(
                row["id"],
                row["topic"],
                row["key"],
                row["size"] or 0,
                row["parked_at"],
                row["parked_reason"],
                row["waiting"],
            )
            for row in rows
        ]

    async def any_parked(self) -> bool:
        found: bool = await self._connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE parked_at IS NOT NULL)"
        )
        return found

    async def stats(self) -> OutboxStats:
        row = await self._connection.fetchrow(
            """
            SELECT count(*) FILTER (WHERE parked_at IS NULL) AS waiting,
                   count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                   coalesce(extract(epoch FROM clock_timestamp()
                       - min(created) FILTER (WHERE parked_at IS NULL)), 0)::float8 AS oldest
            FROM outbox
            """
        )
        assert row is not None
        return OutboxStats(row["waiting"], row["parked"], row["oldest"])

    async def oldest_created_ms(self) -> int | None:
        """When the oldest row that may have been published was written: parked rows were
        refused, so they do not widen the recovery scan however long they wait."""
        oldest: int | None = await self._connection.fetchval(
            "SELECT (extract(epoch FROM min(created)) * 1000)::bigint FROM outbox "
            "WHERE parked_at IS NULL"
        )
        return oldest


class PostgresLeadership:
    """The relay leader holds a session-level advisory lock on a connection of its own
    (the session's end releases it) and listens there for new rows.

    A leader that is frozen (a stopped process, a paused VM) or cut off from the database
    would keep its session, and so the lead, for as long as TCP keepalives take to notice:
    hours. So the session is opened with ``idle_session_timeout`` of ``takeover_seconds``,
    and a heartbeat keeps a live leader's session busy three times as often: a leader that
    stops answering loses its session, and the lock, within that bound. The
    ``transactional.id`` all relays share fences off its Kafka transaction if it wakes up.
    Every statement on the connection has the same timeout, so a leader that is cut off
    notices too, instead of waiting on a statement forever.

    ``idle_session_timeout`` only covers a session waiting for its next statement. A
    partition can also fall between the messages of one statement (PostgreSQL then waits
    for the rest, "active", with no timeout) or inside a transaction, so a standby also
    ends the leader's session itself when it has not changed state for longer than the
    bound (``pg_terminate_backend``: the relays share a role, which may end its own
    sessions). A live leader's heartbeat changes its state far more often than that.
    """

    def __init__(self, target: Database, *, retry_interval: float, takeover_seconds: float) -> None:
        self._target = target
        self._retry_interval = retry_interval
        self._takeover_seconds = takeover_seconds

    @contextlib.asynccontextmanager
    async def lead(
        self,
        stopping: asyncio.Event,
        *,
        on_standby: Callable[[], None],
        on_work: Callable[[], None],
    ) -> AsyncIterator[OutboxStore | None]:
        with translated():
            connection: asyncpg.Connection = await self._target.connect(
                command_timeout=self._takeover_seconds,
                server_settings={
                    "idle_session_timeout": str(round(self._takeover_seconds * 1000)),
                    "application_name": "customer-service relay",
                },
            )
            shared = _OneAtATime(connection)
            heartbeat = asyncio.create_task(
                _heartbeat(shared, self._takeover_seconds / 3), name="relay-heartbeat"
            )
            try:
                while not await shared.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                    on_standby()
                    await _end_a_silent_leader(shared, self._takeover_seconds)
                    if stopping.is_set():
                        yield None
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), self._retry_interval)
                await connection.add_listener(OUTBOX_CHANNEL, lambda *_: on_work())
                yield OutboxStore(shared)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await connection.close(timeout=5)


class _OneAtATime:
    """A connection shared by the relay and its heartbeat: asyncpg runs one statement at a
    time per connection."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._lock:
            rows: list[asyncpg.Record] = await self._connection.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._lock:
            row: asyncpg.Record | None = await self._connection.fetchrow(query, *args)
            return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._lock:
            return await self._connection.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self._lock:
            status: str = await self._connection.execute(query, *args)
            return status


async def _end_a_silent_leader(connection: _OneAtATime, takeover_seconds: float) -> None:
    ended = await connection.fetch(
        """
        SELECT a.pid, extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS silent,
               a.state, pg_terminate_backend(a.pid) AS ended
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ($1::bigint >> 32)::oid
          AND l.objid = ($1::bigint & 4294967295)::oid
          AND l.objsubid = 1
          AND a.usename = current_user
          AND a.state_change < clock_timestamp() - make_interval(secs => $2)
        """,
        LEADER_LOCK,
        takeover_seconds,
    )
    for row in ended:
        log.warning(
            "relay_silent_leader_ended",
            pid=row["pid"],
            state=row["state"],
            silent_seconds=round(row["silent"], 1),
            ended=row["ended"],
        )


async def _heartbeat(connection: _OneAtATime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await connection.execute("SELECT 1")
        except Exception as exc:
            # The session is gone (or going): the relay's next statement finds out too and
            # starts over; the heartbeat has nothing more to keep alive.
            log.warning("relay_session_lost", error=repr(exc))
            return


async def read_outbox(pool: asyncpg.Pool, named_parked: int) -> tuple[OutboxStats, list[ParkedRow]]:
    """The outbox's figures, and its first ``named_parked`` parked rows if any."""
    with translated():
        async with pool.acquire() as connection:
            store = OutboxStore(connection)
            stats = await store.stats()
            parked = await store.parked(named_parked) if stats.parked else []
    return stats, parked
