"""Network faults on the workers' links to PostgreSQL and Kafka (see ``faults.network``):
a cut of each link, latency on the database link, a bandwidth limit on the broker link.

Each one checks that it really happened, and records ``fault_not_injected`` otherwise:
the worker had connections through the proxy before the fault, the fault was in place
(the link refused connections, or the proxy listed the toxics), and the worker noticed
(it logged retries and waits during a cut, its batches slowed under latency, the bytes
it moved under a bandwidth limit).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from devstack import processes
from devstack.toxiproxy import BOTH, Proxy, Toxic, bandwidth, latency
from faults.harness import ScenarioEnv, Worker
from faults.load import LoadProducer
from faults.network import Network

#: How long each fault lasts.
POSTGRES_CUT = 40.0
KAFKA_CUT = 30.0
POSTGRES_LATENCY_MS = 200
POSTGRES_SLOW = 30.0
KAFKA_KB_PER_SECOND = 64
KAFKA_THROTTLED = 30.0
#: Records waiting beyond which the worker counts as behind the load (a full batch).
BEHIND = 200

#: The worker's own log events that show it met a broken link and waited or retried.
RETRY_EVENTS = frozenset(
    {
        "batch_retrying",
        "relay_retrying",
        "waiting_for_database",
        "waiting_for_kafka",
        "offset_commit_skipped",
        "relay_transaction_outcome_unknown",
        "outbox_measure_failed",
        "idempotency_prune_failed",
    }
)
#: Log lines of the drivers (aiokafka, asyncpg) at these levels count as well.
_DRIVERS = ("aiokafka", "kafka", "asyncpg")
_COMPLAINTS = frozenset({"warning", "error", "critical", "exception"})

Check = Callable[[], Awaitable[bool]]


def _network(env: ScenarioEnv) -> Network:
    if env.network is None:
        raise RuntimeError(f"{env.name} needs the workers behind the proxies (proxied=True)")
    return env.network


def _is_retry(event: dict[str, Any]) -> bool:
    if event.get("event") in RETRY_EVENTS:
        return True
    logger = str(event.get("logger") or "")
    return logger.startswith(_DRIVERS) and event.get("level") in _COMPLAINTS


def retries(env: ScenarioEnv) -> int:
    """Retries, waits and driver complaints logged by every worker so far."""
    return sum(1 for worker in env.every_worker for event in worker.events() if _is_retry(event))


def _retry_kinds(env: ScenarioEnv, since: int) -> str:
    """The kinds of the retries logged after the first ``since`` of them."""
    found: list[str] = []
    for worker in env.every_worker:
        found.extend(
            str(event.get("event") if event.get("event") in RETRY_EVENTS else event.get("logger"))
            for event in worker.events()
            if _is_retry(event)
        )
    kinds = sorted(set(found[since:]))
    return ", ".join(kinds) or "none"


def rebalances(env: ScenarioEnv) -> int:
    """Partition assignments and revocations logged by every worker so far."""
    return env.logged("partitions_revoked") + env.logged("partitions_assigned")


def _timestamp(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event["timestamp"]))
    except (KeyError, ValueError):
        return None


def batch_durations(workers: Iterable[Worker], start: datetime, end: datetime) -> list[float]:
    """How long each batch a worker committed between ``start`` and ``end`` took (ms):
    every decision line of a batch carries the batch's ``duration_ms``."""
    batches: set[tuple[str, float]] = set()
    for worker in workers:
        for event in worker.events():
            duration = event.get("duration_ms")
            at = _timestamp(event)
            if duration is None or at is None or not start <= at <= end:
                continue
            # A batch logs each of its decisions with the same duration.
            batches.add((worker.name, float(duration)))
    return [duration for _, duration in batches]


async def until(check: Check, *, within: float, interval: float = 0.2) -> bool:
    """Poll ``check`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def _connected_through(env: ScenarioEnv, network: Network, proxy: Proxy) -> int:
    """The worker's connections through ``proxy`` so far; a violation when there are
    none (the worker would not be behind the proxy, and the fault would do nothing)."""
    accepted = network.accepted()[proxy.name]
    if accepted == 0:
        env.violation(
            "fault_not_injected",
            f"no worker connection went through the {proxy.name} proxy before the fault",
        )
    return accepted


async def _refuses(proxy: Proxy) -> bool:
    """Whether nothing listens at the proxy's address (as a cut link should be)."""
    return not await asyncio.to_thread(processes.port_open, proxy.host, proxy.port)


