"""Wiring: builds every resource from the settings, runs the worker or the relay, and
closes it all.

Nothing is created at import time. ``WorkerProcess.run`` and ``run_relay`` each own one
``AsyncExitStack``: what is opened is closed in reverse order, however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.adapters.http import Health, HttpServer, build_app
from service.adapters.kafka import clients as kafka
from service.adapters.kafka import errors as kafka_errors
from service.adapters.kafka.publisher import KafkaOutboxPublisher, KafkaOutboxTopics
from service.adapters.postgres.batch_store import batch_transaction
from service.adapters.postgres.connection import database
from service.adapters.postgres.outbox import PostgresLeadership, read_outbox
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.retention import prune_processed_commands
from service.application.errors import TransientError
from service.application.outbox_health import OutboxMonitor
from service.application.ports import OutboxPublisher
from service.application.process_batch import BatchProcessor, ProcessorConfig
from service.application.relay import OutboxRelay, RelayConfig
from service.application.retention import prune_periodically
from service.domain.authorization import Authorizer, JwtAuthorizer, UnsignedAuthorizer
from service.entrypoints.kafka_consumer import CommandWorker, WorkerConfig
from service.infrastructure import failpoints
from service.infrastructure.metrics import Metrics
from service.infrastructure.retrying import retrying
from service.infrastructure.settings import Settings
from service.infrastructure.tracing import configure_tracing

T = TypeVar("T")

log = structlog.get_logger(__name__)

#: The consumer's max.poll.interval.ms; the liveness probe fails well before it.
MAX_POLL_INTERVAL_MS = 300_000
#: Seconds a Kafka transaction's commit or abort may take before its outcome counts as
#: unknown and the relay's producer is replaced.
TRANSACTION_TIMEOUT = 30.0


def build_authorizer(settings: Settings) -> Authorizer:
    key = settings.secret("auth_jwt_key")
    if key is None:
        return UnsignedAuthorizer()
    return JwtAuthorizer(
        key,
        algorithms=settings.auth_jwt_algorithms,
        clock=lambda: datetime.now(UTC),
        audience=settings.auth_jwt_audience,
        issuer=settings.auth_jwt_issuer,
    )


def relay_producer(settings: Settings) -> AIOKafkaProducer:
    return kafka.event_producer(
        settings,
        transactional_id=settings.relay_transactional_id,
        # The relay hands over whole record batches (all rows it read at once); a linger
        # would only hold each of them back for its duration.
        linger_ms=0,
        transaction_timeout_ms=kafka.RELAY_TRANSACTION_TIMEOUT_MS,
    )


def relay_publishers(
    settings: Settings,
    *,
    producer: Callable[[], AIOKafkaProducer] | None = None,
    transaction_timeout: float = TRANSACTION_TIMEOUT,
) -> Callable[[], OutboxPublisher]:
    """A new publisher for each call, on a new producer (``relay_producer`` unless given)."""
    make = producer or functools.partial(relay_producer, settings)
    starter = functools.partial(kafka.start, settings=settings)
    return lambda: KafkaOutboxPublisher(
        make(), transaction_timeout=transaction_timeout, starter=starter
    )


def build_relay(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    publishers: Callable[[], OutboxPublisher] | None = None,
) -> OutboxRelay:
    topics = settings.topics
    return OutboxRelay(
        RelayConfig(
            batch_size=settings.relay_batch_size,
            idle_interval=settings.relay_idle_interval,
            retry_initial_delay=settings.retry_initial_delay,
            retry_max_delay=settings.retry_max_delay,
            drain_timeout=settings.relay_drain_timeout,
            stop_timeout=TRANSACTION_TIMEOUT,
            publish_state=settings.publish_state,
            state_topic=settings.topic_state,
        ),
        leadership=PostgresLeadership(
            database(settings),
            retry_interval=settings.relay_idle_interval,
            takeover_seconds=settings.relay_takeover_seconds,
        ),
        publishers=publishers or relay_publishers(settings),
        topics=KafkaOutboxTopics(
            (topics.events, topics.rejections, topics.dead_letters)
            + ((topics.state,) if settings.publish_state else ()),
            reader=functools.partial(kafka.reader, settings),
            partitions_of=functools.partial(kafka.partitions_of, settings),
            max_message_bytes=functools.partial(kafka.max_message_bytes, settings),
        ),
        metrics=metrics or Metrics(),
    )


def stop_on_signals(stopping: asyncio.Event) -> None:
    """SIGTERM and Ctrl-C ask for a clean stop: finish the batch, drain, close."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)


