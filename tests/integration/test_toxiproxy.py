"""Toxiproxy, built (or found cached) and started by ``devstack/toxiproxy.py``, between
asyncpg and the test PostgreSQL: a cut link fails the connection through it and refuses
new ones, a restored link serves again, a latency toxic delays every answer, and a COPY
on a throttled link fails within the command timeout as a transient error."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devstack.stack import home as devstack_home
from devstack.toxiproxy import (
    VERSION,
    Proxy,
    ToxiproxyClient,
    ToxiproxyServer,
    bandwidth,
    latency,
    server_path,
)
from faults.network import through
from service.adapters.postgres.batch_store import batch_transaction
from service.application.errors import TransientError
from service.domain.events import OutboundMessage

#: What asyncpg raises for a connection that the network closed under it.
CLOSED = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)


@pytest.fixture(scope="module")
async def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToxiproxyClient]:
    binary = await asyncio.to_thread(server_path, devstack_home())
    server = ToxiproxyServer(Path(tmp_path_factory.mktemp("toxiproxy")), binary)
    await asyncio.to_thread(server.start)
    try:
        async with ToxiproxyClient(server.url) as client:
            assert await client.version() == VERSION
            yield client
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def proxy(toxiproxy: ToxiproxyClient, database_url: str) -> AsyncIterator[Proxy]:
    """A proxy on a free loopback port to this test's PostgreSQL."""
    upstream = urlsplit(database_url).netloc.rpartition("@")[2]
    created = await toxiproxy.create_proxy(
        f"postgres-{uuid.uuid4().hex[:8]}", listen="127.0.0.1:0", upstream=upstream
    )
    yield created
    await toxiproxy.delete_proxy(created.name)


async def test_a_cut_link_fails_its_connection_and_refuses_new_ones_until_restored(
    toxiproxy: ToxiproxyClient, proxy: Proxy, database_url: str
) -> None:
    url = through(database_url, proxy.address)
    connection = await asyncpg.connect(url, timeout=10)
    try:
        assert await connection.fetchval("SELECT 1") == 1

        cut = await toxiproxy.set_enabled(proxy.name, False)
        assert not cut.enabled
        with pytest.raises(CLOSED):
            await connection.fetchval("SELECT 1", timeout=10)
        with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
            await asyncpg.connect(url, timeout=10)

        restored = await toxiproxy.set_enabled(proxy.name, True)
        assert restored.enabled
        assert restored.address == proxy.address  # the same port again
        again = await asyncpg.connect(url, timeout=10)
        try:
            assert await again.fetchval("SELECT 2") == 2
        finally:
            await again.close()
    finally:
        connection.terminate()


async def test_a_latency_toxic_delays_every_answer_until_it_is_removed(
    toxiproxy: ToxiproxyClient, proxy: Proxy, database_url: str
) -> None:
    connection = await asyncpg.connect(through(database_url, proxy.address), timeout=10)
    try:
        toxic = await toxiproxy.add_toxic(proxy.name, latency(300))
        assert [t.key for t in (await toxiproxy.proxy(proxy.name)).toxics] == [toxic.key]
        started = time.monotonic()
        assert await connection.fetchval("SELECT 1", timeout=10) == 1
        assert time.monotonic() - started >= 0.3

        await toxiproxy.remove_toxic(proxy.name, toxic.key)
        assert (await toxiproxy.proxy(proxy.name)).toxics == ()
        started = time.monotonic()
        assert await connection.fetchval("SELECT 1", timeout=10) == 1
        assert time.monotonic() - started < 0.3
    finally:
        await connection.close()


async def test_a_copy_on_a_throttled_link_fails_as_transient_within_the_command_timeout(
    toxiproxy: ToxiproxyClient, proxy: Proxy, database_url: str
) -> None:
    """asyncpg waits for the socket to drain between a COPY's chunks without its command
    timeout; a batch with 16 MiB of outbox rows (dead letters of large records) on a
    link that has slowed to a trickle must still end as a retryable error, not wait for
    the batch timeout and come out as an error that looks permanent."""
    pool = await asyncpg.create_pool(
        through(database_url, proxy.address), min_size=1, max_size=1, command_timeout=2
    )
    messages = [
        OutboundMessage("customer.update.dlt", b"k%d" % n, os.urandom(1 << 20)) for n in range(16)
    ]

    async def save() -> None:
        async with batch_transaction(pool) as unit:
            await unit.save_outbox(messages)
            await unit.commit()

    try:
        await toxiproxy.add_toxic(proxy.name, bandwidth(1, stream="upstream"))
        saving = asyncio.create_task(save())
        # A guard against a hang, far beyond the command timeout; not a wait for anything.
        done, _ = await asyncio.wait([saving], timeout=60)
        assert done, "the COPY did not end"
        error = saving.exception()
        assert isinstance(error, TransientError)
        assert str(error) == "COPY into outbox took longer than 2.0s"
    finally:
        pool.terminate()
