"""The fault scenarios, and running them: each one on a fresh database and fresh topics,
under a steady load, with the checker's verdict at the end.

A scenario is the load plus one kind of fault. After the fault the system is left to
finish (every produced record accounted for, or the settle deadline), the workers are
stopped with SIGTERM, all topics and the database are read back, and the checker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from devstack import toxiproxy
from faults.checker import CheckResult, Violation, check
from faults.harness import GiveUp, Progress, RunConfig, ScenarioEnv, Worker, process_state
from faults.load import HOSTILE_KINDS, POISON_KINDS, LoadProducer, build_load, signing_key
from faults.network_faults import kafka_bandwidth, kafka_cut, postgres_cut, postgres_slow
from faults.stack import FaultStack, default_home
from service.adapters.postgres.retention import idempotency_tables

#: The workers' session timeout in the full form (``KAFKA_SESSION_TIMEOUT_MS``'s default).
SESSION_TIMEOUT = 10.0
#: The relay leader's takeover bound in relay-leader-freeze (RELAY_TAKEOVER_SECONDS's
#: default), and how long that scenario keeps the leader frozen.
RELAY_TAKEOVER = 15.0
LEADER_FREEZE = 45.0
LEADER_CUT = 40.0
#: How long broker-pause keeps the broker stopped: past the consumer's session timeout.
BROKER_PAUSE = SESSION_TIMEOUT + 5

Inject = Callable[[ScenarioEnv, LoadProducer], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    partitions: int
    inject: Inject
    #: Part of ``--short``.
    short: bool = False
    workers: int = 1
    #: FAILPOINTS of the first worker.
    failpoints: str = ""
    poison: bool = False
    #: Multiplies the load's rate: slower for a fault that takes a while to set up.
    rate_scale: float = 1.0
    #: Share of the load sent before the first workers start, so that their first
    #: batches are full ones (a crash then has a whole batch to redeliver).
    backlog: float = 0.0
    #: Settings (environment variables) of every worker, on top of the harness's.
    worker_settings: tuple[tuple[str, str], ...] = ()
    hostile: bool = False
    #: A worker exiting on its own is a violation, not only a note (the worker is
    #: supposed to survive everything this scenario sends it).
    no_crash: bool = False
    #: Share of the load that updates one customer (a hot key).
    hot_share: float = 0.0
    #: The workers reach PostgreSQL and Kafka through Toxiproxy (``faults.network``).
    proxied: bool = False
    #: Only these workers go through the proxies (all of them when empty).
    proxied_slots: tuple[int, ...] = ()
    #: Workers in signed mode (``AUTH_JWT_KEY``) and a load of signed commands.
    signed: bool = False
    #: Workers publish events and rejections in binary content mode (``EVENT_CONTENT_MODE``).
    binary_events: bool = False


# -- the faults ----------------------------------------------------------------------------
#
# A fault that did not happen as designed (no batch was open, the broker did not go down,
# the group did not rebalance, ...) is a violation, ``fault_not_injected``: the run would
# otherwise pass without having tested what it is named for. Where the right moment can
# be missed by a hair, the injection is tried again a bounded number of times first.


def _drained(env: ScenarioEnv, load: LoadProducer) -> GiveUp:
    """True once the whole load is sent and processed: no batch will open any more."""

    async def drained() -> bool:
        return load.done and await env.quiescent()

    return drained


async def _sigkill(env: ScenarioEnv, worker: Worker) -> None:
    """SIGKILL ``worker`` (stopped or not) and check that it died of it."""
    worker.kill()
    code = await worker.wait_exit(within=10)
    if code != -9:
        env.violation(
            "fault_not_injected", f"{worker.name} did not die of SIGKILL (exit code {code})"
        )


async def _sigkill_mid_batch(env: ScenarioEnv, load: LoadProducer) -> None:
    fractions = (0.3,) if env.config.short else (0.25, 0.5, 0.75)
    for fraction in fractions:
        await load.reached(fraction)
        worker = env.workers[0]
        # Stopped inside its batch transaction, and killed while stopped: the transaction
        # is certainly open at the kill.
        caught = await env.catch_in_batch(worker, within=30, give_up=_drained(env, load))
        await _sigkill(env, worker)
        if caught:
            where = "mid-batch (SIGSTOPped inside an open batch transaction)"
        else:
            where = "(no batch open)"
            env.violation(
                "fault_not_injected",
                f"{worker.name} was never caught inside a batch transaction "
                f"at {load.progress:.0%} of the load",
            )
        env.fault(f"SIGKILL {worker.name} {where} at {load.progress:.0%} of the load")
        await env.launch(0)


async def _crash_at_failpoint(
    env: ScenarioEnv,
    *,
    before_restart: Callable[[ScenarioEnv], Awaitable[str | None]] | None = None,
    after_restart: Callable[[ScenarioEnv, Worker], Awaitable[str | None]] | None = None,
) -> None:
    """Wait for the armed worker to kill itself, note the evidence that the crash left
    what it is meant to (None: it did not), taken before its successor starts or from
    that successor, and restart it (armed again for a second round in the full form,
    unarmed for the last)."""
    rounds = 1 if env.config.short else 2
    for round_ in range(rounds):
        worker = env.workers[0]
        code = await worker.wait_exit(within=120)
        if code is None:
            env.violation(
                "fault_not_injected",
                f"{worker.name} armed with FAILPOINTS={worker.failpoints} never crashed",
            )
            return
        env.fault(f"{worker.name} SIGKILLed itself at {worker.failpoints} (exit {code})")
        if code != -9:
            env.violation("fault_not_injected", f"{worker.name} exited {code}, not by SIGKILL")
        found = await before_restart(env) if before_restart is not None else None
        last = round_ == rounds - 1
        successor = await env.launch(0, failpoints="" if last else worker.failpoints)
        if after_restart is not None:
            found = await after_restart(env, successor)
        if found is None:
            env.violation(
                "fault_not_injected",
                f"{worker.name} crashed at {worker.failpoints}, but left nothing behind "
                "for its successor to recover from",
            )
        else:
            env.notes.append(found)


async def _redelivery_evidence(env: ScenarioEnv) -> str | None:
    gap = await env.redelivery_gap()
    if not gap:
        return None
    return f"{gap} record(s) were committed to the database but not to Kafka at the crash"


async def _crash_after_batch_commit(env: ScenarioEnv, load: LoadProducer) -> None:
    await _crash_at_failpoint(env, before_restart=_redelivery_evidence)


async def _recovery_evidence(env: ScenarioEnv, successor: Worker) -> str | None:
    """The successor's relay found rows already in Kafka and deleted them unsent. Taken
    from its log rather than from the outbox at the crash: the rows a crashed publish
    leaves may all be a backfill's, which a count of the worker's own rows misses, and a
    backfill may write rows while the worker is down, which a count of all rows takes
    for evidence."""
    if not await env.wait_until(lambda: bool(successor.relay_recovered()), within=30):
        return None
    return (
        f"{successor.name}'s relay found {sum(successor.relay_recovered())} outbox row(s) "
        "already in Kafka "
        "and deleted them without sending them again"
    )


async def _crash_after_relay_publish(env: ScenarioEnv, load: LoadProducer) -> None:
    await _crash_at_failpoint(env, after_restart=_recovery_evidence)


async def _under_a_batch(env: ScenarioEnv, load: LoadProducer, what: str) -> None:
    """Wait for a batch transaction to be open, for a fault meant to hit one."""
    if not await env.batch_in_flight(within=30, give_up=_drained(env, load)):
        env.violation(
            "fault_not_injected",
            f"no batch transaction was open at {load.progress:.0%} of the load when {what}",
        )


async def _broker_sigkill(env: ScenarioEnv, load: LoadProducer) -> None:
    await load.reached(0.35)
    await _under_a_batch(env, load, "the broker was killed")
    await env.stack.kill_kafka()
    env.fault(f"SIGKILL the Kafka broker at {load.progress:.0%} of the load")
    if env.stack.kafka.running():
        env.violation("fault_not_injected", "the Kafka broker still runs after its SIGKILL")
    await asyncio.sleep(3)  # the outage lasts this long
    await env.stack.start_kafka()
    env.fault("Kafka broker restarted")


async def _postgres_restart(env: ScenarioEnv, load: LoadProducer) -> None:
    await load.reached(0.35)
    await _under_a_batch(env, load, "PostgreSQL was stopped")
    await env.stack.crash_postgres()
    env.fault(f"PostgreSQL stopped in immediate mode at {load.progress:.0%} of the load")
    if env.stack.postgres.running():
        env.violation("fault_not_injected", "PostgreSQL still runs after an immediate stop")
    await asyncio.sleep(3)  # the outage lasts this long
    await env.stack.start_postgres()
    env.fault("PostgreSQL started again")


async def _terminate_backends(env: ScenarioEnv, load: LoadProducer) -> None:
    drained = _drained(env, load)
    for fraction in (0.2, 0.4, 0.6, 0.8):
        await load.reached(fraction)
        # Polled until one statement finds a batch open and ends it with every session.
        ended, in_batch = await env.terminate_in_batch(within=30, give_up=drained)
        if in_batch:
            env.fault(
                f"pg_terminate_backend on {ended} session(s), {in_batch} of them inside a "
                f"batch transaction, at {load.progress:.0%}"
            )
        else:
            env.violation(
                "fault_not_injected",
                f"no batch transaction was open to end with pg_terminate_backend from "
                f"{fraction:.0%} of the load on",
            )


def _has_partitions(worker: Worker) -> bool:
    return bool(worker.assigned())


def _revoked_since(env: ScenarioEnv, revocations: int) -> bool:
    return env.logged("partitions_revoked") > revocations


async def _rebalance(env: ScenarioEnv, load: LoadProducer) -> None:
    def under_load(change: str) -> None:
        if load.progress >= 1.0:
            env.violation("fault_not_injected", f"{change} only once the whole load had been sent")

    for slot, fraction in ((1, 0.1), (2, 0.3)):
        await load.reached(fraction)
        worker = await env.launch(slot)
        given = await env.wait_until(functools.partial(_has_partitions, worker), within=60)
        env.fault(f"{worker.name} joined the group at {load.progress:.0%} of the load")
        if not given:
            env.violation("fault_not_injected", f"{worker.name} joined but was given no partition")
        under_load(f"{worker.name} joined the group")
    await load.reached(0.7)
    leaving = env.workers[0]
    code = await leaving.stop()
    env.fault(f"{leaving.name} left the group (SIGTERM, exit {code}) at {load.progress:.0%}")
    if code != 0:
        env.violation("unclean_shutdown", f"{leaving.name} exited {code} on SIGTERM")
    everything = set(range(env.partitions))

    def taken_over() -> bool:
        staying = [worker for worker in env.workers.values() if worker.running]
        return set().union(*(worker.assigned() for worker in staying)) == everything

    if not await env.wait_until(taken_over, within=60):
        env.violation(
            "fault_not_injected",
            f"the group did not give {leaving.name}'s partitions to the workers that stayed",
        )
    under_load(f"the workers that stayed took over {leaving.name}'s partitions")


async def _broker_pause(env: ScenarioEnv, load: LoadProducer) -> None:
    """Freeze the broker (a long GC pause, a stalled VM) past the consumer's session
    timeout, then let it go on. The fault is the freeze, and it is checked: the broker's
    process must be stopped when the pause begins and still stopped when it ends.

    Whether the group then rebalances is the broker's choice, not ours: its own KRaft
    session with its controller (9 s) lapses during the pause too, and when it fences
    itself on waking it reloads the group coordinator, which starts every member's
    session afresh. The scenario notes which happened; the loss of a member's session is
    injected for certain by ``kafka-cut``, which cuts only the worker's link."""
    await load.reached(0.35)
    pid = env.stack.kafka.pid()
    if pid is None:
        env.violation("fault_not_injected", "the Kafka broker has no process to pause")
        return
    revoked = env.logged("partitions_revoked")

    def stopped() -> bool:
        return process_state(pid) == "T"

    env.stack.pause_kafka()
    # The kernel stops a process soon after the signal, not before kill() returns.
    frozen = [await env.wait_until(stopped, within=5)]
    env.fault(f"SIGSTOP the Kafka broker at {load.progress:.0%} of the load")
    try:
        await asyncio.sleep(BROKER_PAUSE)  # the freeze lasts this long
        frozen.append(stopped())
    finally:
        env.stack.resume_kafka()
    env.fault(f"SIGCONT the Kafka broker after {BROKER_PAUSE:.0f}s")
    if not all(frozen):
        env.violation(
            "fault_not_injected",
            f"the broker's process was not stopped for the whole {BROKER_PAUSE:.0f} s pause",
        )
    await load.reached(1.0)
    if _revoked_since(env, revoked):
        env.notes.append("the group rebalanced after the pause")
    else:
        env.notes.append("the group kept its sessions: the broker fenced itself on waking")


