"""The messages published for applied, refused and unreadable commands."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import pytest
from cloudevents.v1.kafka import KafkaMessage, from_binary

from schemas.customer import Customer, Subscription, SubscriptionList
from schemas.errors import ErrorObject, invalid
from schemas.event import CustomerUpdatedEvent, CustomerUpdateRejectedEvent
from schemas.topics import Topics
from service.domain import binary_mode
from service.domain.customer import Address, CustomerState
from service.domain.events import (
    EventContext,
    OutboundMessage,
    dead_letter_message,
    is_partial_copy,
    record_size,
    rejected_message,
    updated_message,
)
from service.domain.inbound import Headers, InboundRecord, Poison
from service.domain.update import Applied, apply_update
from tests.unit.builders import CUSTOMER_ID, command, customer, no_owner, value_of

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CONTEXT = EventContext(source="customer-service", time=NOW, topics=Topics())
#: Where a command was read (topic, partition, offset).
POSITION = ("customer.update", 2, 41)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SUBSCRIPTIONS = SubscriptionList(
    data=[
        Subscription(
            id="sub_1", status="active", created=1_700_000_000, current_period_end=1_702_592_000
        )
    ],
    has_more=False,
    url=f"/v1/customers/{CUSTOMER_ID}/subscriptions",
)
ERROR = invalid("parameter_invalid", "data.name", "Invalid data.name: too long")


def stored() -> CustomerState:
    return customer(
        address=Address(city="Rome", country="IT"),
        name="Ada",
        preferred_locales=("it",),
        version=6,
    )


def applied_update(data: dict[str, Any]) -> Applied:
    result = apply_update(stored(), command(data), no_owner)
    assert isinstance(result, Applied), result
    return result


def updated_body(
    *,
    correlationid: str | None = None,
    traceparent: str | None = None,
    subscriptions: SubscriptionList | None = None,
) -> tuple[bytes, dict[str, Any]]:
    message = updated_message(
        applied_update({"name": "Ada King", "address": {"city": "Milan"}}),
        command({"name": "Ada King"}, id="cmd-42", correlationid=correlationid),
        event_id="evt-1",
        context=CONTEXT,
        subscriptions=subscriptions,
        traceparent=traceparent,
    )
    assert message.value is not None
    body: dict[str, Any] = orjson.loads(message.value)
    return message.value, body


def rejected(command_id: str | None, correlationid: str | None = None) -> bytes:
    return a_rejection(CONTEXT, command_id, correlationid).value or b""


# customer.updated


def test_an_update_is_published_to_the_events_topic_keyed_by_customer() -> None:
    message = updated_message(
        applied_update({"name": "Ada King"}),
        command({"name": "Ada King"}),
        event_id="evt-1",
        context=EventContext("customer-service", NOW, Topics(events="events.v2")),
        subscriptions=None,
    )
    assert (message.topic, message.key) == ("events.v2", CUSTOMER_ID.encode())


def test_the_updated_event_validates_against_its_schema() -> None:
    value, _ = updated_body(correlationid="corr-1", traceparent=TRACEPARENT)
    event = CustomerUpdatedEvent.model_validate_json(value)
    assert (event.id, event.source, event.subject, event.time) == (
        "evt-1",
        "customer-service",
        CUSTOMER_ID,
        NOW,
    )
    assert (event.type, event.causationid, event.correlationid, event.traceparent) == (
        "customer.updated",
        "cmd-42",
        "corr-1",
        TRACEPARENT,
    )


def test_the_sequence_is_the_new_version_zero_padded() -> None:
    _, body = updated_body()
    assert body["sequence"] == "00000000000000000007"


def test_the_object_is_the_customer_after_the_update() -> None:
    value, _ = updated_body()
    event = CustomerUpdatedEvent.model_validate_json(value)
    after = applied_update({"name": "Ada King", "address": {"city": "Milan"}}).after
    assert event.data.object == Customer.model_validate(after.to_object())
    assert event.data.object.name == "Ada King"


def test_previous_attributes_are_published_in_object_form() -> None:
    _, body = updated_body()
    assert body["data"]["previous_attributes"] == {
        "name": "Ada",
        "address": {
            "city": "Rome",
            "country": "IT",
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": None,
        },
    }


def test_subscriptions_are_absent_when_not_expanded() -> None:
    _, body = updated_body()
    assert "subscriptions" not in body["data"]["object"]


def test_subscriptions_are_present_when_given() -> None:
    value, body = updated_body(subscriptions=SUBSCRIPTIONS)
    assert body["data"]["object"]["subscriptions"]["data"][0]["id"] == "sub_1"
    event = CustomerUpdatedEvent.model_validate_json(value)
    assert event.data.object.subscriptions == SUBSCRIPTIONS


@pytest.mark.parametrize("attribute", ["correlationid", "traceparent"])
def test_absent_optional_attributes_are_omitted_from_the_updated_event(attribute: str) -> None:
    _, body = updated_body()
    assert attribute not in body


def test_present_optional_attributes_are_published() -> None:
    _, body = updated_body(correlationid="corr-1", traceparent=TRACEPARENT)
    assert (body["correlationid"], body["traceparent"]) == ("corr-1", TRACEPARENT)


def test_the_updated_event_without_optional_attributes_validates() -> None:
    value, _ = updated_body()
    event = CustomerUpdatedEvent.model_validate_json(value)
    assert (event.correlationid, event.traceparent) == (None, None)


# customer.update.rejected


def test_a_rejection_is_published_to_the_rejections_topic_keyed_by_customer() -> None:
    message = rejected_message(
        ERROR,
        customer_id=CUSTOMER_ID,
        command_id="cmd-1",
        correlationid=None,
        event_id="evt-2",
        context=EventContext("customer-service", NOW, Topics(rejections="rejections.v2")),
        record=POSITION,
    )
    assert (message.topic, message.key) == ("rejections.v2", CUSTOMER_ID.encode())


def test_the_rejected_event_validates_against_its_schema() -> None:
    event = CustomerUpdateRejectedEvent.model_validate_json(rejected("cmd-1", "corr-1"))
    assert (event.type, event.id, event.subject, event.causationid, event.correlationid) == (
        "customer.update.rejected",
        "evt-2",
        CUSTOMER_ID,
        "cmd-1",
        "corr-1",
    )
    assert (event.data.command_id, event.data.customer_id) == ("cmd-1", CUSTOMER_ID)
    assert event.data.error == ERROR


def test_the_rejected_event_carries_the_error_object() -> None:
    body = orjson.loads(rejected("cmd-1"))
    assert body["data"]["error"] == {
        "type": "invalid_request_error",
        "code": "parameter_invalid",
        "param": "data.name",
        "message": "Invalid data.name: too long",
    }


def test_a_rejection_without_command_id_omits_causationid_but_keeps_a_null_command_id() -> None:
    body = orjson.loads(rejected(None))
    assert "causationid" not in body
    assert "correlationid" not in body
    assert body["data"]["command_id"] is None


def test_a_rejection_without_command_id_validates_against_its_schema() -> None:
    event = CustomerUpdateRejectedEvent.model_validate_json(rejected(None))
    assert event.causationid is None
    assert event.data.command_id is None


def test_the_rejected_error_round_trips() -> None:
    error = ErrorObject(
        type="idempotency_error", code="idempotency_key_reused", param="id", message="reused"
    )
    value = value_of(
        rejected_message(
            error,
            customer_id=CUSTOMER_ID,
            command_id="cmd-1",
            correlationid=None,
            event_id="evt-3",
            context=CONTEXT,
            record=POSITION,
        )
    )
    assert CustomerUpdateRejectedEvent.model_validate_json(value).data.error == error


# Content modes (EVENT_CONTENT_MODE)

BINARY = dataclasses.replace(CONTEXT, content_mode="binary")


def both_modes(
    context_of: Callable[[EventContext], OutboundMessage],
) -> tuple[OutboundMessage, OutboundMessage]:
    return context_of(CONTEXT), context_of(BINARY)


def an_update(context: EventContext) -> OutboundMessage:
    return updated_message(
        applied_update({"name": "Ada King"}),
        command({"name": "Ada King"}, id="cmd-42", correlationid="corr-1"),
        event_id="evt-1",
        context=context,
        subscriptions=None,
        traceparent=TRACEPARENT,
    )


def a_rejection(
    context: EventContext, command_id: str | None = "cmd-9", correlationid: str | None = None
) -> OutboundMessage:
    return rejected_message(
        ERROR,
        customer_id=CUSTOMER_ID,
        command_id=command_id,
        correlationid=correlationid,
        event_id="evt-2",
        context=context,
        record=POSITION,
    )


def test_a_structured_event_names_its_format_in_content_type() -> None:
    for message in (an_update(CONTEXT), a_rejection(CONTEXT)):
        assert message.headers[0] == (
            "content-type",
            b"application/cloudevents+json; charset=UTF-8",
        )


def test_a_binary_event_carries_the_data_as_value_and_every_attribute_as_a_ce_header() -> None:
    structured, binary = both_modes(an_update)
    envelope = orjson.loads(structured.value or b"")
    assert orjson.loads(binary.value or b"") == envelope["data"]
    assert (binary.topic, binary.key) == (structured.topic, structured.key)
    expected = [
        ("content-type" if name == "datacontenttype" else f"ce_{name}", str(value).encode())
        for name, value in envelope.items()
        if name != "data"
    ]
    assert list(binary.headers) == [*expected, ("traceparent", TRACEPARENT.encode())]
    assert dict(binary.headers)["ce_time"] == b"2024-05-01T12:00:00Z"
    assert dict(binary.headers)["ce_sequence"] == envelope["sequence"].encode()


@pytest.mark.parametrize("build", [an_update, a_rejection, partial(a_rejection, command_id=None)])
def test_a_binary_event_reads_back_as_its_structured_twin(
    build: Callable[[EventContext], OutboundMessage],
) -> None:
    structured, binary = both_modes(build)
    twin = binary_mode.as_structured(binary.value, binary.headers)
    assert twin is not None
    assert orjson.loads(twin) == orjson.loads(structured.value or b"")
    assert binary_mode.as_structured(structured.value, structured.headers) == structured.value


def test_a_binary_rejection_without_command_id_has_no_causationid_header() -> None:
    names = [name for name, _ in a_rejection(BINARY, command_id=None).headers]
    assert "ce_causationid" not in names
    assert "ce_causationid" in [name for name, _ in a_rejection(BINARY).headers]


@pytest.mark.parametrize("build", [an_update, a_rejection])
def test_the_cloudevents_sdk_reads_a_binary_event_as_the_structured_envelope(
    build: Callable[[EventContext], OutboundMessage],
) -> None:
    structured, binary = both_modes(build)
    envelope = orjson.loads(structured.value or b"")
    headers = {name: value for name, value in binary.headers if value is not None}
    event = from_binary(KafkaMessage(headers, binary.key, binary.value or b""))
    attributes = dict(event.get_attributes())
    assert attributes.pop("partitionkey") == CUSTOMER_ID.encode()
    assert attributes == {name: value for name, value in envelope.items() if name != "data"}
    assert event.get_data() == envelope["data"]


@pytest.mark.parametrize(
    "data",
    [b'{"n": 123456789012345678901234567890}', b"[" * 300 + b"]" * 300, b'{"a": 1, "a": 2}'],
    ids=["beyond-64-bits", "deep", "repeated-key"],
)
def test_a_binary_events_data_is_read_back_as_its_bytes(data: bytes) -> None:
    message = an_update(BINARY)

    twin = binary_mode.as_structured(data, message.headers)

    assert twin is not None
    assert twin.endswith(b',"data":' + data + b"}")
    assert orjson.loads(twin[: -len(data) - 9] + b"}") == {
        name: value
        for name, value in orjson.loads(an_update(CONTEXT).value or b"").items()
        if name != "data"
    }


def test_a_binary_record_whose_headers_are_no_event_is_refused_when_read_back() -> None:
    message = an_update(BINARY)
    doubled = (*message.headers, ("ce_id", b"evt-again"))
    with pytest.raises(ValueError, match="ce_id"):
        binary_mode.as_structured(message.value, doubled)


# Dead letters


def poisoned(
    timestamp_type: int = 0,
    value: bytes | None = b"[1]",
    *,
    key: bytes = b"cus_1",
    headers: Headers | None = None,
) -> InboundRecord:
    return InboundRecord(
        topic="customer.update",
        partition=2,
        offset=41,
        timestamp=1_714_564_800_000,
        timestamp_type=timestamp_type,
        key=key,
        value=value,
        headers=headers
        if headers is not None
        else (("traceparent", TRACEPARENT.encode()), ("x-origin", b"\x00\xff")),
    )


POISON = Poison("record_not_object", "The record value is a JSON array, not an object")


def test_a_dead_letter_keeps_the_original_key_value_and_headers_first() -> None:
    original = poisoned()
    message = dead_letter_message(
        original, POISON, consumer_group="customer-service", topic="customer.update.dlq"
    )
    assert (message.topic, message.key, message.value) == (
        "customer.update.dlq",
        original.key,
        original.value,
    )
    assert message.headers[: len(original.headers)] == original.headers


def test_a_dead_letter_says_where_it_came_from_and_why() -> None:
    message = dead_letter_message(
        poisoned(), POISON, consumer_group="customer-service", topic="customer.update.dlq"
    )
    added = dict(message.headers[2:])
    assert added == {
        "kafka_dlt-original-topic": b"customer.update",
        "kafka_dlt-original-partition": b"2",
        "kafka_dlt-original-offset": b"41",
        "kafka_dlt-original-timestamp": b"1714564800000",
        "kafka_dlt-original-timestamp-type": b"CreateTime",
        "kafka_dlt-original-consumer-group": b"customer-service",
        "kafka_dlt-exception-cause-fqcn": b"record_not_object",
        "kafka_dlt-exception-message": POISON.message.encode(),
    }


def test_a_dead_letter_of_a_log_append_time_record_says_so() -> None:
    message = dead_letter_message(
        poisoned(timestamp_type=1), POISON, consumer_group="g", topic="dlq"
    )
    assert ("kafka_dlt-original-timestamp-type", b"LogAppendTime") in message.headers


def test_a_dead_lettered_tombstone_stays_a_tombstone() -> None:
    message = dead_letter_message(
        poisoned(value=None),
        Poison("record_value_missing", "tombstone"),
        consumer_group="g",
        topic="dlq",
    )
    assert message.value is None
    assert message.key == b"cus_1"


def test_the_relay_puts_each_customer_where_kafkas_default_partitioner_does() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from service.adapters.kafka.publisher import partition_for

    for number in range(2000):
        key = f"cus_{number}".encode()
        for partitions in (1, 3, 6, 12):
            expected = DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))
            assert partition_for(key, partitions) == expected


def test_our_own_headers_on_the_original_are_renamed_on_its_dead_letter() -> None:
    original = poisoned(
        headers=(("outbox-id", b"42"), ("kafka_dlt-original-offset", b"9"), ("x-a", b"1"))
    )
    message = dead_letter_message(original, POISON, consumer_group="g", topic="dlq")
    names = [name for name, _ in message.headers]
    assert message.headers[:3] == (
        ("original-outbox-id", b"42"),
        ("original-kafka_dlt-original-offset", b"9"),
        ("x-a", b"1"),
    )
    assert "outbox-id" not in names
    assert names.count("kafka_dlt-original-offset") == 1
    assert dict(message.headers)["kafka_dlt-original-offset"] == b"41"
    assert not is_partial_copy(message)


def test_headers_no_client_can_read_are_left_out_and_counted() -> None:
    original = poisoned(headers=(("x-\x00", b"1"), ("\udcffbad", None), ("x-ok", None)))
    message = dead_letter_message(original, POISON, consumer_group="g", topic="dlq")
    assert message.headers[0] == ("x-ok", None)
    assert dict(message.headers)["kafka_dlt-headers-dropped"] == b"2"
    assert is_partial_copy(message)


def test_a_dead_letter_that_would_not_fit_is_cut_to_fit_with_its_size_and_digest() -> None:
    value = b"v" * 50_000
    original = poisoned(value=value, headers=(("x-big", b"h" * 20_000),))
    message = dead_letter_message(
        original, POISON, consumer_group="g", topic="dlq", max_bytes=10_000
    )
    headers = dict(message.headers)
    assert record_size(message.key, message.value, message.headers) + 64 <= 10_000
    assert message.key == original.key
    assert message.value is not None
    assert value.startswith(message.value)
    assert len(message.value) > 8_000
    assert "x-big" not in headers
    assert headers["kafka_dlt-truncated"] == b"true"
    assert headers["kafka_dlt-original-value-size"] == b"50000"
    assert headers["kafka_dlt-original-key-size"] == b"5"
    assert headers["kafka_dlt-original-sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["kafka_dlt-exception-cause-fqcn"] == POISON.code.encode()
    assert is_partial_copy(message)


def test_an_over_long_key_is_cut_too() -> None:
    original = poisoned(key=b"k" * 50_000)
    message = dead_letter_message(
        original, POISON, consumer_group="g", topic="dlq", max_bytes=10_000
    )
    assert message.key == b"k" * 1024
    assert dict(message.headers)["kafka_dlt-original-key-size"] == b"50000"


def test_a_dead_letter_that_fits_exactly_is_kept_whole() -> None:
    original = poisoned(value=b"v" * 5000)
    whole = dead_letter_message(original, POISON, consumer_group="g", topic="dlq")
    limit = record_size(whole.key, whole.value, whole.headers) + 64
    assert (
        dead_letter_message(original, POISON, consumer_group="g", topic="dlq", max_bytes=limit)
        == whole
    )
    cut = dead_letter_message(
        original, POISON, consumer_group="g", topic="dlq", max_bytes=limit - 1
    )
    assert is_partial_copy(cut)


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"not json", (("ce_specversion", b"1.0"),), "line 1 column 1"),
        (
            b"{}",
            (("ce_specversion", b"1.0"), ("ce_expectedversion", b"-99999999999999999999")),
            "64-bit",
        ),
    ],
    ids=["not-json", "beyond-64-bits"],
)
def test_what_cannot_be_an_envelope_is_a_value_error(
    value: bytes, headers: Headers, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        binary_mode.as_structured(value, headers)
