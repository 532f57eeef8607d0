"""Kafka record headers that are part of the contract."""

from __future__ import annotations

#: W3C trace context of a command (read) and of an event (written).
TRACEPARENT = "traceparent"

#: On every record the relay publishes: the outbox row it came from. The relay reads it
#: back after a crash to tell what it already published; subscribers can ignore it.
OUTBOX_ID = "outbox-id"

#: Headers of a dead letter, named after Spring Kafka's dead-letter recoverer; values are
#: UTF-8 text. The original record's own headers come first, unchanged.
DLT_PREFIX = "kafka_dlt-"
DLT_ORIGINAL_TOPIC = "kafka_dlt-original-topic"
DLT_ORIGINAL_PARTITION = "kafka_dlt-original-partition"
DLT_ORIGINAL_OFFSET = "kafka_dlt-original-offset"
DLT_ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
DLT_ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
DLT_ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
#: A reason code such as ``record_invalid_json`` (Spring puts an exception class here).
DLT_ERROR_CODE = "kafka_dlt-exception-cause-fqcn"
DLT_ERROR_MESSAGE = "kafka_dlt-exception-message"

#: Added by ``customer-service dlq replay``: where the replayed record was dead-lettered.
REPLAYED_FROM = "dlq-replayed-from"