async def _reconnected(env: ScenarioEnv, network: Network, proxy: Proxy, before: int) -> None:
    """After a cut, until the workers have new connections through the proxy (noted)."""

    async def reconnected() -> bool:
        return network.accepted()[proxy.name] > before

    if await until(reconnected, within=60):
        count = network.accepted()[proxy.name] - before
        env.notes.append(f"the workers opened {count} new connection(s) through the restored link")
    else:
        env.notes.append(
            f"no new connection through the {proxy.name} proxy within 60s of restoring it"
        )


# -- cuts ------------------------------------------------------------------------------------


async def _cut(
    env: ScenarioEnv, load: LoadProducer, proxy: Proxy, *, seconds: float, settled_after: float
) -> None:
    """Cut ``proxy`` for ``seconds`` at 20% of the load, then restore it. The database's
    partition positions must not move once the cut has settled (``settled_after``
    seconds in): no worker may still reach PostgreSQL, or fetch from Kafka, around it."""
    network = _network(env)
    await load.reached(0.2)
    accepted = _connected_through(env, network, proxy)
    retried = retries(env)
    await network.cut(proxy)
    env.fault(
        f"cut the worker<->{proxy.name} link at {load.progress:.0%} of the load "
        f"({accepted} connection(s) had gone through the proxy)"
    )
    try:
        refused = await _refuses(proxy)
        await asyncio.sleep(settled_after)
        frozen_at = await env.positions()
        await asyncio.sleep(seconds - settled_after)  # the cut lasts this long
        still = await env.positions()
        retried_during = retries(env) - retried
    finally:
        await network.restore(proxy)
    env.fault(f"restored the worker<->{proxy.name} link after {seconds:.0f}s")
    if not refused:
        env.violation(
            "fault_not_injected", f"the cut {proxy.name} proxy still accepted connections"
        )
    if retried_during == 0:
        env.violation(
            "fault_not_injected", f"no worker logged a retry or a wait while {proxy.name} was cut"
        )
    else:
        env.notes.append(
            f"the workers logged {retried_during} retries or waits during the cut "
            f"({_retry_kinds(env, retried)})"
        )
    moved = {p: (frozen_at.get(p, 0), n) for p, n in still.items() if n != frozen_at.get(p, 0)}
    if moved:
        env.violation(
            "fault_not_injected",
            f"partition positions moved while {proxy.name} was cut (from, to): {moved}",
        )
    await _reconnected(env, network, proxy, network.accepted()[proxy.name])


async def postgres_cut(env: ScenarioEnv, load: LoadProducer) -> None:
    # A batch caught by the cut fails at once (its connection is closed), so the
    # positions are still from the first seconds on.
    await _cut(env, load, _network(env).postgres, seconds=POSTGRES_CUT, settled_after=2.0)


async def kafka_cut(env: ScenarioEnv, load: LoadProducer) -> None:
    """The cut outlasts the session timeout, so the coordinator, which the cut does not
    reach, drops the worker from the group: when the link returns the worker must find
    out and join again (a partition the coordinator still thought it held is how a
    consumer ends up processing what another one owns)."""
    assigned = env.logged("partitions_assigned")
    # Records fetched before the cut are still processed for a moment; then nothing.
    await _cut(env, load, _network(env).kafka, seconds=KAFKA_CUT, settled_after=5.0)
    await load.reached(1.0)
    if env.logged("partitions_assigned") == assigned:
        env.violation(
            "fault_not_injected",
            f"the worker never joined the group again after a {KAFKA_CUT:.0f} s cut: the "
            "coordinator kept its session, so the cut did not lose it",
        )


# -- a slow database link ----------------------------------------------------------------------


async def _poisoned(
    env: ScenarioEnv, network: Network, proxy: Proxy, toxics: Sequence[Toxic]
) -> None:
    """Put ``toxics`` on ``proxy`` and check that the proxy lists them."""
    await network.poison(proxy, *toxics)
    listed = {toxic.key for toxic in await network.toxics(proxy)}
    missing = [toxic.key for toxic in toxics if toxic.key not in listed]
    if missing:
        env.violation("fault_not_injected", f"the {proxy.name} proxy does not list {missing}")


