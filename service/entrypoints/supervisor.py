"""``customer-service worker --processes N``: N consumer processes and one relay process
under one supervisor, so that one container uses every core (as gunicorn does for web
workers). Python runs one thread of Python at a time, so a single worker process keeps
about one core busy however many the machine has.

The supervisor runs no Kafka or database client itself. It:

* starts the consumers (``customer-service worker`` with ``RELAY_ENABLED=false``, one
  consumer group) and, unless ``RELAY_ENABLED=false``, one ``customer-service relay``;
* passes SIGTERM and Ctrl-C on as SIGTERM and waits for every child to finish its batch
  and drain; it exits 0 when all of them did;
* fails fast: a child that exits on its own stops the others, and the supervisor exits
  with that child's status (1 if it was 0), so the orchestrator restarts the whole unit
  with its usual backoff instead of this process hiding a crash loop;
* serves ``/livez``, ``/readyz`` and ``/metrics`` on ``HTTP_PORT`` for all of them: live
  when every child is, ready when every child is (an idle consumer, one with no partition,
  counts as ready as long as another holds partitions), and every child's metrics with a
  ``process`` label.

Children serve their own endpoints on ``HTTP_PORT + 1`` onwards (on free ports the system
picks when ``HTTP_PORT`` is 0), checked before any child starts, and are asked by the
kernel to stop if the supervisor dies (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.adapters.http import endpoints, metrics_response
from service.infrastructure.settings import Settings

log = structlog.get_logger(__name__)

#: Seconds the supervisor waits for a child's endpoint before counting it as failing:
#: under Kubernetes' default probe timeout (1 s), so the answer names the child.
CHILD_PROBE_TIMEOUT = 0.8
#: Seconds a child has to drain after SIGTERM before it is killed; above a batch's
#: timeout and the relay's drain, which it would otherwise cut short.
STOP_GRACE = 120.0
_PR_SET_PDEATHSIG = 1
MAX_PORT = 65535
READY = "customer_ready"

#: What a consumer with nothing to consume says; the unit is ready without it.
IDLE = "no partitions assigned"


def process_count(value: str, *, cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """``--processes``: a positive number, or ``auto`` for one per CPU this process may
    use: its CPU affinity, and a container's CPU quota (cgroup v2 ``cpu.max``), not the
    host's cores."""
    if value == "auto":
        return usable_cpus(cgroup)
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--processes must be a number or auto, not {value!r}") from None
    if count < 1:
        raise ValueError(f"--processes must be at least 1, not {count}")
    return count


def usable_cpus(cgroup: Path) -> int:
    usable = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return max(usable, 1)
    if quota != "max":
        usable = min(usable, math.ceil(int(quota) / int(period)))
    return max(usable, 1)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None


def plan(
    settings: Settings,
    processes: int,
    *,
    base_env: Mapping[str, str] = os.environ,
    free_port: Callable[[], int] | None = None,
) -> list[Child]:
    """The children to start: ``processes`` consumers, then the relay (unless the
    settings turn it off here). Each has its own HTTP port when HTTP is on."""
    pick = free_port or _free_port
    command = _command()
    names = [f"worker-{number}" for number in range(1, processes + 1)]
    if settings.relay_enabled:
        names.append("relay")
    if settings.http_enabled and settings.http_port + len(names) > MAX_PORT:
        raise ValueError(
            f"HTTP_PORT {settings.http_port} leaves no room for {len(names)} children on the "
            f"ports after it (at most {MAX_PORT})"
        )
    children = []
    for offset, name in enumerate(names, start=1):
        port = None
        if settings.http_enabled:
            port = settings.http_port + offset if settings.http_port else pick()
        env = {
            **base_env,
            "RELAY_ENABLED": "true" if name == "relay" else "false",
            "HTTP_PORT": str(port or 0),
        }
        verb = "relay" if name == "relay" else "worker"
        children.append(Child(name, [*command, verb], env, port))
    return children


def merge_metrics(texts: Mapping[str, str | None], *, ready: bool) -> bytes:
    """Prometheus text of several processes as one, each sample labelled with the
    ``process`` it came from (written by prometheus_client, as each process's own is),
    and ``customer_supervised_process_up{process}``: 0 for a child that did not answer
    (None) or answered with something that is not Prometheus text, whose series are left
    out rather than failing the scrape.

    ``customer_ready`` is the unit's (``ready``, what ``/readyz`` answers), not each
    child's: an idle consumer is not ready on its own, yet the unit is."""
    merged: dict[str, Metric] = {}
    up = Metric("customer_supervised_process_up", "Whether the child's metrics were read.", "gauge")
    unit = Metric(READY, "1 when the unit is ready (what /readyz answers), 0 when not.", "gauge")
    unit.add_sample(READY, {}, float(ready))
    for process, text in texts.items():
        try:
            families = list(text_string_to_metric_families(text)) if text is not None else None
        except ValueError:
            families = None
        up.add_sample(
            "customer_supervised_process_up", {"process": process}, float(families is not None)
        )
        for family in families or ():
            if family.name == READY:
                continue
            into = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                into.add_sample(sample.name, {"process": process, **sample.labels}, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected([up, unit, *merged.values()] if texts else []))
    return generate_latest(registry)


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def exit_status(codes: Mapping[str, int | None], *, stopped: bool, first: str | None = None) -> int:
    """The supervisor's status: 0 when it was told to stop and every child exited 0;
    else the status of the child that ended first (``first``), or of the first failing
    one: its own, 128 + N for one killed by signal N (as a shell reports it), and 1 for
    one that ended by itself with 0."""
    ordered = sorted(codes.items(), key=lambda item: item[0] != first)
    for name, code in ordered:
        if code is None:
            return 1
        if code < 0:
            return 128 - code
        if code != 0 or (name == first and not stopped):
            return code or 1
    return 0 if stopped else 1


