"""Helpers for tests that talk to the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.adapters.kafka.clients import connection_options, partitions_of, reader
from service.application.relay import OutboxRelay
from service.bootstrap import WorkerProcess, run_worker
from service.infrastructure.settings import Settings

UPDATE_PERMISSION = "pay:customers:update"


def database_url_for(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def command(
    customer_id: str, data: dict[str, Any] | None = None, **attributes: Any
) -> dict[str, Any]:
    """A valid customer.update command; ``attributes`` override or add envelope fields."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"cmd-{uuid.uuid4()}",
        "source": "tests",
        "type": "customer.update",
        "subject": customer_id,
        "principal": "svc-tests",
        "permissions": UPDATE_PERMISSION,
        "data": data if data is not None else {},
    }
    document.update(attributes)
    return document


@dataclass(frozen=True)
class Produced:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


async def produce(
    settings: Settings,
    records: Sequence[tuple[bytes | None, bytes | None]],
    *,
    topic: str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> list[Produced]:
    """Send ``(key, value)`` pairs in order and wait until all are acknowledged."""
    producer = AIOKafkaProducer(**connection_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic or settings.topic_commands, value, key=key, headers=list(headers)
            )
            for key, value in records
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Produced(key, value, metadata.partition, metadata.offset)
        for (key, value), metadata in zip(records, sent, strict=True)
    ]


def encode(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


async def produce_commands(
    settings: Settings, commands: Sequence[dict[str, Any]]
) -> list[Produced]:
    return await produce(
        settings, [(document["subject"].encode(), encode(document)) for document in commands]
    )


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    def json(self) -> Any:
        return orjson.loads(self.value)


@dataclass
class TopicReader:
    """Reads topics from the beginning (committed records only) and keeps everything."""

    settings: Settings
    topics: Sequence[str]
    #: A worker task to watch: if it dies, waiting fails at once with its error.
    worker: asyncio.Task[None] | None = None
    received: list[Received] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        consumer = reader(self.settings)
        partitions = await partitions_of(self.settings, self.topics)
        assert {tp.topic for tp in partitions} == set(self.topics), "unknown topic"
        await consumer.start()
        self._consumer = consumer
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except BaseException:
            await consumer.stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, wait: float = 0.5) -> list[Received]:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=int(wait * 1000))
        new = [
            Received(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.value,
                list(record.headers),
            )
            for records in batch.values()
            for record in records
        ]
        self.received.extend(new)
        return new

    def on(self, topic: str) -> list[Received]:
        return [record for record in self.received if record.topic == topic]

    async def wait_until(
        self, condition: Callable[[TopicReader], bool], *, within: float = 30.0, what: str = ""
    ) -> None:
        """Poll until ``condition(self)`` holds; fail with what was seen if it never does."""
        deadline = time.monotonic() + within
        while not condition(self):
            if self.worker is not None and self.worker.done():
                self.worker.result()
                raise AssertionError("the worker stopped while the test waited for it")
            if time.monotonic() > deadline:
                seen = {topic: len(self.on(topic)) for topic in self.topics}
                raise AssertionError(f"timed out waiting for {what or condition}; saw {seen}")
            await self.poll()

    async def wait_for_count(
        self, topic: str, count: int, *, within: float = 30.0
    ) -> list[Received]:
        await self.wait_until(
            lambda reader: len(reader.on(topic)) >= count,
            within=within,
            what=f"{count} records on {topic}",
        )
        return self.on(topic)


async def read_everything(
    settings: Settings, topics: Sequence[str], *, within: float = 30.0
) -> dict[str, list[Received]]:
    """Every committed record of ``topics`` up to their current end, by topic, in
    partition order: for exact counts once nothing more is being written."""
    consumer = reader(settings)
    partitions = await partitions_of(settings, topics)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[str, list[Received]] = {topic: [] for topic in topics}
        deadline = time.monotonic() + within
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, f"could not read {topics} to their end"
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                found[tp.topic].extend(
                    Received(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers))
                    for r in records
                )
    finally:
        await consumer.stop()
    return found