async def postgres_slow(env: ScenarioEnv, load: LoadProducer) -> None:
    """Delay every packet on the worker<->PostgreSQL link both ways; the worker slows
    down, and must neither time out its batches into a loop nor lose its partitions."""
    network = _network(env)
    proxy = network.postgres
    await load.reached(0.1)
    _connected_through(env, network, proxy)
    moved = rebalances(env)
    toxics = [latency(POSTGRES_LATENCY_MS, stream=stream) for stream in BOTH]
    start = datetime.now(UTC)
    await _poisoned(env, network, proxy, toxics)
    env.fault(
        f"{POSTGRES_LATENCY_MS} ms of latency on every packet both ways on the worker<->"
        f"PostgreSQL link at {load.progress:.0%} of the load"
    )
    try:
        await asyncio.sleep(POSTGRES_SLOW)  # the slow link lasts this long
    finally:
        await network.cure(proxy, *toxics)
    end = datetime.now(UTC)
    env.fault(f"removed the latency after {POSTGRES_SLOW:.0f}s")
    # A batch needs several round trips of at least twice the latency each.
    slowed = 2 * POSTGRES_LATENCY_MS
    durations = batch_durations(env.every_worker, start, end)
    slow = [duration for duration in durations if duration >= slowed]
    if not slow:
        env.violation(
            "fault_not_injected",
            f"no batch committed during the latency took {slowed} ms or more "
            f"({len(durations)} batch(es) committed)",
        )
    else:
        env.notes.append(
            f"{len(durations)} batch(es) committed under latency, median "
            f"{statistics.median(durations):.0f} ms, slowest {max(durations):.0f} ms"
        )
    await load.reached(1.0)
    if rebalances(env) != moved:
        env.violation(
            "lost_partitions",
            f"the consumer's partitions moved {rebalances(env) - moved} time(s) under a slow "
            "database link (partitions_revoked/partitions_assigned in the worker log)",
        )


# -- a narrow broker link --------------------------------------------------------------------


def _payload_bytes(load: LoadProducer) -> float:
    """The average size of a command record's key, value and headers."""
    return statistics.fmean(
        len(record.key or b"")
        + len(record.value or b"")
        + sum(len(name) + len(value or b"") for name, value in record.headers)
        for record in load.plan.records
    )


async def _backlog(env: ScenarioEnv) -> tuple[float, int, int]:
    """(when, records processed, records waiting), from the harness's own clients."""
    ends, positions = await env.command_ends(), await env.positions()
    processed = sum(positions.values())
    return time.monotonic(), processed, sum(ends.values()) - processed


async def kafka_bandwidth(env: ScenarioEnv, load: LoadProducer) -> None:
    """Limit every connection of the worker<->Kafka link to a few dozen KB/s each way,
    under a load that needs more: fetches and the relay's transactions crawl, and must
    still all complete. The worker fetches the commands over one connection, so while
    it is behind it cannot process them faster than the limit: the fault is shown
    injected when it fell behind and caught up no faster than that."""
    network = _network(env)
    proxy = network.kafka
    await load.reached(0.05)
    _connected_through(env, network, proxy)
    moved = rebalances(env)
    toxics = [bandwidth(KAFKA_KB_PER_SECOND, stream=stream) for stream in BOTH]
    await _poisoned(env, network, proxy, toxics)
    env.fault(
        f"{KAFKA_KB_PER_SECOND} KB/s per connection both ways on the worker<->Kafka link "
        f"at {load.progress:.0%} of the load"
    )
    samples = []
    try:
        deadline = time.monotonic() + KAFKA_THROTTLED
        while time.monotonic() < deadline:  # the narrow link lasts this long
            samples.append(await _backlog(env))
            await asyncio.sleep(1.0)
    finally:
        await network.cure(proxy, *toxics)
    env.fault(f"lifted the bandwidth limit after {KAFKA_THROTTLED:.0f}s")
    # The spans that began with more than a batch waiting: the worker was behind.
    behind = [
        (later[0] - earlier[0], later[1] - earlier[1])
        for earlier, later in itertools.pairwise(samples)
        if earlier[2] > BEHIND
    ]
    seconds, processed = sum(span for span, _ in behind), sum(count for _, count in behind)
    if seconds < 5:
        env.violation(
            "fault_not_injected",
            f"the worker was behind the load for only {seconds:.0f}s under the limit "
            f"(at most {max((sample[2] for sample in samples), default=0)} records waiting)",
        )
    else:
        rate = processed * _payload_bytes(load) / seconds / 1000
        env.notes.append(
            f"behind the load for {seconds:.0f}s (up to "
            f"{max(sample[2] for sample in samples)} records waiting), the worker processed "
            f"{rate:.0f} KB/s of commands"
        )
        if rate > KAFKA_KB_PER_SECOND * 1.25:
            env.violation(
                "fault_not_injected",
                f"the worker fetched {rate:.0f} KB/s of commands while behind, more than the "
                f"{KAFKA_KB_PER_SECOND} KB/s limit",
            )
    await load.reached(1.0)
    if rebalances(env) != moved:
        env.notes.append(
            f"the consumer's partitions moved {rebalances(env) - moved} time(s) under the limit"
        )
