"""The real ``customer-service`` processes against the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from service.infrastructure.settings import Settings
from tests.support import TopicReader, command, insert_customer, produce_commands

CLI = str(Path(sys.executable).parent / "customer-service")


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.environment(), "LOG_FORMAT": "json"}


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with subprocess.Popen([CLI, "worker"], env=_env(settings), stdout=subprocess.PIPE) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


async def test_a_command_flows_from_kafka_through_postgres_to_an_event(
    settings: Settings, db: asyncpg.Connection, worker_process: subprocess.Popen[bytes]
) -> None:
    await insert_customer(db, "cus_e2e", name="Before", invoice_prefix="E2E1")
    sent = command("cus_e2e", {"name": "After", "address": {"city": "Turin", "country": "IT"}})

    await produce_commands(settings, [sent])

    async with TopicReader(settings, [settings.topic_events]) as reader:
        [event] = await reader.wait_for_count(settings.topic_events, 1, within=60)
    body = event.json()
    assert event.key == b"cus_e2e"
    assert body["type"] == "customer.updated"
    assert body["causationid"] == sent["id"]
    assert body["data"]["object"]["name"] == "After"
    assert body["data"]["object"]["address"]["city"] == "Turin"
    assert body["data"]["previous_attributes"] == {"name": "Before", "address": None}
    row = await db.fetchrow(
        "SELECT name, address_city, version FROM customers WHERE id = 'cus_e2e'"
    )
    assert row is not None
    assert (row["name"], row["address_city"], row["version"]) == ("After", "Turin", 2)


async def test_sigterm_stops_the_worker_cleanly(
    settings: Settings, db: asyncpg.Connection, worker_process: subprocess.Popen[bytes]
) -> None:
    await insert_customer(db, "cus_term", invoice_prefix="TERM1")
    await produce_commands(settings, [command("cus_term", {"name": "Stopping"})])
    async with TopicReader(settings, [settings.topic_events]) as reader:
        await reader.wait_for_count(settings.topic_events, 1, within=60)

    worker_process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker_process.wait, 60)

    assert code == 0
    assert worker_process.stdout is not None
    assert b'"worker_stopped"' in worker_process.stdout.read()


async def test_a_worker_started_before_its_database_waits_for_it(
    settings: Settings, db: asyncpg.Connection
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from devstack.processes import free_port
    from tests.support import TcpForwarder

    await insert_customer(db, "cus_late", invoice_prefix="LATE1")
    real = urlsplit(settings.database_url.get_secret_value())
    assert real.hostname is not None
    assert real.port is not None
    forwarder = TcpForwarder(real.hostname, real.port, free_port())
    late = urlunsplit(real._replace(netloc=f"{real.username}@127.0.0.1:{forwarder.port}"))
    env = {**_env(settings), "DATABASE_URL": late}
    process = await asyncio.create_subprocess_exec(
        CLI, "worker", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        waiting = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert b'"waiting_for_database"' in waiting
        await forwarder.open()
        await produce_commands(settings, [command("cus_late", {"name": "Worth the wait"})])
        async with TopicReader(settings, [settings.topic_events]) as reader:
            [event] = await reader.wait_for_count(settings.topic_events, 1, within=60)
        assert event.json()["data"]["object"]["name"] == "Worth the wait"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=60)
        await forwarder.close()
