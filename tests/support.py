"""Helpers for tests that talk to the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import tempfile
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

from devstack.kcat import kcat_path
from devstack.stack import home as devstack_home
from service.adapters.kafka import connection_options, partitions_of
from service.app import run_worker
from service.settings import Settings

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
        consumer = AIOKafkaConsumer(
            **connection_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
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
        for source, sink in ((client_in, server_out), (server_in, client_out)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


#: Longest a kcat run may take; a produce gives up on delivery after 30s (see produce_raw).
KCAT_TIMEOUT = 60.0


async def produce_raw(
    bootstrap_servers: str,
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    partition: int | None = None,
    kcat: Path | None = None,
) -> None:
    """Produce exactly one record with kcat (librdkafka, not our client), byte for byte as
    given: for records aiokafka cannot make, such as a header name that is not UTF-8.

    The key and the headers travel in kcat's argv, which carries any byte but NUL, and kcat
    splits ``-H`` at the first ``=``: so no NUL in them and no ``=`` in a header name. The
    value goes in a file (kcat sends one file as one message) and may hold any bytes; None
    sends a null value. kcat skips an empty file, so an empty, non-null value cannot be
    sent. ``produce`` (aiokafka) makes those. Without ``partition`` a keyed record goes
    where aiokafka's (and Java's) murmur2 partitioner would put it. ``kcat`` is the binary
    (the ``kcat`` fixture); without it, ``kcat_path`` finds or installs one.
    """
    _require_loopback(bootstrap_servers)
    if key is not None and b"\0" in key:
        raise ValueError("kcat cannot send a key with a NUL byte; use produce() (aiokafka)")
    for name, header_value in headers:
        if not name or b"\0" in name or b"=" in name:
            raise ValueError(
                f"kcat cannot send the header name {name!r} (empty, NUL or '='); "
                "use produce() (aiokafka)"
            )
        if b"\0" in header_value:
            raise ValueError(
                f"kcat cannot send a header value with a NUL byte ({name!r}); "
                "use produce() (aiokafka)"
            )
    if value == b"":
        raise ValueError("kcat cannot send an empty, non-null value; use produce() (aiokafka)")
    if partition is not None and partition < 0:
        raise ValueError(f"partition must be 0 or more, not {partition}")
    binary = kcat if kcat is not None else await asyncio.to_thread(kcat_path, devstack_home())

    argv: list[bytes] = [
        # No configuration from $HOME/.config/kcat.conf (nor $KCAT_CONFIG, see run_kcat).
        *(b"-F", b"none"),
        *(b"-P", b"-b", bootstrap_servers.encode(), b"-t", topic.encode()),
        # Fail in seconds, not librdkafka's five minutes, when the broker is not there.
        *(b"-m", b"10", b"-X", b"message.timeout.ms=30000"),
        *(b"-X", b"partitioner=murmur2_random"),
    ]
    if partition is not None:
        argv += [b"-p", str(partition).encode()]
    if key is not None:
        argv += [b"-k", key]
    for name, header_value in headers:
        argv += [b"-H", name + b"=" + header_value]

    if value is None:
        # One message from stdin, ":", split at the key delimiter into an empty key and an
        # empty value, which -Z sends as NULL; the -k key, if any, replaces the null key.
        await run_kcat(binary, [*argv, b"-Z", b"-K", b":"], stdin=b":")
        return
    path = await asyncio.to_thread(_value_file, value)
    try:
        await run_kcat(binary, [*argv, os.fsencode(path)])
    finally:
        await asyncio.to_thread(path.unlink)


def _require_loopback(bootstrap_servers: str) -> None:
    """Only the local test brokers: kcat here never talks to anything else."""
    for server in bootstrap_servers.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"produce_raw talks only to a loopback broker, not {server!r}")


def _value_file(value: bytes) -> Path:
    descriptor, name = tempfile.mkstemp(prefix="kcat-value-")
    with os.fdopen(descriptor, "wb") as file:
        file.write(value)
    return Path(name)


async def run_kcat(binary: Path, argv: Sequence[bytes], *, stdin: bytes | None = None) -> bytes:
    """Run kcat with ``argv`` (bytes: any but NUL); its stdout, or an error with its stderr."""
    ignored = ("KCAT_CONFIG", "KAFKACAT_CONFIG")  # configuration files kcat would read
    env = {name: value for name, value in os.environ.items() if name not in ignored}
    process = await asyncio.create_subprocess_exec(
        binary,
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(KCAT_TIMEOUT):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"kcat did not finish within {KCAT_TIMEOUT:.0f}s") from None
    if process.returncode != 0:
        raise RuntimeError(
            f"kcat exited with {process.returncode}: {err.decode(errors='replace').strip()}"
        )
    return out
