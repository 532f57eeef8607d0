"""The naive baseline: one command at a time, the way a simple framework handler does it.

For each record: decode and validate it with the service's own contract
(``service.domain.inbound.classify``); in one PostgreSQL transaction look up the command
id and claim it (``SELECT`` then ``INSERT`` on ``processed_commands``), load and lock the
customer (``SELECT ... FOR UPDATE``), apply the update with the service's own rules
(``service.domain.update.apply_update``), ``UPDATE`` the customer and record the outcome
on the idempotency row; commit; then publish the event with ``send_and_wait`` on an
idempotent producer, and commit that one record's offset.

Its outputs are the service's (same events, sequences, rejections and dead letters, built
by the same functions), so the benchmark can check it is correct; only the shape of the
work differs: a round trip per statement, a transaction per command, a wait per event.
It is at-least-once on the Kafka side and can lose an event if it dies between the
database commit and the send, as such handlers do; for a benchmark that does not matter.

Run: ``python -m bench.naive_worker`` with the service's environment variables
(``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``KAFKA_CONSUMER_GROUP``, ``TOPIC_*``).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from schemas.errors import ErrorObject
from service.adapters.kafka.clients import connection_options, inbound
from service.adapters.postgres.batch_store import BatchStore, customer_from_row
from service.bootstrap import build_authorizer
from service.domain.authorization import Authorizer
from service.domain.batch import reused_id_error
from service.domain.customer import Address, CustomerState
from service.domain.events import (
    EventContext,
    OutboundMessage,
    dead_letter_message,
    rejected_message,
    updated_message,
)
from service.domain.inbound import InboundRecord, Invalid, Poison, Valid, classify
from service.domain.update import Applied, apply_update
from service.infrastructure.logging import configure_logging
from service.infrastructure.settings import Settings, SettingsError, load_settings

log = structlog.get_logger("bench.naive_worker")

_SELECT_CUSTOMER = """
    SELECT id, extract(epoch FROM created)::bigint AS created, delinquent,
           address_city, address_country, address_line1, address_line2, address_postal_code,
           address_state, description, email, invoice_prefix, next_invoice_sequence,
           last_invoice_sequence, name, phone, preferred_locales, tax_exempt, version
    FROM customers WHERE id = $1 FOR UPDATE
"""
_UPDATE_CUSTOMER = """
    UPDATE customers SET
        address_city = $2, address_country = $3, address_line1 = $4, address_line2 = $5,
        address_postal_code = $6, address_state = $7, description = $8, email = $9,
        invoice_prefix = $10, next_invoice_sequence = $11, name = $12, phone = $13,
        preferred_locales = $14::text[], tax_exempt = $15, version = $16, updated = now()
    WHERE id = $1
