"""A worker that exits on its own (status 3) right after it commits its first dead letter,
once per scenario: an orchestrator restarts it and nothing is lost, so only a harness
that counts an unplanned exit as a violation notices."""

from __future__ import annotations

import os
from collections.abc import Sequence

from service.application.process_batch import BatchProcessor
from service.domain.batch import Decision
from service.domain.inbound import InboundRecord
from tests.faults.workers import first_time, run_worker

_process = BatchProcessor.process


async def _exit_after_first_dead_letter(
    self: BatchProcessor, records: Sequence[InboundRecord]
) -> list[Decision]:
    decisions = await _process(self, records)
    dead_letters = any(decision.outcome == "dead_lettered" for decision in decisions)
    if dead_letters and first_time("crashed-on-first-dead-letter"):
        os._exit(3)
    return decisions


if __name__ == "__main__":
    BatchProcessor.process = _exit_after_first_dead_letter  # type: ignore[method-assign]
    run_worker()