async def _worker_pause(env: ScenarioEnv, load: LoadProducer) -> None:
    await _freeze_a_worker(env, load, server_ends_transaction=False)


async def _worker_pause_past_idle_timeout(env: ScenarioEnv, load: LoadProducer) -> None:
    await _freeze_a_worker(env, load, server_ends_transaction=True)


async def _freeze_a_worker(
    env: ScenarioEnv, load: LoadProducer, *, server_ends_transaction: bool
) -> None:
    """Freeze worker 0 inside one of its batch transactions past the session timeout.

    Either its transaction outlives the pause, and the worker that takes over its
    partitions waits on whatever rows it had locked until the frozen one wakes up and
    commits; or PostgreSQL's idle-in-transaction timeout ends it, and the successor goes
    on while the frozen worker still sleeps. Either way the stored positions must keep
    the woken worker from applying anything twice."""
    await load.reached(0.35)
    frozen = env.workers[0]
    owned = frozen.assigned()
    revoked = env.logged("partitions_revoked")
    in_batch = await env.freeze_in_batch(frozen, within=30)
    where = "inside a batch transaction" if in_batch else "(no batch transaction caught open)"
    env.fault(f"SIGSTOP {frozen.name} {where} at {load.progress:.0%} of the load")
    before = await env.positions()
    try:
        # Held past the session timeout, so the group gives its partitions to the other
        # worker while the frozen one still believes it owns them.
        await asyncio.sleep(SESSION_TIMEOUT + 5)
        rebalances = env.logged("partitions_revoked") - revoked
        still_open = await env.still_in_batch(frozen)
        after = await env.positions()
    finally:
        frozen.resume()
    env.fault(f"SIGCONT {frozen.name} after {SESSION_TIMEOUT + 5:.0f}s")
    if not in_batch:
        env.violation("fault_not_injected", f"{frozen.name} was never caught inside a batch")
    if rebalances:
        env.notes.append(f"the group rebalanced {rebalances} time(s) while {frozen.name} slept")
    else:
        env.violation(
            "fault_not_injected", f"the group did not rebalance while {frozen.name} was frozen"
        )
    moved = sorted(p for p in owned if after.get(p, 0) > before.get(p, 0))
    if server_ends_transaction:
        if still_open:
            env.violation(
                "stalled", f"PostgreSQL did not end {frozen.name}'s idle transaction in time"
            )
        if not moved:
            env.violation(
                "stalled",
                f"no partition of {frozen.name} ({sorted(owned)}) moved on while it was frozen",
            )
        env.notes.append(
            f"PostgreSQL ended the frozen transaction; partitions {moved} of {frozen.name} "
            "moved on while it slept"
        )
    else:
        if in_batch and not still_open:
            env.violation("fault_not_injected", f"{frozen.name}'s transaction ended while frozen")
        env.notes.append(
            f"the frozen transaction stayed open for the whole pause; partitions {moved} "
            f"of {frozen.name}'s {sorted(owned)} moved on meanwhile (the others waited on "
            "its locks)"
        )
    await load.reached(1.0)


