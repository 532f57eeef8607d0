"""Health and metrics endpoints of a running worker, requested over real HTTP."""

from __future__ import annotations

import aiohttp
import asyncpg

from service.infrastructure.settings import Settings
from tests.support import (
    TopicReader,
    command,
    event_topics,
    eventually,
    insert_customer,
    produce_commands,
    serving_worker,
)


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def _sample(metrics: str, series: str) -> float:
    """The value of one series, named with its labels exactly as exported."""
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not in metrics")


async def test_probes_and_metrics_follow_the_worker(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_h", invoice_prefix="HTT1")
    async with serving_worker(settings) as (port, task):
        await eventually(lambda: _status_is(port, "/readyz", 200), what="readiness")
        assert (await _get(port, "/livez"))[0] == 200

        await produce_commands(
            settings, [command("cus_h", {"name": "Metered"}), command("cus_x", {})]
        )
        async with TopicReader(settings, event_topics(settings), task) as reader:
            await reader.wait_for_count(settings.topic_events, 1)
            await reader.wait_for_count(settings.topic_rejections, 1)
        await eventually(
            lambda: _metric_is(
                port, f'customer_events_published_total{{topic="{settings.topic_rejections}"}}', 1.0
            ),
            what="the relay's counter",
        )

        status, metrics = await _get(port, "/metrics")
        assert status == 200
        assert _sample(metrics, 'customer_command_outcomes_total{outcome="applied"}') == 1.0
        assert _sample(metrics, 'customer_command_outcomes_total{outcome="rejected"}') == 1.0
        assert _sample(metrics, "customer_commands_consumed_total") == 2.0
        assert _sample(metrics, "customer_batch_processing_seconds_count") >= 1.0
        assert _sample(metrics, "customer_command_lag_seconds_count") == 2.0
        assert "customer_consumer_lag_records{" in metrics
        assert "customer_outbox_backlog " in metrics
        assert 'customer_retries_total{component="worker"} 0.0' in metrics
        assert _sample(metrics, "customer_ready") == 1.0
        assert _sample(metrics, 'customer_relay_state{state="leading"}') == 1.0


async def test_a_worker_without_a_relay_exports_no_relay_state(settings: Settings) -> None:
    # With the relay deployed apart, a worker's "starting" would read as a relay that
    # cannot reach Kafka or PostgreSQL.
    async with serving_worker(settings.model_copy(update={"relay_enabled": False})) as (port, _):
        await eventually(lambda: _status_is(port, "/readyz", 200), what="readiness")
        status, metrics = await _get(port, "/metrics")
    assert status == 200
    assert _sample(metrics, "customer_ready") == 1.0
    assert not [line for line in metrics.splitlines() if line.startswith("customer_relay_state{")]


async def test_readiness_fails_without_partitions_and_liveness_without_a_loop(
    settings: Settings,
) -> None:
    from service.adapters.http import Health, HttpServer, build_app
    from service.infrastructure.metrics import Metrics

    pool = await asyncpg.create_pool(
        settings.database_url.get_secret_value(), min_size=1, max_size=2
    )
    health = Health(pool=pool, stuck_after=60)
    server = HttpServer(build_app(health, Metrics()), "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await _get(server.port, "/readyz")
        assert status == 503
        assert "no partitions assigned" in body
        assert (await _get(server.port, "/livez"))[0] == 503
        assert _sample((await _get(server.port, "/metrics"))[1], "customer_ready") == 0.0

        health.running = True
        health.assigned_partitions = lambda: 3
        assert (await _get(server.port, "/readyz"))[0] == 200
        assert (await _get(server.port, "/livez"))[0] == 200
        assert _sample((await _get(server.port, "/metrics"))[1], "customer_ready") == 1.0

        await pool.close()
        status, body = await _get(server.port, "/readyz")
        assert status == 503
        assert "database unreachable" in body
    finally:
        await server.stop()
        await pool.close()


async def _status_is(port: int, path: str, expected: int) -> bool:
    return (await _get(port, path))[0] == expected


async def _metric_is(port: int, name: str, value: float) -> bool:
    _, metrics = await _get(port, "/metrics")
    try:
        return _sample(metrics, name) == value
    except AssertionError:
        return False
