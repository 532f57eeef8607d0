"""Kafka clients built from the settings, with security applied to every one of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from service.adapters import tls
from service.adapters.kafka import records as kafka_records
from service.application.errors import AccessRefusedError
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES
from service.domain.inbound import InboundRecord
from service.infrastructure.settings import Settings

log = structlog.get_logger(__name__)

TOPIC_READY_TIMEOUT = 30.0
#: How long a probe waits for a broker: short, so that it does not hold up a stop.
PROBE_TIMEOUT_MS = 5_000


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap, client id, TLS and SASL options shared by consumers, producers and admin."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
        context.check_hostname = settings.kafka_ssl_check_hostname
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.secret("kafka_sasl_password")
    return options


Client: TypeAlias = AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient


async def start(client: Client, settings: Settings) -> None:
    """Start ``client``; when the brokers refuse it for good (TLS or authentication), raise
    ``AccessRefusedError`` saying which broker and why, instead of the bootstrap error a
    retry would wait on. The caller still stops the client.

    A client that did start is checked once more against the brokers the cluster
    advertises: bootstrapping through a name the certificate carries (a load balancer)
    says nothing of the brokers' own names, and a refusal there would otherwise show only
    as aiokafka's endless reconnect errors.
    """
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        refused = await start_refused(settings)
        if refused is not None:
            raise refused from exc
        raise


async def start_refused(settings: Settings) -> AccessRefusedError | None:
    """Why the brokers refuse this client, when they do: an authentication or TLS failure.

    aiokafka's bootstrap logs why each server failed and then raises only "unable to
    bootstrap" (a connection error, retriable), so a wrong password or an untrusted
    certificate would look like a broker that is away and be waited for forever. One
    connection per bootstrap server, with the same options and a short timeout, all at
    once, tells the two apart; None when every failure is one a retry may cure.
    """
    options = connection_options(settings)
    servers: list[tuple[str, int]] = [
        (host, port) for host, port, _family in collect_hosts(options.pop("bootstrap_servers"))
    ]
    refusals = await asyncio.gather(*(_refusal(host, port, options) for host, port in servers))
    return next((refusal for refusal in refusals if refusal is not None), None)


async def _refusal(host: str, port: int, options: dict[str, Any]) -> AccessRefusedError | None:
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        connection = await create_conn(host, port, **options, request_timeout_ms=PROBE_TIMEOUT_MS)
    except (KafkaError, OSError, TimeoutError, ValueError) as exc:
        reason = tls.refusal(exc)
        if reason is not None:
            return AccessRefusedError(f"TLS with Kafka at {server} failed: {reason}")
        if isinstance(exc, KafkaError) and not exc.retriable:
            return AccessRefusedError(f"Kafka at {server} refused this client: {exc}")
        return None
    connection.close()
    return None


def command_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """The worker's consumer: manual commits, earliest offset for a new group, and a poll
    interval generous enough for the slowest batch plus its retries."""
    options = {
        **connection_options(settings),
        "group_id": settings.kafka_consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_interval_ms": 300_000,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        # A third of the session, as Kafka advises: two heartbeats may be lost.
        "heartbeat_interval_ms": settings.kafka_session_timeout_ms // 3,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        **overrides,
    }
    kafka_records.install()
    return AIOKafkaConsumer(**options)


def reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer outside any group, reading committed records of assigned partitions:
    for the relay's recovery, the operator verbs and the client's wait for an outcome.
    Like every consumer built here it reads batches tolerantly (``records.install``), so
    a record anyone wrote to a topic cannot make it raise."""
    kafka_records.install()
    return AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )


#: How long the broker lets a relay transaction stay open before it aborts it. A subscriber
#: follows ``customer.updated`` from this far (and some clock skew) before its cut, since a
#: transaction open across the cut may show its event before it and its state after.
RELAY_TRANSACTION_TIMEOUT_MS = 60_000


def event_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica."""
    options = {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
        **overrides,
    }
    return AIOKafkaProducer(**options)


def inbound(record: ConsumerRecord[bytes, bytes]) -> InboundRecord:
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        timestamp_type=record.timestamp_type,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers),
    )


#: The state topic keeps the latest record of each customer. A record stays at least a day
#: before compaction may remove it: a relay recovering after a crash reads back the tail of
#: its topics to find what it published, and subscribers following the topic see every
#: version of that day.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(86_400_000)}


async def cleanup_policy(settings: Settings, topic: str) -> str | None:
    """``topic``'s ``cleanup.policy``; None when it does not exist or cannot be read."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await start(admin, settings)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})]
        )
    except KafkaError:
        return None
    finally:
        await admin.close()
    for response in responses:
        for error_code, _message, _type, _name, entries in response.resources:
            for entry in entries if error_code == 0 else ():
                if entry[0] == "cleanup.policy":
                    return str(entry[1])
    return None


async def create_topics(settings: Settings, *, partitions: int | None = None) -> list[str]:
    """Create the service's topics if missing (the state topic compacted, unless
    ``PUBLISH_STATE`` is off); return the names created now."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await start(admin, settings)
        existing = set(await admin.list_topics())
        topics = settings.topics
        wanted = [topics.commands, topics.events, topics.rejections, topics.dead_letters]
        if settings.publish_state:
            wanted.append(topics.state)
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        partitions or settings.topic_partitions,
                        settings.topic_replication_factor,
                        topic_configs=STATE_TOPIC_CONFIG if name == topics.state else None,
                    )
                    for name in missing
                ]
            )
            for _topic, code, *_ in response.topic_errors:
                # "Already exists" means another process created it between list and create.
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"could not create topic {_topic}")
            await _wait_for_leaders(admin, missing)
        return missing

    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    """Return once every partition of ``topics`` has a leader, so that clients started
    right after creation do not race the metadata propagation."""
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT
    while True:
        described = await admin.describe_topics(topics)
        ready = all(
            topic["error_code"] == 0
            and topic["partitions"]
            and all(partition["leader"] >= 0 for partition in topic["partitions"])
            for topic in described
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"topics {topics} have no leaders after {TOPIC_READY_TIMEOUT}s")
        await asyncio.sleep(0.1)


async def max_message_bytes(settings: Settings, topics: Sequence[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes``: the largest record batch the broker takes.

    A topic whose configuration cannot be read (the principal may lack DescribeConfigs)
    gets Kafka's default, which is logged.
    """
    limits = dict.fromkeys(topics, DEFAULT_MAX_MESSAGE_BYTES)
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await start(admin, settings)
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
                for topic in topics
            ]
        )
    except KafkaError as exc:
        log.warning("topic_limits_unknown", topics=list(topics), error=repr(exc))
        return limits
    finally:
        await admin.close()
    for response in responses:
        for error_code, _message, _type, name, entries in response.resources:
            if error_code != 0:
                log.warning("topic_limits_unknown", topics=[name], error_code=error_code)
                continue
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    limits[name] = int(entry[1])
    return limits


async def partitions_of(settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, from the cluster's metadata."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await start(admin, settings)
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return sorted(
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in topic["partitions"]
    )


async def read_range(
    consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the assigned partitions from ``starts`` up to ``ends`` (exclusive).

    The end is reached when a poll returns nothing and the position is at the end; the
    position alone is not enough, since records may already be fetched but not returned,
    and a transaction marker may be the last offset.
    """
    pending = {tp for tp, start in starts.items() if start < ends[tp]}
    for tp in pending:
        consumer.seek(tp, starts[tp])
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        if not batch:
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