async def _freeze_the_relay_leader(env: ScenarioEnv, load: LoadProducer) -> None:
    """SIGSTOP the worker whose relay leads, for three times RELAY_TAKEOVER_SECONDS: the
    other worker's relay must take the lead within the bound (plus its poll and some
    room) and keep the outbox draining while the old leader sleeps; woken, the old one
    must stand by, its Kafka transaction fenced off by the shared transactional id."""
    await load.reached(0.25)
    pair = _leader_and_other(env)
    if pair is not None:
        leader, other = pair
        leader.pause()
        env.fault(f"SIGSTOP {leader.name}, the relay leader, at {load.progress:.0%} of the load")
        try:
            await _watch_the_takeover(env, other, lasting=LEADER_FREEZE)
        finally:
            leader.resume()
        env.fault(f"SIGCONT {leader.name} after {LEADER_FREEZE:.0f}s")
    await load.reached(1.0)


async def _cut_the_relay_leader(env: ScenarioEnv, load: LoadProducer) -> None:
    """Only worker 0 reaches PostgreSQL through the proxy, and it leads the relays. Its
    link goes silent (no byte either way, no connection closed: a partition) for 40 s:
    the other relay must take over within the bound, as for a frozen leader."""
    network = env.network
    if network is None:
        raise RuntimeError("relay-leader-cut needs the proxies")
    await load.reached(0.25)
    pair = _leader_and_other(env)
    if pair is not None and pair[0] is not env.workers[0]:
        # Both started at once and the direct one won: hand the lead to the proxied one.
        direct = pair[0]
        proxied = env.workers[0]
        led_before = proxied.logged("relay_leading")
        code = await direct.stop()
        env.fault(f"SIGTERM {direct.name} (exit {code}) so that {proxied.name} leads")
        if code != 0:
            env.violation("unclean_shutdown", f"{direct.name} exited {code} on SIGTERM")
        await _until(lambda: proxied.logged("relay_leading") > led_before, within=30)
        slot = next(slot for slot, worker in env.workers.items() if worker is direct)
        await env.launch(slot)
        pair = _leader_and_other(env)
    if pair is not None:
        leader, other = pair
        if leader is not env.workers[0]:
            env.violation("fault_not_injected", f"{leader.name}, not the proxied worker, leads")
        else:
            silence = (toxiproxy.timeout(0, stream="upstream"), toxiproxy.timeout(0))
            await network.poison(network.postgres, *silence)
            env.fault(
                f"{leader.name}'s link to PostgreSQL went silent at {load.progress:.0%} "
                "of the load (nothing carried, nothing closed)"
            )
            try:
                await _watch_the_takeover(env, other, lasting=LEADER_CUT)
            finally:
                await network.cure(network.postgres, *silence)
            env.fault(f"{leader.name}'s link carries again after {LEADER_CUT:.0f}s")
    await load.reached(1.0)


