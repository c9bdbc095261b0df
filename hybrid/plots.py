"""Dependency-free SVG charts for the offline HTML report. Pure: numbers in, SVG text out."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 640, 320, 60, 150, 20, 45


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _frame(sx: Callable[[float], float], sy: Callable[[float], float], x_range: tuple[float, float],
           y_range: tuple[float, float], plot_w: float, plot_h: float, x_label: str, y_label: str) -> list[str]:
    """An SVG chart's opening tag, grid, tick labels, plot border and axis labels (escaped)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" font-family="sans-serif" font-size="11">']
    for t in _ticks(*y_range):
        out.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_PAD_L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(*x_range):
        out.append(f'<text x="{sx(t):.1f}" y="{_PAD_T + plot_h + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{_PAD_L + plot_w / 2}" y="{_H - 8}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text transform="translate(14 {_PAD_T + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(y_label)}</text>')
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    markers_only: Sequence[str] = (),
    end_markers: bool = False,
) -> str:
    """Lines (or dots, for series named in ``markers_only``) of ``(name, xs, ys)`` with a legend.

    ``end_markers`` draws a hollow circle at the end of every line (e.g. where ASHA stopped a trial).
    """
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if math.isfinite(y)]
    if not points:
        return "<p><em>no data</em></p>"
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    margin = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - margin, y_hi + margin
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def sx(x: float) -> float:
        return _PAD_L + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return _PAD_T + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    out = _frame(sx, sy, (x_lo, x_hi), (y_lo, y_hi), plot_w, plot_h, x_label, y_label)
    for i, (name, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if not pts:
            continue
        if name in markers_only:
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in pts]
        else:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
            if end_markers:
                x, y = pts[-1]
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="white" stroke="{color}" stroke-width="1.8"/>')
        ly = _PAD_T + 12 + 14 * i
        if ly < _H - 10:
            out.append(f'<rect x="{_W - _PAD_R + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
            out.append(f'<text x="{_W - _PAD_R + 24}" y="{ly + 1}">{html.escape(name[:22])}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(values: Sequence[tuple[str, float]], *, x_label: str) -> str:
    """Horizontal bars of ``(label, value)``, largest first."""
    if not values:
        return "<p><em>no data</em></p>"
    values = sorted(values, key=lambda kv: -kv[1])
    top = max(v for _, v in values) or 1.0
    row, label_w, bar_w = 22, 190, 360
    height = row * len(values) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" height="{height}" font-family="sans-serif" font-size="11">']
    for i, (label, value) in enumerate(values):
        y = 10 + i * row
        w = bar_w * value / top
        out.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{PALETTE[0]}"/>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{_fmt(value)}</text>')
    out.append(f'<text x="{label_w + bar_w / 2}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def heatmap(matrix: Sequence[Sequence[int]], *, labels: Sequence[str], x_label: str, y_label: str) -> str:
    """A confusion-matrix style grid with counts in the cells (rows: truth, columns: prediction)."""
    n = len(matrix)
    if n == 0:
        return "<p><em>no data</em></p>"
    cell, left, top = 36, 110, 90
    size = cell * n
    peak = max(max(row) for row in matrix) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + size + 20}" height="{top + size + 40}" font-family="sans-serif" font-size="10">']
    for j, name in enumerate(labels):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x:.1f} {top - 6}) rotate(-45)">{html.escape(name[:14])}</text>')
    for i, row in enumerate(matrix):
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end">{html.escape(labels[i][:16])}</text>')
        for j, count in enumerate(row):
            shade = count / peak
            fill = f"rgb({int(255 - 225 * shade)},{int(255 - 160 * shade)},{int(255 - 75 * shade)})"
            color = "white" if shade > 0.55 else "black"
            out.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff"/>')
            out.append(f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" fill="{color}">{count}</text>')
    out.append(f'<text x="{left + size / 2}" y="{top + size + 28}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text transform="translate(12 {top + size / 2}) rotate(-90)" text-anchor="middle">{html.escape(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def pareto_chart(
    points: Sequence[tuple[str, float, float]],
    *,
    x_label: str,
    y_label: str,
    sizes: Sequence[float] | None = None,
    size_label: str = "",
    front: Sequence[int] = (),
    chosen: int | None = None,
) -> str:
    """A scatter of ``(label, x, y)`` with the Pareto ``front`` (indices) joined and the ``chosen`` point ringed.

    Each point is one ``<circle class="pt">`` (``class="pt chosen"`` for the chosen one) whose tooltip is its
    label; with ``sizes``, a marker's area grows with its size. Points with a non-finite coordinate are left
    out (the caller lists them).
    """
    shown = [i for i, (_, x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    if not shown:
        return "<p><em>no data</em></p>"
    xs, ys = [points[i][1] for i in shown], [points[i][2] for i in shown]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_margin, y_margin = (x_hi - x_lo) * 0.08, (y_hi - y_lo) * 0.08  # room for the largest markers
    x_lo, x_hi, y_lo, y_hi = x_lo - x_margin, x_hi + x_margin, y_lo - y_margin, y_hi + y_margin
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def sx(x: float) -> float:
        return _PAD_L + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return _PAD_T + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    top = max((s for s in sizes or () if math.isfinite(s) and s > 0), default=0.0)

    def radius(i: int) -> float:
        if not sizes or top <= 0 or not math.isfinite(sizes[i]) or sizes[i] <= 0:
            return 4.0
        return max(2.5, 12.0 * math.sqrt(sizes[i] / top))  # area proportional to size

    out = _frame(sx, sy, (x_lo, x_hi), (y_lo, y_hi), plot_w, plot_h, x_label, y_label)
    on_front = sorted((i for i in front if i in shown), key=lambda i: (points[i][1], points[i][2]))
    if len(on_front) > 1:
        path = " ".join(f"{sx(points[i][1]):.1f},{sy(points[i][2]):.1f}" for i in on_front)
        out.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5"/>')
    for i in sorted(shown, key=lambda i: -radius(i)):  # large markers first, so small ones stay visible
        label, x, y = points[i]
        fill, opacity = (PALETTE[0], 0.75) if i in front else ("#999", 0.45)
        ring = f' stroke="{PALETTE[3]}" stroke-width="2.5"' if i == chosen else ' stroke="white"'
        tip = f"{label}: {x_label} {_fmt(x)}, {y_label} {_fmt(y)}"
        if sizes:
            tip += f", {size_label} {_fmt(sizes[i])}"
        out.append(f'<circle class="pt{" chosen" if i == chosen else ""}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" '
                   f'r="{radius(i):.1f}" fill="{fill}" fill-opacity="{opacity}"{ring}><title>{html.escape(tip)}</title></circle>')
    legend = [("front", PALETTE[0]), ("dominated", "#999")] + ([("chosen", PALETTE[3])] if chosen is not None else [])
    for row, (name, color) in enumerate(legend):
        ly = _PAD_T + 12 + 14 * row
        out.append(f'<rect x="{_W - _PAD_R + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{_W - _PAD_R + 24}" y="{ly + 1}">{name}</text>')
    if sizes:
        ly = _PAD_T + 12 + 14 * len(legend)
        out.append(f'<text x="{_W - _PAD_R + 10}" y="{ly + 1}">area: {html.escape(size_label[:18])}</text>')
    out.append("</svg>")
    return "".join(out)
