"""The short form of the fault-injection suite, through its library API.

It runs on the suite's own Kafka and PostgreSQL (``.devstack/faults``, or
``$FAULTS_DEVSTACK_HOME``), never on the shared stack the other tests use, since it
kills and restarts them. Besides "no violation", each scenario must show that its fault
happened and that commands were really applied, rejected and (with poison)
dead-lettered: a suite that silently did nothing would otherwise pass.
"""

from __future__ import annotations

from faults.scenarios import SCENARIOS, SHORT, SuiteOptions, run_suite


async def test_the_short_fault_suite_holds_every_invariant() -> None:
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
