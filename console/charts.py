"""Small SVG charts drawn on the server, so the console needs no chart library."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 600
HEIGHT = 140
PAD_LEFT = 56
PAD_BOTTOM = 22
PAD_TOP = 10


def _short(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}".replace(".0", "")
    return f"{value:.0f}"


def bar_chart(*, values: list[int], days: list[str], title: str) -> SafeString:
    """Return an accessible SVG bar chart of one value per day."""
    top = max([*values, 1])
    plot_w, plot_h = WIDTH - PAD_LEFT - 6, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(values), 1)
    bar_w = max(step * 0.7, 1)
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 6}" '
        f'y2="{PAD_TOP + plot_h}" stroke="#cbd2d9"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end" font-size="11" '
        f'fill="#616e7c">{_short(top)}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" '
        'text-anchor="end" font-size="11" '
        f'fill="#616e7c">0</text>',
    ]
    for index, (value, day) in enumerate(zip(values, days, strict=True)):
        height = plot_h * value / top
        x = PAD_LEFT + index * step + (step - bar_w) / 2
        y = PAD_TOP + plot_h - height
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{height:.1f}" '
            f'fill="#2f5fd0" rx="1"><title>{escape(day)}: {value:,}</title></rect>'
        )
    if days:
        parts.append(
            f'<text x="{PAD_LEFT}" y="{HEIGHT - 6}" font-size="11" fill="#616e7c">'
            f"{escape(days[0])}</text>"
        )
        parts.append(
            f'<text x="{WIDTH - 6}" y="{HEIGHT - 6}" text-anchor="end" font-size="11" '
            f'fill="#616e7c">{escape(days[-1])}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every value above is a number or escaped
