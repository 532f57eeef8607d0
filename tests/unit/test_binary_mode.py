"""CloudEvents binary content mode: the same rules, errors and fingerprint as structured
mode, with the producer's header names in errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from service.domain.authorization import UnsignedAuthorizer
from service.domain.inbound import Classified, InboundRecord, Invalid, Limits, Valid, classify
from tests.unit.builders import CUSTOMER_ID, command_document

Headers = list[tuple[str, bytes | None]]


def structured(document: dict[str, Any]) -> InboundRecord:
    return InboundRecord(
        "customer.update", 0, 0, 0, 0, CUSTOMER_ID.encode(), orjson.dumps(document), ()
    )


def binary(document: dict[str, Any], *extra: tuple[str, bytes | None]) -> InboundRecord:
    """``document`` in binary mode: ``ce_`` headers, ``data`` as the value."""
    headers: Headers = [("content-type", b"application/json")]
    for name, value in document.items():
        if name != "data":
            headers.append((f"ce_{name}", str(value).encode()))
    value = orjson.dumps(document["data"])
    return InboundRecord(
        "customer.update", 0, 0, 0, 0, CUSTOMER_ID.encode(), value, (*headers, *extra)
    )


def judged(record: InboundRecord) -> Classified:
    return classify(record, Limits(), UnsignedAuthorizer())


def refused(record: InboundRecord) -> tuple[str, str | None]:
    outcome = judged(record)
    assert isinstance(outcome, Invalid), outcome
    if outcome.error.code != "permission_denied":  # which names the principal instead
        assert outcome.error.param is not None
        assert outcome.error.param in outcome.error.message
    return outcome.error.code, outcome.error.param


def test_a_command_is_the_same_command_in_either_mode() -> None:
    document = command_document(
        {"name": "Ada", "address": {"city": "Rome"}}, expectedversion=3, correlationid="req-1"
    )

    one, other = judged(structured(document)), judged(binary(document))

    assert isinstance(one, Valid)
    assert isinstance(other, Valid)
    assert other.command.model_dump() == one.command.model_dump()
    assert other.fingerprint == one.fingerprint  # a resend in the other mode is a duplicate


def test_a_cloudevents_content_type_is_structured_mode_whatever_the_headers() -> None:
    record = structured(command_document({"name": "Ada"}))
    headers = (("content-type", b"application/cloudevents+json"), ("ce_specversion", b"1.0"))

    assert isinstance(judged(dataclasses.replace(record, headers=headers)), Valid)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"subject": "cus_other"}, ("parameter_invalid", "ce_subject")),
        ({"expectedversion": "x"}, ("parameter_invalid_integer", "ce_expectedversion")),
        ({"expectedversion": "0"}, ("parameter_invalid", "ce_expectedversion")),
        ({"specversion": "0.3"}, ("parameter_invalid", "ce_specversion")),
        ({"nickname": "x"}, ("parameter_unknown", "ce_nickname")),
        ({"permissions": "pay:customers:read"}, ("permission_denied", "ce_permissions")),
        ({"data": {"name": "x" * 257}}, ("parameter_invalid", "data.name")),
        ({"data": [1]}, ("parameter_invalid", "data")),
    ],
    ids=lambda value: str(value)[:40],
)
def test_each_rule_applies_and_names_the_header(
    change: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert refused(binary({**command_document({"name": "Ada"}), **change})) == expected


def test_a_missing_attribute_names_its_header() -> None:
    document = command_document({"name": "Ada"})
    del document["id"]

    assert refused(binary(document)) == ("parameter_missing", "ce_id")


def test_the_content_type_header_is_the_data_content_type() -> None:
    record = binary(command_document({"name": "Ada"}))
    headers = tuple(
        ("content-type", b"text/plain") if name == "content-type" else (name, value)
        for name, value in record.headers
    )

    outcome = refused(dataclasses.replace(record, headers=headers))

    assert outcome == ("parameter_invalid", "content-type")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (("ce_id", b"cmd-2"), ("parameter_invalid", "ce_id")),  # a second ce_id
        (("ce_source", b"\xff"), ("parameter_invalid", "ce_source")),
        (("ce_data", b"{}"), ("parameter_unknown", "ce_data")),
        (("ce_principal", None), ("parameter_invalid", "ce_principal")),
    ],
    ids=["twice", "not UTF-8", "data as a header", "null"],
)
def test_a_header_that_cannot_be_an_attribute_is_refused(
    header: tuple[str, bytes | None], expected: tuple[str, str]
) -> None:
    document = command_document({"name": "Ada"})
    if header[0] in ("ce_source", "ce_principal"):
        del document[header[0].removeprefix("ce_")]  # the header below is the only one

    assert refused(binary(document, header)) == expected


def test_a_key_twice_in_the_value_is_named_under_data() -> None:
    record = binary(command_document({"name": "Ada"}))
    value = b'{"name":"Eve","name":"Ada"}'

    outcome = refused(dataclasses.replace(record, value=value))

    assert outcome == ("parameter_invalid", "data.name")


# Found by attacking the first version of binary mode.


def test_an_expected_version_beyond_a_bigint_is_refused_not_a_crash() -> None:
    document = command_document({"name": "Ada"}, expectedversion=2**64)

    assert refused(binary(document)) == ("parameter_invalid", "ce_expectedversion")
    assert refused(structured({**document, "expectedversion": 2**63})) == (
        "parameter_invalid",
        "expectedversion",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "a b"}, "Invalid ce_id: must be printable characters without whitespace"),
        ({"e": "x"}, "Received unknown parameter: ce_e"),
    ],
)
def test_a_message_names_the_header_as_a_whole_word(change: dict[str, Any], message: str) -> None:
    outcome = judged(binary({**command_document({"name": "Ada"}), **change}))

    assert isinstance(outcome, Invalid)
    assert outcome.error.message == message


def test_a_refused_header_still_echoes_the_ids_a_producer_matches_on() -> None:
    document = command_document({"name": "Ada"}, correlationid="req-1")
    outcome = judged(binary(document, ("ce_principal", None)))

    assert isinstance(outcome, Invalid)
    assert (outcome.command_id, outcome.correlationid) == ("cmd-1", "req-1")


@pytest.mark.parametrize(
    ("header", "param"),
    [
        ("ce_datacontenttype", "ce_datacontenttype"),  # content-type carries it
        ("ce_data.name", "ce_data.name"),
        ("ce_", "ce_"),
        ("ce_Subject", "ce_Subject"),
    ],
)
def test_a_header_that_names_no_attribute_is_unknown(header: str, param: str) -> None:
    record = binary(command_document({"name": "Ada"}), (header, b"x"))

    assert refused(record) == ("parameter_unknown", param)


def test_any_cloudevents_content_type_means_structured_mode_whatever_the_order() -> None:
    record = structured(command_document({"name": "Ada"}))
    types = (b"application/json", b"application/cloudevents+json")
    for ordered in (types, types[::-1]):
        headers = (*(("content-type", t) for t in ordered), ("ce_specversion", b"1.0"))
        assert isinstance(judged(dataclasses.replace(record, headers=headers)), Valid)
