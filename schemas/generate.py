"""The published contract files, rendered from the models.

``python -m schemas`` writes them, ``python -m schemas --check`` compares them, and a unit
test fails when the committed files differ from ``render()``.

How the AsyncAPI document refers to the payload schemas: it embeds copies of them under
``components.schemas`` instead of referring to ``json/*.schema.json`` by relative path.
A relative file reference keeps the document valid only next to those files and only for
tools that resolve external references, and the files declare draft 2020-12 while an
AsyncAPI Schema Object is a draft 07 dialect. So every ``$defs`` entry of a JSON Schema
moves up to ``components.schemas`` beside the schema itself, ``#/$defs/X`` becomes
``#/components/schemas/X``, ``$schema``, ``$id`` and ``$comment`` are dropped (an ``$id``
would change the base that those references resolve against), and a ``$ref`` with sibling
keywords is wrapped in ``allOf`` because draft 07 ignores a ``$ref``'s siblings. The JSON
Schema files stay the standalone, canonical form of each payload.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas import SCHEMA_VERSION, fields
from schemas import headers as outbound
from schemas.command import COMMAND_TYPE, CustomerUpdateCommand
from schemas.event import (
    REJECTED_TYPE,
    STATE_TYPE,
    UPDATED_TYPE,
    CustomerStateEvent,
    CustomerUpdatedEvent,
    CustomerUpdateRejectedEvent,
)
from schemas.topics import Topics

Json = dict[str, Any]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
GENERATED = "Generated from the models in schemas/ by `python -m schemas`; do not edit."

_DEFS_PREFIX = "#/$defs/"
_COMPONENTS_PREFIX = "#/components/schemas/"


@dataclass(frozen=True, slots=True)
class Payload:
    """One JSON payload of the contract, named by its CloudEvents type."""

    message_type: str
    model: type[BaseModel]
    #: Emitted by the service (rather than received), so its schema describes the wire form.
    published: bool

    @property
    def path(self) -> str:
        return f"json/{self.message_type}.schema.json"


PAYLOADS = (
    Payload(COMMAND_TYPE, CustomerUpdateCommand, published=False),
    Payload(UPDATED_TYPE, CustomerUpdatedEvent, published=True),
    Payload(REJECTED_TYPE, CustomerUpdateRejectedEvent, published=True),
    Payload(STATE_TYPE, CustomerStateEvent, published=True),
)


def render() -> dict[str, str]:
    """Every contract file, as ``{path relative to schemas/: text}``."""
    import yaml  # a development tool: the service never renders, so never needs it

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # Docstring descriptions span lines; a block keeps them readable in review.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)

    schemas = {payload.message_type: json_schema(payload) for payload in PAYLOADS}
    files = {
        payload.path: json.dumps(schemas[payload.message_type], indent=2, ensure_ascii=False) + "\n"
        for payload in PAYLOADS
    }
    # The JSON round trip gives every node its own object, so YAML writes no anchors.
    document = json.loads(json.dumps(asyncapi(schemas)))
    files["asyncapi.yaml"] = f"# {GENERATED}\n" + yaml.dump(
        document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100
    )
    return files


def json_schema(payload: Payload) -> Json:
    """The standalone draft 2020-12 schema of ``payload``."""
    generated = payload.model.model_json_schema()
    if payload.published:
        generated = _wire_form(generated)
    definitions = generated.pop("$defs", None)
    schema: Json = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{payload.message_type}.schema.json",
        "$comment": GENERATED,
        "title": generated.pop("title"),
        "description": generated.pop("description"),
        **generated,
    }
    if not payload.published:
        schema["description"] += " Beyond this schema, the service also checks that: " + (
            "; ".join(gap.rule for gap in fields.SCHEMA_GAPS) + "."
        )
    if definitions:
        schema["$defs"] = definitions
    return schema


def _wire_form(schema: Json) -> Json:
    """``schema`` narrowed from what an event model accepts to what the service emits.

    The defaults of an event model are conveniences for building events: a non-null
    default is always serialized, so the property is required, and the serializers leave
    out an attribute whose value is null and defaults to null, so such a property is
    optional and never null.
    """
    schema = copy.deepcopy(schema)
    for node in (schema, *schema.get("$defs", {}).values()):
        properties: Json = node.get("properties", {})
        required = set(node.get("required", ()))
        for name, prop in properties.items():
            if "default" not in prop:
                continue
            if prop.pop("default") is not None:
                required.add(name)
                continue
            branches = [b for b in prop.pop("anyOf", ()) if b != {"type": "null"}]
            if len(branches) == 1:
                prop.update(branches[0])
            elif branches:
                prop["anyOf"] = branches
            properties[name] = dict(sorted(prop.items()))
        if required:
            node["required"] = [name for name in properties if name in required]
    return schema


def asyncapi(schemas: dict[str, Json]) -> Json:
    """The AsyncAPI 3 document of the service; ``schemas`` maps type to JSON Schema."""
    topics = Topics()
    components = _embedded(schemas.values())
    components["PublishedHeaders"] = _published_headers()
    components["DeadLetterHeaders"] = _dead_letter_headers()
    binary = {
        message_type: _binary_headers(schemas[message_type], published=message_type != COMMAND_TYPE)
        for message_type in (COMMAND_TYPE, UPDATED_TYPE, REJECTED_TYPE, STATE_TYPE)
    }
    for message_type, headers in binary.items():
        components[_binary_headers_name(schemas, message_type)] = headers

    def schema_ref(name: str) -> Json:
        if name not in components:
            raise KeyError(f"no schema {name!r} in components.schemas")
        return {"$ref": _COMPONENTS_PREFIX + name}

    def title_of(message_type: str) -> str:
        return str(schemas[message_type]["title"])

    customer_key = {
        "type": "string",
        "description": "The customer id, UTF-8 encoded. It orders all messages about one "
        "customer within one partition.",
    }
    channels: Json = {
        "customerUpdate": {
            "address": topics.commands,
            "title": "Customer update commands",
            "description": (
                "Requests to update one customer. The record key must be the customer id "
                "and equal the command's `subject`. A record that cannot be read as a JSON "
                "object (no key, not UTF-8, not JSON, too large, too deep) is moved to the "
                "dead-letter topic; a readable command that breaks the contract or may not "
                "be applied gets a `customer.update.rejected` event."
            ),
            "messages": {
                "customerUpdate": {"$ref": "#/components/messages/customerUpdate"},
                "customerUpdateBinary": {"$ref": "#/components/messages/customerUpdateBinary"},
            },
        },
        "customerUpdated": {
            "address": topics.events,
            "title": "Customer updated events",
            "description": "One event for every applied command, in customer version order.",
            "messages": {
                "customerUpdated": {"$ref": "#/components/messages/customerUpdated"},
                "customerUpdatedBinary": {"$ref": "#/components/messages/customerUpdatedBinary"},
            },
        },
        "customerUpdateRejected": {
            "address": topics.rejections,
            "title": "Customer update rejections",
            "description": "One event for every refused command; the customer is unchanged.",
            "messages": {
                "customerUpdateRejected": {"$ref": "#/components/messages/customerUpdateRejected"},
                "customerUpdateRejectedBinary": {
                    "$ref": "#/components/messages/customerUpdateRejectedBinary"
                },
            },
        },
        "customerState": {
            "address": topics.state,
            "title": "Customer states",
            "description": (
                "Compacted (`cleanup.policy=compact`): the whole state of a customer, "
                "published with every `customer.updated` event in the same Kafka "
                "transaction, and by `customer-service backfill` for customers that were "
                "never updated through the service. The latest record of each key is that "
                "customer now, and a customer's records never go back in version. A "
                "subscriber reads it from the start to build a complete view, then "
                "follows `customer.updated`. PUBLISH_STATE=false leaves it out."
            ),
            "messages": {
                "customerState": {"$ref": "#/components/messages/customerState"},
                "customerStateBinary": {"$ref": "#/components/messages/customerStateBinary"},
            },
        },
        "customerUpdateDeadLetter": {
            "address": topics.dead_letters,
            "title": "Dead-lettered command records",
            "description": (
                "Records of the command topic that could not be processed at all, byte for "
                "byte, with headers saying where they came from and why."
            ),
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        },
    }

    def operation(action: str, channel: str, message: str, summary: str) -> Json:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{name}"}
                for name in channels[channel]["messages"]
            ],
        }

    operations = {
        "receiveCustomerUpdate": operation(
            "receive", "customerUpdate", "customerUpdate", "Apply a customer update command."
        ),
        "sendCustomerUpdated": operation(
            "send", "customerUpdated", "customerUpdated", "Announce an applied update."
        ),
        "sendCustomerUpdateRejected": operation(
            "send",
            "customerUpdateRejected",
            "customerUpdateRejected",
            "Tell the producer why a command was refused.",
        ),
        "sendCustomerState": operation(
            "send",
            "customerState",
            "customerState",
            "Publish a customer's whole current state.",
        ),
        "sendDeadLetter": operation(
            "send",
            "customerUpdateDeadLetter",
            "deadLetter",
            "Park a command record that cannot be processed.",
        ),
    }

    def kafka_key(key: Json) -> Json:
        return {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}

    correlation = {"location": "$message.payload#/correlationid"}
    messages: Json = {
        "customerUpdate": {
            "name": COMMAND_TYPE,
            "title": "Update customer",
            "summary": "A request to update one customer (CloudEvents 1.0, structured JSON).",
            "contentType": "application/json",
            "correlationId": correlation,
            "payload": schema_ref(title_of(COMMAND_TYPE)),
            "bindings": kafka_key(customer_key),
        },
        "customerUpdated": {
            "name": UPDATED_TYPE,
            "title": "Customer updated",
            "summary": "A command was applied (CloudEvents 1.0, structured JSON).",
            "contentType": "application/json",
            "correlationId": correlation,
            "headers": schema_ref("PublishedHeaders"),
            "payload": schema_ref(title_of(UPDATED_TYPE)),
            "bindings": kafka_key(customer_key),
        },
        "customerUpdateRejected": {
            "name": REJECTED_TYPE,
            "title": "Customer update rejected",
            "summary": "A command was refused (CloudEvents 1.0, structured JSON).",
            "contentType": "application/json",
            "correlationId": correlation,
            "headers": schema_ref("PublishedHeaders"),
            "payload": schema_ref(title_of(REJECTED_TYPE)),
            "bindings": kafka_key(
                {
                    "type": "string",
                    "description": "The key of the refused command's record: the customer id.",
                }
            ),
        },
        "customerState": {
            "name": STATE_TYPE,
            "title": "Customer state",
            "summary": "A customer's whole state at one version (CloudEvents 1.0, structured "
            "JSON).",
            "contentType": "application/json",
            "correlationId": correlation,
            "headers": schema_ref("PublishedHeaders"),
            "payload": schema_ref(title_of(STATE_TYPE)),
            "bindings": kafka_key(customer_key),
        },
        "deadLetter": {
            "name": "deadLetter",
            "title": "Dead letter",
            "summary": "A command record that could not be processed, unchanged.",
            "contentType": "application/octet-stream",
            "headers": schema_ref("DeadLetterHeaders"),
            "payload": {
                "type": "string",
                "format": "binary",
                "description": (
                    "The original record value, byte for byte; empty when the original "
                    "had no value (a tombstone)."
                ),
            },
            "bindings": kafka_key(
                {
                    "type": "string",
                    "description": (
                        "The original record key, byte for byte (normally the customer id); "
                        "absent when the original had none."
                    ),
                }
            ),
        },
    }

    for structured, message_type in (
        ("customerUpdate", COMMAND_TYPE),
        ("customerUpdated", UPDATED_TYPE),
        ("customerUpdateRejected", REJECTED_TYPE),
        ("customerState", STATE_TYPE),
    ):
        twin = messages[structured]
        messages[structured + "Binary"] = {
            "name": f"{message_type} (binary mode)",
            "title": f"{twin['title']}, binary content mode",
            "summary": twin["summary"].replace("structured JSON", "binary content mode")
            + " The attributes travel in ce_ headers; the value is the data alone.",
            "contentType": "application/json",
            "correlationId": {"location": "$message.header#/ce_correlationid"},
            "headers": schema_ref(_binary_headers_name(schemas, message_type)),
            "payload": schema_ref(_data_schema_name(schemas[message_type])),
            "bindings": twin["bindings"],
        }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "customer-service",
            "version": SCHEMA_VERSION,
            "description": (
                "Applies `customer.update` commands to the customer store and publishes "
                "the outcome. Every message is a CloudEvents 1.0 event, in structured "
                "mode (one JSON envelope) or in binary content mode (the attributes in "
                "`ce_` headers, the data alone in the value): commands in either, events "
                "and rejections in the one EVENT_CONTENT_MODE chooses (structured by "
                "default). Every record is keyed by the customer id, so all "
                "messages about one customer keep their order. A command's `id` is its "
                "idempotency key: a redelivered command is applied once. Each applied "
                "command publishes one `customer.updated` event whose `sequence` is the "
                "customer's new version; each refused command publishes one "
                "`customer.update.rejected` event; the compacted `customer.state` topic "
                "holds every customer's latest state. The addresses are the default topic "
                "names; the TOPIC_COMMANDS, TOPIC_EVENTS, TOPIC_REJECTIONS, "
                "TOPIC_DEAD_LETTERS and TOPIC_STATE settings change them."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages},
    }


def _embedded(schemas: Iterable[Json]) -> Json:
    """``components.schemas`` holding each schema and its definitions, as draft 07."""
    components: Json = {}
    for schema in schemas:
        document = copy.deepcopy(schema)
        definitions: Json = document.pop("$defs", {})
        for keyword in ("$schema", "$id", "$comment"):
            document.pop(keyword, None)
        for name, node in ((document["title"], document), *definitions.items()):
            converted = _as_component(node)
            if components.setdefault(name, converted) != converted:
                raise ValueError(f"two different schemas are both named {name!r}")
    return components


def _as_component(node: Any) -> Any:
    if isinstance(node, list):
        return [_as_component(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _as_component(value) for key, value in node.items()}
    reference = converted.pop("$ref", None)
    if reference is None:
        return converted
    if isinstance(reference, str) and reference.startswith(_DEFS_PREFIX):
        reference = _COMPONENTS_PREFIX + reference.removeprefix(_DEFS_PREFIX)
    if not converted:
        return {"$ref": reference}
    return {"allOf": [{"$ref": reference}], **converted}


def _text_header(description: str) -> Json:
    return {"type": "string", "description": description}


def _outbox_header() -> Json:
    return {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": (
            "Internal: the outbox row this record was relayed from, which the relay uses "
            "to recover after a crash. Consumers should ignore it."
        ),
    }


def _traceparent_header() -> Json:
    return _text_header(
        "W3C trace context of the event (as its traceparent attribute), where Kafka "
        "instrumentations look for it; present when the command carried one."
    )


def _published_headers() -> Json:
    return {
        "type": "object",
        "description": "Kafka record headers of a structured-mode event; values are UTF-8 text.",
        "properties": {
            outbound.CONTENT_TYPE: {
                "type": "string",
                "const": outbound.STRUCTURED_CONTENT_TYPE,
                "description": "The event format (CloudEvents Kafka binding, section 3.3).",
            },
            outbound.TRACEPARENT: _traceparent_header(),
            outbound.OUTBOX_ID: _outbox_header(),
        },
        "required": [outbound.CONTENT_TYPE, outbound.OUTBOX_ID],
    }


def _binary_headers_name(schemas: dict[str, Json], message_type: str) -> str:
    return f"{schemas[message_type]['title']}BinaryHeaders"


def _data_schema_name(envelope: Json) -> str:
    return str(envelope["properties"]["data"]["$ref"]).removeprefix(_DEFS_PREFIX)


def _binary_headers(envelope: Json, *, published: bool) -> Json:
    """The headers of ``envelope``'s event in binary content mode, from its attributes."""
    properties: Json = {}
    for attribute, node in envelope["properties"].items():
        if attribute != "data":
            properties[outbound.binary_header(attribute)] = _header_schema(attribute, node)
    required = [outbound.binary_header(name) for name in envelope["required"] if name != "data"]
    if published:
        properties[outbound.TRACEPARENT] = _traceparent_header()
        properties[outbound.OUTBOX_ID] = _outbox_header()
        required += [outbound.CONTENT_TYPE, outbound.OUTBOX_ID]
    required = list(dict.fromkeys(required))
    return {
        "type": "object",
        "description": (
            "Kafka record headers in CloudEvents binary content mode (Kafka binding, "
            "section 3.2): each attribute in a header named ce_ and the attribute, "
            "datacontenttype in content-type; values are UTF-8 text, integers in decimal."
        ),
        "properties": properties,
        "required": required,
    }