class WorkerProcess:
    """Everything one worker process runs: the consume loop, the outbox relay, the
    idempotency pruner and the health and metrics endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        failpoints.arm(settings.failpoints)
        self.metrics = Metrics()
        self.tracing = configure_tracing(settings)
        #: The bound HTTP port once serving (useful when HTTP_PORT is 0).
        self.http_port: int | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Run until ``stopping`` is set; then finish the batch in flight, leave the
        group, publish what is left in the outbox and close everything."""
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.tracing.shutdown)
            pool = await _open_pool(stack, settings, stopping, size=settings.database_pool_size)
            if pool is None:
                return
            monitor = _outbox_monitor(pool, settings, self.metrics)
            # Not built without RELAY_ENABLED: a relay's state is exported from the moment
            # it exists, and one that never runs would read as "starting" for ever.
            relay = build_relay(settings, self.metrics) if settings.relay_enabled else None
            health = Health(pool=pool, stuck_after=MAX_POLL_INTERVAL_MS / 1000 / 2)
            if relay is not None:
                # Only the leading relay answers for the outbox, so that a parked row keeps
                # one process unready, not every replica; workers without a relay leave it
                # to the relay's own deployment.
                health.outbox_problems = _when_leading(relay, monitor)
            self.http_port = await _serve_http(stack, settings, health, self.metrics)
            relay_stopping = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._consume(pool, health, relay, stopping, relay_stopping))
                if relay is not None:
                    tasks.create_task(relay.run(relay_stopping))
                    tasks.create_task(monitor.run(relay_stopping))
                tasks.create_task(
                    prune_periodically(
                        functools.partial(
                            prune_processed_commands,
                            pool,
                            period_days=settings.idempotency_period_days,
                        ),
                        retention_days=settings.idempotency_retention_days,
                        stopping=relay_stopping,
                    )
                )

    async def _consume(
        self,
        pool: asyncpg.Pool,
        health: Health,
        relay: OutboxRelay | None,
        stopping: asyncio.Event,
        relay_stopping: asyncio.Event,
    ) -> None:
        settings = self.settings

        async def started_consumer() -> AIOKafkaConsumer:
            consumer = kafka.command_consumer(settings, max_poll_interval_ms=MAX_POLL_INTERVAL_MS)
            try:
                with kafka_errors.translated():
                    await kafka.start(consumer, settings)
            except BaseException:
                await consumer.stop()
                raise
            return consumer

        consumer = await until_reachable("kafka", started_consumer, settings, stopping)
        if consumer is None:
            relay_stopping.set()
            return
        dead_letter_limit = await kafka.max_message_bytes(settings, [settings.topic_dead_letters])
        processor = BatchProcessor(
            functools.partial(batch_transaction, pool),
            ProcessorConfig(
                consumer_group=settings.kafka_consumer_group,
                source=settings.event_source,
                topics=settings.topics,
                limits=settings.limits,
                dead_letter_max_bytes=dead_letter_limit[settings.topic_dead_letters],
                content_mode=settings.event_content_mode,
                publish_state=settings.publish_state,
            ),
            build_authorizer(settings),
            tracing=self.tracing,
        )
        worker = CommandWorker(
            consumer,
            processor,
            WorkerConfig(
                topic=settings.topic_commands,
                batch_max_records=settings.batch_max_records,
                batch_timeout=settings.batch_timeout,
                retry_initial_delay=settings.retry_initial_delay,
                retry_max_delay=settings.retry_max_delay,
            ),
            metrics=self.metrics,
            on_committed=relay.wake if relay is not None else lambda: None,
            on_poll=health.polled,
        )
        health.assigned_partitions = lambda: len(worker.assignment)
        try:
            worker.subscribe()
            health.running = True
            log.info("worker_started", topic=settings.topic_commands, http_port=self.http_port)
            await worker.run(stopping)
        finally:
            health.running = False
            # Leave the group first, so the partitions move on while the relay drains.
            await consumer.stop()
            relay_stopping.set()
            log.info("worker_stopped")


