"""The PromQL of the dashboard and the alert rules, parsed (promql-parser, the Rust
parser Prometheus-compatible tools use): which metrics each query reads, with which
labels and label values, so that tests can hold them against a real ``/metrics``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "customer-service.json"
#: Labels Prometheus adds to every scraped series (its target's), not the service.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container"})
#: What Grafana puts in place of its variables before a query runs.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+"}


@dataclass
class Uses:
    """What one query reads: metric names; for each, the labels it filters on and the
    values it matches exactly; and each grouping (``by (labels)``) with the metrics below
    it, one of which must carry each label."""

    metrics: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    groupings: list[tuple[frozenset[str], frozenset[str]]] = field(default_factory=list)


def alert_queries() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_queries() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"{panel['title']} {target['refId']}"] = expr
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label) is Grafana's, not PromQL: the metric and label.
            inner = variable["query"].removeprefix("label_values(").removesuffix(")")
            metric, label = (part.strip() for part in inner.split(","))
            queries[f"variable {variable['name']}"] = f"group by ({label}) ({metric})"
    return queries


def uses(expr: str) -> Uses:
    """What ``expr`` reads; raises ``ValueError`` when it is not valid PromQL."""
    found = Uses()
    tree = promql_parser.parse(expr)

    def selectors(node: Any) -> Iterator[Any]:
        collected: list[Any] = []
        promql_parser.walk(
            node,
            lambda n: collected.append(n) if isinstance(n, promql_parser.VectorSelector) else None,
        )
        yield from collected

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                raise ValueError(f"{expr}: a selector without a metric name")
            found.metrics.add(name)
            for matcher in node.matchers.matchers:
                found.labels.setdefault(name, set()).add(matcher.name)
                if matcher.op == promql_parser.MatchOp.Equal:
                    found.values.setdefault(name, set()).add((matcher.name, matcher.value))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            names = frozenset(selector.name for selector in selectors(node.expr))
            found.groupings.append((frozenset(node.modifier.labels), names))

    promql_parser.walk(tree, visit)
    return found


@dataclass
class Exported:
    """The series of one ``/metrics`` scrape: each sample name's labels and values."""

    labels: dict[str, set[str]]
    values: dict[str, set[tuple[str, str]]]

    @classmethod
    def parse(cls, text: str) -> Exported:
        labels: dict[str, set[str]] = {}
        values: dict[str, set[tuple[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
                values.setdefault(sample.name, set()).update(sample.labels.items())
        return cls(labels, values)


def missing(query: Uses, exported: Exported) -> list[str]:
    """What ``query`` reads that ``exported`` does not have."""
    problems = [f"no metric {name}" for name in sorted(query.metrics - exported.labels.keys())]
    for name, labels in query.labels.items():
        for label in sorted(labels - TARGET_LABELS - exported.labels.get(name, set())):
            problems.append(f"{name} has no label {label}")
    for name, pairs in query.values.items():
        for label, value in sorted(pairs - exported.values.get(name, set())):
            if label not in TARGET_LABELS:
                problems.append(f'{name} has no series with {label}="{value}"')
    for grouped, names in query.groupings:
        for label in sorted(grouped - TARGET_LABELS):
            if not any(label in exported.labels.get(name, set()) for name in names):
                problems.append(f"none of {sorted(names)} has label {label}")
    return problems