def event_topics(settings: Settings) -> list[str]:
    return [settings.topic_events, settings.topic_rejections, settings.topic_dead_letters]


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The worker (consumer and relay) running in this event loop; stopped cleanly on exit."""
    stopping = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stopping))
    try:
        yield task
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=60)


@contextlib.asynccontextmanager
async def serving_worker(settings: Settings) -> AsyncIterator[tuple[int, asyncio.Task[None]]]:
    """A whole worker process (consumer, relay, HTTP endpoints) in this event loop: its
    HTTP port once it serves, and its task; stopped cleanly on exit."""
    process = WorkerProcess(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(process.run(stopping))
    try:
        await eventually(lambda: process.http_port is not None, what="the HTTP server")
        assert process.http_port is not None
        yield process.http_port, task
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=60)


async def insert_customer(connection: Any, customer_id: str, **columns: Any) -> None:
    values = {"id": customer_id, **columns}
    names = ", ".join(values)
    placeholders = ", ".join(f"${index}" for index in range(1, len(values) + 1))
    await connection.execute(
        f"INSERT INTO customers ({names}) VALUES ({placeholders})", *values.values()
    )


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, within: float = 30.0, what: str = "a condition"
) -> None:
    """Poll ``check`` until it holds, for state that sends no notification (a table,
    another process, a flag of a running task); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def waiting_for_a_lock(db: asyncpg.Connection) -> bool:
    """Some session of ``db``'s database waits for a lock (for ``eventually``)."""
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting > 0


def freeze_until_session_ends(database_url: str, backend: int, *, within: float = 10.0) -> None:
    """Block the calling event loop, as a frozen process would be, until PostgreSQL has
    ended session ``backend`` (its idle-in-transaction timeout, say). The waiting runs on
    its own thread and connection; the caller's loop learns of the loss only afterwards."""
    failure: list[BaseException] = []

    async def wait() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await eventually(
                lambda: session_gone(connection, backend),
                within=within,
                what=f"the server to end session {backend}",
            )
        finally:
            await connection.close()

    def run() -> None:
        try:
            asyncio.run(wait())
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="freeze")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def session_gone(connection: asyncpg.Connection, backend: int) -> bool:
    """Whether the server has ended session ``backend``."""
    count = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend
    )
    return bool(count == 0)


class TcpForwarder:
    """A loopback port that refuses connections until ``open()``, then forwards them to
    ``target``: a dependency that comes up after the process that needs it."""

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self._target = (target_host, target_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut_after_send = False

    def cut(self) -> None:
        """Stop carrying bytes either way while every connection stays open, as a network
        partition does: no reset, no close, just silence."""
        self._flowing.clear()

    def cut_after_next_send(self) -> None:
        """Carry the client's next chunk of bytes to the server, then cut: a partition
        that falls between two messages of one exchange."""
        self._cut_after_send = True

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection(*self._target)
        for source, sink, to_server in (
            (client_in, server_out, True),
            (server_in, client_out, False),
        ):
            pipe = asyncio.create_task(self._pipe(source, sink, to_server=to_server))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                if to_server and self._cut_after_send:
                    self._cut_after_send = False
                    self.cut()
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


@contextlib.asynccontextmanager
async def running_relay(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        yield task
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=60)


async def outbox_size(db: asyncpg.Connection) -> int:
    size: int = await db.fetchval("SELECT count(*) FROM outbox")
    return size


async def _outbox_reaches(db: asyncpg.Connection, size: int) -> bool:
    return await outbox_size(db) >= size


async def fill_outbox(
    settings: Settings, db: asyncpg.Connection, commands: list[dict[str, object]]
) -> None:
    """Process ``commands`` with the relay switched off, so their events stay in the outbox."""
    before = await outbox_size(db)
    async with running_worker(settings.model_copy(update={"relay_enabled": False})):
        await produce_commands(settings, commands)
        await eventually(
            lambda: _outbox_reaches(db, before + len(commands)), what="the events in the outbox"
        )


async def shrink_topic(settings: Settings, topic: str, max_message_bytes: int) -> None:
    """Lower ``topic``'s max.message.bytes, so that Kafka refuses larger records for good."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    {"max.message.bytes": str(max_message_bytes)},
                )
            ]
        )
    finally:
        await admin.close()


# -- the command line ------------------------------------------------------------------

#: The installed console script, next to the interpreter running the tests.
CLI = str(Path(sys.executable).parent / "customer-service")


@dataclass
class Result:
    code: int
    out: str
    err: str


def environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.environment(), "LOG_FORMAT": "json"}


async def cli(settings: Settings, *arguments: str, env: dict[str, str] | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        CLI,
        *arguments,
        env=env or environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())
