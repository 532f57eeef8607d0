"""The workers' links to PostgreSQL and Kafka, through Toxiproxy, for network faults.

Only the workers go through the proxies: their ``DATABASE_URL`` and
``KAFKA_BOOTSTRAP_SERVERS`` name the proxies' ports (``ScenarioEnv.worker_env``). The
harness's own clients (its reader, its load producer, its queries) keep the real ports,
so a fault on a link never blinds the harness itself.

Kafka clients would bypass a plain TCP proxy after their first metadata answer, which
names the broker's own address. The suite's broker therefore has one more listener,
``PROXIED``, which advertises the Kafka proxy's port (``NativeKafka.proxy_listener``):
the proxy forwards that port to the listener, and every address the broker hands a
worker leads back through the proxy.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import orjson

from devstack.toxiproxy import HOST, Proxy, Toxic, ToxiproxyClient, ToxiproxyServer

POSTGRES = "postgres"
KAFKA = "kafka"


def through(url: str, address: str) -> str:
    """The database ``url`` with its host and port replaced by ``address`` (a proxy's)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


@dataclass
class Network:
    """The two proxies of a running toxiproxy-server, and the faults put on them."""

    server: ToxiproxyServer
    client: ToxiproxyClient
    postgres: Proxy
    kafka: Proxy
    #: Connections accepted before the last ``heal``, which belong to earlier scenarios.
    _earlier: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    async def open(
        cls,
        server: ToxiproxyServer,
        *,
        postgres_upstream: str,
        kafka_listen: str,
        kafka_upstream: str,
    ) -> Network:
        client = ToxiproxyClient(server.url)
        try:
            await client.wait_ready()
            existing = await client.proxies()
            for name in existing:
                await client.delete_proxy(name)
            postgres = await client.create_proxy(
                POSTGRES, listen=f"{HOST}:0", upstream=postgres_upstream
            )
            kafka = await client.create_proxy(KAFKA, listen=kafka_listen, upstream=kafka_upstream)
        except BaseException:
            await client.close()
            raise
        return cls(server, client, postgres, kafka)

    async def close(self) -> None:
        await self.client.close()

    # -- where the workers connect ------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.address

    def database_url(self, url: str) -> str:
        return through(url, self.postgres.address)

    # -- faults -------------------------------------------------------------------------

    async def cut(self, proxy: Proxy) -> None:
        """Close every connection through ``proxy`` and refuse new ones."""
        await self.client.set_enabled(proxy.name, False)

    async def restore(self, proxy: Proxy) -> None:
        await self.client.set_enabled(proxy.name, True)

    async def poison(self, proxy: Proxy, *toxics: Toxic) -> None:
        for toxic in toxics:
            await self.client.add_toxic(proxy.name, toxic)

    async def cure(self, proxy: Proxy, *toxics: Toxic) -> None:
        for toxic in toxics:
            await self.client.remove_toxic(proxy.name, toxic.key)

    async def toxics(self, proxy: Proxy) -> tuple[Toxic, ...]:
        return (await self.client.proxy(proxy.name)).toxics

    async def heal(self) -> None:
        """Every proxy enabled and without toxics, whatever an earlier scenario left;
        ``accepted`` counts from here on."""
        await self.client.reset()
        self._earlier = self._accepted()

    # -- evidence -----------------------------------------------------------------------

    def accepted(self) -> collections.Counter[str]:
        """Client connections each proxy has accepted since the last ``heal``."""
        return self._accepted() - self._earlier

    def _accepted(self) -> collections.Counter[str]:
        """Client connections each proxy has accepted, from the server's log."""
        counts: collections.Counter[str] = collections.Counter()
        try:
            lines = self.server.log_path.read_bytes().splitlines()
        except FileNotFoundError:
            return counts
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("message") == "Accepted client":
                counts[str(entry.get("name"))] += 1
        return counts
