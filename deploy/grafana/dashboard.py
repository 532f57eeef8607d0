"""The Grafana dashboard of customer-service, built with grafana-foundation-sdk.

``python -m deploy.grafana.dashboard --write`` writes ``customer-service.json`` beside
this file (the chart ships it too); a test checks that the committed file is what this
module builds, and that every metric and label it queries is one the service exports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    DataSourceRef,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import VariableRefresh

PATH = Path(__file__).with_name("customer-service.json")
UID = "customer-service"
#: Every query is limited to the chosen jobs (one per deployment of the service).
JOBS = 'job=~"$job"'
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _panel(title: str, unit: str, description: str, *queries: tuple[str, str]) -> timeseries.Panel:
    """A time series of ``queries`` (expression, legend) at half the dashboard's width."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(_DATASOURCE)
        .span(12)
        .height(8)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
    )
    for ref_id, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(
            prometheus.Dataquery().ref_id(ref_id).expr(expr).legend_format(legend)
        )
    return panel


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{JOBS}}}"
            "[$__rate_interval])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    board = (
        dashboard.Dashboard("customer-service")
        .uid(UID)
        .tags(["customer-service", "kafka", "postgresql"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(_DATASOURCE)
            .query("label_values(customer_ready, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
        )
    )
    layout: list[dashboard.Row | timeseries.Panel] = [
        dashboard.Row("Commands"),
        _panel(
            "Throughput by outcome",
            "ops",
            "Commands per second: applied, rejected (answered on the rejection topic), "
            "duplicate (already applied) and dead_lettered.",
            (
                f"sum by (job, outcome) (rate(customer_command_outcomes_total{{{JOBS}}}"
                "[$__rate_interval]))",
                "{{job}} {{outcome}}",
            ),
        ),
        _panel(
            "Command lag",
            "s",
            "From a command's record timestamp to the commit of its effects.",
            *_quantiles("customer_command_lag_seconds"),
        ),
        _panel(
            "Batch latency",
            "s",
            "Time to process one polled batch, the database commit included.",
            *_quantiles("customer_batch_processing_seconds"),
        ),
        _panel(
            "Consumer lag per partition",
            "short",
            "Records of the command topic not yet processed, per partition, as the "
            "worker holding it measures.",
            (
                f"sum by (job, partition) (customer_consumer_lag_records{{{JOBS}}})",
                "{{job}} partition {{partition}}",
            ),
        ),
        dashboard.Row("Outbox and relay"),
        _panel(
            "Outbox backlog",
            "short",
            "Events committed to the database and not yet on Kafka; parked ones "
            "(refused by Kafka for good, see `customer-service outbox list`) apart. Every "
            "relay process of a deployment measures the same table, hence max.",
            (f"max by (job) (customer_outbox_backlog{{{JOBS}}})", "{{job}} waiting"),
            (
                "sum by (job, topic) (max by (job, topic, key) "
                f"(customer_outbox_parked{{{JOBS}}}))",
                "{{job}} parked {{topic}}",
            ),
        ),
        _panel(
            "Oldest unpublished event",
            "s",
            "Age of the oldest outbox message that is not parked; /readyz of the "
            "leading relay fails above RELAY_STALL_SECONDS.",
            (f"max by (job) (customer_outbox_oldest_seconds{{{JOBS}}})", "{{job}}"),
        ),
        _panel(
            "Relay state",
            "short",
            "Relay processes in each state: exactly one should be leading.",
            (f"sum by (job, state) (customer_relay_state{{{JOBS}}})", "{{job}} {{state}}"),
        ),
        _panel(
            "Published",
            "ops",
            "Messages the relay published per second, by topic.",
            (
                f"sum by (job, topic) (rate(customer_events_published_total{{{JOBS}}}"
                "[$__rate_interval]))",
                "{{job}} {{topic}}",
            ),
        ),
        dashboard.Row("Failures"),
        _panel(
            "Retries",
            "ops",
            "Retries after transient failures of Kafka or PostgreSQL, by component.",
            (
                f"sum by (job, component) (rate(customer_retries_total{{{JOBS}}}"
                "[$__rate_interval]))",
                "{{job}} {{component}}",
            ),
        ),
        _panel(
            "Dead letters",
            "short",
            "Commands sent to the dead-letter topic in each 5 minutes "
            "(see `customer-service dlq list`).",
            (
                "sum by (job) (increase(customer_command_outcomes_total"
                f'{{{JOBS}, outcome="dead_lettered"}}[5m]))',
                "{{job}}",
            ),
        ),
        _panel(
            "Ready",
            "short",
            "Processes whose /readyz answers 200, out of all that are scraped.",
            (f"sum by (job) (customer_ready{{{JOBS}}})", "{{job}} ready"),
            (f"count by (job) (customer_ready{{{JOBS}}})", "{{job}} scraped"),
        ),
    ]
    # Ids in reading order: Grafana links to a panel by its id.
    for panel_id, item in enumerate(layout, start=1):
        if isinstance(item, dashboard.Row):
            board = board.with_row(item.id(panel_id))
        else:
            board = board.with_panel(item.id(panel_id))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {PATH.name}")
    if parser.parse_args().write:
        PATH.write_text(render())
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
