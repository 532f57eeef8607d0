"""Every validation rule of the customer.update command, as the error object it produces."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.command import CustomerUpdateCommand
from schemas.errors import ErrorCode, ErrorObject, from_validation_error
from tests.unit.builders import command, command_document

CLEARABLE = ("address", "description", "email", "name", "phone", "preferred_locales")
NOT_CLEARABLE = ("invoice_prefix", "next_invoice_sequence", "tax_exempt")
ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")

#: Every free-text field of ``data`` and the longest value it takes.
TEXT_LIMITS = (
    ("name", 256),
    ("phone", 20),
    ("description", 5000),
    ("address.line1", 200),
    ("address.line2", 200),
    ("address.city", 200),
    ("address.state", 200),
    ("address.postal_code", 20),
)
TEXT_FIELDS = tuple(path for path, _ in TEXT_LIMITS)
SINGLE_LINE_FIELDS = tuple(path for path in TEXT_FIELDS if path != "description")

#: C0 controls other than tab, line feed and carriage return, then DEL and a C1 control.
FORBIDDEN_EVERYWHERE = (
    "\x00",
    "\x01",
    "\x07",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x85",
)
LINE_BREAKS_AND_TAB = ("\t", "\n", "\r")


def data_at(path: str, value: Any) -> dict[str, Any]:
    """``data`` holding ``value`` at dotted ``path`` (``address.city`` nests one level)."""
    *parents, leaf = path.split(".")
    node: dict[str, Any] = {leaf: value}
    for parent in reversed(parents):
        node = {parent: node}
    return node


def refusal(document: dict[str, Any]) -> ErrorObject:
    with pytest.raises(ValidationError) as caught:
        CustomerUpdateCommand.model_validate(document)
    return from_validation_error(caught.value)


def assert_refused(document: dict[str, Any], code: ErrorCode, param: str) -> ErrorObject:
    error = refusal(document)
    assert (error.type, error.code, error.param) == ("invalid_request_error", code, param)
    assert param in error.message
    return error


def assert_data_refused(path: str, value: Any, code: ErrorCode) -> ErrorObject:
    return assert_refused(command_document(data_at(path, value)), code, f"data.{path}")


def test_the_baseline_command_is_valid() -> None:
    assert command().data.changes() == {}


# Unknown fields


@pytest.mark.parametrize(
    "name", ["foo", "expectedverison", "partitionkey", "Subject", "customer_id"]
)
def test_unknown_envelope_attribute_is_refused(name: str) -> None:
    attributes: dict[str, Any] = {name: "x"}
    error = assert_refused(command_document(**attributes), "parameter_unknown", name)
    assert error.message == f"Received unknown parameter: {name}"


@pytest.mark.parametrize("name", ["nam", "Name", "metadata", "subscriptions", "id", "balance"])
def test_unknown_data_field_is_refused(name: str) -> None:
    assert_data_refused(name, "x", "parameter_unknown")


@pytest.mark.parametrize("name", ["citty", "street", "zip", "Country", "line3"])
def test_unknown_address_field_is_refused(name: str) -> None:
    error = assert_data_refused(f"address.{name}", "x", "parameter_unknown")
    assert error.message == f"Received unknown parameter: data.address.{name}"


# Absent, null and ""


def test_absent_fields_are_not_changes() -> None:
    assert command({"name": "Ada"}).data.changes() == {"name": "Ada"}


def test_absent_address_fields_are_not_set() -> None:
    address = command({"address": {"city": "Rome"}}).data.address
    assert address is not None
    assert address.model_fields_set == {"city"}


def test_expand_is_not_a_change() -> None:
    body = command({"expand": ["subscriptions"]}).data
    assert body.changes() == {}
    assert body.expands("subscriptions")


def test_without_expand_nothing_is_expanded() -> None:
    assert not command({"name": "Ada"}).data.expands("subscriptions")


@pytest.mark.parametrize("cleared", [None, ""])
@pytest.mark.parametrize("field", CLEARABLE)
def test_null_or_empty_string_clears_a_clearable_field(field: str, cleared: str | None) -> None:
    assert command({field: cleared}).data.changes() == {field: None}


@pytest.mark.parametrize("cleared", [None, ""])
@pytest.mark.parametrize("field", ADDRESS_FIELDS)
def test_null_or_empty_string_clears_an_address_field(field: str, cleared: str | None) -> None:
    address = command({"address": {field: cleared}}).data.address
    assert address is not None
    assert address.model_fields_set == {field}
    assert getattr(address, field) is None


@pytest.mark.parametrize("cleared", [None, ""])
@pytest.mark.parametrize("field", NOT_CLEARABLE)
def test_a_field_that_always_holds_a_value_cannot_be_cleared(
    field: str, cleared: str | None
) -> None:
    error = assert_data_refused(field, cleared, "parameter_invalid_empty")
    assert error.message == f"Invalid data.{field}: cannot be cleared"


# address.country


@pytest.mark.parametrize("country", ["US", "IT", "GB", "DE", "AQ", "SS"])
def test_country_accepts_an_iso_3166_alpha_2_code(country: str) -> None:
    address = command({"address": {"country": country}}).data.address
    assert address is not None
    assert address.country == country


@pytest.mark.parametrize("country", ["us", "Us", "uS", "USA", "U", "ÜS", " US"])
def test_country_refuses_what_is_not_two_uppercase_letters(country: str) -> None:
    error = assert_data_refused("address.country", country, "parameter_invalid")
    assert "uppercase ISO 3166-1 alpha-2" in error.message


@pytest.mark.parametrize("country", ["ZZ", "UK", "EU", "XK", "AA", "U1"])
def test_country_refuses_a_code_not_in_the_iso_list(country: str) -> None:
    error = assert_data_refused("address.country", country, "parameter_invalid")
    assert f"'{country}' is not an ISO 3166-1 alpha-2 country code" in error.message


def test_country_must_be_a_string() -> None:
    assert_data_refused("address.country", 840, "parameter_invalid")


# invoice_prefix


@pytest.mark.parametrize("prefix", ["ABC", "A1B", "123", "ABCDEFGHIJ12"])
def test_invoice_prefix_accepts_3_to_12_uppercase_letters_or_digits(prefix: str) -> None:
    assert command({"invoice_prefix": prefix}).data.changes() == {"invoice_prefix": prefix}


@pytest.mark.parametrize(
    "prefix", ["AB", "ABCDEFGHIJ123", "abc", "AbC", "AB-C", "AB C", "ABC ", "ÀBC", "AB_C"]
)
def test_invoice_prefix_refuses_other_shapes(prefix: str) -> None:
    error = assert_data_refused("invoice_prefix", prefix, "parameter_invalid")
    assert "3-12 uppercase letters or digits" in error.message


def test_invoice_prefix_must_be_a_string() -> None:
    assert_data_refused("invoice_prefix", 123, "parameter_invalid")


# next_invoice_sequence


@pytest.mark.parametrize("sequence", [1, 2, 1_000_000_000])
def test_next_invoice_sequence_accepts_1_to_one_billion(sequence: int) -> None:
    body = command({"next_invoice_sequence": sequence}).data
    assert body.changes() == {"next_invoice_sequence": sequence}


@pytest.mark.parametrize(
    ("sequence", "bound"), [(0, "at least 1"), (-1, "at least 1"), (1_000_000_001, "at most")]
)
def test_next_invoice_sequence_refuses_out_of_range(sequence: int, bound: str) -> None:
    error = assert_data_refused("next_invoice_sequence", sequence, "parameter_invalid")
    assert bound in error.message


@pytest.mark.parametrize("sequence", [True, False, 5.0, 5.5, "5", [5]])
def test_next_invoice_sequence_refuses_what_is_not_an_integer(sequence: object) -> None:
    assert_data_refused("next_invoice_sequence", sequence, "parameter_invalid_integer")


# tax_exempt


@pytest.mark.parametrize("value", ["exempt", "none", "reverse"])
def test_tax_exempt_accepts_its_three_values(value: str) -> None:
    assert command({"tax_exempt": value}).data.changes() == {"tax_exempt": value}


@pytest.mark.parametrize("value", ["EXEMPT", "None", "taxable", "exempted", 1, True])
def test_tax_exempt_refuses_anything_else(value: object) -> None:
    error = assert_data_refused("tax_exempt", value, "parameter_invalid")
    assert "'exempt', 'none' or 'reverse'" in error.message


# email


@pytest.mark.parametrize(
    "email", ["ada@example.com", "ada.lovelace+billing@example.co.uk", "a@b.io"]
)
def test_email_accepts_a_valid_address(email: str) -> None:
    assert command({"email": email}).data.changes() == {"email": email}


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "ada@@example.com",
        "@example.com",
        "ada@",
        "ada@example",
        "ada lovelace@example.com",
        "ada@exa mple.com",
    ],
)
def test_email_refuses_an_invalid_address(email: str) -> None:
    error = assert_data_refused("email", email, "email_invalid")
    assert "is not a valid email address" in error.message


def test_email_accepts_the_longest_address_email_validator_allows() -> None:
    email = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(email) == 254
    assert command({"email": email}).data.changes() == {"email": email}


def test_email_longer_than_512_characters_is_refused_by_length() -> None:
    email = "a" * 501 + "@example.com"
    assert len(email) == 513
    error = assert_data_refused("email", email, "parameter_invalid")
    assert "at most 512 characters (got 513)" in error.message


def test_email_must_be_a_string() -> None:
    assert_data_refused("email", 5, "parameter_invalid")


# preferred_locales


@pytest.mark.parametrize(
    "locales",
    [["en-US"], ["zh-Hant-TW"], ["en"], ["de-DE-1996"], ["en-US", "fr-CA", "it"], []],
)
def test_preferred_locales_accepts_bcp_47_tags(locales: list[str]) -> None:
    assert command({"preferred_locales": locales}).data.changes() == {"preferred_locales": locales}


@pytest.mark.parametrize("tag", ["en_US", "xx-YYY", "", "english", "en-", "-en", "en--US", "zz"])
def test_preferred_locales_refuses_an_invalid_tag(tag: str) -> None:
    error = assert_refused(
        command_document({"preferred_locales": [tag]}),
        "parameter_invalid",
        "data.preferred_locales.0",
    )
    assert "is not a valid BCP 47 language tag" in error.message


def test_preferred_locales_names_the_index_of_the_invalid_tag() -> None:
    assert_refused(
        command_document({"preferred_locales": ["en", "fr", "en_US"]}),
        "parameter_invalid",
        "data.preferred_locales.2",
    )


def test_preferred_locales_refuses_a_tag_longer_than_35_characters() -> None:
    error = assert_refused(
        command_document({"preferred_locales": ["en-" + "a" * 33]}),
        "parameter_invalid",
        "data.preferred_locales.0",
    )
    assert "at most 35 characters" in error.message


def test_preferred_locales_refuses_a_non_string_entry() -> None:
    assert_refused(
        command_document({"preferred_locales": [5]}),
        "parameter_invalid",
        "data.preferred_locales.0",
    )


def test_preferred_locales_must_be_a_list() -> None:
    assert_data_refused("preferred_locales", "en-US", "parameter_invalid")


@pytest.mark.parametrize("locales", [["en", "en"], ["en-US", "fr", "en-US"]])
def test_preferred_locales_refuses_a_repeated_tag(locales: list[str]) -> None:
    error = assert_data_refused("preferred_locales", locales, "parameter_invalid")
    assert "must not repeat an entry" in error.message


def test_preferred_locales_refuses_a_tag_repeated_in_another_case() -> None:
    # BCP 47 tags are case-insensitive (RFC 5646 section 2.1.1): en-US and en-us are one tag.
    error = assert_data_refused("preferred_locales", ["en-US", "en-us"], "parameter_invalid")
    assert "must not repeat an entry" in error.message


# expand


def test_expand_accepts_subscriptions() -> None:
    assert command({"expand": ["subscriptions"]}).data.expand == ["subscriptions"]


@pytest.mark.parametrize(
    ("expand", "param"),
    [
        (["customer"], "data.expand.0"),
        (["Subscriptions"], "data.expand.0"),
        (["subscriptions", "invoices"], "data.expand.1"),
        ([""], "data.expand.0"),
        ("subscriptions", "data.expand"),
    ],
)
def test_expand_refuses_anything_but_subscriptions(expand: object, param: str) -> None:
    assert_refused(command_document({"expand": expand}), "parameter_invalid", param)


def test_expand_refuses_a_repeated_entry() -> None:
    error = assert_data_refused("expand", ["subscriptions", "subscriptions"], "parameter_invalid")
    assert "must not repeat an entry" in error.message


# Lengths


@pytest.mark.parametrize(("path", "limit"), TEXT_LIMITS)
def test_text_field_accepts_its_maximum_length(path: str, limit: int) -> None:
    data = command(data_at(path, "a" * limit)).data
    value: Any = data
    for part in path.split("."):
        value = getattr(value, part)
    assert value == "a" * limit


@pytest.mark.parametrize(("path", "limit"), TEXT_LIMITS)
def test_text_field_refuses_one_character_more_than_its_maximum(path: str, limit: int) -> None:
    error = assert_data_refused(path, "a" * (limit + 1), "parameter_invalid")
    assert f"at most {limit} characters (got {limit + 1})" in error.message


# Control characters


@pytest.mark.parametrize("char", FORBIDDEN_EVERYWHERE)
@pytest.mark.parametrize("path", TEXT_FIELDS)
def test_text_field_refuses_control_characters(path: str, char: str) -> None:
    error = assert_data_refused(path, f"a{char}b", "parameter_invalid")
    assert f"must not contain control characters (found U+{ord(char):04X}" in error.message


@pytest.mark.parametrize("char", FORBIDDEN_EVERYWHERE)
def test_email_refuses_control_characters(char: str) -> None:
    error = assert_data_refused("email", f"ada{char}@example.com", "parameter_invalid")
    assert "must not contain control characters" in error.message


@pytest.mark.parametrize("char", LINE_BREAKS_AND_TAB)
@pytest.mark.parametrize("path", SINGLE_LINE_FIELDS)
def test_single_line_field_refuses_line_breaks_and_tabs(path: str, char: str) -> None:
    error = assert_data_refused(path, f"a{char}b", "parameter_invalid")
    assert "must not contain control characters" in error.message


@pytest.mark.parametrize("char", LINE_BREAKS_AND_TAB)
def test_email_refuses_line_breaks_and_tabs(char: str) -> None:
    error = assert_data_refused("email", f"ada{char}@example.com", "parameter_invalid")
    assert "must not contain control characters" in error.message


@pytest.mark.parametrize("text", ["line one\nline two", "a\tb", "windows\r\nline"])
def test_description_allows_line_breaks_and_tabs(text: str) -> None:
    assert command({"description": text}).data.changes() == {"description": text}


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\n"])
def test_country_refuses_control_characters(char: str) -> None:
    assert_data_refused("address.country", f"U{char}", "parameter_invalid")


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\n"])
def test_locale_refuses_control_characters(char: str) -> None:
    assert_refused(
        command_document({"preferred_locales": [f"en{char}"]}),
        "parameter_invalid",
        "data.preferred_locales.0",
    )


# Envelope


@pytest.mark.parametrize("version", ["1.1", "0.3", "1", 1.0, None])
def test_specversion_must_be_1_0(version: object) -> None:
    assert_refused(command_document(specversion=version), "parameter_invalid", "specversion")


@pytest.mark.parametrize("kind", ["customer.updated", "customer.create", "Customer.Update", ""])
def test_type_must_be_customer_update(kind: str) -> None:
    assert_refused(command_document(type=kind), "parameter_invalid", "type")


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type", "subject", "data"])
def test_required_attribute_is_reported_missing(attribute: str) -> None:
    document = command_document()
    del document[attribute]
    error = assert_refused(document, "parameter_missing", attribute)
    assert error.message == f"Missing required parameter: {attribute}"


@pytest.mark.parametrize("identifier", ["a", "cmd-" + "x" * 251, "0195b2d0-7a9e-7c1b", "cmd/é:1"])
def test_id_accepts_1_to_255_printable_characters(identifier: str) -> None:
    assert command(id=identifier).id == identifier


def test_id_refuses_an_empty_string() -> None:
    assert_refused(command_document(id=""), "parameter_invalid_empty", "id")


def test_id_refuses_256_characters() -> None:
    error = assert_refused(command_document(id="a" * 256), "parameter_invalid", "id")
    assert "at most 255 characters" in error.message


@pytest.mark.parametrize("identifier", ["a b", "a\tb", "a\nb", "a\x00b", "a\u00a0b", " a"])
def test_id_refuses_whitespace_and_control_characters(identifier: str) -> None:
    error = assert_refused(command_document(id=identifier), "parameter_invalid", "id")
    assert "without whitespace" in error.message


@pytest.mark.parametrize("identifier", [5, None, ["cmd-1"]])
def test_id_must_be_a_string(identifier: object) -> None:
    assert_refused(command_document(id=identifier), "parameter_invalid", "id")


@pytest.mark.parametrize(
    ("subject", "code"),
    [("", "parameter_invalid_empty"), ("cus 1", "parameter_invalid"), (1, "parameter_invalid")],
)
def test_subject_must_be_an_identifier(subject: object, code: ErrorCode) -> None:
    assert_refused(command_document(subject=subject), code, "subject")


@pytest.mark.parametrize(
    "time",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00+02:00",
        "2024-05-01T12:00:00.123456-05:00",
        "2024-05-01t12:00:00z",
    ],
)
def test_time_accepts_rfc_3339_with_an_offset(time: str) -> None:
    parsed = command(time=time).time
    assert parsed is not None
    assert parsed.tzinfo is not None


def test_time_may_be_absent() -> None:
    assert command().time is None


@pytest.mark.parametrize("time", ["2024-05-01T12:00:00", "2024-05-01T12:00:00.5", "2024-05-01"])
def test_time_refuses_a_timestamp_without_an_offset(time: str) -> None:
    error = assert_refused(command_document(time=time), "parameter_invalid", "time")
    assert "with a UTC offset" in error.message


@pytest.mark.parametrize("time", ["yesterday", "2024-13-01T00:00:00Z", "", True])
def test_time_refuses_what_is_not_a_timestamp(time: object) -> None:
    assert_refused(command_document(time=time), "parameter_invalid", "time")


@pytest.mark.parametrize(
    "time",
    [
        pytest.param(1_714_564_800, id="unix-seconds-number"),
        pytest.param("1714564800", id="unix-seconds-string"),
        pytest.param("2024-05-01T12:00:00+0200", id="offset-without-colon"),
        pytest.param("2024-05-01T12:00Z", id="no-seconds"),
    ],
)
def test_time_refuses_what_rfc_3339_does_not_allow(time: object) -> None:
    assert_refused(command_document(time=time), "parameter_invalid", "time")


def test_datacontenttype_defaults_to_json() -> None:
    assert command().datacontenttype == "application/json"


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "APPLICATION/JSON", "application/json; charset=utf-8",
     'application/json;charset="UTF-8"', "application/json; profile=customer"],
)  # fmt: skip
def test_datacontenttype_is_json_with_any_parameters(content_type: str) -> None:
    assert command(datacontenttype=content_type).datacontenttype == content_type


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "", None, "application/json;", "application/jsonx",
     "application/json; charset=iso-8859-1", "application/json charset=utf-8"],
)  # fmt: skip
def test_datacontenttype_refuses_anything_but_json(content_type: object) -> None:
    assert_refused(
        command_document(datacontenttype=content_type), "parameter_invalid", "datacontenttype"
    )


@pytest.mark.parametrize("uri", ["https://example.com/customer.update.json", "urn:schema:1"])
def test_dataschema_is_an_absolute_uri(uri: str) -> None:
    assert command(dataschema=uri).dataschema == uri


def test_an_empty_dataschema_is_refused_as_empty() -> None:
    assert_refused(command_document(dataschema=""), "parameter_invalid_empty", "dataschema")


@pytest.mark.parametrize("uri", ["customer.update.json", "https://a b", "urn:caf\u00e9", 5])
def test_dataschema_refuses_what_is_not_an_absolute_uri(uri: object) -> None:
    assert_refused(command_document(dataschema=uri), "parameter_invalid", "dataschema")


@pytest.mark.parametrize("version", [1, 2, 2**40])
def test_expectedversion_accepts_a_positive_integer(version: int) -> None:
    assert command(expectedversion=version).expectedversion == version


@pytest.mark.parametrize("version", [0, -1])
def test_expectedversion_refuses_less_than_1(version: int) -> None:
    error = assert_refused(
        command_document(expectedversion=version), "parameter_invalid", "expectedversion"
    )
    assert "at least 1" in error.message


@pytest.mark.parametrize("version", [True, 1.0, "1", [1]])
def test_expectedversion_refuses_what_is_not_an_integer(version: object) -> None:
    assert_refused(
        command_document(expectedversion=version), "parameter_invalid_integer", "expectedversion"
    )


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("", "parameter_invalid_empty"),
        ("a b", "parameter_invalid"),
        ("s" * 1025, "parameter_invalid"),
    ],
)
def test_source_must_be_a_single_token_of_at_most_1024_characters(
    source: str, code: ErrorCode
) -> None:
    assert_refused(command_document(source=source), code, "source")


@pytest.mark.parametrize("data", [None, [], "name", 1])
def test_data_must_be_an_object(data: object) -> None:
    document = command_document()
    document["data"] = data
    error = assert_refused(document, "parameter_invalid", "data")
    assert "must be an object" in error.message


@pytest.mark.parametrize("address", [[], "Rome", 1])
def test_address_must_be_an_object(address: object) -> None:
    assert_data_refused("address", address, "parameter_invalid")