def _header_schema(attribute: str, node: Json) -> Json:
    """An attribute's schema as header text: the non-null branch, integers as decimals."""
    branches = [branch for branch in node.get("anyOf", [node]) if branch.get("type") != "null"]
    (value,) = branches
    header: Json = {"type": "string"}
    description = node.get("description") or value.get("description")
    if value.get("type") == "integer":
        # As the worker reads it: decimal digits, then the attribute's own range.
        header["pattern"] = "^-?[0-9]{1,20}$"
        bounds = (value.get("minimum"), value.get("maximum"))
        description = f"{description} A decimal integer from {bounds[0]} to {bounds[1]}."
    else:
        for keyword in ("const", "enum", "format", "minLength", "maxLength", "pattern"):
            if keyword in value:
                header[keyword] = value[keyword]
    header["description"] = f"The {attribute} attribute" + (
        f": {description}" if description else "."
    )
    return header


def _dead_letter_headers() -> Json:
    provenance = {
        outbound.DLT_ORIGINAL_TOPIC: _text_header("The topic the record was consumed from."),
        outbound.DLT_ORIGINAL_PARTITION: _text_header("Its partition, in decimal."),
        outbound.DLT_ORIGINAL_OFFSET: _text_header("Its offset, in decimal."),
        outbound.DLT_ORIGINAL_TIMESTAMP: _text_header(
            "Its timestamp, in decimal milliseconds since the Unix epoch."
        ),
        outbound.DLT_ORIGINAL_TIMESTAMP_TYPE: {
            "type": "string",
            "enum": ["CreateTime", "LogAppendTime"],
            "description": "What its timestamp means.",
        },
        outbound.DLT_ORIGINAL_CONSUMER_GROUP: _text_header(
            "The consumer group of the service that dead-lettered it."
        ),
        outbound.DLT_ERROR_CODE: _text_header(
            "A machine-readable reason (despite the Spring Kafka name, not a class name), "
            "such as record_key_missing, record_invalid_json, record_too_large or "
            "processing_failed."
        ),
        outbound.DLT_ERROR_MESSAGE: _text_header("A human-readable reason."),
    }
    partial = {
        outbound.DLT_TRUNCATED: {
            "type": "string",
            "enum": ["true"],
            "description": (
                "Set when the record did not fit the dead-letter topic: its key and value are "
                "cut to fit and its own headers left out. The whole original is kept in the "
                "service's database, where `customer-service dlq list` and `dlq replay` "
                "find it."
            ),
        },
        outbound.DLT_ORIGINAL_KEY_SIZE: _text_header("With truncated: the key's size in bytes."),
        outbound.DLT_ORIGINAL_VALUE_SIZE: _text_header(
            "With truncated: the value's size in bytes."
        ),
        outbound.DLT_ORIGINAL_SHA256: _text_header(
            "With truncated: the SHA-256 of the original value, in hex."
        ),
        outbound.DLT_HEADERS_DROPPED: _text_header(
            "How many of the record's headers were left out because their names are not "
            "UTF-8 or contain NUL (the whole original is kept in the database)."
        ),
    }
    return {
        "type": "object",
        "description": (
            "Kafka record headers; values are UTF-8 text. The original record's own headers "
            f"come first, followed by the {outbound.DLT_PREFIX}* headers. Headers of the "
            f"service's own ({outbound.OUTBOX_ID}, {outbound.DLT_PREFIX}*) on the original "
            "are renamed with the prefix "
            f"{outbound.ORIGINAL_PREFIX}."
        ),
        "properties": {**provenance, **partial, outbound.OUTBOX_ID: _outbox_header()},
        "required": list(provenance),
        "additionalProperties": True,
    }
