"""The fault-injection suite, through its library API: the short form holds every
invariant on the real worker, and each blind spot it once had now catches a worker
broken on purpose (``tests/faults/workers/``).

It runs on the suite's own Kafka and PostgreSQL (``.devstack/faults``, or
``$FAULTS_DEVSTACK_HOME``), never on the shared stack the other tests use, since it
kills and restarts them. Besides "no violation", each scenario must show that its fault
happened and that commands were really applied, rejected and (with poison)
dead-lettered: a suite that silently did nothing would otherwise pass.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults.scenarios import SCENARIOS, SHORT, ScenarioResult, SuiteOptions, run_suite
from faults.stack import FaultStack, default_home

BROKEN_WORKERS = Path(__file__).resolve().parents[1] / "faults" / "workers"


@pytest.fixture(scope="module")
async def fault_stack() -> AsyncIterator[FaultStack]:
    """The suite's own stack, started once for every run of this module (a run leaves a
    stack it did not start running)."""
    stack = FaultStack(default_home())
    await stack.open()
    try:
        yield stack
    finally:
        await stack.close()


async def run_broken(worker: str, scenario: str) -> ScenarioResult:
    """One short scenario with ``tests/faults/workers/<worker>.py`` as the worker."""
    suite = await run_suite(
        SuiteOptions(
            short=True,
            scenarios=[scenario],
            worker_command=[sys.executable, str(BROKEN_WORKERS / f"{worker}.py")],
            # Its violations are expected: nothing to inspect afterwards.
            keep_failed=False,
            progress=print,
        )
    )
    [result] = suite.results
    return result


async def test_the_short_fault_suite_holds_every_invariant(fault_stack: FaultStack) -> None:
    suite = await run_suite(SuiteOptions(short=True, progress=print))

    assert [r.scenario.name for r in suite.results] == [s.name for s in SCENARIOS if s.short]
    for result in suite.results:
        name, counts = result.scenario.name, result.check
        assert counts.violations == [], f"{name}: " + "\n".join(counts.summary())
        assert result.faults, f"{name}: no fault was injected"
        assert result.unplanned_exits == 0, f"{name}: " + "\n".join(result.notes)
        assert counts.commands >= SHORT.commands, f"{name}: the load did not arrive"
        assert counts.applied > 0, f"{name}: nothing was applied"
        assert counts.rejected > 0, f"{name}: nothing was rejected"
        assert counts.unaccounted == 0
        assert counts.duplicate_events == 0
        # The backfill ran to its end under the load: every customer got a state record.
        assert any("backfill --all published the state of" in n for n in result.notes), name
        # Every record ended one way or another; resends were recognised as such.
        assert (
            counts.applied + counts.rejected + counts.dead_lettered + counts.resent
            == counts.commands
        ), name
    by_name = {result.scenario.name: result for result in suite.results}
    assert by_name["poison"].check.dead_lettered > 0
    assert any("mid-batch" in fault for fault in by_name["sigkill-mid-batch"].faults)
    assert any("(exit -9)" in fault for fault in by_name["crash-after-db-commit"].faults)
    assert any("(exit 0)" in fault for fault in by_name["graceful-sigterm"].faults)


async def test_a_scenario_over_tls_holds_every_invariant(fault_stack: FaultStack) -> None:
    """Workers on Kafka SSL and PostgreSQL verify-full, killed mid-batch and restarted."""
    suite = await run_suite(
        SuiteOptions(short=True, scenarios=["sigkill-mid-batch"], tls=True, progress=print)
    )

    [result] = suite.results
    assert result.check.violations == [], "\n".join(result.check.summary())
    assert result.check.applied > 0
    assert any("mid-batch" in fault for fault in result.faults)
    # The harness saw the workers' database sessions, every one of them encrypted.
    assert any("all over TLS" in note for note in result.notes), result.notes


async def test_a_worker_that_exits_on_its_own_is_a_violation(fault_stack: FaultStack) -> None:
    # It exits once, after its first dead letter is committed; restarted, it loses nothing,
    # so the checker alone finds nothing wrong.
    result = await run_broken("crash_on_first_dead_letter", "poison")

    assert result.unplanned_exits == 1
    assert [v.kind for v in result.check.violations] == ["worker_crashed"]
    assert "exited on its own with 3" in result.check.violations[0].message


async def test_a_fault_that_could_not_be_injected_is_a_violation(fault_stack: FaultStack) -> None:
    # The harness never sees this worker inside a batch transaction, so it cannot SIGKILL
    # it mid-batch: it kills it anyway, and says the fault did not happen as designed.
    result = await run_broken("hides_its_sessions", "sigkill-mid-batch")

    assert [v.kind for v in result.check.violations] == ["fault_not_injected"]
    assert "never caught inside a batch transaction" in result.check.violations[0].message
    assert any("(no batch open)" in fault for fault in result.faults)


async def test_state_records_one_update_behind_are_a_violation(fault_stack: FaultStack) -> None:
    # Every event goes out right, each with a state record in its transaction, but the
    # record holds the customer before the update: it pairs with no event, and a
    # customer's latest state is one update behind its row.
    result = await run_broken("stale_state", "poison")

    assert result.check.kinds() == {"state_unpaired", "state_mismatch"}
    assert "differs from the final row: version is" in next(
        v.message for v in result.check.violations if v.kind == "state_mismatch"
    )


async def test_a_record_subscribers_read_that_later_vanished_is_a_violation(
    fault_stack: FaultStack,
) -> None:
    # The first batch of messages is published twice and the first copy deleted on the
    # way out: the topics read afterwards look flawless, the live reader saw duplicates.
    result = await run_broken("republish_then_hide", "poison")

    # The batch's state records cannot be hidden (the state topic is compacted, where
    # DeleteRecords is refused): a customer with two versions in it goes back on it too.
    assert "dirty_read" in result.check.kinds()
    assert result.check.kinds() <= {"dirty_read", "state_went_backwards"}
    dirty = next(v for v in result.check.violations if v.kind == "dirty_read")
    assert "a concurrent read_committed reader read" in dirty.message
