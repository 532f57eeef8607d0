"""The blind spot the oracle closes: a rule the service gets wrong.

Each test breaks one rule of the service (with ``monkeypatch``) and plays a perfect
worker with it (``HistoryBuilder``), so the history is what a service with that bug
would leave. The reference model and the fold run the same broken code, so every check
but the oracle passes; the oracle, written from the README, reports the command and the
customer concerned.
"""

from __future__ import annotations

from collections.abc import Callable

import pycountry
import pytest

from faults.checker import check
from schemas.command import AUTHORIZATION_ACTION
from service.domain import authorization, update
from service.domain.customer import ADDRESS_FIELDS, Address
from tests.faults.histories import HistoryBuilder, customer, document
from tests.unit.builders import no_owner


def builder() -> HistoryBuilder:
    return HistoryBuilder(
        {
            "cus_1": customer("cus_1", address=Address(city="Rome", country="IT")),
            "cus_2": customer("cus_2"),
        }
    )


def grants_taken_prefixes(monkeypatch: pytest.MonkeyPatch) -> HistoryBuilder:
    """The prefix owner is never looked up, so another customer's prefix is granted."""
    rules = update._check_rules
    monkeypatch.setattr(
        update, "_check_rules", lambda current, body, _: rules(current, body, no_owner)
    )
    build = builder()
    build.send("cus_2", document("cus_2", "cmd-steal", {"invoice_prefix": "PFX1"}))
    return build


def accepts_any_country(monkeypatch: pytest.MonkeyPatch) -> HistoryBuilder:
    """The ISO list answers for every code."""
    monkeypatch.setattr(pycountry.countries, "get", lambda **_: object())
    build = builder()
    build.send("cus_1", document("cus_1", "cmd-xx", {"address": {"country": "XX"}}))
    return build


def replaces_the_address(monkeypatch: pytest.MonkeyPatch) -> HistoryBuilder:
    """An address update replaces the address instead of merging into it."""
    monkeypatch.setattr(
        update,
        "_merge_address",
        lambda _, given: given and Address(*[getattr(given, f) for f in ADDRESS_FIELDS]),
    )
    build = builder()
    build.send("cus_1", document("cus_1", "cmd-line1", {"address": {"line1": "Via 1"}}))
    return build


def reads_one_permission(monkeypatch: pytest.MonkeyPatch) -> HistoryBuilder:
    """Only the first of the space-separated permissions counts."""
    monkeypatch.setattr(authorization, "space_separated", lambda tokens: set(tokens.split()[:1]))
    build = builder()
    permissions = f"pay:customers:read {AUTHORIZATION_ACTION}"
    build.send("cus_2", document("cus_2", "cmd-both", {"name": "Ada"}, permissions=permissions))
    return build


Bug = Callable[[pytest.MonkeyPatch], HistoryBuilder]

#: Each broken rule, and what the oracle must say about it.
BUGS: list[tuple[Bug, list[str]]] = [
    (
        grants_taken_prefixes,
        [
            "oracle_outcome: command cmd-steal: applied (version 2) and no dead letter; the "
            "oracle expects [1:0 rejected parameter_invalid at data.invoice_prefix]",
            "oracle_state: customer cus_2: the final row differs from the oracle's: "
            "invoice_prefix is 'PFX1', expected 'PFX2'; version is 2, expected 1",
        ],
    ),
    (
        accepts_any_country,
        [
            "oracle_outcome: command cmd-xx: applied (version 2) and no dead letter; the "
            "oracle expects [0:0 rejected parameter_invalid at data.address.country]",
            "oracle_state: customer cus_1: the final row differs from the oracle's: address is "
            "{'city': 'Rome', 'country': 'XX', 'line1': None, 'line2': None, 'postal_code': "
            "None, 'state': None}, expected {'city': 'Rome', 'country': 'IT', 'line1': None, "
            "'line2': None, 'postal_code': None, 'state': None}; version is 2, expected 1",
        ],
    ),
    (
        replaces_the_address,
        [
            "oracle_state: customer.updated[0:0] (command cmd-line1) carries a customer that "
            "differs from the oracle's: address is {'city': None, 'country': None, 'line1': "
            "'Via 1', 'line2': None, 'postal_code': None, 'state': None}, expected {'city': "
            "'Rome', 'country': 'IT', 'line1': 'Via 1', 'line2': None, 'postal_code': None, "
            "'state': None}",
            "oracle_state: customer cus_1: the final row differs from the oracle's: address is "
            "{'city': None, 'country': None, 'line1': 'Via 1', 'line2': None, 'postal_code': "
            "None, 'state': None}, expected {'city': 'Rome', 'country': 'IT', 'line1': 'Via 1', "
            "'line2': None, 'postal_code': None, 'state': None}",
        ],
    ),
    (
        reads_one_permission,
        [
            "oracle_outcome: command cmd-both: rejected permission_denied at permissions and "
            "no dead letter; the oracle expects [1:0 applied (version 2)]",
            "oracle_state: customer cus_2: the final row differs from the oracle's: name is "
            "None, expected 'Ada'; version is 1, expected 2",
        ],
    ),
]


@pytest.mark.parametrize(("bug", "reported"), BUGS, ids=[bug.__name__ for bug, _ in BUGS])
def test_a_wrong_rule_passes_every_check_but_the_oracle(
    monkeypatch: pytest.MonkeyPatch, bug: Bug, reported: list[str]
) -> None:
    history = bug(monkeypatch).history()

    assert check(history, skip=["oracle"]).violations == []
    assert check(history).summary() == reported


def test_without_the_bug_the_oracle_agrees() -> None:
    # The same commands from the service as it is: nothing to report.
    for bug, _ in BUGS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            build = bug(monkeypatch)
        assert check(build.history()).violations == [], bug.__name__
