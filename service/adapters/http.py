"""Health and metrics over HTTP, for Kubernetes probes, Compose healthchecks and Prometheus.

* ``GET /livez``: 200 while the consume loop runs and has polled recently; a stuck or
  dead loop answers 503, so the orchestrator restarts the process.
* ``GET /readyz``: 200 when the worker holds partitions, PostgreSQL answers and the
  outbox drains (no parked message, none older than ``RELAY_STALL_SECONDS``); 503 with
  the reasons otherwise.
* ``GET /metrics``: Prometheus text format, ``customer_ready`` measured at the scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.infrastructure.metrics import Metrics

DATABASE_CHECK_TIMEOUT = 2.0


@dataclass
class Health:
    """What the probes look at; the worker updates it as it runs."""

    pool: asyncpg.Pool
    #: Seconds without a poll after which the loop counts as stuck.
    stuck_after: float
    running: bool = False
    last_poll: float = field(default_factory=time.monotonic)
    assigned_partitions: Callable[[], int] = lambda: 0
    #: A relay-only process holds no partitions and is ready without them.
    needs_partitions: bool = True
    #: Reasons the outbox gives for not being ready (a stalled relay, parked rows).
    outbox_problems: Callable[[], list[str]] = list

    def polled(self) -> None:
        self.last_poll = time.monotonic()

    def live(self) -> tuple[bool, str]:
        if not self.running:
            return False, "the consume loop is not running"
        idle = time.monotonic() - self.last_poll
        if idle > self.stuck_after:
            return False, f"no poll for {idle:.0f}s"
        return True, "ok"

    async def ready(self) -> tuple[bool, list[str]]:
        problems = []
        if self.needs_partitions and self.assigned_partitions() == 0:
            problems.append("no partitions assigned")
        try:
            async with asyncio.timeout(DATABASE_CHECK_TIMEOUT):
                await self.pool.fetchval("SELECT 1")
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        problems.extend(self.outbox_problems())
        return not problems, problems


Handler = Callable[[web.Request], Awaitable[web.Response]]


def endpoints(livez: Handler, readyz: Handler, metrics: Handler) -> web.Application:
    """The three routes every process of the service serves."""
    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def metrics_response(exposition: bytes) -> web.Response:
    response = web.Response(body=exposition)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def build_app(health: Health, metrics: Metrics) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        ok, reason = health.live()
        return web.json_response(
            {"status": "ok" if ok else "fail", "reason": reason}, status=200 if ok else 503
        )

    async def readyz(_: web.Request) -> web.Response:
        ok, problems = await health.ready()
        metrics.ready.set(float(ok))
        return web.json_response(
            {"status": "ok" if ok else "fail", "problems": problems}, status=200 if ok else 503
        )

    async def prometheus(_: web.Request) -> web.Response:
        # Asked again here, not remembered from the last probe: a scrape must not report
        # the readiness of whenever the orchestrator last looked.
        ok, _problems = await health.ready()
        metrics.ready.set(float(ok))
        return metrics_response(generate_latest(metrics.registry))

    return endpoints(livez, readyz, prometheus)


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # With port 0 the system picks one; report the one actually bound.
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()
