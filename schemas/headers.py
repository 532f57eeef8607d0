"""Kafka record headers that are part of the contract."""

from __future__ import annotations

#: W3C trace context of a command (read) and of an event (written).
TRACEPARENT = "traceparent"

#: CloudEvents on Kafka (the protocol binding, section 3). In binary content mode each
#: attribute travels in a ``ce_`` header, ``datacontenttype`` in ``content-type`` and the
#: data alone in the value; in structured mode ``content-type`` names the event format.
CE_PREFIX = "ce_"
CONTENT_TYPE = "content-type"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"


def binary_header(attribute: str) -> str:
    """The header a CloudEvents attribute travels in, in binary content mode."""
    return CONTENT_TYPE if attribute == "datacontenttype" else CE_PREFIX + attribute


#: On every record the relay publishes: the outbox row it came from. The relay reads it
#: back after a crash to tell what it already published; subscribers can ignore it.
OUTBOX_ID = "outbox-id"

#: Headers of a dead letter, named after Spring Kafka's dead-letter recoverer; values are
#: UTF-8 text. The original record's own headers come first (see ``ORIGINAL_PREFIX``).
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

#: On a dead letter that is not the whole original record (one that would not fit the
#: dead-letter topic, or had headers no client can read): the full original is kept in
#: PostgreSQL (table ``dead_letter_originals``), where ``dlq list`` and ``dlq replay`` find it.
#: ``DLT_TRUNCATED`` is ``true`` when the value (and the original headers) were cut to fit;
#: the sizes and the SHA-256 (hex) describe the original value and key.
DLT_TRUNCATED = "kafka_dlt-truncated"
DLT_ORIGINAL_KEY_SIZE = "kafka_dlt-original-key-size"
DLT_ORIGINAL_VALUE_SIZE = "kafka_dlt-original-value-size"
DLT_ORIGINAL_SHA256 = "kafka_dlt-original-sha256"
#: How many of the original headers were left out because their names are not UTF-8 or
#: contain NUL.
DLT_HEADERS_DROPPED = "kafka_dlt-headers-dropped"
#: Set only when the dead letter is a partial copy; the provenance headers are always set.
DLT_OPTIONAL = (
    DLT_TRUNCATED,
    DLT_ORIGINAL_KEY_SIZE,
    DLT_ORIGINAL_VALUE_SIZE,
    DLT_ORIGINAL_SHA256,
    DLT_HEADERS_DROPPED,
)

#: Added by ``customer-service dlq replay``: where the replayed record was dead-lettered.
REPLAYED_FROM = "dlq-replayed-from"

#: Header names that only this service writes. A consumed record that carries one (any
#: producer can) keeps it on its dead letter only renamed with ``ORIGINAL_PREFIX``, so that
#: nothing read back from an output topic, by the relay or by the dlq tools, is forged.
RESERVED_NAMES = (OUTBOX_ID,)
RESERVED_PREFIXES = (DLT_PREFIX,)
ORIGINAL_PREFIX = "original-"


def is_reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)
