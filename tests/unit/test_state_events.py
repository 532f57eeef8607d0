"""The ``customer.state`` record that goes out with each event, and alone for a backfill."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.event import CustomerStateEvent, CustomerUpdatedEvent
from schemas.topics import Topics
from service.domain import binary_mode
from service.domain.customer import Address, CustomerState
from service.domain.events import (
    EventContext,
    OutboundMessage,
    state_event_id,
    state_message,
    updated_message,
)
from service.domain.update import Applied, apply_update
from tests.unit.builders import CUSTOMER_ID, command, customer, no_owner

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CONTEXT = EventContext(
    source="customer-service", time=NOW, topics=Topics(events="e", state="s.compacted")
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def stored() -> CustomerState:
    return customer(address=Address(city="Rome", country="IT"), name="Ada", version=6)


def an_update(context: EventContext = CONTEXT, **attributes: Any) -> OutboundMessage:
    applied = apply_update(stored(), command({"name": "Ada King"}), no_owner)
    assert isinstance(applied, Applied)
    return updated_message(
        applied,
        command({"name": "Ada King"}, id="cmd-42", correlationid="corr-1"),
        event_id="evt-1",
        context=context,
        subscriptions=None,
        **attributes,
    )


def state_of(message: OutboundMessage) -> CustomerStateEvent:
    assert message.state is not None
    return CustomerStateEvent.model_validate_json(message.state.value)


def test_every_update_carries_its_state_for_the_state_topic_under_the_same_key() -> None:
    message = an_update()
    assert message.state is not None
    assert (message.topic, message.key) == ("e", CUSTOMER_ID.encode())
    assert message.state.topic == "s.compacted"


def test_the_state_is_the_updated_object_at_the_same_sequence() -> None:
    message = an_update(traceparent=TRACEPARENT)
    event = CustomerUpdatedEvent.model_validate_json(message.value or b"")
    state = state_of(message)
    assert state.type == "customer.state"
    assert (state.subject, state.sequence) == (CUSTOMER_ID, event.sequence)
    assert state.sequence == "00000000000000000007"
    assert state.data.object == event.data.object
    assert state.data.object.name == "Ada King"
    assert (state.causationid, state.correlationid, state.traceparent) == (
        "cmd-42",
        "corr-1",
        TRACEPARENT,
    )
    assert (state.source, state.time) == ("customer-service", NOW)


def test_the_state_has_an_id_of_its_own_derived_from_the_events() -> None:
    state = state_of(an_update())
    assert state.id == state_event_id("evt-1")
    assert state.id != "evt-1"
    assert state_event_id("evt-1") == state_event_id("evt-1")
    assert state_event_id("evt-2") != state_event_id("evt-1")


def test_the_state_leaves_out_expanded_subscriptions() -> None:
    body = orjson.loads(an_update().state.value)  # type: ignore[union-attr]
    assert "subscriptions" not in body["data"]["object"]


def test_no_state_is_built_when_publishing_it_is_off() -> None:
    message = an_update(dataclasses.replace(CONTEXT, publish_state=False))
    assert message.state is None
    assert message.topic == "e"


def test_a_binary_state_reads_back_as_its_structured_twin() -> None:
    structured = an_update()
    binary = an_update(dataclasses.replace(CONTEXT, content_mode="binary"))
    assert binary.state is not None
    assert structured.state is not None
    assert dict(binary.state.headers)["ce_type"] == b"customer.state"
    twin = binary_mode.as_structured(binary.state.value, binary.state.headers)
    assert twin is not None
    assert orjson.loads(twin) == orjson.loads(structured.state.value)


def test_a_backfilled_state_names_no_command() -> None:
    message = state_message(stored(), event_id="evt-b", context=CONTEXT)
    event = CustomerStateEvent.model_validate_json(message.value or b"")
    assert (message.topic, message.key, message.state) == (
        "s.compacted",
        CUSTOMER_ID.encode(),
        None,
    )
    assert event.causationid is None
    assert event.correlationid is None
    assert event.sequence == "00000000000000000006"
    assert event.data.object.name == "Ada"
    body = orjson.loads(message.value or b"")
    assert "causationid" not in body


def test_the_state_id_is_the_uuid5_of_the_events_id_however_it_is_computed() -> None:
    from service.domain.events import _STATE_NAMESPACE

    for event_id in ("evt-1", "9d5a7c1e-3b2f-4a6d-8e0c-1f2a3b4c5d6e", "é" * 40, ""):
        assert state_event_id(event_id) == str(uuid.uuid5(_STATE_NAMESPACE, event_id))


def test_the_state_of_an_update_is_byte_for_byte_the_state_built_alone() -> None:
    message = an_update(traceparent=TRACEPARENT)
    assert message.state is not None
    event = CustomerStateEvent.model_validate_json(message.state.value)
    applied = apply_update(stored(), command({"name": "Ada King"}), no_owner)
    assert isinstance(applied, Applied)
    alone = state_message(
        applied.after,
        event_id=event.id,
        context=CONTEXT,
        causationid="cmd-42",
        correlationid="corr-1",
        traceparent=TRACEPARENT,
    )
    assert (alone.value, alone.headers) == (message.state.value, message.state.headers)
