"""The published contract files: in step with the models, and true of real messages."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError

from schemas import SCHEMA_VERSION, fields
from schemas.__main__ import ROOT, main
from schemas.command import CustomerUpdateCommand
from schemas.customer import Subscription, SubscriptionList
from schemas.errors import invalid
from schemas.event import CustomerStateEvent, CustomerUpdatedEvent, CustomerUpdateRejectedEvent
from schemas.generate import PAYLOADS, render
from schemas.headers import DLT_OPTIONAL, binary_header
from schemas.topics import Topics
from service.domain import events
from service.domain.authorization import UnsignedAuthorizer
from service.domain.binary_mode import ContentMode
from service.domain.customer import Address, CustomerState
from service.domain.events import EventContext, rejected_message, updated_message
from service.domain.inbound import Headers, InboundRecord, Invalid, Limits, classify
from service.domain.update import Applied, apply_update
from tests.unit.builders import value_of

Json = dict[str, Any]

EXAMPLES = ROOT / "examples"
COMMAND = "customer.update"
UPDATED = "customer.updated"
REJECTED = "customer.update.rejected"
STATE = "customer.state"
MODELS: dict[str, type[BaseModel]] = {
    COMMAND: CustomerUpdateCommand,
    UPDATED: CustomerUpdatedEvent,
    REJECTED: CustomerUpdateRejectedEvent,
    STATE: CustomerStateEvent,
}

# What the examples assume: the service's defaults and one moment for the whole batch.
CONTEXT = EventContext(
    source="customer-service",
    time=datetime(2025, 3, 14, 9, 26, 54, 120000, tzinfo=UTC),
    topics=Topics(),
)


def load_json(path: Path) -> Json:
    document: Json = json.loads(path.read_text(encoding="utf-8"))
    return document


def schema(message_type: str) -> Json:
    return load_json(ROOT / "json" / f"{message_type}.schema.json")


def example(message_type: str) -> Json:
    return load_json(EXAMPLES / f"{message_type}.json")


def validator(message_type: str) -> Any:
    return Draft202012Validator(
        schema(message_type), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(message_type: str, document: Json) -> list[str]:
    return [error.message for error in validator(message_type).iter_errors(document)]


def stored_customer() -> CustomerState:
    """The customer the command example is applied to."""
    return CustomerState(
        id="cus_NffrFeUfNV2Hib",
        created=1680893993,
        delinquent=False,
        address=Address(
            line1="Invalidenstrasse 117", city="Berlin", country="DE", postal_code="10115"
        ),
        description="Enterprise plan since 2023",
        email="jenny@rosen.example.com",
        invoice_prefix="NFFRFEUF",
        next_invoice_sequence=5,
        name="Jenny Rosen",
        phone="+49 30 1234567",
        preferred_locales=("en",),
        tax_exempt="none",
        last_invoice_sequence=4,
        version=3,
    )


def expanded_subscriptions(customer_id: str) -> SubscriptionList:
    return SubscriptionList(
        data=[
            Subscription(
                id="sub_1MowQVLkdIwHu7ix",
                status="active",
                created=1678037688,
                current_period_end=1680716088,
            )
        ],
        has_more=False,
        url=f"/v1/customers/{customer_id}/subscriptions",
    )


def command_with(data: Json, **envelope: Any) -> Json:
    return {**example(COMMAND), **envelope, "data": data}


def applied(command: CustomerUpdateCommand) -> Applied:
    outcome = apply_update(stored_customer(), command, lambda prefix: None)
    assert isinstance(outcome, Applied), outcome
    return outcome


def rejection_of(document: Json, *, event_id: str) -> tuple[bytes | None, Json]:
    """The rejection the service publishes for a command record holding ``document``."""
    record = InboundRecord(
        topic=COMMAND,
        partition=3,
        offset=1207,
        timestamp=1741944413000,
        timestamp_type=0,
        key=document["subject"].encode(),
        value=json.dumps(document).encode(),
    )
    outcome = classify(record, Limits(), UnsignedAuthorizer())
    assert isinstance(outcome, Invalid), outcome
    message = rejected_message(
        outcome.error,
        customer_id=outcome.customer_id,
        command_id=outcome.command_id,
        correlationid=outcome.correlationid,
        event_id=event_id,
        context=CONTEXT,
        record=record.position,
    )
    assert message.topic == REJECTED
    return message.key, json.loads(value_of(message))


# -- the committed files are what the models render ---------------------------------------


def test_committed_files_equal_what_the_models_render() -> None:
    stale = [
        relative
        for relative, text in render().items()
        if not (ROOT / relative).is_file() or (ROOT / relative).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{stale} differ from the models: run `make schemas` and commit them"


def test_no_schema_file_is_left_over_from_a_removed_model() -> None:
    rendered = {relative for relative in render() if relative.startswith("json/")}
    committed = {f"json/{path.name}" for path in (ROOT / "json").iterdir()}
    assert committed == rendered


def test_render_is_deterministic() -> None:
    assert render() == render()


def test_check_mode_reports_stale_files_and_writing_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check"], root=tmp_path) == 1
    assert "make schemas" in capsys.readouterr().err

    assert main([], root=tmp_path) == 0
    assert f"wrote {tmp_path.name}/asyncapi.yaml" in capsys.readouterr().out
    assert main(["--check"], root=tmp_path) == 0

    changed = tmp_path / "json" / "customer.updated.schema.json"
    changed.write_text("{}\n", encoding="utf-8")
    assert main(["--check"], root=tmp_path) == 1
    assert f"{tmp_path.name}/json/customer.updated.schema.json" in capsys.readouterr().err
    assert main([], root=tmp_path) == 0
    assert main(["--check"], root=tmp_path) == 0


# -- the JSON Schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", list(MODELS))
def test_schema_is_a_valid_2020_12_schema_with_identity(message_type: str) -> None:
    document = schema(message_type)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"{message_type}.schema.json"
    assert document["title"]
    assert document["description"]


def test_every_payload_has_a_schema_file() -> None:
    assert {payload.message_type for payload in PAYLOADS} == set(MODELS)


@pytest.mark.parametrize("message_type", list(MODELS))
def test_example_is_valid_for_the_schema_and_the_model(message_type: str) -> None:
    document = example(message_type)
    assert schema_errors(message_type, document) == []
    MODELS[message_type].model_validate_json(json.dumps(document))


def test_updated_example_is_what_the_service_publishes_for_the_command_example() -> None:
    command = CustomerUpdateCommand.model_validate(example(COMMAND))
    message = updated_message(
        applied(command),
        command,
        event_id=example(UPDATED)["id"],
        context=CONTEXT,
        subscriptions=expanded_subscriptions(command.subject),
    )
    assert message.topic == UPDATED
    assert message.key == command.subject.encode()
    assert json.loads(value_of(message)) == example(UPDATED)


def test_state_example_is_what_the_service_publishes_with_the_updated_example() -> None:
    command = CustomerUpdateCommand.model_validate(example(COMMAND))
    message = updated_message(
        applied(command),
        command,
        event_id=example(UPDATED)["id"],
        context=CONTEXT,
        subscriptions=expanded_subscriptions(command.subject),
    )
    assert message.state is not None
    assert message.state.topic == STATE
    assert json.loads(message.state.value) == example(STATE)


def test_rejected_example_is_what_the_service_publishes_for_a_string_sequence() -> None:
    published = example(REJECTED)
    command = command_with({"next_invoice_sequence": "12"}, id=published["causationid"])
    key, event = rejection_of(command, event_id=published["id"])
    assert key == command["subject"].encode()
    assert event == published


def test_events_without_optional_attributes_are_valid() -> None:
    # The serializers leave out what is null, so these events lack keys the examples have.
    command = CustomerUpdateCommand.model_validate(
        command_with({"name": "Jenny R."}, correlationid=None)
    )
    updated = json.loads(
        value_of(
            updated_message(
                applied(command), command, event_id="e-1", context=CONTEXT, subscriptions=None
            )
        )
    )
    assert "correlationid" not in updated
    assert "subscriptions" not in updated["data"]["object"]
    assert schema_errors(UPDATED, updated) == []
    CustomerUpdatedEvent.model_validate_json(json.dumps(updated))

    without_id = command_with({})
    del without_id["id"], without_id["correlationid"]
    _, rejected = rejection_of(without_id, event_id="e-2")
    assert "causationid" not in rejected
    assert rejected["data"]["command_id"] is None
    assert schema_errors(REJECTED, rejected) == []
    CustomerUpdateRejectedEvent.model_validate_json(json.dumps(rejected))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"nickname": "JR"}, id="unknown field"),
        pytest.param({"next_invoice_sequence": "5"}, id="sequence as a string"),
        pytest.param({"next_invoice_sequence": 0}, id="sequence below 1"),
        pytest.param({"next_invoice_sequence": None}, id="sequence cleared"),
        pytest.param({"tax_exempt": "maybe"}, id="unknown tax status"),
        pytest.param({"tax_exempt": None}, id="tax status cleared"),
        pytest.param({"invoice_prefix": None}, id="prefix cleared"),
        pytest.param({"invoice_prefix": ""}, id="prefix emptied"),
        pytest.param({"invoice_prefix": "jr-1"}, id="prefix lowercase"),
        pytest.param({"name": "x" * (fields.MAX_NAME + 1)}, id="name too long"),
        pytest.param({"address": {"country": "de"}}, id="country lowercase"),
        pytest.param({"address": {"floor": "3"}}, id="unknown address field"),
        pytest.param({"preferred_locales": ["en", "en"]}, id="repeated locale"),
        pytest.param({"expand": ["invoices"]}, id="unknown expansion"),
    ],
)
def test_invalid_data_is_refused_by_the_schema_and_the_model(data: Json) -> None:
    document = command_with(data)
    assert schema_errors(COMMAND, document) != []
    with pytest.raises(ValidationError):
        CustomerUpdateCommand.model_validate(document)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"phone": ""}, id="text emptied"),
        pytest.param({"name": None}, id="text cleared"),
        pytest.param({"address": ""}, id="address emptied"),
        pytest.param({"address": None}, id="address cleared"),
        pytest.param({"address": {"country": ""}}, id="country emptied"),
        pytest.param({"preferred_locales": ""}, id="locales emptied"),
        pytest.param({"tax_exempt": "reverse"}, id="tax status set"),
    ],
)
def test_clearing_is_accepted_by_the_schema_and_the_model(data: Json) -> None:
    document = command_with(data)
    assert schema_errors(COMMAND, document) == []
    CustomerUpdateCommand.model_validate(document)


def test_fields_that_cannot_be_cleared_are_not_advertised_as_nullable() -> None:
    properties = schema(COMMAND)["$defs"]["CustomerUpdate"]["properties"]
    for name in ("invoice_prefix", "next_invoice_sequence", "tax_exempt"):
        assert "default" not in properties[name], name
        assert "anyOf" not in properties[name], name
        assert properties[name]["type"] in ("string", "integer"), name


def test_field_limits_are_published() -> None:
    definitions = schema(COMMAND)["$defs"]
    data = definitions["CustomerUpdate"]["properties"]

    def max_length(prop: Json) -> int:
        lengths = [branch["maxLength"] for branch in prop["anyOf"] if "maxLength" in branch]
        assert len(lengths) == 1, prop
        return int(lengths[0])

    assert max_length(data["name"]) == fields.MAX_NAME
    assert max_length(data["email"]) == fields.MAX_EMAIL
    assert max_length(data["phone"]) == fields.MAX_PHONE
    assert max_length(data["description"]) == fields.MAX_DESCRIPTION
    assert max_length(definitions["AddressUpdate"]["properties"]["line1"]) == (
        fields.MAX_ADDRESS_LINE
    )
    assert max_length(definitions["AddressUpdate"]["properties"]["postal_code"]) == (
        fields.MAX_POSTAL_CODE
    )
    assert data["next_invoice_sequence"]["maximum"] == fields.MAX_INVOICE_SEQUENCE
    assert data["invoice_prefix"]["maxLength"] == 12
    assert schema(COMMAND)["properties"]["subject"]["maxLength"] == fields.MAX_ID


# -- the AsyncAPI document ------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> Json:
    document: Json = yaml.safe_load((ROOT / "asyncapi.yaml").read_text(encoding="utf-8"))
    return document


def resolve(document: Json, reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def local_references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in local_references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in local_references(value)]
    return []


def test_asyncapi_describes_the_five_topics(asyncapi: Json) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] == "customer-service"
    assert asyncapi["info"]["version"] == SCHEMA_VERSION
    topics = Topics()
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    assert addresses == {
        topics.commands,
        topics.events,
        topics.rejections,
        topics.dead_letters,
        topics.state,
    }
    actions = {
        resolve(asyncapi, operation["channel"]["$ref"])["address"]: operation["action"]
        for operation in asyncapi["operations"].values()
    }
    assert actions == {
        topics.commands: "receive",
        topics.events: "send",
        topics.rejections: "send",
        topics.dead_letters: "send",
        topics.state: "send",
    }


def test_asyncapi_references_all_resolve_within_the_document(asyncapi: Json) -> None:
    references = local_references(asyncapi)
    assert references
    for reference in references:
        resolve(asyncapi, reference)
    for name, operation in asyncapi["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name


def test_asyncapi_messages_are_keyed_by_customer_id(asyncapi: Json) -> None:
    for name, message in asyncapi["components"]["messages"].items():
        assert message["bindings"]["kafka"]["key"]["type"] == "string", name


def test_asyncapi_dead_letter_headers_are_the_ones_the_service_sets(asyncapi: Json) -> None:
    names = {
        value
        for constant, value in vars(events).items()
        if constant.startswith("DLT_") and constant not in ("DLT_PREFIX", "DLT_OPTIONAL")
    }
    headers = resolve(asyncapi, asyncapi["components"]["messages"]["deadLetter"]["headers"]["$ref"])
    assert set(headers["required"]) == names - set(DLT_OPTIONAL)
    assert names <= set(headers["properties"])


@pytest.mark.parametrize("message_type", list(MODELS))
def test_asyncapi_payload_schemas_accept_the_examples(asyncapi: Json, message_type: str) -> None:
    # AsyncAPI Schema Objects are draft 07; the document itself is the root refs resolve in.
    payload = next(
        message["payload"]
        for message in asyncapi["components"]["messages"].values()
        if message["name"] == message_type
    )
    embedded = Draft7Validator({**payload, "components": asyncapi["components"]})
    Draft7Validator.check_schema(resolve(asyncapi, payload["$ref"]))
    assert [error.message for error in embedded.iter_errors(example(message_type))] == []
    if message_type == COMMAND:
        assert list(embedded.iter_errors(command_with({"tax_exempt": "maybe"}))) != []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"address": {"country": "ZZ"}}, id="no such country"),
        pytest.param({"email": "not-an-email"}, id="not an email"),
        pytest.param({"name": "Ada\x00"}, id="NUL in a name"),
        pytest.param({"address": {"city": "Rome\x1b"}}, id="escape in a city"),
        pytest.param({"description": "a\x07b"}, id="bell in a description"),
    ],
)
def test_the_schema_refuses_what_the_worker_refuses(data: Json) -> None:
    document = command_with(data)

    assert schema_errors(COMMAND, document) != []
    with pytest.raises(ValidationError):
        CustomerUpdateCommand.model_validate(document)


def test_the_schema_takes_the_line_breaks_a_description_may_hold() -> None:
    document = command_with({"description": "one\r\ntwo\tthree"})

    assert schema_errors(COMMAND, document) == []
    CustomerUpdateCommand.model_validate(document)


# -- the headers of each content mode --------------------------------------------------------


def message_schema(asyncapi: Json, message: str, part: str) -> Any:
    """A validator of one part (``headers`` or ``payload``) of an AsyncAPI message."""
    node = asyncapi["components"]["messages"][message][part]
    return Draft7Validator(
        {**node, "components": asyncapi["components"]},
        format_checker=Draft7Validator.FORMAT_CHECKER,
    )


def header_text(headers: Headers) -> Json:
    assert len({name for name, _ in headers}) == len(headers), "a header is doubled"
    return {name: (value or b"").decode() for name, value in headers}


def published_messages(mode: ContentMode) -> list[tuple[str, events.OutboundMessage]]:
    """An event and a rejection of the examples, as the relay publishes them in ``mode``."""
    context = dataclasses.replace(CONTEXT, content_mode=mode)
    command = CustomerUpdateCommand.model_validate(example(COMMAND))
    updated = updated_message(
        applied(command), command, event_id="evt_1", context=context, subscriptions=None,
        traceparent=command.traceparent,
    )  # fmt: skip
    rejected = rejected_message(
        invalid("resource_missing", "subject", "No such customer: 'cus_1'"),
        customer_id="cus_1",
        command_id="cmd_1",
        correlationid=None,
        event_id="evt_2",
        context=context,
        record=(COMMAND, 0, 7),
    )
    return [("customerUpdated", updated), ("customerUpdateRejected", rejected)]


def with_outbox_id(message: events.OutboundMessage) -> Json:
    return {**header_text(message.headers), "outbox-id": "42"}


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_headers_and_payload_of_each_mode_are_what_asyncapi_describes(
    asyncapi: Json, mode: ContentMode
) -> None:
    suffix = "Binary" if mode == "binary" else ""
    for name, message in published_messages(mode):
        headers = message_schema(asyncapi, name + suffix, "headers")
        assert [e.message for e in headers.iter_errors(with_outbox_id(message))] == []
        payload = message_schema(asyncapi, name + suffix, "payload")
        assert [e.message for e in payload.iter_errors(json.loads(value_of(message)))] == []
        # Every header the service writes is documented, and a missing one is caught.
        reference = asyncapi["components"]["messages"][name + suffix]["headers"]["$ref"]
        assert set(with_outbox_id(message)) <= set(resolve(asyncapi, reference)["properties"])
        lacking = {k: v for k, v in with_outbox_id(message).items() if k != "content-type"}
        assert list(headers.iter_errors(lacking)) != []


def binary_command_headers(document: Json) -> Json:
    return {
        binary_header(attribute): str(value)
        for attribute, value in document.items()
        if attribute != "data"
    }


def test_a_command_in_binary_mode_is_what_asyncapi_describes(asyncapi: Json) -> None:
    document = {**example(COMMAND), "expectedversion": 3}
    headers = message_schema(asyncapi, "customerUpdateBinary", "headers")
    assert [e.message for e in headers.iter_errors(binary_command_headers(document))] == []
    payload = message_schema(asyncapi, "customerUpdateBinary", "payload")
    assert [e.message for e in payload.iter_errors(document["data"])] == []
    for attribute, bad in [("expectedversion", "three"), ("specversion", "0.3"), ("id", "a b")]:
        broken = binary_command_headers({**document, attribute: bad})
        assert list(headers.iter_errors(broken)) != [], attribute


def test_every_envelope_attribute_of_a_model_has_its_binary_header(asyncapi: Json) -> None:
    for message_type, message in [
        (COMMAND, "customerUpdateBinary"),
        (UPDATED, "customerUpdatedBinary"),
        (REJECTED, "customerUpdateRejectedBinary"),
    ]:
        attributes = set(MODELS[message_type].model_fields) - {"data"}
        headers = resolve(asyncapi, asyncapi["components"]["messages"][message]["headers"]["$ref"])
        assert {binary_header(name) for name in attributes} <= set(headers["properties"])
