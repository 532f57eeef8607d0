"""Applying one update to a stored customer: merge semantics, versions and stateful rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from schemas.errors import ErrorObject
from service.domain.customer import Address, CustomerState
from service.domain.update import Applied, PrefixOwner, Refused, apply_update, merge
from tests.unit.builders import CUSTOMER_ID, OTHER_CUSTOMER_ID, command, customer, no_owner

ROME = Address(city="Rome", country="IT", line1="Via Roma 1", postal_code="00100")


def full_customer() -> CustomerState:
    return customer(
        address=ROME,
        description="Long-standing customer",
        email="ada@example.com",
        invoice_prefix="ADA",
        next_invoice_sequence=5,
        name="Ada Lovelace",
        phone="+390612345678",
        preferred_locales=("en-GB", "it"),
        tax_exempt="exempt",
        last_invoice_sequence=4,
        version=3,
    )


def applied(
    current: CustomerState,
    data: dict[str, Any],
    prefix_owner: PrefixOwner = no_owner,
    **attributes: Any,
) -> Applied:
    result = apply_update(current, command(data, **attributes), prefix_owner)
    assert isinstance(result, Applied), result
    return result


def refused(
    current: CustomerState | None,
    data: dict[str, Any],
    prefix_owner: PrefixOwner = no_owner,
    **attributes: Any,
) -> ErrorObject:
    result = apply_update(current, command(data, **attributes), prefix_owner)
    assert isinstance(result, Refused), result
    return result.error


def owned_by(owner: str) -> PrefixOwner:
    def lookup(prefix: str) -> str | None:
        return owner

    return lookup


# Merge semantics


def test_absent_fields_are_left_unchanged() -> None:
    current = full_customer()
    after = merge(current, command({"phone": "+15551234567"}).data)
    assert after == dataclasses.replace(current, phone="+15551234567", version=4)


def test_an_empty_update_changes_only_the_version() -> None:
    current = full_customer()
    assert merge(current, command({}).data) == dataclasses.replace(current, version=4)


@pytest.mark.parametrize("cleared", [None, ""])
@pytest.mark.parametrize("field", ["description", "email", "name", "phone"])
def test_null_or_empty_string_clears_a_text_field(field: str, cleared: str | None) -> None:
    after = merge(full_customer(), command({field: cleared}).data)
    assert getattr(after, field) is None


@pytest.mark.parametrize("cleared", [None, ""])
def test_clearing_preferred_locales_leaves_no_locales(cleared: str | None) -> None:
    after = merge(full_customer(), command({"preferred_locales": cleared}).data)
    assert after.preferred_locales == ()


def test_preferred_locales_are_replaced_not_merged() -> None:
    after = merge(full_customer(), command({"preferred_locales": ["fr-CA"]}).data)
    assert after.preferred_locales == ("fr-CA",)


@pytest.mark.parametrize(
    ("field", "value"),
    [("invoice_prefix", "LOVE"), ("next_invoice_sequence", 99), ("tax_exempt", "reverse")],
)
def test_a_non_clearable_field_is_set(field: str, value: object) -> None:
    after = merge(full_customer(), command({field: value}).data)
    assert getattr(after, field) == value


def test_address_merges_field_by_field() -> None:
    after = merge(full_customer(), command({"address": {"line1": "Via Po 2", "state": "RM"}}).data)
    assert after.address == Address(
        city="Rome", country="IT", line1="Via Po 2", postal_code="00100", state="RM"
    )


def test_address_fields_can_be_cleared_one_by_one() -> None:
    after = merge(full_customer(), command({"address": {"postal_code": None, "city": ""}}).data)
    assert after.address == Address(country="IT", line1="Via Roma 1")


def test_address_is_created_from_the_fields_given() -> None:
    after = merge(customer(), command({"address": {"country": "US", "city": "Boston"}}).data)
    assert after.address == Address(city="Boston", country="US")


@pytest.mark.parametrize("cleared", [None, ""])
def test_address_null_or_empty_string_clears_the_whole_address(cleared: str | None) -> None:
    after = merge(full_customer(), command({"address": cleared}).data)
    assert after.address is None


def test_clearing_every_address_field_leaves_no_address() -> None:
    data = {"address": {"city": None, "country": None, "line1": "", "postal_code": None}}
    assert merge(full_customer(), command(data).data).address is None


def test_an_empty_address_object_leaves_the_address_unchanged() -> None:
    assert merge(full_customer(), command({"address": {}}).data).address == ROME


def test_an_empty_address_object_on_a_customer_without_address_leaves_none() -> None:
    assert merge(customer(), command({"address": {}}).data).address is None


# Versions


def test_an_applied_update_moves_the_version_on_by_one() -> None:
    result = applied(full_customer(), {"name": "Ada King"})
    assert (result.before.version, result.after.version) == (3, 4)


def test_a_no_op_update_still_moves_the_version_on_by_one() -> None:
    current = full_customer()
    result = applied(current, {"name": current.name, "expand": ["subscriptions"]})
    assert result.after == dataclasses.replace(current, version=4)
    assert result.previous_attributes == {}


def test_an_empty_update_is_applied_with_a_new_version() -> None:
    result = applied(full_customer(), {})
    assert result.after.version == 4
    assert result.before == full_customer()


# previous_attributes


def test_previous_attributes_hold_only_fields_whose_value_changed() -> None:
    current = full_customer()
    result = applied(
        current, {"name": "Ada King", "email": current.email, "tax_exempt": current.tax_exempt}
    )
    assert result.previous_attributes == {"name": "Ada Lovelace"}


def test_previous_attributes_hold_the_old_value_of_a_cleared_field() -> None:
    result = applied(full_customer(), {"description": None, "phone": ""})
    assert result.previous_attributes == {
        "description": "Long-standing customer",
        "phone": "+390612345678",
    }


def test_previous_attributes_hold_the_whole_old_address_as_an_object() -> None:
    result = applied(full_customer(), {"address": {"city": "Milan"}})
    assert result.previous_attributes == {
        "address": {
            "city": "Rome",
            "country": "IT",
            "line1": "Via Roma 1",
            "line2": None,
            "postal_code": "00100",
            "state": None,
        }
    }


def test_previous_attributes_hold_null_when_there_was_no_address() -> None:
    result = applied(customer(), {"address": {"country": "US"}})
    assert result.previous_attributes == {"address": None}


def test_an_address_update_that_changes_nothing_is_not_a_previous_attribute() -> None:
    result = applied(full_customer(), {"address": {"city": "Rome", "country": "IT"}})
    assert result.previous_attributes == {}


def test_previous_attributes_hold_locales_as_a_list() -> None:
    result = applied(full_customer(), {"preferred_locales": ["fr"]})
    assert result.previous_attributes == {"preferred_locales": ["en-GB", "it"]}
    assert isinstance(result.previous_attributes["preferred_locales"], list)


def test_the_same_locales_are_not_a_previous_attribute() -> None:
    result = applied(full_customer(), {"preferred_locales": ["en-GB", "it"]})
    assert result.previous_attributes == {}


def test_previous_attributes_hold_the_old_non_clearable_values() -> None:
    result = applied(
        full_customer(),
        {"invoice_prefix": "LOVE", "next_invoice_sequence": 10, "tax_exempt": "none"},
    )
    assert result.previous_attributes == {
        "invoice_prefix": "ADA",
        "next_invoice_sequence": 5,
        "tax_exempt": "exempt",
    }


def test_a_first_invoice_prefix_has_null_as_previous_value() -> None:
    result = applied(customer(), {"invoice_prefix": "LOVE"})
    assert result.previous_attributes == {"invoice_prefix": None}


# Refusals that need the stored customer


def test_an_unknown_customer_is_resource_missing() -> None:
    error = refused(None, {"name": "Ada"})
    assert (error.type, error.code, error.param) == (
        "invalid_request_error",
        "resource_missing",
        "subject",
    )
    assert CUSTOMER_ID in error.message


@pytest.mark.parametrize("expected", [1, 2, 4, 100])
def test_a_different_expected_version_is_a_version_conflict(expected: int) -> None:
    error = refused(full_customer(), {"name": "Ada"}, expectedversion=expected)
    assert (error.type, error.code, error.param) == (
        "invalid_request_error",
        "version_conflict",
        "expectedversion",
    )
    assert "at version 3" in error.message


def test_the_current_expected_version_is_applied() -> None:
    assert applied(full_customer(), {"name": "Ada"}, expectedversion=3).after.version == 4


def test_an_invoice_prefix_held_by_another_customer_is_refused() -> None:
    error = refused(full_customer(), {"invoice_prefix": "TAKEN"}, owned_by(OTHER_CUSTOMER_ID))
    assert (error.type, error.code, error.param) == (
        "invalid_request_error",
        "parameter_invalid",
        "data.invoice_prefix",
    )
    assert "'TAKEN' is already used by another customer" in error.message


def test_a_refused_invoice_prefix_refuses_the_whole_update() -> None:
    result = apply_update(
        full_customer(),
        command({"name": "Ada King", "invoice_prefix": "TAKEN"}),
        owned_by(OTHER_CUSTOMER_ID),
    )
    assert isinstance(result, Refused)


def test_re_setting_ones_own_invoice_prefix_is_allowed() -> None:
    result = applied(full_customer(), {"invoice_prefix": "ADA"}, owned_by(CUSTOMER_ID))
    assert result.after.invoice_prefix == "ADA"
    assert result.previous_attributes == {}


def test_a_prefix_the_lookup_already_gives_to_this_customer_is_allowed() -> None:
    result = applied(full_customer(), {"invoice_prefix": "LOVE"}, owned_by(CUSTOMER_ID))
    assert result.after.invoice_prefix == "LOVE"


def test_a_free_invoice_prefix_is_taken() -> None:
    result = applied(full_customer(), {"invoice_prefix": "LOVE"})
    assert result.after.invoice_prefix == "LOVE"


@pytest.mark.parametrize("sequence", [1, 3, 4])
def test_next_invoice_sequence_not_above_the_last_used_is_refused(sequence: int) -> None:
    error = refused(full_customer(), {"next_invoice_sequence": sequence})
    assert (error.type, error.code, error.param) == (
        "invalid_request_error",
        "parameter_invalid",
        "data.next_invoice_sequence",
    )
    assert "greater than 4" in error.message


def test_next_invoice_sequence_just_above_the_last_used_is_applied() -> None:
    current = dataclasses.replace(full_customer(), next_invoice_sequence=9)
    result = applied(current, {"next_invoice_sequence": 5})
    assert result.after.next_invoice_sequence == 5
    assert result.previous_attributes == {"next_invoice_sequence": 9}
