"""Interoperability with a client no one here wrote: the CloudEvents Python SDK's Kafka
binding produces commands in both content modes through a plain Kafka producer, and
parses the events the worker publishes in either ``EVENT_CONTENT_MODE``."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import (
    KafkaMessage,
    from_binary,
    from_structured,
    to_binary,
    to_structured,
)

from service.infrastructure.settings import Settings
from tests.support import (
    UPDATE_PERMISSION,
    TopicReader,
    event_topics,
    insert_customer,
    produce,
    running_worker,
)

CUSTOMER = "cus_sdk"


def sdk_command(command_id: str, name: str) -> CloudEvent:
    attributes = {
        "type": "customer.update",
        "source": "cloudevents-sdk",
        "subject": CUSTOMER,
        "id": command_id,
        "datacontenttype": "application/json",
        "principal": "svc-sdk",
        "permissions": UPDATE_PERMISSION,
        "correlationid": f"corr-{command_id}",
    }
    return CloudEvent(attributes, {"name": name})


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


@pytest.mark.parametrize(
    ("content_mode", "parse"), [("structured", from_structured), ("binary", from_binary)]
)
async def test_sdk_commands_in_either_mode_apply_and_their_events_parse_with_the_sdk(
    settings: Settings,
    db: asyncpg.Connection,
    content_mode: str,
    parse: Callable[[KafkaMessage], CloudEvent],
) -> None:
    await insert_customer(db, CUSTOMER, invoice_prefix="SDK1")
    sent: list[tuple[str, str, Callable[..., KafkaMessage]]] = [
        ("cmd-sdk-binary", "By binary", to_binary),
        ("cmd-sdk-structured", "By structured", to_structured),
    ]
    async with TopicReader(settings, event_topics(settings)) as reader:
        for command_id, name, convert in sent:
            message = convert(sdk_command(command_id, name), key_mapper=lambda e: e["subject"])
            assert isinstance(message.key, str)
            await produce(
                settings,
                [(message.key.encode(), _bytes(message.value))],
                headers=list(message.headers.items()),
            )
        worker_settings = settings.model_copy(update={"event_content_mode": content_mode})
        async with running_worker(worker_settings):
            records = await reader.wait_for_count(settings.topic_events, len(sent))

    parsed = [
        parse(
            KafkaMessage(
                {name: value for name, value in record.headers if value is not None},
                record.key,
                record.value or b"",
            )
        )
        for record in records
    ]
    assert [event["type"] for event in parsed] == ["customer.updated"] * 2
    assert [event["datacontenttype"] for event in parsed] == [
        # The SDK's from_structured reads datacontenttype from the record's content-type,
        # which in structured mode names the envelope's format (Kafka binding, 3.3).
        "application/cloudevents+json; charset=UTF-8"
        if content_mode == "structured"
        else "application/json"
    ] * 2
    assert [event["causationid"] for event in parsed] == [c for c, _, _ in sent]
    assert [event["correlationid"] for event in parsed] == [f"corr-{c}" for c, _, _ in sent]
    assert [event["subject"] for event in parsed] == [CUSTOMER] * 2
    assert [dict(event.get_data() or {})["object"]["name"] for event in parsed] == [
        name for _, name, _ in sent
    ]
    versions = [int(event["sequence"]) for event in parsed]
    assert versions == [versions[0], versions[0] + 1]
