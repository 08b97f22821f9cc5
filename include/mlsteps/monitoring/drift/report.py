"""The drift report as one self-contained HTML page: the decisions, summary tables of the features and of the
prediction signals, and a chart per drifted column.

Charts are inline SVG drawn here (reference vs current share per reference-quantile bin or per category), so the
page needs no plotting library and no external asset.
"""

from __future__ import annotations

import html
from typing import Any

from mlsteps import html_report
from mlsteps.monitoring.drift.decide import DriftReport

_CHART_WIDTH = 720
_CHART_HEIGHT = 260
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 48, 12, 28, 90
_COLOURS = {"reference": "#8c959f", "current": "#d1242f"}
_SUMMARY_HEADER = [
    "type",
    "status",
    "method",
    "statistic",
    "p-value",
    "adjusted p",
    "effect size",
    "threshold",
    "drifted",
    "message",
]


def share_chart_svg(histogram: dict[str, list[Any]]) -> str:
    """Grouped bars of the reference and current share per bin or category, as an inline SVG element.

    Args:
        histogram: ``labels`` with the ``reference`` and ``current`` shares of each (a feature's ``histogram``).

    Returns:
        The ``<svg>`` markup; labels are escaped.
    """
    labels, reference, current = histogram["labels"], histogram["reference"], histogram["current"]
    plot_width = _CHART_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_height = _CHART_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    top = max([*reference, *current, 1e-9])
    slot = plot_width / max(len(labels), 1)
    bar = slot * 0.4
    baseline = _MARGIN_TOP + plot_height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_WIDTH}" height="{_CHART_HEIGHT}" '
        f'font-size="11" role="img">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = baseline - fraction * plot_height
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" x2="{_CHART_WIDTH - _MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#d0d7de"/>'
            f'<text x="{_MARGIN_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{fraction * top:.0%}</text>'
        )
    for index, label in enumerate(labels):
        left = _MARGIN_LEFT + index * slot + slot * 0.1
        for offset, (series, shares) in enumerate((("reference", reference), ("current", current))):
            height = shares[index] / top * plot_height
            parts.append(
                f'<rect x="{left + offset * bar:.1f}" y="{baseline - height:.1f}" width="{bar:.1f}" '
                f'height="{height:.1f}" fill="{_COLOURS[series]}"><title>{series} {shares[index]:.2%}</title></rect>'
            )
        x, y = left + bar, baseline + 12
        parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" transform="rotate(-35 {x:.1f} {y:.1f})">'
            f"{html.escape(str(label))}</text>"
        )
    for offset, (series, colour) in enumerate(_COLOURS.items()):
        x = _MARGIN_LEFT + offset * 110
        parts.append(
            f'<rect x="{x}" y="6" width="12" height="12" fill="{colour}"/><text x="{x + 16}" y="16">{series}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _summary_table(what: str, columns: list[dict[str, Any]]) -> str:
    """One row per feature or prediction signal (``what`` heads the name column)."""
    rows = [[column["name"], *_summary_row(column)] for column in columns]
    return html_report.table([what, *_SUMMARY_HEADER], rows, [_row_class(column) for column in columns])


def _summary_row(feature: dict[str, Any]) -> list[Any]:
    return [
        feature["kind"],
        feature["status"],
        feature["method"],
        feature["statistic"],
        feature["p_value"],
        feature["adjusted_p_value"],
        feature["effect_size"],
        feature["threshold"],
        feature["drifted"],
        feature["message"],
    ]


def _row_class(feature: dict[str, Any]) -> str:
    """Drifted rows red, rows that could not be judged (data quality, too few values) yellow."""
    if feature["drifted"]:
        return "failed"
    return "warning" if feature["status"] != "ok" else ""


def _verdict(flag: bool, yes: str, no: str) -> str:
    return f'<strong class="{"failed" if flag else "passed"}">{yes if flag else no}</strong>'


def render_html(report: DriftReport | dict[str, Any], title: str) -> str:
    """Render a drift report as one self-contained HTML page.

    Args:
        report: ``detect_drift``'s report, or its ``to_dict()`` as read back from JSON.
        title: what was compared, e.g. ``churn window 2025-06-01..2025-06-07``.

    Returns:
        The HTML document: the dataset decision, prediction drift, data-quality problems, a summary table of
        every feature and one of every prediction signal, and a reference-vs-current chart for each drifted one.
    """
    data = report.to_dict() if isinstance(report, DriftReport) else report
    dataset, prediction, problems = data["dataset"], data["prediction"], data["data_quality_problems"]
    body = [
        f"<p>Dataset: {_verdict(dataset['drift_detected'], 'DRIFT', 'no drift')}: {html.escape(dataset['message'])}"
        f" ({data['current_rows']} current rows, reference of {data['reference_rows']} rows).</p>",
    ]
    if prediction:
        drifted_signals = [signal["name"] for signal in prediction if signal["drifted"]]
        summary = f"{len(drifted_signals)} of {len(prediction)} prediction signal(s) drifted"
        summary += f": {', '.join(drifted_signals)}" if drifted_signals else ""
        verdict = _verdict(bool(drifted_signals), "DRIFT", "no drift")
        body.append(f"<p>Prediction: {verdict}: {html.escape(summary)}</p>")
    body.append(
        f"<p>Data quality: {_verdict(data['data_quality_failed'], 'FAILED', 'passed')}</p>"
        + ("<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>" if problems else "")
    )
    body += ["<h2>Features</h2>", _summary_table("feature", data["features"])]
    if prediction:
        body += ["<h2>Prediction</h2>", _summary_table("prediction signal", prediction)]
    drifted = [f for f in [*data["features"], *prediction] if f["drifted"] and f["histogram"]]
    if drifted:
        body.append("<h2>Drifted columns: reference vs current</h2>")
    for feature in drifted:
        body.append(f"<h3><code>{html.escape(feature['name'])}</code> ({html.escape(feature['method'])})</h3>")
        body.append(share_chart_svg(feature["histogram"]))
    return html_report.page(f"Drift: {title}", "\n".join(body))
