"""The client's wait for an outcome: which records answer the command it sent."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import ConsumerRecord

from schemas.__main__ import ROOT
from schemas.errors import invalid
from schemas.event import CustomerUpdatedEvent, CustomerUpdateRejectedEvent
from schemas.topics import Topics
from service.domain.binary_mode import ContentMode
from service.domain.events import EventContext, OutboundMessage, rejected_message
from service.entrypoints.client import outcome_of
from service.infrastructure.settings import Settings

SETTINGS = Settings(_env_file=None)
Headers = tuple[tuple[str, bytes], ...]


def record(topic: str, value: bytes | None, headers: Headers = ()) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic, partition=0, offset=3, timestamp=0, timestamp_type=0, key=b"cus_1",
        value=value, checksum=None, serialized_key_size=5,
        serialized_value_size=len(value or b""), headers=headers,
    )  # fmt: skip


def rejection(mode: ContentMode, command_id: str = "cmd-1") -> OutboundMessage:
    context = EventContext(
        "customer-service", datetime(2026, 1, 1, tzinfo=UTC), Topics(), content_mode=mode
    )
    return rejected_message(
        invalid("resource_missing", "subject", "No such customer: 'cus_1'"),
        customer_id="cus_1",
        command_id=command_id,
        correlationid=None,
        event_id="evt-1",
        context=context,
        record=("customer.update", 0, 7),
    )


def as_record(message: OutboundMessage) -> ConsumerRecord[bytes, bytes]:
    headers = tuple((name, value or b"") for name, value in message.headers)
    return record(message.topic, message.value, headers)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_rejection_of_the_command_is_its_outcome_in_either_mode(mode: ContentMode) -> None:
    outcome = outcome_of(as_record(rejection(mode)), SETTINGS, "cmd-1")

    assert isinstance(outcome, CustomerUpdateRejectedEvent)
    assert outcome.data.error.code == "resource_missing"
    assert outcome_of(as_record(rejection(mode, "cmd-2")), SETTINGS, "cmd-1") is None


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"not json", ()),
        (b"[1, 2]", ()),
        (None, ()),
        (b'{"causationid": "cmd-1"}', ()),
        (b"{}", (("ce_specversion", b"1.0"), ("ce_id", b"a"), ("ce_id", b"b"))),
        (b"not json", (("ce_specversion", b"1.0"),)),
        (b"{}", (("ce_specversion", b"1.0"), ("ce_expectedversion", b"99999999999999999999"))),
        (b"[" * 254 + b"]" * 254, (("ce_specversion", b"1.0"),)),
        (b"{}", (("ce_specversion", b"1.0"), ("ce_\udcff", b"x"))),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "tombstone",
        "not-an-event",
        "doubled-header",
        "binary-junk",
        "beyond-64-bits",
        "deep",
        "name-not-utf-8",
    ],
)
@pytest.mark.parametrize("topic", [SETTINGS.topic_events, SETTINGS.topic_rejections])
def test_a_record_that_is_no_event_is_skipped_not_raised(
    topic: str, value: bytes | None, headers: Headers
) -> None:
    assert outcome_of(record(topic, value, headers), SETTINGS, "cmd-1") is None


def test_an_event_of_the_command_is_its_outcome() -> None:
    example = orjson.loads((ROOT / "examples" / "customer.updated.json").read_bytes())
    value = orjson.dumps({**example, "causationid": "cmd-7"})

    found = outcome_of(record(SETTINGS.topic_events, value), SETTINGS, "cmd-7")

    assert found == CustomerUpdatedEvent.model_validate_json(value)
    assert outcome_of(record(SETTINGS.topic_events, value), SETTINGS, "cmd-8") is None
