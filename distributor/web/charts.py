"""Line charts drawn on the server as SVG: no script, no library, no CDN.

:func:`line_chart` draws one line per series (a channel) over consecutive days. The SVG uses
presentation attributes only (no ``style``), so the pages' strict Content-Security-Policy lets
it show, and every text in it is escaped. The page shows the same numbers in a table beside it,
for screen readers and for copying.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from markupsafe import Markup, escape

# Distinguishable for the common colour blindnesses (Okabe-Ito), readable on white and black.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F")

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 32


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at or above ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def line_chart(title: str, days: Sequence[date], series: Mapping[str, Sequence[int]]) -> Markup:
    """An SVG chart of ``series`` (name -> one count per day of ``days``)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max((max(v, default=0) for v in series.values()), default=0))
    step = plot_w / max(len(days) - 1, 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(v: int) -> float:
        return TOP + plot_h - (v / top) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="currentColor" stroke-opacity="0.3"/>',
    ]
    for tick in (0, top // 2 if top >= 2 else 0, top):
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="currentColor">{tick}</text>'
        )
        parts.append(
            f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{LEFT + plot_w}" y2="{y(tick):.1f}" '
            'stroke="currentColor" stroke-opacity="0.15"/>'
        )
    if days:
        labelled = sorted({0, len(days) // 2, len(days) - 1})
        for i in labelled:
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 10}" text-anchor="middle" font-size="11" '
                f'fill="currentColor">{days[i]:%d %b}</text>'
            )
    for n, (name, values) in enumerate(sorted(series.items())):
        colour = PALETTE[n % len(PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for i, v in enumerate(values):
            if v:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
        legend_y = TOP + 14 + n * 18
        parts.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{legend_y - 9}" width="10" height="10" '
            f'fill="{colour}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT + 28}" y="{legend_y}" font-size="12" fill="currentColor">'
            f"{escape(name[:18])} ({sum(values)})</text>"
        )
    if not series:
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
            'font-size="13" fill="currentColor">nothing in this period</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every text in it is escaped above