async def supervise(settings: Settings, processes: int, stopping: asyncio.Event) -> int:
    children = plan(settings, processes)
    log.info(
        "supervisor_starting",
        children=[child.name for child in children],
        ports=[child.port for child in children],
    )
    server: web.AppRunner | None = None
    ended: Child | None = None
    try:
        # The port first: one in use fails the supervisor before any child starts.
        if settings.http_enabled:
            server = web.AppRunner(_app(children, probe_host(settings.http_host)), access_log=None)
            await server.setup()
            await web.TCPSite(server, settings.http_host, settings.http_port).start()
            log.info("supervisor_serving", port=server.addresses[0][1])
        taken = [
            child for child in children if child.port and not _free(settings.http_host, child.port)
        ]
        if taken:
            raise OSError(
                "ports in use, which the children serve on (HTTP_PORT + 1 onwards): "
                + ", ".join(f"{child.port} ({child.name})" for child in taken)
            )
        for child in children:
            child.process = await asyncio.create_subprocess_exec(
                *child.argv, env=child.env, preexec_fn=_die_with_parent
            )
        log.info(
            "supervisor_started",
            pids={child.name: child.process.pid for child in children if child.process},
        )
        ended = await _first_exit_or(stopping, children)
        if ended is not None:
            log.error(
                "supervisor_child_exited",
                child=ended.name,
                status=ended.process.returncode if ended.process else None,
            )
    finally:
        codes = await _stop(children)
        if server is not None:
            await server.cleanup()
        # A child that ends cleanly because Ctrl-C reached it too is part of the stop.
        status = exit_status(
            codes, stopped=stopping.is_set(), first=ended.name if ended is not None else None
        )
        log.info("supervisor_stopped", statuses=codes, status=status)
    return status


async def _first_exit_or(stopping: asyncio.Event, children: Sequence[Child]) -> Child | None:
    """Wait until ``stopping`` is set (None) or a child exits (that child)."""
    waits = {
        asyncio.ensure_future(child.process.wait()): child
        for child in children
        if child.process is not None
    }
    told = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait([told, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [told, *waits]:
            task.cancel()
    ended = [waits[task] for task in done if task in waits]
    return ended[0] if ended else None


async def _stop(children: Sequence[Child]) -> dict[str, int | None]:
    running = [child for child in children if child.process is not None]
    for child in running:
        if not child.exited:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    async def finish(child: Child) -> int | None:
        assert child.process is not None
        try:
            return await asyncio.wait_for(child.process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            return await child.process.wait()

    codes = await asyncio.gather(*(finish(child) for child in running))
    return {child.name: code for child, code in zip(running, codes, strict=True)}


def _app(children: Sequence[Child], host: str) -> web.Application:
    async def gather(path: str) -> list[tuple[Child, int, str]]:
        timeout = aiohttp.ClientTimeout(total=CHILD_PROBE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            asked = (_get(session, child, path, host) for child in children)
            return list(await asyncio.gather(*asked))

    async def livez(_: web.Request) -> web.Response:
        answers = await gather("/livez")
        return _verdict({child.name: text for child, status, text in answers if status != 200})

    async def readyz(_: web.Request) -> web.Response:
        answers = await gather("/readyz")
        return _verdict(unready({child.name: (status, text) for child, status, text in answers}))

    async def metrics(_: web.Request) -> web.Response:
        answers, readiness = await asyncio.gather(gather("/metrics"), gather("/readyz"))
        failing = unready({child.name: (status, text) for child, status, text in readiness})
        return metrics_response(
            merge_metrics(
                {child.name: text if status == 200 else None for child, status, text in answers},
                ready=not failing,
            )
        )

    return endpoints(livez, readyz, metrics)


def unready(answers: Mapping[str, tuple[int, str]]) -> dict[str, str]:
    """The children that keep the unit from being ready, with their reasons. A consumer
    whose only reason is that it holds no partitions does not: with more consumers than
    partitions some are idle, as in any consumer group, as long as one is not."""
    failing = {name: text for name, (status, text) in answers.items() if status != 200}
    idle = {name for name, text in failing.items() if _problems(text) == [IDLE]}
    consumers = {name for name in answers if name != "relay"}
    if consumers and idle >= consumers:
        return failing  # none holds a partition
    return {name: text for name, text in failing.items() if name not in idle}


def _problems(text: str) -> list[str] | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    problems = body.get("problems") if isinstance(body, dict) else None
    return problems if isinstance(problems, list) else None


def _verdict(failing: Mapping[str, str]) -> web.Response:
    body = {"status": "fail" if failing else "ok", "failing": dict(failing)}
    return web.json_response(body, status=503 if failing else 200)


def probe_host(bound: str) -> str:
    """Where the supervisor reaches a child that binds ``bound`` (``HTTP_HOST``)."""
    if bound in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bound == "::":
        return "[::1]"
    return f"[{bound}]" if ":" in bound else bound


async def _get(
    session: aiohttp.ClientSession, child: Child, path: str, host: str
) -> tuple[Child, int, str]:
    if child.exited or child.port is None:
        return child, 503, "not running"
    try:
        async with session.get(f"http://{host}:{child.port}{path}") as response:
            return child, response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return child, 503, f"no answer: {type(exc).__name__}"


def _command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "customer-service")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from service.entrypoints.launch import main; main()"]


def _free(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends it SIGTERM when the
    # supervisor dies, however it dies (SIGKILL included).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
