"""``customer-service worker --processes N``: consumers and a relay under one supervisor,
as real processes against the real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import psutil
import pytest

from service.infrastructure.settings import Settings
from tests.support import TopicReader, command, eventually, insert_customer, produce_commands

CLI = str(Path(sys.executable).parent / "customer-service")
#: Customers spread over the test topics' three partitions (by the default partitioner).
CUSTOMERS = [f"cus_proc_{n}" for n in range(12)]


class Supervisor:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0
        self.lines: list[dict[str, object]] = []

    async def read_until(self, event: str, *, within: float = 60) -> dict[str, object]:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.process.stdout.readline()
                assert line, f"the supervisor ended before logging {event}"
                try:
                    entry: dict[str, object] = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                self.lines.append(entry)
                if entry.get("event") == event:
                    return entry

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()


@pytest.fixture
async def supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    async with supervising(settings, 2) as running:
        yield running


@contextlib.asynccontextmanager
async def supervising(settings: Settings, processes: int) -> AsyncIterator[Supervisor]:
    env = {**os.environ, **settings.environment(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    process = await asyncio.create_subprocess_exec(
        CLI, "worker", "--processes", str(processes), env=env, stdout=asyncio.subprocess.PIPE
    )
    running = Supervisor(process)
    try:
        serving = await running.read_until("supervisor_serving")
        running.port = int(str(serving["port"]))
        await running.read_until("supervisor_started")
        # The rest of the output is not read; keep the pipe from filling up.
        asyncio.get_running_loop().create_task(_drain(process))
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.read(65536):
        pass


async def test_two_consumers_and_a_relay_share_the_work_under_one_supervisor(
    settings: Settings, db: asyncpg.Connection, supervisor: Supervisor
) -> None:
    for number, customer in enumerate(CUSTOMERS):
        await insert_customer(db, customer, invoice_prefix=f"PRC{number}")
    assert [child.cmdline()[-1] for child in supervisor.children()] == [
        "worker",
        "worker",
        "relay",
    ]

    [starting] = [entry for entry in supervisor.lines if entry["event"] == "supervisor_starting"]
    consumer_ports = list(starting["ports"])[:2]  # type: ignore[call-overload]

    async def both_hold_partitions() -> bool:
        # The unit is ready once one consumer holds partitions; this test wants both.
        for port in consumer_ports:
            url = f"http://127.0.0.1:{port}/readyz"
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    if response.status != 200:
                        return False
            except aiohttp.ClientConnectionError:
                return False  # not serving yet
        return (await supervisor.get("/readyz"))[0] == 200

    await eventually(both_hold_partitions, within=60, what="both consumers ready")
    sent = [command(customer, {"name": f"Name {customer}"}) for customer in CUSTOMERS]
    async with TopicReader(settings, [settings.topic_events]) as reader:
        await produce_commands(settings, sent)
        events = await reader.wait_for_count(settings.topic_events, len(sent), within=60)

    assert sorted(event.json()["causationid"] for event in events) == sorted(c["id"] for c in sent)
    status, metrics = await supervisor.get("/metrics")
    assert status == 200
    consumed = {
        process: any(
            line.startswith("customer_commands_consumed_total")
            and f'process="{process}"' in line
            and not line.rstrip().endswith(" 0.0")
            for line in metrics.splitlines()
        )
        for process in ("worker-1", "worker-2")
    }
    assert consumed == {"worker-1": True, "worker-2": True}  # both had partitions
    assert 'process="relay"' in metrics
    assert (await supervisor.get("/livez"))[0] == 200

    supervisor.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(supervisor.process.wait(), 120) == 0


async def test_a_child_that_dies_stops_the_others_and_the_supervisor_fails(
    settings: Settings, supervisor: Supervisor
) -> None:
    children = supervisor.children()
    assert len(children) == 3

    children[0].kill()
    code = await asyncio.wait_for(supervisor.process.wait(), 120)

    assert code != 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []


async def test_a_supervisor_that_cannot_serve_its_port_fails_before_starting_a_child(
    settings: Settings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            **settings.environment(),
            "LOG_FORMAT": "json",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
        }
        process = await asyncio.create_subprocess_exec(
            CLI, "worker", "--processes", "1", env=env, stdout=asyncio.subprocess.PIPE
        )
        running = Supervisor(process)
        failed = await running.read_until("process_failed", within=120)
        code = await asyncio.wait_for(process.wait(), 120)

    assert code == 1
    assert failed["process"] == "supervisor"
    assert "address already in use" in str(failed["errors"]).lower()
    [stopped] = [entry for entry in running.lines if entry.get("event") == "supervisor_stopped"]
    assert stopped["statuses"] == {}  # it failed before starting any child


async def test_more_consumers_than_partitions_leaves_some_idle_and_the_unit_ready(
    settings: Settings,
) -> None:
    async with supervising(settings, 4) as running:  # the test topics have 3 partitions

        async def ready() -> bool:
            return (await running.get("/readyz"))[0] == 200

        await eventually(ready, within=60, what="the unit ready with an idle consumer")
        status, body = await running.get("/readyz")
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 120) == 0
    assert (status, orjson.loads(body)["failing"]) == (200, {})
