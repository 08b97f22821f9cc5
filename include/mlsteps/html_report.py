"""The page skeleton shared by the project's HTML reports: one stylesheet, escaped cells and tables.

Pages are self-contained (inline CSS and SVG, no scripts or external assets), so they open from S3, an MLflow
artifact view or a mail attachment alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #ffebe9; }
tr.warning td { background: #fff8c5; }
.passed { color: #1a7f37; }
.failed, .warning { color: #cf222e; }
code { font-family: ui-monospace, monospace; }
"""


def cell(value: Any) -> str:
    """One table cell: numbers right-aligned with 4 significant digits, None as a dash, text escaped."""
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        return f'<td class="number">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    """A table with a header row; ``row_classes`` (e.g. ``failed``) colour whole rows."""
    classes = row_classes or [""] * len(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(cell(v) for v in row) + "</tr>" for row, css in zip(rows, classes, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML); the title is escaped."""
    escaped = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escaped}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{escaped}</h1>\n{body}\n</body>\n</html>\n"
    )


# Charts: inline SVG drawn here, so a report needs no plotting library. Series colours in order of the series.
SERIES_COLOURS = ("#0969da", "#8c959f", "#bf8700")
_CHART_WIDTH, _CHART_HEIGHT = 440, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 16, 48, 44
_TICKS = 5


@dataclass(frozen=True)
class Series:
    """One named set of (x, y) points on a chart: a line through them in order, dots at them, or both."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    line: bool = True
    dots: bool = False


@dataclass(frozen=True)
class Band:
    """A shaded range between two lines over the same x values, e.g. an expected value's noise band."""

    name: str
    x: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


@dataclass(frozen=True)
class _Axes:
    """Maps data coordinates into the plot area of a chart."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, value: float) -> float:
        low, high = self.x_range
        return _LEFT + (value - low) / (high - low) * (_CHART_WIDTH - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return _CHART_HEIGHT - _BOTTOM - (value - low) / (high - low) * (_CHART_HEIGHT - _TOP - _BOTTOM)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _span(values: Sequence[float], given: tuple[float, float] | None) -> tuple[float, float]:
    """``given``, else the finite values' range (widened when empty or a single value)."""
    if given is not None:
        return given
    finite = [float(value) for value in values if _finite(value)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    return (low - 0.5, high + 0.5) if low == high else (low, high)


def _svg_open(title: str, width: int, height: int) -> list[str]:
    escaped = html.escape(title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" role="img">'
        f'<title>{escaped}</title><text x="{_LEFT}" y="16" font-size="13" font-weight="600">{escaped}</text>'
    ]


def _axes_frame(axes: _Axes, x_label: str, y_label: str) -> list[str]:
    """Grid lines with tick values and both axis labels."""
    bottom, right = _CHART_HEIGHT - _BOTTOM, _CHART_WIDTH - _RIGHT
    parts = [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{right - _LEFT}" height="{bottom - _TOP}" fill="none" stroke="#8c959f"/>'
    ]
    for step in range(_TICKS):
        fraction = step / (_TICKS - 1)
        x_value = axes.x_range[0] + fraction * (axes.x_range[1] - axes.x_range[0])
        y_value = axes.y_range[0] + fraction * (axes.y_range[1] - axes.y_range[0])
        x, y = axes.x(x_value), axes.y(y_value)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{bottom}" stroke="#eaeef2"/>'
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{x_value:.3g}</text>'
            f'<line x1="{_LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{y_value:.3g}</text>'
        )
    middle_x, middle_y = (_LEFT + right) / 2, (_TOP + bottom) / 2
    parts.append(
        f'<text x="{middle_x:.1f}" y="{_CHART_HEIGHT - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{middle_y:.1f}" text-anchor="middle" transform="rotate(-90 14 {middle_y:.1f})">'
        f"{html.escape(y_label)}</text>"
    )
    return parts


def _legend(names: Sequence[str]) -> str:
    return "".join(
        f'<rect x="{_LEFT + offset * 130}" y="26" width="12" height="12" fill="{colour}"/>'
        f'<text x="{_LEFT + offset * 130 + 16}" y="36">{html.escape(name)}</text>'
        for offset, (name, colour) in enumerate(zip(names, SERIES_COLOURS, strict=False))
    )


def xy_chart_svg(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    band: Band | None = None,
) -> str:
    """A line or scatter chart of one or more series, with a legend, as an inline ``<svg>`` element.

    Args:
        title: shown above the chart and as its accessible title.
        series: drawn in order, coloured by ``SERIES_COLOURS``; non-finite points are left out.
        x_label: the x axis' label.
        y_label: the y axis' label.
        x_range: the x axis' (low, high); default: the data's range.
        y_range: the y axis' (low, high); default: the data's range.
        diagonal: draw the dashed line y = x (chance for ROC, perfect for calibration and predicted vs actual).
        band: a shaded range drawn under the series (its name is written under the title).
    """
    band_values = [*band.low, *band.high] if band else []
    axes = _Axes(
        _span([v for s in series for v in s.x], x_range),
        _span([*(v for s in series for v in s.y), *band_values], y_range),
    )
    parts = [*_svg_open(title, _CHART_WIDTH, _CHART_HEIGHT), *_axes_frame(axes, x_label, y_label)]
    if band:
        corners = [(x, y) for x, y in zip(band.x, band.low, strict=True) if _finite(x) and _finite(y)]
        corners += [(x, y) for x, y in reversed(list(zip(band.x, band.high, strict=True))) if _finite(x) and _finite(y)]
        outline = " ".join(f"{axes.x(float(x)):.1f},{axes.y(float(y)):.1f}" for x, y in corners)
        parts.append(f'<polygon points="{outline}" fill="#8c959f" opacity="0.25"/>')
        parts.append(f'<text x="{_LEFT}" y="{_TOP - 2}" fill="#57606a">shaded: {html.escape(band.name)}</text>')
    if diagonal:
        low = max(axes.x_range[0], axes.y_range[0])
        high = min(axes.x_range[1], axes.y_range[1])
        parts.append(
            f'<line x1="{axes.x(low):.1f}" y1="{axes.y(low):.1f}" x2="{axes.x(high):.1f}" y2="{axes.y(high):.1f}" '
            'stroke="#57606a" stroke-dasharray="4 4"/>'
        )
    for one, colour in zip(series, SERIES_COLOURS, strict=False):
        points = [
            (axes.x(float(x)), axes.y(float(y))) for x, y in zip(one.x, one.y, strict=True) if _finite(x) and _finite(y)
        ]
        if one.line and points:
            joined = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{joined}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if one.dots and points:
            # One path of zero-length segments with round caps: a dot per point at a fraction of the markup.
            moves = "".join(f"M{x:.1f} {y:.1f}h0" for x, y in points)
            parts.append(f'<path d="{moves}" stroke="{colour}" stroke-width="5" stroke-linecap="round" opacity="0.6"/>')
    parts += [_legend([one.name for one in series]), "</svg>"]
    return "".join(parts)


def histogram_svg(title: str, edges: Sequence[float], counts: Sequence[int], *, x_label: str, y_label: str) -> str:
    """Bars of ``counts`` between consecutive ``edges`` (one more edge than counts), as an inline ``<svg>``."""
    axes = _Axes(_span(edges, None), (0.0, float(max([*counts, 1]))))
    parts = [*_svg_open(title, _CHART_WIDTH, _CHART_HEIGHT), *_axes_frame(axes, x_label, y_label)]
    for left, right, count in zip(edges[:-1], edges[1:], counts, strict=True):
        x, top = axes.x(left), axes.y(count)
        parts.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{max(axes.x(right) - x - 1, 0.5):.1f}" '
            f'height="{axes.y(0) - top:.1f}" fill="{SERIES_COLOURS[0]}"><title>{left:.4g} to {right:.4g}: '
            f"{count}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def heat_grid_svg(
    title: str, labels: Sequence[Any], counts: Sequence[Sequence[int]], *, row_title: str, column_title: str
) -> str:
    """A square grid of counts (a confusion matrix: rows and columns share ``labels``), shaded by count."""
    cell = max(18, min(48, 360 // max(len(labels), 1)))
    left, top = 110, 64
    size = cell * len(labels)
    width, height = max(left + size + 16, _CHART_WIDTH), top + size + 16  # wide enough for the title
    peak = max([value for row in counts for value in row] + [1])
    parts = _svg_open(title, width, height)
    parts.append(
        f'<text x="{left + size / 2:.1f}" y="34" text-anchor="middle">{html.escape(column_title)}</text>'
        f'<text x="8" y="{top - 6}">{html.escape(row_title)}</text>'
    )
    for position, label in enumerate(labels):
        name = html.escape(str(label)[:14])
        parts.append(
            f'<text x="{left + (position + 0.5) * cell:.1f}" y="{top - 6}" text-anchor="middle">{name}</text>'
            f'<text x="{left - 6}" y="{top + (position + 0.5) * cell + 4:.1f}" text-anchor="end">{name}</text>'
        )
    for row, values in enumerate(counts):
        for column, value in enumerate(values):
            shade = value / peak
            x, y = left + column * cell, top + row * cell
            text_colour = "#ffffff" if shade > 0.6 else "#1f2328"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{SERIES_COLOURS[0]}" '
                f'fill-opacity="{0.05 + 0.95 * shade:.2f}" stroke="#ffffff"/>'
                f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" fill="{text_colour}">'
                f"{value}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
