"""Classifying a Kafka record as poison, invalid or a valid command, and its fingerprint."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.domain.authorization import Principal, UnsignedAuthorizer
from service.domain.inbound import (
    DEFAULT_MAX_DEPTH,
    Classified,
    InboundRecord,
    Invalid,
    Limits,
    Poison,
    Valid,
    classify,
    fingerprint,
)
from tests.unit.builders import CUSTOMER_ID, command_document, record, record_of

AUTHORIZER = UnsignedAuthorizer()


def classified(item: InboundRecord, limits: Limits | None = None) -> Classified:
    return classify(item, limits or Limits(), AUTHORIZER)


def poison_code(item: InboundRecord, limits: Limits | None = None) -> str:
    result = classified(item, limits)
    assert isinstance(result, Poison), result
    return result.code


def invalid(item: InboundRecord) -> Invalid:
    result = classified(item)
    assert isinstance(result, Invalid), result
    return result


def valid(item: InboundRecord) -> Valid:
    result = classified(item)
    assert isinstance(result, Valid), result
    return result


def nested(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep, counting itself as level 1."""
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"x": node}
    return node


VALID_VALUE = orjson.dumps(command_document({"name": "Ada"}))


# Poison


@pytest.mark.parametrize("key", [None, b""], ids=["no-key", "empty-key"])
def test_a_record_without_key_is_poison(key: bytes | None) -> None:
    assert poison_code(record(VALID_VALUE, key=key)) == "record_key_missing"


@pytest.mark.parametrize("key", [b"\xff\xfe", b"cus_\xc3", b"\x80"])
def test_a_key_that_is_not_utf8_is_poison(key: bytes) -> None:
    assert poison_code(record(VALID_VALUE, key=key)) == "record_key_invalid"


def test_a_tombstone_is_poison() -> None:
    assert poison_code(record(None)) == "record_value_missing"


def test_a_record_without_key_is_poison_even_when_a_tombstone() -> None:
    assert poison_code(record(None, key=None)) == "record_key_missing"


def test_a_record_larger_than_the_limit_is_poison() -> None:
    limits = Limits(max_record_bytes=len(VALID_VALUE) - 1)
    result = classified(record(VALID_VALUE), limits)
    assert isinstance(result, Poison)
    assert result.code == "record_too_large"
    assert str(len(VALID_VALUE)) in result.message


def test_a_record_exactly_at_the_size_limit_is_read() -> None:
    limits = Limits(max_record_bytes=len(VALID_VALUE))
    assert isinstance(classified(record(VALID_VALUE), limits), Valid)


def test_the_size_limit_applies_before_parsing() -> None:
    assert poison_code(record(b"\xff" * 11), Limits(max_record_bytes=10)) == "record_too_large"


def test_the_default_size_limit_is_64_kib() -> None:
    padded = b'{"pad": "' + b"a" * (64 * 1024) + b'"}'
    assert poison_code(record(padded)) == "record_too_large"


@pytest.mark.parametrize(
    "value", [b'{"name": "\xff"}', b"\xc3\x28", b'{"id": "\xed\xa0\x80"}'], ids=str
)
def test_a_value_that_is_not_utf8_is_poison(value: bytes) -> None:
    assert poison_code(record(value)) == "record_invalid_utf8"