async def _until(check: Callable[[], bool], *, within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def _leader_and_other(env: ScenarioEnv) -> tuple[Worker, Worker] | None:
    """The worker whose relay leads now and the other one, or None (a violation) when
    there is not exactly one leader."""
    leaders = [worker for worker in env.workers.values() if _leads(worker)]
    if len(leaders) != 1 or len(env.workers) != 2:
        env.violation(
            "fault_not_injected", f"expected one relay leader of two, found {len(leaders)}"
        )
        return None
    [leader] = leaders
    [other] = [worker for worker in env.workers.values() if worker is not leader]
    return leader, other


def _leads(worker: Worker) -> bool:
    """Whether the worker's relay leads: it has logged taking the lead, and not lost it
    (or stopped) since."""
    leading = False
    for event in worker.events():
        name = event.get("event")
        if name == "relay_leading":
            leading = True
        elif name in ("relay_retrying", "relay_session_lost", "worker_stopped"):
            leading = False
    return leading and worker.running


async def _watch_the_takeover(env: ScenarioEnv, other: Worker, *, lasting: float) -> None:
    """For ``lasting`` seconds while the leader is out, watch ``other``'s relay take the
    lead and the outbox drain; a violation if either does not happen within the bound."""
    led_before = other.logged("relay_leading")
    started = time.monotonic()
    took: float | None = None
    drained_after: float | None = None
    while (elapsed := time.monotonic() - started) < lasting:
        if took is None and other.logged("relay_leading") > led_before:
            took = elapsed
        if took is not None and drained_after is None and await _outbox_fresh(env):
            drained_after = elapsed
        await asyncio.sleep(0.5)  # the pace of the watch; the fault lasts ``lasting``
    bound = RELAY_TAKEOVER + 10
    if took is None:
        env.violation("relay_takeover_slow", f"no other relay led in {lasting:.0f}s")
    elif took > bound:
        env.violation("relay_takeover_slow", f"{other.name} led only after {took:.1f}s")
    elif drained_after is None:
        env.violation("stalled", "the new leader did not drain the outbox meanwhile")
    else:
        env.notes.append(
            f"{other.name}'s relay led {took:.1f}s in (bound {bound:.0f}s) and had the outbox "
            f"fresh {drained_after:.1f}s in"
        )


async def _outbox_fresh(env: ScenarioEnv) -> bool:
    """No unpublished row older than two seconds: the relay keeps up with the load."""

    async def run(connection: asyncpg.Connection) -> bool:
        age: float = await connection.fetchval(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created)), 0)::float8 "
            "FROM outbox"
        )
        return age < 2.0

    fresh: bool = await env.query(run)
    return fresh


async def _postgres_sigkill(env: ScenarioEnv, load: LoadProducer) -> None:
    await load.reached(0.35)
    in_flight = await env.batch_in_flight(within=10)
    backends = await env.stack.sigkill_postgres()
    where = " with a batch in flight" if in_flight else ""
    env.fault(
        f"SIGKILL the PostgreSQL postmaster{where} at {load.progress:.0%} of the load "
        f"({backends} backend(s) exited after it)"
    )
    if not in_flight:
        env.violation("fault_not_injected", "no batch transaction was open at the SIGKILL")
    await asyncio.sleep(3)  # the outage lasts this long
    await env.stack.start_postgres()
    env.fault("PostgreSQL started again (crash recovery)")


async def _hot_customer(env: ScenarioEnv, load: LoadProducer) -> None:
    hot = load.plan.kinds()["hot"]
    if hot < 1000 and not env.config.short:
        env.violation("fault_not_injected", f"only {hot} commands for the hot customer")
    env.fault(f"{hot} of {load.total} commands update one customer, sent in a burst")


