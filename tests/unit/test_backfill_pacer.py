"""``backfill --rate``: every rate the option allows paces batches it can take."""

from __future__ import annotations

import pytest

from service.entrypoints.operator.backfill import pacer


@pytest.mark.parametrize(
    ("rate", "asked", "batch"),
    [(0, 200, 200), (0.5, 200, 1), (1, 200, 1), (150.7, 200, 150), (1000, 200, 200)],
)
async def test_the_batch_fits_what_the_rate_limit_takes_at_once(
    rate: float, asked: int, batch: int
) -> None:
    pace, size = pacer(rate, asked)
    assert size == batch
    await pace(size)  # a batch larger than the bucket would raise ValueError here
