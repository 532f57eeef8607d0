"""The published command schema and the models agree, but for ``fields.SCHEMA_GAPS``.

Commands are generated from the schema itself (hypothesis-jsonschema, from the draft 07
form the AsyncAPI document embeds) and then, one field at a time, given values the
schema may or may not allow. Whatever the models accept, the schema accepts; whatever
the schema accepts, the models accept, or refuse for a rule the schema cannot say.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from pydantic import ValidationError

from schemas.__main__ import ROOT
from schemas.command import CustomerUpdateCommand
from schemas.errors import ErrorObject, from_validation_error
from schemas.fields import SCHEMA_GAPS

Json = dict[str, Any]

PUBLISHED = json.loads((ROOT / "json" / "customer.update.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(PUBLISHED, format_checker=Draft202012Validator.FORMAT_CHECKER)
_ASYNCAPI = yaml.safe_load((ROOT / "asyncapi.yaml").read_text("utf-8"))
COMMANDS = from_schema(
    {"$ref": "#/components/schemas/CustomerUpdateCommand", "components": _ASYNCAPI["components"]}
)
EXAMPLE = json.loads((ROOT / "examples" / "customer.update.json").read_text("utf-8"))

#: Where a value may be put: every attribute and field, the nested ones by dotted path.
PLACES = [
    *(name for name in PUBLISHED["properties"] if name != "data"),
    *(f"data.{name}" for name in PUBLISHED["$defs"]["CustomerUpdate"]["properties"]),
    *(f"data.address.{name}" for name in PUBLISHED["$defs"]["AddressUpdate"]["properties"]),
]
#: Values near the rules' edges, and anything JSON can hold.
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "ZZ",
            "it",
            "IT",
            "a@b",
            "not-an-email",
            "Ada\x00",
            "tab\there",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00",
            "1.0",
            "en",
            "EN",
            ["en", "EN"],
            ["subscriptions", "subscriptions"],
            "application/json; charset=latin1",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "relative/uri",
            12.0,
            1e300,
            -1,
            0,
            2**63,
            [],
            {},
        ]
    ),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    # Generating from a schema with patterns and an enum of 249 countries is slow and
    # filters a lot; both are what the test is about.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def models_refusal(document: Json) -> ErrorObject | None:
    try:
        CustomerUpdateCommand.model_validate(document)
    except ValidationError as exc:
        return from_validation_error(exc)
    return None


def schema_accepts(document: Json) -> bool:
    return not any(True for _ in VALIDATOR.iter_errors(document))


def a_gap(error: ErrorObject) -> bool:
    return any(gap.message.search(error.message) for gap in SCHEMA_GAPS)


def put(document: Json, place: str, value: Any) -> Json:
    changed = copy.deepcopy(document)
    *parents, name = place.split(".")
    node = changed
    for parent in parents:
        if not isinstance(node.get(parent), dict):
            node[parent] = {}
        node = node[parent]
    node[name] = value
    return changed


def assert_agree(document: Json) -> None:
    refusal = models_refusal(document)
    if refusal is None:
        assert schema_accepts(document), f"the models take what the schema refuses: {document}"
    elif schema_accepts(document):
        assert a_gap(refusal), f"the schema takes what the models refuse ({refusal.message})"


@PROPERTY
@given(COMMANDS)
def test_what_the_schema_generates_the_models_accept_but_for_the_gaps(document: Json) -> None:
    assert schema_accepts(document)
    assert_agree(document)


@PROPERTY
@given(COMMANDS, st.sampled_from(PLACES), VALUES)
@example(EXAMPLE, "data.next_invoice_sequence", 12.0)
@example(EXAMPLE, "data.preferred_locales", ["en", "EN"])
@example(EXAMPLE, "time", "")
@example(EXAMPLE, "traceparent", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
def test_one_changed_value_is_judged_alike_but_for_the_gaps(
    document: Json, place: str, value: Any
) -> None:
    assert_agree(put(document, place, value))


#: One command per gap that the schema accepts and the models refuse for it: a gap the
#: schema closes (or a rule the models drop) fails here, so the list cannot go stale.
GAP_EXAMPLES = [
    ("id", "cmd-\u200b1"),
    ("data.preferred_locales", ["zz-Qqqq-QQ"]),
    ("data.preferred_locales", ["en", "EN"]),
    ("data.next_invoice_sequence", 12.0),
    ("data.email", "ada@localhost"),
    ("time", "2026-02-30T00:00:00Z"),
]


@pytest.mark.parametrize(("place", "value"), GAP_EXAMPLES)
def test_each_documented_gap_is_one(place: str, value: Any) -> None:
    document = put(EXAMPLE, place, value)
    refusal = models_refusal(document)

    assert schema_accepts(document)
    assert refusal is not None
    assert a_gap(refusal)


def test_every_gap_has_its_example_and_the_schema_lists_it() -> None:
    refusals = [models_refusal(put(EXAMPLE, place, value)) for place, value in GAP_EXAMPLES]
    for gap in SCHEMA_GAPS:
        assert any(r is not None and gap.message.search(r.message) for r in refusals), gap.rule
        assert gap.rule in PUBLISHED["description"]


@pytest.mark.parametrize("place", ["id", "subject", "source", "principal", "correlationid"])
@pytest.mark.parametrize("control", ["\x00", "\x1b", "\x7f", "\x9f"])
def test_a_control_character_in_an_identifier_is_the_schemas_to_refuse(
    place: str, control: str
) -> None:
    # Not left to the printable-characters gap: a pattern can name these.
    document = put(EXAMPLE, place, f"cmd{control}1")

    assert not schema_accepts(document)
    assert models_refusal(document) is not None
