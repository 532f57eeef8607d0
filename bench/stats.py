"""Small, dependency-free statistics for the report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending ``sorted_values``, interpolating
    linearly between the two nearest ranks (NumPy's default ``linear`` method)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    position = (len(sorted_values) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * fraction


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50, p95, p99 and max of latencies in milliseconds (None if empty)."""
    ordered = sorted(latencies_ms)
    if not ordered:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "max_ms": None}  # fmt: skip
    return {
        "count": len(ordered),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
    }


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``y`` over ``x``; 0 with fewer than two distinct ``x``."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not values:
        raise ValueError("no values")
    return percentile(sorted(values), 50)


def spread(values: Sequence[float], *, digits: int = 1) -> dict[str, float | int | None]:
    """Median, minimum and maximum of ``values`` and how many there are (None if none):
    how far apart the phases of one mode are, which a mean alone hides."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }
