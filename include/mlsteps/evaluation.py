"""Holdout metrics and the champion/challenger gate, as pure functions.

The ``evaluate`` step scores the challenger and the current champion on the same holdout with
``classification_metrics`` and ``slice_metrics``, then ``gate_decision`` says whether the challenger may be
promoted. Every check of the gate is judged and explained (both numbers in each line), so one report lists all
the reasons a challenger was held back.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsteps import html_report
from mlsteps.config import EvaluationConfig

DECISION_THRESHOLD = 0.5
MISSING_SLICE = "(missing)"
# ROC AUC differences come from subtraction; a drop equal to the allowed one must not fail on rounding noise.
_TOLERANCE = 1e-9


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int) -> float:
    """Mean gap between predicted probability and observed positive rate over equal-width bins, weighted by rows.

    Args:
        y_true: 0/1 labels.
        probability: predicted probability of the positive class.
        bins: number of equal-width bins over [0, 1].

    Returns:
        The expected calibration error (0 for a perfectly calibrated model).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Inner edges only, so a probability of exactly 1.0 falls into the last bin.
    bin_index = np.digitize(probability, edges[1:-1], right=False)
    error = 0.0
    for index in np.unique(bin_index):
        in_bin = bin_index == index
        error += in_bin.mean() * abs(y_true[in_bin].mean() - probability[in_bin].mean())
    return float(error)


def classification_metrics(y_true: Any, probability: Any, calibration_bins: int) -> dict[str, Any]:
    """Binary classification metrics of one set of predictions.

    Args:
        y_true: 0/1 labels (1 = positive class).
        probability: predicted probability of the positive class, one per label.
        calibration_bins: bins of the expected calibration error.

    Returns:
        ``roc_auc`` (None when the labels hold a single class; ``notes`` says why), ``log_loss``, ``accuracy``
        (at threshold 0.5), ``brier``, ``ece``, ``positive_rate``, ``mean_probability``, ``rows`` and ``notes``.

    Raises:
        ValueError: no rows, or labels and probabilities differ in length.
    """
    from sklearn import metrics

    labels = np.asarray(y_true, dtype=int)
    scores = np.asarray(probability, dtype=float)
    if labels.shape != scores.shape or labels.size == 0:
        raise ValueError(
            f"need equally many labels and probabilities, at least one; got {labels.size} and {scores.size}"
        )
    notes = []
    classes = np.unique(labels)
    if classes.size < 2:
        roc_auc = None
        notes.append(f"roc_auc undefined: all {labels.size} rows have label {classes[0]}; it needs both classes")
    else:
        roc_auc = float(metrics.roc_auc_score(labels, scores))
    return {
        "roc_auc": roc_auc,
        "log_loss": float(metrics.log_loss(labels, scores, labels=[0, 1])),
        "accuracy": float(metrics.accuracy_score(labels, (scores >= DECISION_THRESHOLD).astype(int))),
        "brier": float(metrics.brier_score_loss(labels, scores, pos_label=1)),
        "ece": expected_calibration_error(labels, scores, calibration_bins),
        "positive_rate": float(labels.mean()),
        "mean_probability": float(scores.mean()),
        "rows": int(labels.size),
        "notes": notes,
    }


