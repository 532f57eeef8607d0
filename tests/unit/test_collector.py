"""The cyclic garbage collector's tuning for long-lived, batch-working processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.entrypoints import cli
from service.infrastructure.collector import OBJECTS_PER_RECORD, tune_for_batches


@pytest.fixture(autouse=True)
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_a_pass_waits_for_more_objects_than_a_batch_holds() -> None:
    _, middle, old = gc.get_threshold()
    tune_for_batches(500)
    assert gc.get_threshold() == (500 * OBJECTS_PER_RECORD, middle, old)


def test_what_the_process_built_at_start_is_frozen() -> None:
    gc.unfreeze()
    tune_for_batches(500)
    assert gc.get_freeze_count() > 0


def test_small_batches_keep_the_default_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    tune_for_batches(1)
    assert gc.get_threshold()[0] == 700


def test_a_huge_batch_does_not_let_garbage_wait_for_millions_of_objects() -> None:
    tune_for_batches(50_000)
    assert 500 * OBJECTS_PER_RECORD < gc.get_threshold()[0] <= 100_000


def test_a_long_lived_verb_runs_with_the_collector_tuned() -> None:
    gc.set_threshold(700, 10, 10)

    async def main() -> int:
        return gc.get_threshold()[0]

    assert cli._run_until_stopped("worker", main, records_per_batch=300) == 300 * OBJECTS_PER_RECORD
