"""Charts drawn on the server as inline SVG geometry: no chart library, no script, works without JS.

`bar_chart` turns per-minute counts into bars the `_chart.html` partial draws; the data comes from
the analytics consumer's per-minute counts through the service layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from app.service import Services
from app.web.dashboard.render import fmt_time

WIDTH, HEIGHT, GAP = 720, 160, 2
MINUTES = 60
ANALYTICS = "analytics"  # the built-in consumer that keeps the per-minute counts


class Bar(NamedTuple):
    x: float
    y: float
    width: float
    height: float
    label: str


class Chart(msgspec.Struct, kw_only=True):
    bars: list[Bar]
    width: int
    height: int
    peak: int
    total: int
    last: int
    start_label: str
    end_label: str
    gridlines: list[tuple[float, str]]  # (y, value label)

    @property
    def summary(self) -> str:
        return (f"Events per minute over the last {len(self.bars)} minutes: {self.total} in total, "
                f"peak {self.peak}, last minute {self.last}.")


def bar_chart(points: list[tuple[int, int]], width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """Bars for (minute start in ms, count) points, oldest first; the y axis starts at zero."""
    peak = max((c for _, c in points), default=0)
    scale_max = _nice_ceiling(peak)
    slot = width / max(1, len(points))
    bars = []
    for i, (minute_ms, count) in enumerate(points):
        h = 0.0 if scale_max == 0 else (count / scale_max) * (height - 4)
        h = max(h, 1.5) if count else 0.0  # a minute with any events stays visible
        bars.append(Bar(round(i * slot + GAP / 2, 2), round(height - h, 2), round(max(1.0, slot - GAP), 2),
                        round(h, 2), f"{fmt_time(minute_ms)[11:16]} UTC: {count} events"))
    grid = [(round(height - (height - 4) * f, 2), _label(scale_max * f)) for f in (0.5, 1.0)] if scale_max else []
    return Chart(
        bars=bars, width=width, height=height, peak=peak, total=sum(c for _, c in points),
        last=points[-2][1] if len(points) > 1 else 0,  # the last full minute (the newest is under way)
        start_label=fmt_time(points[0][0])[11:16] if points else "",
        end_label=fmt_time(points[-1][0])[11:16] if points else "", gridlines=grid,
    )


def _nice_ceiling(value: int) -> int:
    """The next 1, 2 or 5 times a power of ten at or above `value` (0 stays 0)."""
    if value <= 0:
        return 0
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


async def event_rate(svc: Services) -> Chart | None:
    """Events per minute over the last hour; None when there are no counts because the analytics
    consumer (which keeps them) does not run."""
    series = await svc.stats.series(None, None, 60, None)
    points = list(zip(series.times, series.total, strict=True))[-MINUTES:]
    if not any(count for _, count in points):
        groups = await svc.consumer_groups()
        if not any(g.name == ANALYTICS for g in groups):
            return None
    return bar_chart(points)


async def group_throughput(svc: Services) -> dict[str, Any]:
    """Deliveries per minute of each consumer group, once the process has watched long enough."""
    await svc.consumer_groups()  # takes a sample (cached: free when the page just read them)
    return svc.throughput.per_minute()