def slice_metrics(
    frame: pd.DataFrame,
    slice_columns: list[str],
    y_true: Any,
    probability: Any,
    *,
    min_rows: int,
    calibration_bins: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics per value of each slice column, so a model that is worse for one segment is visible.

    Args:
        frame: holds the slice columns, one row per prediction (other columns are ignored).
        slice_columns: categorical columns to slice by; missing values form the ``(missing)`` slice.
        y_true: 0/1 labels, aligned with the rows of ``frame``.
        probability: positive-class probabilities, aligned with the rows of ``frame``.
        min_rows: slices with fewer rows are left out (their metrics would be noise).
        calibration_bins: bins of the expected calibration error.

    Returns:
        ``{column: {value: metrics}}`` with values sorted by name.
    """
    labels = np.asarray(y_true, dtype=int)
    scores = np.asarray(probability, dtype=float)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for column in slice_columns:
        keys = frame[column].astype("string").fillna(MISSING_SLICE).to_numpy(dtype=str)
        result[column] = {}
        for value in sorted(set(keys)):
            in_slice = keys == value
            if in_slice.sum() >= min_rows:
                result[column][str(value)] = classification_metrics(
                    labels[in_slice], scores[in_slice], calibration_bins
                )
    return result


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger may be promoted, every reason, and the thresholds it was judged by."""

    passed: bool
    reasons: list[str]
    min_roc_auc: float
    max_roc_auc_regression: float
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data."""
        return asdict(self)


def _roc_auc_checks(
    challenger: float | None, champion_metrics: dict[str, Any] | None, config: EvaluationConfig
) -> Iterator[tuple[bool, str]]:
    """Yield (passed, reason) for the minimum and, with a champion, the regression check."""
    minimum = config.min_roc_auc
    if challenger is None:
        yield (
            False,
            f"challenger roc_auc is undefined on this holdout (single class); it must reach minimum {minimum:.3f}",
        )
    elif challenger >= minimum:
        yield True, f"challenger roc_auc={challenger:.3f} >= minimum {minimum:.3f}"
    else:
        yield False, f"challenger roc_auc={challenger:.3f} < minimum {minimum:.3f}"

    allowed = config.max_roc_auc_regression
    champion = champion_metrics["roc_auc"] if champion_metrics is not None else None
    if champion_metrics is None:
        yield True, "no champion yet: judged on the minimum only"
    elif challenger is None or champion is None:
        yield (
            True,
            f"challenger roc_auc={challenger} vs champion {champion}: undefined on this holdout, no drop to judge",
        )
    else:
        drop = champion - challenger
        comparison = f"challenger roc_auc={challenger:.3f} vs champion {champion:.3f}: drop {drop:.3f}"
        if drop <= allowed + _TOLERANCE:
            yield True, f"{comparison} <= allowed {allowed:.3f}"
        else:
            yield False, f"{comparison} > allowed {allowed:.3f}"


def gate_decision(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    config: EvaluationConfig,
    force: bool = False,
) -> GateDecision:
    """Judge the challenger against the minimum ROC AUC and, when there is a champion, against its ROC AUC.

    All checks are judged (none short-circuits), so the reasons list every failure at once.

    Args:
        challenger: the challenger's holdout metrics (from ``classification_metrics``).
        champion: the champion's metrics on the same holdout, or None when no model is promoted yet.
        config: thresholds (``min_roc_auc``, ``max_roc_auc_regression``).
        force: promote even if a check failed; the decision then passes with ``forced=True`` and says so.

    Returns:
        The decision; ``forced`` is True only when force overrode a failing check.
    """
    checks = list(_roc_auc_checks(challenger["roc_auc"], champion, config))
    passed = all(ok for ok, _ in checks)
    reasons = [reason for _, reason in checks]
    forced = force and not passed
    if forced:
        failed = sum(not ok for ok, _ in checks)
        reasons.append(f"forced: promoted although {failed} check(s) failed")
    return GateDecision(
        passed=passed or forced,
        reasons=reasons,
        min_roc_auc=config.min_roc_auc,
        max_roc_auc_regression=config.max_roc_auc_regression,
        forced=forced,
    )


_HTML_METRICS = ["roc_auc", "log_loss", "accuracy", "brier", "ece", "positive_rate", "mean_probability", "rows"]


def _champion_slice_roc_auc(champion: dict[str, Any] | None, column: str, value: str) -> float | None:
    """The champion's ROC AUC on one slice, or None without a champion."""
    if champion is None:
        return None
    return champion["slices"].get(column, {}).get(value, {}).get("roc_auc")


def render_report_html(report: dict[str, Any]) -> str:
    """A small self-contained HTML page: metrics side by side, slices and the gate's reasons.

    Args:
        report: the evaluate step's report (``model_name``, ``challenger``, ``champion``, ``gate``).

    Returns:
        The HTML document (inline CSS, no external resources).
    """
    challenger, champion, gate = report["challenger"], report["champion"], report["gate"]
    models = [("challenger", challenger)] + ([(f"champion v{champion['version']}", champion)] if champion else [])
    header = ["metric", *(name for name, _ in models)]
    metric_rows = [[metric, *(model["metrics"][metric] for _, model in models)] for metric in _HTML_METRICS]
    slice_rows = [
        [column, value, metrics["rows"], metrics["roc_auc"], _champion_slice_roc_auc(champion, column, value)]
        for column, values in challenger["slices"].items()
        for value, metrics in values.items()
    ]
    slice_header = ["column", "value", "rows", "challenger roc_auc", "champion roc_auc"]
    verdict = "passed" if gate["passed"] else "failed"
    notes = [note for _, model in models for note in model["metrics"]["notes"]]
    body = [
        f"<p>Holdout: {html.escape(str(report.get('holdout_uri', '')))}</p>",
        f"<h2>Gate: <span class='{verdict}'>{verdict}</span>{' (forced)' if gate.get('forced') else ''}</h2>",
        "<ul>" + "".join(f"<li>{html.escape(reason)}</li>" for reason in gate["reasons"]) + "</ul>",
        "<h2>Holdout metrics</h2>",
        html_report.table(header, metric_rows),
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
        "<h2>Slices</h2>",
        html_report.table(slice_header, slice_rows),
    ]
    return html_report.page(f"Evaluation of {report['model_name']}", "\n".join(body))
