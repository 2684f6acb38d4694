"""The overview's chart, drawn as inline SVG on the server (no chart library, no script)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 14, 22
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Minute:
    """Events done in one minute; ``estimated`` when the count passed the read cap."""

    start: dt.datetime
    events: float
    estimated: bool


def minute_counts(rows: Sequence[object], cap: int) -> list[Minute]:
    """Per-minute counts from THROUGHPUT rows; a bucket that hit ``cap`` is scaled up by the
    share of its minute that the first ``cap`` events covered."""
    minutes = []
    for row in rows:
        start: dt.datetime = row["start"]  # type: ignore[index]
        events: int = row["events"]  # type: ignore[index]
        last: dt.datetime | None = row["last_at"]  # type: ignore[index]
        if events >= cap and last is not None:
            covered = max((last - start).total_seconds(), 0.001)
            minutes.append(Minute(start, cap * 60.0 / covered, True))
        else:
            minutes.append(Minute(start, float(events), False))
    return minutes


def backlog_line(
    minutes: Sequence[Minute],
    first_ids: Sequence[int | None],
    next_id: int,
    backlog_now: int,
    now: dt.datetime,
) -> list[tuple[dt.datetime, int]]:
    """The backlog (pending + running) at the start of each minute of the last hour, walked
    back from ``backlog_now``: a minute's backlog is the next one's, less the events created
    in the minute (ids from its ``first_ids`` entry to the next one's, or ``next_id``, see
    CREATED_BOUNDS), plus those done in it (``minutes``). Events that went dead or were
    cancelled count as still waiting, so the line is an estimate; its last point, ``now``, is
    exact."""
    if len(first_ids) != len(minutes) or None in first_ids:
        return [(now, backlog_now)]
    ends = [*first_ids[1:], next_id]
    created = [
        max((end or 0) - (first or 0), 0) for first, end in zip(first_ids, ends, strict=True)
    ]
    points = [(now, backlog_now)]
    level = float(backlog_now)
    for i in range(len(minutes) - 1, 0, -1):
        # Entering minute i from its end: undo what it created and what it finished.
        level = max(level - created[i] + minutes[i].events, 0.0)
        points.append((minutes[i].start, round(level)))
    return points[::-1]


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 1)."""
    step = 1.0
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def chart_svg(
    minutes: Sequence[Minute],
    backlog: Sequence[tuple[dt.datetime, int]],
    now: dt.datetime,
) -> str:
    """Bars: events done per minute over the last hour. Line: the backlog (see
    backlog_line). Both on one time axis ending at ``now``, each with its own
    scale (bars left, line right)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    start = now - HOUR

    def x(at: dt.datetime) -> float:
        return LEFT + plot_w * (at - start).total_seconds() / HOUR.total_seconds()

    def y(value: float, top: float) -> float:
        return TOP + plot_h * (1 - value / top)

    bar_top = _nice_max(max((m.events for m in minutes), default=0))
    line_top = _nice_max(max((b for _, b in backlog), default=0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" class="chart" '
        'aria-label="events done per minute and backlog over the last hour">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ddd"/>',
    ]
    for fraction in (0.5, 1.0):
        gy = y(bar_top * fraction, bar_top)
        parts.append(
            f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{LEFT + plot_w}" y2="{gy:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#2b6cb0">{_number(bar_top * fraction)}/min</text>'
        )
    bar_w = plot_w / 60 - 1
    for m in minutes:
        if m.events <= 0:
            continue
        top = y(m.events, bar_top)
        fill = "#90cdf4" if m.estimated else "#4299e1"
        title = f"{m.start:%H:%M} UTC: {'~' if m.estimated else ''}{m.events:.0f} done"
        parts.append(
            f'<rect x="{x(m.start) + 0.5:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
            f'height="{TOP + plot_h - top:.1f}" fill="{fill}"><title>{escape(title)}</title>'
            "</rect>"
        )
    points = [(x(at), y(value, line_top)) for at, value in backlog if at >= start]
    if points:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        last_x, last_y = points[-1]
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="#dd6b20" stroke-width="2"/>'
            f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="3" fill="#dd6b20"/>'
            f'<text x="{WIDTH - RIGHT}" y="{TOP - 3}" text-anchor="end" font-size="10" '
            f'fill="#dd6b20">backlog max {_number(line_top)}</text>'
        )
    for minutes_ago in (60, 45, 30, 15, 0):
        at = now - dt.timedelta(minutes=minutes_ago)
        label = "now" if minutes_ago == 0 else f"-{minutes_ago}m"
        parts.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10" '
            f'fill="#555">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
