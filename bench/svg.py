"""A small hand-written SVG chart of latency over time: no plotting dependency.

The samples are grouped into time buckets; the chart draws each bucket's p50, p99 and
maximum as polylines, so a stall or a slow drift shows at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from bench.stats import percentile

WIDTH = 760
HEIGHT = 380
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 110, 36, 48
SERIES = (("p50", "#1f77b4"), ("p99", "#d62728"), ("max", "#7f7f7f"))


def nice_step(span: float, target_ticks: int = 5) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about ``target_ticks`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / target_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10.0 * magnitude


def bucket_series(
    samples: Sequence[tuple[float, float]], buckets: int | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per time bucket (its midpoint), the p50, p99 and max of the samples in it. By
    default up to 120 buckets of at least about 50 samples each."""
    series: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in SERIES}
    if not samples:
        return series
    if buckets is None:
        buckets = max(1, min(120, len(samples) // 50))
    start = min(t for t, _ in samples)
    end = max(t for t, _ in samples)
    width = (end - start) / buckets if end > start else 1.0
    grouped: dict[int, list[float]] = {}
    for t, value in samples:
        grouped.setdefault(min(int((t - start) / width), buckets - 1), []).append(value)
    for number in sorted(grouped):
        values = sorted(grouped[number])
        middle = start + (number + 0.5) * width
        series["p50"].append((middle, percentile(values, 50)))
        series["p99"].append((middle, percentile(values, 99)))
        series["max"].append((middle, values[-1]))
    return series


def _format(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value:.0f}"


def render_latency_svg(
    samples: Sequence[tuple[float, float]],
    *,
    title: str,
    x_label: str = "seconds since the first command was sent",
    y_label: str = "latency (ms)",
) -> str:
    """An SVG document plotting ``(seconds, latency_ms)`` samples."""
    series = bucket_series(samples)
    plot_w = WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    x_max = max((t for t, _ in samples), default=1.0)
    x_min = min((t for t, _ in samples), default=0.0)
    x_min = min(x_min, 0.0)
    if x_max <= x_min:
        x_max = x_min + 1.0
    y_top = max((value for value in (v for points in series.values() for _, v in points)),
                default=1.0)  # fmt: skip
    y_step = nice_step(y_top if y_top > 0 else 1.0)
    y_max = max(y_step, math.ceil(y_top / y_step) * y_step)
    x_step = nice_step(x_max - x_min)

    def px(t: float) -> float:
        return _MARGIN_LEFT + (t - x_min) / (x_max - x_min) * plot_w

    def py(value: float) -> float:
        return _MARGIN_TOP + plot_h - value / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.0f}" y="20" text-anchor="middle" font-size="14">'
        f"{escape(title)}</text>",
    ]
    tick = 0.0
    while tick <= y_max + y_step / 2:
        y = py(tick)
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{y:.1f}" x2="{_MARGIN_LEFT + plot_w}" y2="{y:.1f}" '
            'stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{_MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_format(tick)}</text>'
        )
        tick += y_step
    tick = math.ceil(x_min / x_step) * x_step
    while tick <= x_max + 1e-9:
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_MARGIN_TOP + plot_h}" x2="{x:.1f}" '
            f'y2="{_MARGIN_TOP + plot_h + 4}" stroke="black"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{_MARGIN_TOP + plot_h + 16}" text-anchor="middle">'
            f"{_format(tick)}</text>"
        )
        tick += x_step
    parts.append(
        f'<rect x="{_MARGIN_LEFT}" y="{_MARGIN_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="black"/>'
    )
    parts.append(
        f'<text x="{_MARGIN_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 10}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(16 {_MARGIN_TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for number, (name, colour) in enumerate(SERIES):
        points = series[name]
        if points:
            coordinates = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in points)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{coordinates}"><title>{name}</title></polyline>'
            )
        legend_y = _MARGIN_TOP + 14 + number * 18
        legend_x = _MARGIN_LEFT + plot_w + 12
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 20}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{legend_x + 26}" y="{legend_y}">{name}</text>')
    if not samples:
        parts.append(
            f'<text x="{_MARGIN_LEFT + plot_w / 2:.0f}" y="{_MARGIN_TOP + plot_h / 2:.0f}" '
            'text-anchor="middle">no samples</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