async def _constant_rebalancing(env: ScenarioEnv, load: LoadProducer) -> None:
    """Every few seconds a member is killed, stopped or added (and stopped again), for as
    long as the load lasts: the group never settles for long."""
    changes = 0
    actions = ("kill", "sigterm", "join", "leave")
    extra = max(env.workers) + 1
    while not load.done:
        action = actions[changes % len(actions)]
        victim = (changes // len(actions)) % extra
        if action == "kill":
            killed = env.workers[victim]
            killed.kill()
            await killed.wait_exit(within=10)
            env.fault(f"SIGKILL {killed.name} at {load.progress:.0%}")
            await env.launch(victim, wait=False)
        elif action == "sigterm":
            worker = env.workers[(victim + 1) % extra]
            code = await worker.stop()
            env.fault(f"SIGTERM {worker.name} (exit {code}) at {load.progress:.0%}")
            if code != 0:
                env.violation("unclean_shutdown", f"{worker.name} exited {code} on SIGTERM")
            await env.launch((victim + 1) % extra, wait=False)
        elif action == "join":
            worker = await env.launch(extra, wait=False)
            env.fault(f"{worker.name} joined at {load.progress:.0%}")
        elif action == "leave" and extra in env.workers:
            worker = env.workers.pop(extra)
            code = await worker.stop()
            env.fault(f"{worker.name} left (SIGTERM, exit {code}) at {load.progress:.0%}")
            if code != 0:
                env.violation("unclean_shutdown", f"{worker.name} exited {code} on SIGTERM")
        changes += 1
        await asyncio.sleep(4)  # the pace of the membership changes, not a wait for state
    if changes < (6 if env.config.short else 20):
        env.violation("fault_not_injected", f"only {changes} membership changes")
    env.notes.append(f"{changes} membership changes while the load ran")


async def _broker_sigkill_in_relay_transaction(env: ScenarioEnv, load: LoadProducer) -> None:
    """The worker is armed to SIGSTOP itself inside its relay's Kafka transaction, after
    the records are sent and before the commit: the broker is SIGKILLed and restarted
    while that transaction is open, then the worker is woken to commit (or abort) it."""
    worker = env.workers[0]
    stopped = await worker.wait_stopped(within=60)
    if not stopped:
        env.violation("fault_not_injected", f"{worker.name} never stopped at {worker.failpoints}")
        return
    env.fault(f"{worker.name} froze inside its relay's Kafka transaction ({worker.failpoints})")
    await env.stack.kill_kafka()
    env.fault(f"SIGKILL the Kafka broker at {load.progress:.0%} of the load")
    await asyncio.sleep(3)  # the outage lasts this long
    await env.stack.start_kafka()
    env.fault("Kafka broker restarted")
    worker.resume()
    env.fault(f"SIGCONT {worker.name}: its open transaction meets a restarted broker")


#: The tables a batch writes, moved onto the small disk in postgres-out-of-disk.
_GROWING_TABLES = ("customers", "outbox", "processed_commands", "consumer_offsets")


async def _postgres_out_of_disk(env: ScenarioEnv, load: LoadProducer) -> None:
    """The tables a batch writes live on a small disk that fills up under load: the worker
    must stall (retrying, with the reason in its log), lose nothing, and go on when the
    space comes back."""
    try:
        disk = env.stack.mount_small_disk(env.database, size_mib=64)
    except OSError as exc:
        env.violation("fault_not_injected", str(exc))
        return
    tablespace = f"{env.database}_small"

    async def run(connection: asyncpg.Connection, statement: str) -> None:
        await connection.execute(statement)

    async def execute(statement: str) -> None:
        await env.query(lambda connection: run(connection, statement))

    try:
        await execute(f"CREATE TABLESPACE {tablespace} LOCATION '{disk}'")
        # A partitioned table's own tablespace only places the tables made after it:
        # processed_commands' tables are moved one by one.
        for table in (*_GROWING_TABLES, *await env.query(idempotency_tables)):
            await execute(f"ALTER TABLE {table} SET TABLESPACE {tablespace}")
        await load.reached(0.3)
        filler = disk / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:  # until the disk is full
                out.write(b"\0" * (1 << 20))
                out.flush()
        env.fault(f"the tablespace's disk is full at {load.progress:.0%} of the load")
        if await _worker_reports(env, "DiskFullError", within=30):
            env.notes.append(
                "the worker retried its batch on DiskFullError while the disk was full"
            )
        else:
            env.violation("fault_not_injected", "no worker met a full disk within 30 s")
        await asyncio.sleep(10)  # the outage lasts this long
        filler.unlink()
        env.fault("the disk has space again")
        await load.reached(1.0)
        # Listed again: a retention pass meanwhile may have made tables, on the small disk.
        for table in (*_GROWING_TABLES, *await env.query(idempotency_tables)):
            await execute(f"ALTER TABLE {table} SET TABLESPACE pg_default")
        await execute(f"DROP TABLESPACE {tablespace}")
    finally:
        env.stack.unmount_small_disk(disk)


async def _worker_reports(env: ScenarioEnv, error: str, *, within: float) -> bool:
    """Until some worker logs a retry whose error names ``error``, or give up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for worker in env.every_worker:
            if any(
                event.get("event") == "batch_retrying" and error in str(event.get("error"))
                for event in worker.events()
            ):
                return True
        await asyncio.sleep(0.5)
    return False


async def _poison(env: ScenarioEnv, load: LoadProducer) -> None:
    kinds = load.plan.kinds()
    missing = [kind for kind in POISON_KINDS if kinds[kind] == 0]
    if missing:
        env.violation("fault_not_injected", f"the load holds no poison record of {missing}")
    env.fault(f"{sum(kinds[kind] for kind in POISON_KINDS)} poison records mixed into the load")


async def _hostile_records(env: ScenarioEnv, load: LoadProducer) -> None:
    kinds = load.plan.kinds()
    missing = [kind for kind in HOSTILE_KINDS if kinds[f"hostile:{kind}"] == 0]
    if missing:
        env.violation("fault_not_injected", f"the load holds no hostile record of {missing}")
    env.fault(f"{sum(kinds[f'hostile:{kind}'] for kind in HOSTILE_KINDS)} hostile records")
    # A relay takeover reads the dead-letter topic back, where the forged headers went;
    # it reads the topics back only if the outbox holds rows, so the worker is killed
    # (stopped first, and checked) while some are waiting.
    await load.reached(0.5)
    worker = env.workers[0]

    async def outbox_waiting(connection: asyncpg.Connection) -> bool:
        waiting: bool = await connection.fetchval("SELECT EXISTS (SELECT FROM outbox)")
        return waiting

    caught = await env.catch(worker, outbox_waiting, within=30, give_up=_drained(env, load))
    await _sigkill(env, worker)
    env.fault(f"SIGKILL {worker.name} at {load.progress:.0%}, so the next relay recovers")
    if not caught:
        env.violation(
            "fault_not_injected",
            f"{worker.name} was never caught with outbox rows waiting: the next relay "
            "had nothing to recover",
        )
    await env.launch(0)
    await load.reached(1.0)


async def _graceful(env: ScenarioEnv, load: LoadProducer) -> None:
    await load.reached(0.5)
    worker = env.workers[0]
    code = await worker.stop()
    env.fault(f"SIGTERM {worker.name} at {load.progress:.0%} of the load (exit {code})")
    if code != 0:
        env.violation("unclean_shutdown", f"{worker.name} exited {code} on SIGTERM")
    left = await env.outbox_size(backfill=False)
    if left:
        env.violation(
            "unclean_shutdown", f"{left} outbox row(s) left unpublished by a graceful stop"
        )
    backfilled = await env.outbox_size() - left
    if backfilled:
        # Written by the backfill, maybe after the worker's last look at the outbox: the
        # next worker publishes them, and the state checks see that it did.
        env.notes.append(f"{backfilled} backfill outbox row(s) waiting at the stop")
    gap = await env.redelivery_gap()
    if gap:
        env.notes.append(f"{gap} record(s) processed but not committed to Kafka at the stop")
    await env.launch(0)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "sigkill-mid-batch",
        "SIGKILL the worker while a batch transaction is open, then restart it; events "
        "in binary content mode (EVENT_CONTENT_MODE=binary)",
        partitions=3,
        binary_events=True,
        inject=_sigkill_mid_batch,
        short=True,
        # A restarted member waits out the dead one's session (10 s) before it gets
        # partitions; a slower load keeps records arriving across the kills.
        rate_scale=0.35,
    ),
    Scenario(
        "crash-after-db-commit",
        "the worker SIGKILLs itself after a batch's database commit, before the offset "
        "commit (FAILPOINTS=after_batch_commit@1); restarted without the failpoint; in "
        "signed mode (a JWT per command)",
        partitions=4,
        inject=_crash_after_batch_commit,
        short=True,
        failpoints="after_batch_commit@1",
        backlog=0.3,
        # The redelivered batch is authorized again from its tokens, and must come out
        # the same; resends with a fresh token are the same command.
        signed=True,
    ),
    Scenario(
        "relay-crash-after-publish",
        "the relay SIGKILLs its process after the Kafka commit, before deleting the outbox "
        "rows (FAILPOINTS=after_relay_publish@2); restarted without the failpoint; events "
        "in binary content mode, which the relay's recovery reads back",
        binary_events=True,
        partitions=3,
        inject=_crash_after_relay_publish,
        failpoints="after_relay_publish@2",
        backlog=0.3,
    ),
    Scenario(
        "broker-sigkill",
        "SIGKILL the Kafka broker under load, restart it 3 s later",
        partitions=6,
        inject=_broker_sigkill,
    ),
    Scenario(
        "postgres-restart",
        "stop PostgreSQL in immediate mode (a crash) under load, start it 3 s later",
        partitions=4,
        inject=_postgres_restart,
    ),
    Scenario(
        "postgres-terminate-backends",
        "pg_terminate_backend every session of the database, four times under load",
        partitions=3,
        inject=_terminate_backends,
    ),
    Scenario(
        "rebalance",
        "a second and a third worker join under load, then the first leaves",
        partitions=6,
        inject=_rebalance,
        # Each join takes a few seconds (start-up, then the group's rebalance), up to 9 s
        # on a busy 2-core machine; all three membership changes must be over while
        # records still arrive.
        rate_scale=0.2,
    ),
    Scenario(
        "broker-pause",
        "SIGSTOP the Kafka broker for longer than the session timeout, then SIGCONT: the "
        "worker waits the freeze out",
        partitions=3,
        inject=_broker_pause,
    ),
    Scenario(
        "worker-pause",
        "SIGSTOP one of two workers for longer than the session timeout, then SIGCONT: "
        "the frozen member wakes up after its partitions have moved",
        partitions=6,
        inject=_worker_pause,
        workers=2,
    ),
    Scenario(
        "worker-pause-idle-timeout",
        "as worker-pause, with DATABASE_IDLE_IN_TRANSACTION_TIMEOUT=3: PostgreSQL ends the "
        "frozen transaction and the other worker goes on without waiting for it to wake",
        partitions=6,
        inject=_worker_pause_past_idle_timeout,
        workers=2,
        worker_settings=(("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "3"),),
    ),
    Scenario(
        "postgres-sigkill",
        "SIGKILL the PostgreSQL postmaster under load (its backends die after it), start "
        "it again 3 s later: crash recovery",
        partitions=3,
        inject=_postgres_sigkill,
    ),
    Scenario(
        "hot-customer",
        "70% of the load updates one customer, sent four times as fast: one partition and "
        "one row lock take the burst",
        partitions=3,
        inject=_hot_customer,
        rate_scale=4.0,
        hot_share=0.7,
    ),
    Scenario(
        "constant-rebalancing",
        "three workers, and a member killed, stopped, added or removed every 4 s for as "
        "long as the load lasts (two minutes)",
        partitions=6,
        inject=_constant_rebalancing,
        workers=3,
        rate_scale=0.05,
    ),
    Scenario(
        "broker-sigkill-in-relay-transaction",
        "the worker freezes inside its relay's Kafka transaction (records sent, commit "
        "not yet), the broker is SIGKILLed and restarted, then the worker goes on",
        partitions=3,
        inject=_broker_sigkill_in_relay_transaction,
        failpoints="in_relay_transaction@3:stop",
    ),
    Scenario(
        "postgres-out-of-disk",
        "the tables a batch writes sit on a 64 MiB disk that is filled up under load for "
        "10 s: the worker stalls, retrying, and goes on when the space returns",
        partitions=3,
        inject=_postgres_out_of_disk,
    ),
    Scenario(
        "relay-leader-cut",
        "the relay leader's link to PostgreSQL goes silent for 40 s (a partition: nothing "
        "closed): another relay leads within RELAY_TAKEOVER_SECONDS and drains the outbox",
        partitions=6,
        inject=_cut_the_relay_leader,
        workers=2,
        rate_scale=0.1,
        proxied=True,
        proxied_slots=(0,),
    ),
    Scenario(
        "relay-leader-freeze",
        "SIGSTOP the worker whose relay leads for 45 s: another relay leads within "
        "RELAY_TAKEOVER_SECONDS and drains the outbox; the woken one is fenced off",
        partitions=6,
        inject=_freeze_the_relay_leader,
        workers=2,
        # About a minute of load, so that records keep coming through the whole freeze.
        rate_scale=0.1,
    ),
    Scenario(
        "poison",
        "unreadable records (bad UTF-8, > 64 KiB, too deep, not JSON, no key, ...) in the load",
        partitions=3,
        inject=_poison,
        short=True,
        poison=True,
    ),
    Scenario(
        "hostile-records",
        "records built to break a consumer (header names with NUL or not UTF-8, forged "
        "outbox-id and kafka_dlt headers, 65 headers, a 340 KB key, a 1 MiB value, "
        "permissions split by a no-break space) in the load, and a relay takeover",
        partitions=3,
        inject=_hostile_records,
        short=True,
        hostile=True,
    ),
    Scenario(
        "graceful-sigterm",
        "SIGTERM the worker under load and restart it: no duplicates, nothing left behind",
        partitions=4,
        inject=_graceful,
        short=True,
    ),
    Scenario(
        "postgres-cut",
        "cut the worker<->PostgreSQL link (Toxiproxy) for 40 s under load, then restore it",
        partitions=4,
        inject=postgres_cut,
        # Records keep arriving through the whole cut.
        rate_scale=0.1,
        proxied=True,
    ),
    Scenario(
        "kafka-cut",
        "cut the worker<->Kafka link (Toxiproxy) for 30 s under load, then restore it",
        partitions=4,
        inject=kafka_cut,
        rate_scale=0.12,
        proxied=True,
    ),
    Scenario(
        "postgres-slow",
        "200 ms of latency on every packet of the worker<->PostgreSQL link for 30 s: "
        "the consumer keeps its partitions",
        partitions=4,
        inject=postgres_slow,
        rate_scale=0.2,
        proxied=True,
    ),
    Scenario(
        "kafka-bandwidth",
        "64 KB/s per connection both ways on the worker<->Kafka link for 30 s",
        partitions=4,
        inject=kafka_bandwidth,
        # At the full rate the load needs several times the limit.
        proxied=True,
    ),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}

#: The CI form. Its workers' session timeout is the broker's minimum, 6 s: each of its
#: three worker kills is followed by a restart that waits for the dead member's session
#: to end before the group gives out partitions again, which is most of the form's time.
SHORT = RunConfig(
    commands=400,
    rate=200,
    customers=20,
    seed=20260131,
    settle_within=120,
    short=True,
    session_timeout_ms=6_000,
)
FULL = RunConfig(commands=3000, rate=500, customers=40, seed=20260131, settle_within=240)


# -- running ----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scenario: Scenario
    check: CheckResult
    duration: float
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unplanned_exits: int = 0
    run_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.check.ok


@dataclass
class SuiteOptions:
    short: bool = False
    #: Scenario names to run (all of the form's by default).
    scenarios: Sequence[str] = ()
    commands: int | None = None
    rate: float | None = None
    seed: int | None = None
    home: Path | None = None
    #: Runs a worker instead of ``customer-service worker`` (to try the suite on a build
    #: with a known bug, say); the settings still come from the environment.
    worker_command: Sequence[str] = ()
    keep: bool = False
    #: Keep the database and topics of a scenario with a violation.
    keep_failed: bool = True
    #: Every scenario in signed mode (some are anyway).
    signed: bool = False
    #: Every scenario with events in binary content mode (some are anyway).
    binary_events: bool = False
    #: Workers connect over TLS (Kafka SSL, PostgreSQL verify-full).
    tls: bool = False
    progress: Progress = lambda _: None


@dataclass
class SuiteResult:
    results: list[ScenarioResult]
    duration: float
    run_dir: Path

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)


def select(options: SuiteOptions) -> list[Scenario]:
    if options.scenarios:
        unknown = [name for name in options.scenarios if name not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {', '.join(BY_NAME)}")
        chosen = [BY_NAME[name] for name in options.scenarios]
        proxied = [scenario.name for scenario in chosen if scenario.proxied]
        if options.tls and proxied:
            # Toxiproxy reaches the broker through its plaintext PROXIED listener.
            raise ValueError(f"--tls runs no scenario through Toxiproxy: {', '.join(proxied)}")
        return chosen
    return [
        scenario
        for scenario in SCENARIOS
        if (scenario.short or not options.short) and not (options.tls and scenario.proxied)
    ]


def config_for(options: SuiteOptions) -> RunConfig:
    base = SHORT if options.short else FULL
    return RunConfig(
        commands=options.commands or base.commands,
        rate=options.rate or base.rate,
        customers=base.customers,
        seed=base.seed if options.seed is None else options.seed,
        settle_within=base.settle_within,
        keep=options.keep,
        keep_failed=options.keep_failed,
        worker_command=tuple(options.worker_command),
        short=base.short,
        signed=options.signed,
        binary_events=options.binary_events,
        tls=options.tls,
        session_timeout_ms=base.session_timeout_ms,
    )


async def run_suite(options: SuiteOptions) -> SuiteResult:
    """Run the selected scenarios one after another on the suite's own stack."""
    scenarios = select(options)
    config = config_for(options)
    stack = FaultStack(options.home or default_home(), tls=options.tls)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = stack.home / "runs" / stamp
    started = time.monotonic()
    options.progress(f"stack under {stack.home}; logs under {run_dir}")
    await stack.open()
    results = []
    try:
        for scenario in scenarios:
            results.append(
                await run_scenario(
                    stack, scenario, config, run_dir / scenario.name, options.progress
                )
            )
    finally:
        await stack.close()
    return SuiteResult(results, time.monotonic() - started, run_dir)


async def run_scenario(
    stack: FaultStack,
    scenario: Scenario,
    config: RunConfig,
    run_dir: Path,
    progress: Progress = lambda _: None,
) -> ScenarioResult:
    def say(message: str) -> None:
        progress(f"[{scenario.name}] {message}")

    started = time.monotonic()
    signed = scenario.signed or config.signed
    env = ScenarioEnv(
        stack,
        scenario.name,
        scenario.partitions,
        config,
        run_dir,
        progress=say,
        worker_settings=dict(scenario.worker_settings),
        jwt_key=signing_key(config.seed) if signed else None,
        event_content_mode="binary"
        if scenario.binary_events or config.binary_events
        else "structured",
    )
    load: LoadProducer | None = None
    backfill: asyncio.Task[None] | None = None
    result = CheckResult()
    try:
        await env.setup()
        if scenario.proxied:
            env.network = await stack.network()
            env.proxied_slots = frozenset(scenario.proxied_slots)
        plan = build_load(
            seed=config.seed,
            commands=config.commands,
            seeded=env.seeded,
            topic=env.settings.topic_commands,
            poison=scenario.poison,
            hostile=scenario.hostile,
            hot_share=scenario.hot_share,
            signing_key=env.jwt_key,
        )
        rate = config.rate * scenario.rate_scale
        load = LoadProducer(stack.bootstrap_servers, env.settings.topic_commands, plan, rate=rate)
        if scenario.backlog:
            load.start()
            say(f"load: {len(plan.records)} records at {rate:.0f}/s")
            await load.reached(scenario.backlog)
        for slot in range(scenario.workers):
            env.start_worker(slot, failpoints=scenario.failpoints)
        # Every seeded customer gets its state record, under the load and the fault. It
        # starts with the workers: the CLI takes about as long to start as they take to
        # join the group, so its paced batches (``BACKFILL_ARGS``) meet the load.
        backfill = asyncio.create_task(
            env.backfill(within=config.settle_within), name=f"backfill-{scenario.name}"
        )
        for worker in list(env.workers.values()):
            await env.wait_assigned(worker)
        env.supervise()
        if not scenario.backlog:
            load.start()
            say(f"load: {len(plan.records)} records at {rate:.0f}/s")
        await scenario.inject(env, load)
        if config.tls:
            await env.check_tls()
        await backfill
        await env.settle(load)
        # So that the concurrent reader has read everything the workers published before
        # they stop (a worker could still change the topics on its way out).
        await env.reader_caught_up()
        codes = await env.stop_workers()
        for name, code in codes.items():
            if code != 0:
                env.violation("unclean_shutdown", f"{name} exited {code} on the final SIGTERM")
        history = await env.collect()
        env.check_durability(history, plan, load)
        await env.check_concurrent_reads(history)
        result = check(history)
        if load.resent:
            env.notes.append(f"the producer resent {load.resent} unacknowledged record(s)")
        recovered = env.relay_recovered()
        if recovered:
            env.notes.append(
                f"taking over, the relay found {sum(recovered)} already-published outbox "
                f"row(s) left by its predecessor and deleted them ({len(recovered)} time(s))"
            )
    except Exception as exc:
        env.violation("harness_error", f"{type(exc).__name__}: {exc}")
    finally:
        if backfill is not None and not backfill.done():
            backfill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill
        if load is not None:
            await load.cancel()
        result.violations.extend(env.violations)
        with contextlib.suppress(Exception):
            await env.teardown(keep=config.keep or (config.keep_failed and not result.ok))
    duration = time.monotonic() - started
    say(
        f"done in {duration:.1f}s: {len(result.violations)} violation(s), "
        f"{result.applied} applied, {result.rejected} rejected, "
        f"{result.dead_lettered} dead-lettered"
    )
    return ScenarioResult(
        scenario,
        result,
        duration,
        faults=env.faults,
        notes=env.notes,
        unplanned_exits=env.unplanned_exits,
        run_dir=run_dir,
    )


def violations_of(results: Sequence[ScenarioResult]) -> list[tuple[str, Violation]]:
    return [(r.scenario.name, v) for r in results for v in r.check.violations]
