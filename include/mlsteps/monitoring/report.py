"""The monitor's report: drift, realized and estimated performance over the recent windows, as one HTML page.

The monitor (``orchestration.monitor``) keeps each check's figures in its state; this page draws the last windows:
the share of drifted features, and per performance metric the realized value (labelled predictions, at the end of
the window it was measured on), the estimated value and the band of the holdout's expectation, so that estimation
and realization can be compared where both exist. Self-contained (inline SVG), like the other reports.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from mlsteps import html_report
from mlsteps.html_report import Band, Series

PERFORMANCE_SIGNALS = ("realized_performance", "estimated_performance")


def _hours_before(end: str, latest: datetime) -> float:
    return (datetime.fromisoformat(end) - latest).total_seconds() / 3600


def _performance_points(windows: list[dict[str, Any]], signal: str, latest: datetime) -> dict[str, list[Any]]:
    """x (hours before the latest window's end), value, band, for the windows where the signal was judged."""
    points: dict[str, list[Any]] = {"x": [], "value": [], "low": [], "high": [], "expected": []}
    for window in windows:
        entry = window.get(signal)
        if not entry or entry["status"] != "ok":
            continue
        end = (entry.get("window") or {}).get("end") or window["window_end"]
        points["x"].append(_hours_before(end, latest))
        for key, source in (("value", "value"), ("low", "lower"), ("high", "upper"), ("expected", "expected")):
            points[key].append(entry[source])
    return points


def _performance_chart(windows: list[dict[str, Any]], metric: str, latest: datetime) -> str:
    realized = _performance_points(windows, "realized_performance", latest)
    estimated = _performance_points(windows, "estimated_performance", latest)
    banded = realized if realized["x"] else estimated
    return html_report.xy_chart_svg(
        f"Performance: {metric}",
        [
            Series("realized", realized["x"], realized["value"], dots=True),
            Series("estimated", estimated["x"], estimated["value"], dots=True),
            Series("holdout expectation", banded["x"], banded["expected"]),
        ],
        x_label="hours before the latest window's end",
        y_label=metric,
        band=Band("the holdout's band of sampling error", banded["x"], banded["low"], banded["high"]),
    )


def _drift_chart(windows: list[dict[str, Any]], latest: datetime) -> str:
    judged = [w for w in windows if w["drift"]["status"] == "ok" and w["drift"]["drifted_share"] is not None]
    x = [_hours_before(w["window_end"], latest) for w in judged]
    return html_report.xy_chart_svg(
        "Input drift: share of drifted features",
        [Series("drifted share", x, [w["drift"]["drifted_share"] for w in judged], dots=True)],
        x_label="hours before the latest window's end",
        y_label="share of features",
        y_range=(0.0, 1.0),
    )


def _verdict(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "not measured"
    if entry["status"] != "ok":
        return entry["status"]
    return f"{entry['value']:.4g} in [{entry['lower']:.4g}, {entry['upper']:.4g}]" + (" DROP" if entry["fired"] else "")


def _link(uri: str | None, text: str) -> str:
    return f'<a href="{html.escape(uri)}">{html.escape(text)}</a>' if uri else ""


def render_monitor_html(report: dict[str, Any]) -> str:
    """The report page of one monitor run (``{"title", "decision", "windows"}`` as the monitor writes it)."""
    decision, windows = report["decision"], report["windows"]
    parts = [
        f"<p>Decision: <strong>{html.escape(decision['action'])}</strong>: {html.escape(decision['reason'])}</p>",
    ]
    if decision.get("drift_report_uri"):
        parts.append(f"<p>This window's drift report: {_link(decision['drift_report_uri'], 'report.json')}</p>")
    if windows:
        latest = datetime.fromisoformat(windows[-1]["window_end"])
        parts.append(_drift_chart(windows, latest))
        metrics = {
            (w.get(signal) or {}).get("metric") for w in windows for signal in PERFORMANCE_SIGNALS if w.get(signal)
        } - {None}
        parts += [_performance_chart(windows, metric, latest) for metric in sorted(metrics)]
        rows = [
            [
                w["window_end"],
                w["model_version"],
                w["drift"]["status"]
                if w["drift"]["status"] != "ok"
                else ("DRIFT" if w["drift"]["fired"] else "no drift"),
                w["drift"]["drifted_share"],
                _verdict(w.get("realized_performance")),
                _verdict(w.get("estimated_performance")),
            ]
            for w in reversed(windows)
        ]
        header = ["window end", "version", "drift", "drifted share", "realized", "estimated"]
        parts.append("<h2>Recent windows</h2>" + html_report.table(header, rows))
    return html_report.page(report["title"], "\n".join(parts))