async def run_worker(settings: Settings, stopping: asyncio.Event) -> None:
    await WorkerProcess(settings).run(stopping)


async def run_relay(settings: Settings, stopping: asyncio.Event) -> None:
    """Only the outbox relay (and its HTTP endpoints): for deployments that scale the
    relay apart from the consumers, whose RELAY_ENABLED is then false."""
    metrics = Metrics()
    tracing = configure_tracing(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(tracing.shutdown)
        pool = await _open_pool(stack, settings, stopping, size=2)
        if pool is None:
            return
        monitor = _outbox_monitor(pool, settings, metrics)
        relay = build_relay(settings, metrics)
        health = Health(
            pool=pool,
            stuck_after=float("inf"),
            running=True,
            needs_partitions=False,
            outbox_problems=_when_leading(relay, monitor),
        )
        http_port = await _serve_http(stack, settings, health, metrics)
        log.info("relay_started", http_port=http_port)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(relay.run(stopping))
            tasks.create_task(monitor.run(stopping))


#: The log event of each thing the process waits for at start, written out so that a
#: search for the name finds it.
WAITING_EVENTS = {"database": "waiting_for_database", "kafka": "waiting_for_kafka"}


async def until_reachable(
    what: Literal["database", "kafka"],
    connect: Callable[[], Awaitable[T]],
    settings: Settings,
    stopping: asyncio.Event,
) -> T | None:
    """``connect()``, retried with backoff while it fails with ``TransientError``, so that a
    worker started before its database or broker waits for them instead of crashing (a
    permanent error, such as a refused password, stops it at once). None when asked to
    stop first."""
    attempts = retrying(
        on=(TransientError,),
        initial_delay=settings.retry_initial_delay,
        max_delay=settings.retry_max_delay,
        stopping=stopping,
        before_sleep=lambda state: log.warning(
            WAITING_EVENTS[what],
            attempt=state.attempt_number,
            error=repr(state.outcome.exception()) if state.outcome else None,
        ),
        give_up=stopping.is_set,
    )
    try:
        async for attempt in attempts:
            with attempt:
                return await connect()
    except TransientError:
        if not stopping.is_set():
            raise
    return None


async def _open_pool(
    stack: contextlib.AsyncExitStack, settings: Settings, stopping: asyncio.Event, *, size: int
) -> asyncpg.Pool | None:
    """The database pool, closed with ``stack``; None when asked to stop before the
    database could be reached."""
    pool = await until_reachable(
        "database",
        lambda: create_pool(
            database(settings),
            size=size,
            command_timeout=settings.database_command_timeout,
            idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout,
        ),
        settings,
        stopping,
    )
    if pool is not None:
        stack.push_async_callback(pool.close)
    return pool


async def _serve_http(
    stack: contextlib.AsyncExitStack, settings: Settings, health: Health, metrics: Metrics
) -> int | None:
    """Serve the probes and the metrics until ``stack`` closes; the bound port, or None
    when HTTP is off."""
    if not settings.http_enabled:
        return None
    server = HttpServer(build_app(health, metrics), settings.http_host, settings.http_port)
    stack.push_async_callback(server.stop)
    await server.start()
    return server.port


def _outbox_monitor(pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> OutboxMonitor:
    return OutboxMonitor(
        functools.partial(read_outbox, pool), metrics, stall_seconds=settings.relay_stall_seconds
    )


def _when_leading(relay: OutboxRelay, monitor: OutboxMonitor) -> Callable[[], list[str]]:
    """The outbox's problems, while ``relay`` leads (only the leader answers for them)."""
    return lambda: monitor.problems() if relay.state == "leading" else []
