"""The evaluation report: what its plots show (``curves``, computed once by evaluate and kept in report.json) and
the self-contained HTML page (``render_report_html``): the gate, metrics side by side, plots and slices.

Plots per task, as inline SVG (``mlsteps.html_report``): binary, the ROC and calibration curves of challenger and
champion overlaid; multiclass, the challenger's confusion matrix; regression, the challenger's predicted vs actual
values and its residual histogram.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlsteps import html_report
from mlsteps.evaluation.metrics import calibration_bin, checked_output
from mlsteps.evaluation.tasks import metric

# Enough points for a smooth curve in a few kilobytes of report.json.
ROC_POINTS = 200
SCATTER_POINTS = 2000
RESIDUAL_BINS = 30
# Not metrics but per-class or free-text details, shown apart from the metrics table.
_NOT_IN_METRICS_TABLE = {"notes", "class_shares"}


def _compact(values: Any) -> list[float]:
    """Floats with six significant digits: plots need no more, and report.json stays small."""
    return [float(f"{value:.6g}") for value in np.asarray(values, dtype=np.float64)]


def _roc(labels: np.ndarray, positive: np.ndarray) -> dict[str, list[float]] | None:
    """At most ``ROC_POINTS`` points of the ROC curve, first and last kept; None with a single class."""
    from sklearn.metrics import roc_curve

    if np.unique(labels).size < 2:
        return None
    false_positive, true_positive, _ = roc_curve(labels, positive)
    keep = np.unique(np.linspace(0, false_positive.size - 1, ROC_POINTS).round().astype(int))
    return {"false_positive_rate": _compact(false_positive[keep]), "true_positive_rate": _compact(true_positive[keep])}


def _calibration(labels: np.ndarray, positive: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Mean predicted probability and observed positive rate per non-empty bin (the ECE's bins)."""
    bin_index = calibration_bin(positive, bins)
    filled = np.unique(bin_index)
    return {
        "mean_probability": _compact([positive[bin_index == index].mean() for index in filled]),
        "positive_rate": _compact([labels[bin_index == index].mean() for index in filled]),
        "rows": [int((bin_index == index).sum()) for index in filled],
    }


def _scatter(target: np.ndarray, prediction: np.ndarray) -> dict[str, list[float]]:
    """Actual and predicted values of at most ``SCATTER_POINTS`` rows, a fixed random sample of larger holdouts."""
    rows = np.arange(target.size)
    if target.size > SCATTER_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(target.size, SCATTER_POINTS, replace=False))
    return {"actual": _compact(target[rows]), "predicted": _compact(prediction[rows])}


def curves(task: str, classes: Sequence[Any] | None, y_true: Any, output: Any, calibration_bins: int) -> dict[str, Any]:
    """The data of one model's plots, small enough for report.json.

    Args:
        task: binary, multiclass or regression.
        classes: ``target.classes`` (classification).
        y_true: the encoded target (``tasks.encode_target``).
        output: the raw model output (probabilities rows x classes, or values).
        calibration_bins: bins of the calibration curve.

    Returns:
        binary: ``roc`` (None when the holdout has one class) and ``calibration``; multiclass: ``confusion``
        (``labels`` and ``counts``, rows actual, columns predicted); regression: ``scatter`` (actual, predicted)
        and ``residuals`` (histogram ``edges`` and ``counts`` of actual minus predicted).
    """
    from sklearn.metrics import confusion_matrix

    truth, values = checked_output(task, classes, y_true, output)
    if task == "binary":
        return {
            "roc": _roc(truth, values[:, 1]),
            "calibration": _calibration(truth, values[:, 1], calibration_bins),
        }
    if task == "multiclass":
        positions = list(range(len(classes or [])))
        counts = confusion_matrix(truth, values.argmax(axis=1), labels=positions)
        return {"confusion": {"labels": [str(label) for label in classes or []], "counts": counts.tolist()}}
    counts, edges = np.histogram(truth - values, bins=RESIDUAL_BINS)
    return {
        "scatter": _scatter(truth, values),
        "residuals": {"edges": _compact(edges), "counts": counts.tolist()},
    }


