"""The scenario catalogue and its documentation stay in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faults.scenarios import SCENARIOS, SuiteOptions, select

README = Path(__file__).resolve().parents[2] / "faults" / "README.md"


def _documented() -> dict[str, bool]:
    """Scenario name -> whether the table marks it as part of ``--short``."""
    rows = re.findall(r"^\| `([a-z-]+)`( \*)? \|", README.read_text(), flags=re.MULTILINE)
    return {name: bool(star) for name, star in rows}


def test_every_scenario_is_documented_with_its_short_flag() -> None:
    assert _documented() == {scenario.name: scenario.short for scenario in SCENARIOS}


def test_the_short_form_selects_only_short_scenarios_and_the_full_form_all() -> None:
    assert [s.name for s in select(SuiteOptions(short=True))] == [
        s.name for s in SCENARIOS if s.short
    ]
    assert [s.name for s in select(SuiteOptions())] == [s.name for s in SCENARIOS]


def test_an_unknown_scenario_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="worker-pause"):
        select(SuiteOptions(scenarios=["worker-paws"]))


def test_over_tls_the_scenarios_through_toxiproxy_are_left_out() -> None:
    # Toxiproxy reaches the broker through a plaintext listener: those would not be TLS.
    chosen = select(SuiteOptions(tls=True))
    assert chosen == [s for s in SCENARIOS if not s.proxied]
    assert any(s.proxied for s in SCENARIOS)
    with pytest.raises(ValueError, match="--tls runs no scenario through Toxiproxy: kafka-cut"):
        select(SuiteOptions(tls=True, scenarios=["graceful-sigterm", "kafka-cut"]))