@pytest.mark.parametrize(
    "value", [b"{", b"not json", b"", b'{"a": 1,}', b"{'a': 1}", b'{"a": NaN}'], ids=str
)
def test_a_value_that_is_not_json_is_poison(value: bytes) -> None:
    assert poison_code(record(value)) == "record_invalid_json"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[]", "array"),
        (b'[{"id": "cmd-1"}]', "array"),
        (b'"customer.update"', "string"),
        (b"42", "number"),
        (b"4.2", "number"),
        (b"true", "boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_not_an_object_is_poison(value: bytes, kind: str) -> None:
    result = classified(record(value))
    assert isinstance(result, Poison)
    assert result.code == "record_not_object"
    assert f"a JSON {kind}, not an object" in result.message


def test_an_object_nested_deeper_than_the_default_limit_is_poison() -> None:
    assert poison_code(record_of(nested(DEFAULT_MAX_DEPTH + 1))) == "record_too_deep"


def test_an_object_nested_exactly_to_the_limit_is_read() -> None:
    assert isinstance(classified(record_of(nested(DEFAULT_MAX_DEPTH))), Invalid)


def test_nesting_through_arrays_counts() -> None:
    document: Any = "leaf"
    for _ in range(DEFAULT_MAX_DEPTH):
        document = [document]
    assert poison_code(record_of({"x": document})) == "record_too_deep"


def test_a_command_is_measured_against_a_configured_depth_limit() -> None:
    item = record_of(command_document({"address": {"city": "Rome"}}))
    assert isinstance(classified(item, Limits(max_depth=3)), Valid)
    assert poison_code(item, Limits(max_depth=2)) == "record_too_deep"


# Invalid


def test_a_subject_differing_from_the_key_is_invalid() -> None:
    result = invalid(record_of(command_document(subject="cus_other"), key=b"cus_1"))
    assert (result.error.code, result.error.param) == ("parameter_invalid", "subject")
    assert "'cus_other' differs from the record key 'cus_1'" in result.error.message
    assert result.customer_id == "cus_1"
    assert result.command_id == "cmd-1"


def test_an_invalid_body_carries_the_error_and_the_readable_ids() -> None:
    document = command_document({"nam": "Ada"}, id="cmd-9", correlationid="corr-7")
    result = invalid(record_of(document))
    assert (result.error.type, result.error.code, result.error.param) == (
        "invalid_request_error",
        "parameter_unknown",
        "data.nam",
    )
    assert (result.customer_id, result.command_id, result.correlationid) == (
        CUSTOMER_ID,
        "cmd-9",
        "corr-7",
    )


def test_an_invalid_body_without_correlation_id_carries_none() -> None:
    result = invalid(record_of(command_document({"nam": "Ada"})))
    assert result.correlationid is None


@pytest.mark.parametrize("unreadable", [5, None, "", "a" * 256, "cmd\n1", ["cmd-1"]], ids=repr)
def test_an_unreadable_command_id_is_not_echoed(unreadable: object) -> None:
    result = invalid(record_of(command_document(id=unreadable, correlationid=unreadable)))
    assert result.command_id is None
    assert result.correlationid is None


def test_the_key_is_the_customer_of_a_rejection_even_without_subject() -> None:
    document = command_document()
    del document["subject"]
    result = invalid(record_of(document, key=b"cus_42"))
    assert result.customer_id == "cus_42"
    assert result.error.code == "parameter_missing"


# Authorization


def test_a_command_without_principal_is_refused() -> None:
    result = invalid(record_of(command_document(principal=None)))
    assert (result.error.code, result.error.param) == ("permission_denied", "principal")
    assert result.command_id == "cmd-1"


@pytest.mark.parametrize("permissions", [None, "", "pay:customers:read", "pay:customers:update2"])
def test_a_command_without_the_update_permission_is_refused(permissions: str | None) -> None:
    result = invalid(record_of(command_document(permissions=permissions)))
    assert (result.error.code, result.error.param) == ("permission_denied", "permissions")


def test_a_permitted_command_is_valid_and_names_its_principal() -> None:
    document = command_document(
        {"name": "Ada"},
        principal="svc-billing",
        permissions="pay:customers:read pay:customers:update pay:invoices:write",
    )
    result = valid(record_of(document))
    assert result.principal == Principal("svc-billing")
    assert result.command.data.changes() == {"name": "Ada"}
    assert result.fingerprint == fingerprint(document)


# Fingerprint


def test_the_fingerprint_ignores_envelope_details() -> None:
    first = command_document({"name": "Ada"}, expectedversion=3, time="2024-05-01T12:00:00Z")
    resent = command_document(
        {"name": "Ada"},
        expectedversion=3,
        time="2024-05-02T08:30:00+02:00",
        source="tests-resend",
        principal="svc-other",
        correlationid="corr-2",
    )
    assert fingerprint(first) == fingerprint(resent)


def test_the_fingerprint_ignores_key_order_in_data() -> None:
    first = command_document({"name": "Ada", "email": "ada@example.com"})
    second = command_document({"email": "ada@example.com", "name": "Ada"})
    assert fingerprint(first) == fingerprint(second)


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"name": "Ada King"}},
        {"data": {"name": "Ada", "phone": None}},
        {"subject": "cus_2"},
        {"expectedversion": 4},
    ],
    ids=["data-value", "data-extra-field", "subject", "expectedversion"],
)
def test_the_fingerprint_changes_with_what_the_command_asks(change: dict[str, Any]) -> None:
    original = command_document({"name": "Ada"}, expectedversion=3)
    assert fingerprint(original) != fingerprint({**original, **change})


def test_the_fingerprint_is_a_sha256_digest() -> None:
    assert len(fingerprint(command_document())) == 32


# Keys and headers: bounded and readable, or the record is poison.


def test_a_key_larger_than_the_limit_is_poison() -> None:
    limits = Limits(max_key_bytes=64)
    assert poison_code(record_of(command_document(), key=b"k" * 65), limits) == (
        "record_key_too_large"
    )


def test_a_key_at_the_limit_is_read_on() -> None:
    key = b"c" * 64
    item = record_of(command_document(subject=key.decode()), key=key)
    assert isinstance(classified(item, Limits(max_key_bytes=64)), Valid)


def test_more_headers_than_the_limit_is_poison() -> None:
    item = record(orjson.dumps(command_document()), headers=(("h", b"v"),) * 3)
    assert poison_code(item, Limits(max_headers=2)) == "record_headers_too_many"
    assert isinstance(classified(item, Limits(max_headers=3)), Valid)


@pytest.mark.parametrize(
    "name",
    ["x-\x00", "\x00", "\udcff\udcfebad"],
    ids=["nul-inside", "nul-alone", "not-utf8"],
)
def test_a_header_name_that_is_not_utf8_or_holds_nul_is_poison(name: str) -> None:
    poison = classified(record(orjson.dumps(command_document()), headers=((name, b"v"),)))
    assert isinstance(poison, Poison)
    assert poison.code == "record_header_invalid"
    # The message quotes the name's bytes, printable whatever they are.
    assert poison.message.isprintable()
    assert "\\x" in poison.message


def test_a_header_name_longer_than_the_limit_is_poison() -> None:
    item = record(orjson.dumps(command_document()), headers=(("n" * 17, b"v"),))
    assert poison_code(item, Limits(max_header_name_bytes=16)) == "record_header_too_large"


def test_a_header_value_longer_than_the_limit_is_poison() -> None:
    item = record(orjson.dumps(command_document()), headers=(("n", b"v" * 65),))
    assert poison_code(item, Limits(max_header_value_bytes=64)) == "record_header_too_large"


def test_a_null_header_value_is_allowed_and_a_null_traceparent_ignored() -> None:
    item = record(
        orjson.dumps(command_document()), headers=(("traceparent", None), ("x-empty", None))
    )
    result = valid(item)
    assert result.traceparent is None


def test_a_non_ascii_utf8_header_name_is_allowed() -> None:
    item = record(orjson.dumps(command_document()), headers=(("x-größe", b"1"),))
    assert isinstance(classified(item), Valid)
