"""Wiring: builds every resource from the settings, runs the worker, and closes it all.

Nothing is created at import time; ``WorkerProcess.run`` owns the whole lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from service.adapters.http import Health, HttpServer, build_app
from service.adapters.kafka import clients as kafka
from service.adapters.postgres.pool import TRANSIENT_ERRORS, create_pool
from service.adapters.postgres.retention import prune_processed_commands
from service.application.outbox_health import OutboxMonitor
from service.application.process_batch import BatchProcessor, ProcessorConfig
from service.application.relay import OutboxRelay, RelayConfig
from service.domain.authorization import Authorizer, JwtAuthorizer, UnsignedAuthorizer
from service.entrypoints.kafka_consumer import CommandWorker, WorkerConfig
from service.infrastructure import failpoints
from service.infrastructure.metrics import Metrics
from service.infrastructure.retrying import retrying
from service.infrastructure.settings import Settings
from service.infrastructure.tracing import configure_tracing

T = TypeVar("T")

log = structlog.get_logger(__name__)

PRUNE_INTERVAL_SECONDS = 3600.0
#: The consumer's max.poll.interval.ms; the liveness probe fails well before it.
MAX_POLL_INTERVAL_MS = 300_000


def build_authorizer(settings: Settings) -> Authorizer:
    key = settings.jwt_key()
    if key is None:
        return UnsignedAuthorizer()
    return JwtAuthorizer(
        key,
        algorithms=settings.auth_jwt_algorithms,
        audience=settings.auth_jwt_audience,
        issuer=settings.auth_jwt_issuer,
    )


def build_relay(settings: Settings, metrics: Metrics | None = None) -> OutboxRelay:
    topics = settings.topics
    return OutboxRelay(
        RelayConfig(
            database_url=settings.database_url.get_secret_value(),
            topics=(topics.events, topics.rejections, topics.dead_letters),
            batch_size=settings.relay_batch_size,
            idle_interval=settings.relay_idle_interval,
            retry_initial_delay=settings.retry_initial_delay,
            retry_max_delay=settings.retry_max_delay,
            drain_timeout=settings.relay_drain_timeout,
        ),
        producer_factory=lambda: kafka.event_producer(
            settings,
            transactional_id=settings.relay_transactional_id,
            # The relay hands over whole record batches (all rows it read at once); a
            # linger would only hold each of them back for its duration.
            linger_ms=0,
        ),
        consumer_factory=lambda: kafka.reader(settings),
        partitions_of=lambda topics: kafka.partitions_of(settings, topics),
        metrics=metrics or Metrics(),
        topic_limits=lambda topics: kafka.max_message_bytes(settings, topics),
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
        pool = await until_reachable(
            "database",
            lambda: create_pool(
                settings.database_url.get_secret_value(),
                size=settings.database_pool_size,
                command_timeout=settings.database_command_timeout,
                idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout,
            ),
            settings,
            stopping,
        )
        if pool is None:
            return
        health = Health(pool=pool, stuck_after=MAX_POLL_INTERVAL_MS / 1000 / 2)
        monitor = OutboxMonitor(pool, self.metrics, stall_seconds=settings.relay_stall_seconds)
        relay = build_relay(settings, self.metrics)
        if settings.relay_enabled:
            # Only the leading relay answers for the outbox, so that a parked row keeps one
            # process unready, not every replica; workers without a relay leave it to the
            # relay's own deployment.
            health.outbox_problems = lambda: monitor.problems() if relay.state == "leading" else []
        server = HttpServer(build_app(health, self.metrics), settings.http_host, settings.http_port)
        try:
            if settings.http_enabled:
                await server.start()
                self.http_port = server.port
            relay_stopping = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._consume(pool, health, relay, stopping, relay_stopping))
                if settings.relay_enabled:
                    tasks.create_task(relay.run(relay_stopping))
                    tasks.create_task(monitor.run(relay_stopping))
                tasks.create_task(_prune_periodically(pool, settings, relay_stopping))
        finally:
            await server.stop()
            await pool.close()
            self.tracing.shutdown()

    async def _consume(
        self,
        pool: asyncpg.Pool,
        health: Health,
        relay: OutboxRelay,
        stopping: asyncio.Event,
        relay_stopping: asyncio.Event,
    ) -> None:
        settings = self.settings

        async def started_consumer() -> AIOKafkaConsumer:
            consumer = kafka.command_consumer(settings, max_poll_interval_ms=MAX_POLL_INTERVAL_MS)
            try:
                await consumer.start()
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
            pool,
            ProcessorConfig(
                consumer_group=settings.kafka_consumer_group,
                source=settings.event_source,
                topics=settings.topics,
                limits=settings.limits,
                dead_letter_max_bytes=dead_letter_limit[settings.topic_dead_letters],
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
            on_committed=relay.wake,
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


#: The log event of each thing the process waits for at start, written out so that a
#: search for the name finds it.
WAITING_EVENTS = {"database": "waiting_for_database", "kafka": "waiting_for_kafka"}


async def until_reachable(
    what: Literal["database", "kafka"],
    connect: Callable[[], Awaitable[T]],
    settings: Settings,
    stopping: asyncio.Event,
) -> T | None:
    """``connect()``, retried with backoff while ``what`` is unreachable, so that a worker
    started before its database or broker waits for them instead of crashing. None when
    asked to stop first."""
    attempts = retrying(
        on=(*TRANSIENT_ERRORS, KafkaError),
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
    except (*TRANSIENT_ERRORS, KafkaError):
        if not stopping.is_set():
            raise
    return None


async def run_worker(settings: Settings, stopping: asyncio.Event) -> None:
    await WorkerProcess(settings).run(stopping)


async def run_relay(settings: Settings, stopping: asyncio.Event) -> None:
    """Only the outbox relay (and its HTTP endpoints): for deployments that scale the
    relay apart from the consumers, whose RELAY_ENABLED is then false."""
    metrics = Metrics()
    tracing = configure_tracing(settings)
    pool = await until_reachable(
        "database",
        lambda: create_pool(
            settings.database_url.get_secret_value(),
            size=2,
            command_timeout=settings.database_command_timeout,
            idle_in_transaction_timeout=settings.database_idle_in_transaction_timeout,
        ),
        settings,
        stopping,
    )
    if pool is None:
        return
    monitor = OutboxMonitor(pool, metrics, stall_seconds=settings.relay_stall_seconds)
    relay = build_relay(settings, metrics)
    health = Health(
        pool=pool,
        stuck_after=float("inf"),
        running=True,
        needs_partitions=False,
        outbox_problems=lambda: monitor.problems() if relay.state == "leading" else [],
    )
    server = HttpServer(build_app(health, metrics), settings.http_host, settings.http_port)
    try:
        if settings.http_enabled:
            await server.start()
        log.info("relay_started", http_port=server.port)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(relay.run(stopping))
            tasks.create_task(monitor.run(stopping))
    finally:
        await server.stop()
        await pool.close()
        tracing.shutdown()


async def _prune_periodically(
    pool: asyncpg.Pool, settings: Settings, stopping: asyncio.Event
) -> None:
    while not stopping.is_set():
        try:
            removed = await prune_processed_commands(pool, settings.idempotency_retention_days)
            if removed:
                log.info("idempotency_pruned", removed=removed)
        except TRANSIENT_ERRORS as exc:
            log.warning("idempotency_prune_failed", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), PRUNE_INTERVAL_SECONDS)