def _binary_plots(models: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """ROC and calibration curves, every model overlaid."""
    roc = [
        html_report.Series(
            name, model["curves"]["roc"]["false_positive_rate"], model["curves"]["roc"]["true_positive_rate"]
        )
        for name, model in models
        if model["curves"]["roc"] is not None
    ]
    calibration = [
        html_report.Series(
            name,
            model["curves"]["calibration"]["mean_probability"],
            model["curves"]["calibration"]["positive_rate"],
            dots=True,
        )
        for name, model in models
    ]
    unit = (0.0, 1.0)
    return [
        html_report.xy_chart_svg(
            "ROC curve",
            roc,
            x_label="false positive rate",
            y_label="true positive rate",
            x_range=unit,
            y_range=unit,
            diagonal=True,
        )
        if roc
        else "<p>ROC curve undefined: the holdout has a single class.</p>",
        html_report.xy_chart_svg(
            "Calibration (reliability)",
            calibration,
            x_label="mean predicted probability (per bin)",
            y_label="observed positive rate",
            x_range=unit,
            y_range=unit,
            diagonal=True,
        ),
    ]


def _regression_plots(name: str, model: dict[str, Any]) -> list[str]:
    """Predicted vs actual (on common axes, so the diagonal is the perfect model) and the residual histogram."""
    scatter, residuals = model["curves"]["scatter"], model["curves"]["residuals"]
    values = [*scatter["actual"], *scatter["predicted"]]
    common = (min(values), max(values)) if values and min(values) < max(values) else None
    return [
        html_report.xy_chart_svg(
            f"Predicted vs actual ({name}, {len(scatter['actual'])} rows)",
            [html_report.Series(name, scatter["actual"], scatter["predicted"], line=False, dots=True)],
            x_label="actual",
            y_label="predicted",
            x_range=common,
            y_range=common,
            diagonal=True,
        ),
        html_report.histogram_svg(
            f"Residuals ({name})",
            residuals["edges"],
            residuals["counts"],
            x_label="actual - predicted",
            y_label="rows",
        ),
    ]


def _plots(task: str, models: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if task == "binary":
        return _binary_plots(models)
    name, challenger = models[0]
    if task == "multiclass":
        confusion = challenger["curves"]["confusion"]
        return [
            html_report.heat_grid_svg(
                f"Confusion matrix ({name})",
                confusion["labels"],
                confusion["counts"],
                row_title="actual",
                column_title="predicted",
            )
        ]
    return _regression_plots(name, challenger)


def _gate_rule(task: str, gate: dict[str, Any]) -> str:
    """The gate's rule in one sentence."""
    primary = gate["primary_metric"]
    direction = "higher" if gate["higher_is_better"] else "lower"
    threshold = "no threshold" if gate["threshold"] is None else f"threshold {gate['threshold']:g}"
    return (
        f"Primary metric {primary} ({metric(task, primary).description}; {direction} is better), {threshold}, "
        f"allowed worsening versus the champion {gate['max_degradation']:g} ({gate['degradation']})."
    )


def _slice_value(model: dict[str, Any] | None, column: str, value: str, name: str) -> Any:
    """One slice's metric of a model, or None without that model or slice."""
    if model is None:
        return None
    return model["slices"].get(column, {}).get(value, {}).get(name)


def _candidate_rows(report: dict[str, Any], primary: str) -> list[list[Any]]:
    """One row per candidate family: its model, its primary metric, and whether it became the challenger."""
    chosen = report["challenger"].get("family")
    return [
        [model["family"], model["model_uri"], model["metrics"].get(primary), model["family"] == chosen]
        for model in report.get("candidates", [])
    ]


def render_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the gate's decision and rule, the candidates, metrics side by side, plots and
    slices.

    Args:
        report: the evaluate step's report (``model_name``, ``task``, ``holdout_uri``, ``candidates``,
            ``challenger`` and ``champion`` with ``metrics``, ``slices`` and ``curves``, ``gate``).

    Returns:
        The HTML document (inline CSS and SVG, no scripts or external resources).
    """
    task, challenger, champion, gate = report["task"], report["challenger"], report["champion"], report["gate"]
    primary = gate["primary_metric"]
    models = [("challenger", challenger)] + ([(f"champion v{champion['version']}", champion)] if champion else [])
    names = [key for key in challenger["metrics"] if key not in _NOT_IN_METRICS_TABLE]
    metric_rows = [[name, *(model["metrics"].get(name) for _, model in models)] for name in names]
    slice_rows = [
        [column, value, metrics["rows"], metrics.get(primary), _slice_value(champion, column, value, primary)]
        for column, values in challenger["slices"].items()
        for value, metrics in values.items()
    ]
    verdict = "passed" if gate["passed"] else "failed"
    notes = [f"{name}: {note}" for name, model in models for note in model["metrics"]["notes"]]
    body = [
        f"<p>Task: {html.escape(task)}. Holdout: {html.escape(str(report.get('holdout_uri', '')))}</p>",
        f"<h2>Gate: <span class='{verdict}'>{verdict}</span>{' (forced)' if gate.get('forced') else ''}</h2>",
        f"<p>{html.escape(_gate_rule(task, gate))}</p>",
        "<ul>" + "".join(f"<li>{html.escape(reason)}</li>" for reason in gate["reasons"]) + "</ul>",
        "<h2>Candidates</h2>",
        html_report.table(["family", "model", primary, "challenger"], _candidate_rows(report, primary)),
        "<h2>Holdout metrics</h2>",
        html_report.table(["metric", *(name for name, _ in models)], metric_rows),
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
    ]
    if "class_shares" in challenger["metrics"]:
        shares = challenger["metrics"]["class_shares"]
        body += [
            "<h3>Class shares on the holdout</h3>",
            html_report.table(["class", "share"], list(map(list, shares.items()))),
        ]
    body += ["<h2>Plots</h2>", *_plots(task, models), "<h2>Slices</h2>"]
    slice_header = ["column", "value", "rows", f"challenger {primary}", f"champion {primary}"]
    body.append(html_report.table(slice_header, slice_rows))
    return html_report.page(f"Evaluation of {report['model_name']}", "\n".join(body))
