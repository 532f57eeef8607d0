"""Every metric, label and label value that the Grafana dashboard and the alert rules
read is exported by a real worker (and its relay) after a small load: no panel or alert
on a metric that does not exist."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from service.infrastructure.settings import Settings
from tests.deploy.queries import Exported, alert_queries, dashboard_queries, missing, uses
from tests.support import (
    command,
    encode,
    eventually,
    insert_customer,
    produce,
    serving_worker,
    shrink_topic,
)

QUERIES = {**alert_queries(), **dashboard_queries()}


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


@pytest.fixture
async def exported(settings: Settings, db: asyncpg.Connection) -> Exported:
    """The worker's /metrics once it has applied, rejected and dead-lettered commands,
    published their outcomes, and parked an event Kafka refused."""
    await insert_customer(db, "cus_m", invoice_prefix="MET1")
    async with serving_worker(settings) as (port, _task):
        # The events topic refuses cus_m's second event (too large): it is parked.
        await shrink_topic(settings, settings.topic_events, 3000)
        await produce(
            settings,
            [
                (b"cus_m", encode(command("cus_m", {"name": "Metered"}))),
                (b"cus_m", encode(command("cus_m", {"description": "y" * 4000}))),
                (b"cus_unknown", encode(command("cus_unknown", {}))),
                (b"cus_m", b"not json"),
            ],
        )

        async def complete() -> bool:
            text = await _metrics(port)
            return all(
                series in text
                for series in (
                    'customer_command_outcomes_total{outcome="dead_lettered"} 1.0',
                    'customer_command_outcomes_total{outcome="rejected"} 1.0',
                    'customer_command_outcomes_total{outcome="applied"} 2.0',
                    f'customer_events_published_total{{topic="{settings.topic_events}"}}',
                    "customer_outbox_parked{",
                    'customer_relay_state{state="leading"} 1.0',
                )
            )

        await eventually(
            complete, what="every outcome and the parked message in /metrics", within=60
        )
        return Exported.parse(await _metrics(port))


def test_every_metric_the_dashboard_and_the_alerts_read_is_exported(exported: Exported) -> None:
    problems = {name: missing(uses(expr), exported) for name, expr in QUERIES.items()}
    assert {name: found for name, found in problems.items() if found} == {}
    # Each query was checked against something: the scrape holds their metrics.
    assert {m for expr in QUERIES.values() for m in uses(expr).metrics} <= exported.labels.keys()
