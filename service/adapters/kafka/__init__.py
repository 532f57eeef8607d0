"""Kafka: the clients built from the settings (``clients``, the only place one is built),
reading fetched batches tolerantly (``records``), publishing outbox rows (``publisher``)
and which errors a retry cures (``errors``)."""

from service.adapters.kafka.clients import (
    command_consumer,
    create_topics,
    event_producer,
    inbound,
    max_message_bytes,
    partitions_of,
    read_range,
    reader,
)
from service.adapters.kafka.publisher import KafkaOutboxPublisher, KafkaOutboxTopics, partition_for

__all__ = [  # noqa: RUF022 - grouped by kind, not sorted
    # clients
    "command_consumer",
    "event_producer",
    "reader",
    # administration
    "create_topics",
    "max_message_bytes",
    "partitions_of",
    # reading
    "inbound",
    "read_range",
    # publishing
    "KafkaOutboxPublisher",
    "KafkaOutboxTopics",
    "partition_for",
]
