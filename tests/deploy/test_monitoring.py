"""The dashboard, the alert rules and the runbook agree with each other: the committed
dashboard is what its generator builds, every query is valid PromQL, and every alert
links to a runbook section that exists. (That every metric they read is exported is
tests/integration/test_metrics_contract.py, against a real worker.)"""

from __future__ import annotations

import re

import pytest
import yaml

from deploy.grafana import dashboard
from tests.deploy.queries import (
    ALERTS,
    ROOT,
    Exported,
    alert_queries,
    dashboard_queries,
    missing,
    uses,
)

RUNBOOK = ROOT / "docs" / "runbook.md"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to -."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    }


def test_the_committed_dashboard_is_what_the_generator_builds() -> None:
    assert dashboard.PATH.read_text() == dashboard.render(), (
        "run: python -m deploy.grafana.dashboard --write"
    )


@pytest.mark.parametrize(
    ("name", "expr"), sorted({**alert_queries(), **dashboard_queries()}.items())
)
def test_every_query_is_valid_promql_on_customer_metrics(name: str, expr: str) -> None:
    query = uses(expr)
    assert query.metrics, name
    assert all(metric.startswith("customer_") for metric in query.metrics), query.metrics


def test_every_alert_links_to_its_own_runbook_section() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    assert len(rules) >= 6
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
        assert url.partition("#")[2] in anchors, f"docs/runbook.md has no section {rule['alert']}"
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_a_query_on_what_is_not_exported_is_found() -> None:
    # The contract test relies on missing(); it must name each kind of gap.
    exported = Exported.parse(
        "# TYPE customer_ready gauge\ncustomer_ready 1.0\n"
        "# TYPE customer_relay_state gauge\n"
        'customer_relay_state{state="standby"} 1.0\n'
    )
    assert missing(uses('sum by (job) (customer_ready{job="x"})'), exported) == []
    assert missing(uses("customer_readiness"), exported) == ["no metric customer_readiness"]
    assert missing(uses('customer_ready{process="relay"}'), exported) == [
        "customer_ready has no label process",
        'customer_ready has no series with process="relay"',
    ]
    assert missing(uses('customer_relay_state{state="leading"}'), exported) == [
        'customer_relay_state has no series with state="leading"'
    ]
    assert missing(uses("sum by (partition) (customer_ready)"), exported) == [
        "none of ['customer_ready'] has label partition"
    ]