"""

#: The log event of each outcome, as the service names them.
OUTCOME_EVENTS = {
    "applied": "command_applied",
    "rejected": "command_rejected",
    "duplicate": "command_duplicate",
    "dead_lettered": "command_dead_lettered",
}


class NaiveHandler:
    """Handles one record: database work, then the one message it publishes (if any)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, authorizer: Authorizer) -> None:
        self._pool = pool
        self._settings = settings
        self._authorizer = authorizer

    async def handle(self, record: InboundRecord) -> tuple[str, OutboundMessage | None]:
        settings = self._settings
        context = EventContext(
            source=settings.event_source, time=datetime.now(UTC), topics=settings.topics
        )
        item = classify(record, settings.limits, self._authorizer)
        if isinstance(item, Poison):
            message = dead_letter_message(
                record,
                item,
                consumer_group=settings.kafka_consumer_group,
                topic=settings.topic_dead_letters,
            )
            return "dead_lettered", message
        if isinstance(item, Invalid):
            return "rejected", rejected_message(
                item.error,
                customer_id=item.customer_id,
                command_id=item.command_id,
                correlationid=item.correlationid,
                event_id=str(uuid.uuid4()),
                context=context,
                record=record.position,
                traceparent=item.traceparent,
            )
        return await self._apply(item, record, context)

    async def _apply(
        self, item: Valid, record: InboundRecord, context: EventContext
    ) -> tuple[str, OutboundMessage | None]:
        command = item.command
        async with self._pool.acquire() as connection, connection.transaction():
            # The ids are unique per day only (see migration 0008), so look first. With
            # one process nothing claims the id meanwhile; with several, a reused id
            # could fail on the unique key, and the benchmark's load reuses none.
            known = await connection.fetchval(
                "SELECT fingerprint FROM processed_commands WHERE command_id = $1",
                command.id,
            )
            if known is not None:
                if bytes(known) == item.fingerprint:
                    return "duplicate", None
                return "rejected", self._rejection(item, record, context, reused_id_error(command))
            await connection.execute(
                "INSERT INTO processed_commands (command_id, customer_id, fingerprint, outcome) "
                "VALUES ($1, $2, $3, 'rejected')",
                command.id,
                command.subject,
                item.fingerprint,
            )
            row = await connection.fetchrow(_SELECT_CUSTOMER, command.subject)
            current = customer_from_row(row) if row is not None else None
            owner: str | None = None
            if "invoice_prefix" in command.data.model_fields_set:
                owner = await connection.fetchval(
                    "SELECT id FROM customers WHERE invoice_prefix = $1",
                    command.data.invoice_prefix,
                )
            verdict = apply_update(current, command, lambda _: owner)
            if not isinstance(verdict, Applied):
                return "rejected", self._rejection(item, record, context, verdict.error)
            await connection.execute(_UPDATE_CUSTOMER, *_columns(verdict.after))
            await connection.execute(
                "UPDATE processed_commands SET outcome = 'applied', version = $2 "
                "WHERE command_id = $1",
                command.id,
                verdict.after.version,
            )
            subscriptions = None
            if command.data.expands("subscriptions"):
                expanded = await BatchStore(connection).subscriptions([verdict.after.id])
                subscriptions = expanded.get(verdict.after.id)
        return "applied", updated_message(
            verdict,
            command,
            event_id=str(uuid.uuid4()),
            context=context,
            subscriptions=subscriptions,
            traceparent=item.traceparent,
        )

    def _rejection(
        self, item: Valid, record: InboundRecord, context: EventContext, error: ErrorObject
    ) -> OutboundMessage:
        return rejected_message(
            error,
            customer_id=item.command.subject,
            command_id=item.command.id,
            correlationid=item.command.correlationid,
            event_id=str(uuid.uuid4()),
            context=context,
            record=record.position,
            traceparent=item.traceparent,
        )


def _columns(customer: CustomerState) -> tuple[object, ...]:
    address = customer.address or Address()
    return (
        customer.id,
        address.city,
        address.country,
        address.line1,
        address.line2,
        address.postal_code,
        address.state,
        customer.description,
        customer.email,
        customer.invoice_prefix,
        customer.next_invoice_sequence,
        customer.name,
        customer.phone,
        list(customer.preferred_locales),
        customer.tax_exempt,
        customer.version,
    )


async def run(settings: Settings, stopping: asyncio.Event) -> None:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.database_url.get_secret_value(), min_size=1, max_size=2
    )
    consumer = AIOKafkaConsumer(
        settings.topic_commands,
        **connection_options(settings),
        group_id=settings.kafka_consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(**connection_options(settings), acks="all", enable_idempotence=True)
    handler = NaiveHandler(pool, settings, build_authorizer(settings))
    try:
        await producer.start()
        await consumer.start()
        log.info("naive_worker_started", topic=settings.topic_commands)
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for tp, records in batch.items():
                for received in records:
                    await _handle_one(handler, producer, consumer, tp, received)
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()
        log.info("naive_worker_stopped")


async def _handle_one(
    handler: NaiveHandler,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    received: ConsumerRecord[bytes, bytes],
) -> None:
    record = inbound(received)
    outcome, message = await handler.handle(record)
    if message is not None:
        await producer.send_and_wait(
            message.topic, message.value, key=message.key, headers=list(message.headers)
        )
    await consumer.commit({tp: received.offset + 1})
    log.info(
        OUTCOME_EVENTS[outcome],
        partition=record.partition,
        offset=record.offset,
        customer_id=record.key.decode(errors="replace") if record.key else None,
    )


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"{exc}") from None
    configure_logging(settings.log_format, settings.log_level)

    async def serve() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await run(settings, stopping)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
