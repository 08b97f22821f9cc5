"""Confidence-based performance estimation (CBPE): a classifier's expected metrics on rows that have no label yet.

A calibrated probability ``c[i, k]`` is the chance that row i belongs to class k (``calibration``). The row's
predicted class is what serving predicted: ``tasks.predicted_positions`` of the model's own (uncalibrated)
probabilities. A row predicted k adds ``c[i, k]`` of an expected true positive of k and ``1 - c[i, k]`` of a false
positive; a row not predicted k adds ``c[i, k]`` of a false negative. Accuracy and F1 come from these expected
confusion counts. The expected ROC curve ranks rows by the model's score of the class (what realized ROC AUC
ranks by) and accumulates calibrated positives and negatives; its area is the expected ROC AUC (macro one-vs-rest
for multiclass). Ranking the rows would take a sort; instead the scores (probabilities) are cut into equal bins whose
rows count as tied, in time linear in the rows (``binned_roc_areas``), and a bound on what that moves the area is
computed alongside: each area is within ``AREA_TOLERANCE / sqrt(rows)`` of the exact one (2e-6 at a million rows,
2e-5 at 10,000), or computed exactly where the bound does not show it. A window's ROC AUC varies by chance by
about 0.2 / sqrt(rows) (multiclass) to 0.56 / sqrt(rows) (binary) on the benchmark's models (NannyML's sampling
error), so the binning moves it by at most 1/100 of a sampling error; measured on the benchmark's windows, by
less than 2e-6 at 10,000 rows and 3e-8 at a million.
This is NannyML's CBPE, in numpy. Estimates are only as good as the calibration: one-vs-rest maps renormalised
(multiclass) and isotonic steps fitted on a small validation split leave a slight optimism (about one sampling error
of a 5,000-row window on the tests' synthetic data), which errs towards missing a drop, not towards a false alarm.

What it sees and what it cannot:

- covariate shift (the inputs move, P(y | x) stays): the estimate follows realized performance, because the
  calibration still holds for the new inputs. That is its use: a drop is visible before any label arrives.
- concept drift (P(y | x) changes, e.g. some customers now churn at other rates for the same features): the
  estimate is blind to it, since the calibration it trusts is exactly what changed. Only realized performance, on
  labels, confirms a drop; ``orchestration.monitor`` treats an estimated drop as an alert unless configured to
  retrain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlsteps.evaluation.tasks import ESTIMABLE_METRICS, predicted_positions
from mlsteps.monitoring.performance.calibration import Calibrator

# The binned ROC AUC's largest error times sqrt(rows): 1/100 of the ROC AUC's sampling error times sqrt(rows) on the
# benchmark's models (0.2 multiclass, 0.56 binary), or less.
AREA_TOLERANCE = 0.002


def ranked_roc_area(ranked_score: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The area under the ROC curve of rows ranked by descending ``ranked_score``, each row carrying ``positive``
    and ``negative`` mass along the last axis: a calibrated probability and its complement (estimation), or how often
    a resample drew the row, on its label's side (``reference.sampling_error``: one resample per leading row).

    Tied scores form one step of the curve (as scikit-learn's ``roc_curve``), and the area is the trapezoid rule's.

    Returns:
        The area (per leading row), NaN where there is no positive or no negative mass.
    """
    starts = np.flatnonzero(np.diff(ranked_score, prepend=np.nan))
    steps_positive = np.add.reduceat(positive, starts, axis=-1).astype(np.float64)
    steps_negative = np.add.reduceat(negative, starts, axis=-1).astype(np.float64)
    return _stepped_area(steps_positive, steps_negative)


def _stepped_area(steps_positive: np.ndarray, steps_negative: np.ndarray) -> np.ndarray:
    """The trapezoid area of an ROC curve's steps (by descending score, along the last axis): each step's negatives
    times the positives ranked above it plus half its own, over all positives times all negatives; NaN where either
    total is 0."""
    total = steps_positive.sum(axis=-1) * steps_negative.sum(axis=-1)
    above = np.cumsum(steps_positive, axis=-1) - steps_positive / 2
    return (steps_negative * above).sum(axis=-1) / np.where(total > 0, total, np.nan)


def expected_roc_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """The area under the expected ROC curve when row i is positive with probability ``positive[i]``, exactly.

    Rows are ranked by ``score``; tied scores form one step of the curve (as scikit-learn's ``roc_curve``), and
    the area is the trapezoid rule's. With 0/1 ``positive`` it is the ROC AUC of those labels.

    Returns:
        The expected ROC AUC, or None when no positive or no negative is expected.
    """
    order = np.argsort(score)[::-1]  # the order within a tie is free: a tie is one step
    ranked = positive[order]
    return _defined(ranked_roc_area(score[order], ranked, 1.0 - ranked))


def binned_roc_areas(score: np.ndarray, positive: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``expected_roc_auc`` of each column of ``score`` and ``positive`` (rows x columns), the scores cut into
    ``bins`` equal bins of [0, 1] whose rows count as tied, and a bound on each area's distance from the exact one.

    Tying rows i and j of one bin (score i above j) moves the area's numerator by (p_i - p_j) / 2. Over a bin of m
    rows, positive mass P and squares S, the sum of |p_i - p_j| over its pairs is at most P (m - P) - P + S (each
    term is at most p_i (1 - p_j) + p_j (1 - p_i)) and at most sqrt(m (m - 1) / 2 · (m S - P²)) (Cauchy-Schwarz):
    small where the bin's rows have nearly one calibrated probability. Scores outside [0, 1] join the end bins,
    which keeps the ranking and the bound.

    Returns:
        The areas (NaN where no positive or no negative is expected) and their bounds, per column.
    """
    rows, columns = score.shape
    sums = np.empty((3, columns, bins))  # per column and bin: rows, positive mass, squares of positive mass
    buffer, index = np.empty(rows), np.empty(rows, dtype=np.intp)  # reused by each column: fresh ones cost faults
    for k in range(columns):
        scaled = np.multiply(score[:, k], bins, out=buffer)
        index[:] = np.fmax(np.fmin(scaled, bins - 1, out=scaled), 0, out=scaled)  # the bin; NaN: the top one
        mass = np.ascontiguousarray(positive[:, k])
        for per_bin, weights in zip(sums, (None, mass, np.square(mass, out=buffer)), strict=True):
            per_bin[k] = np.bincount(index, weights=weights, minlength=bins)
    counts, positives, squares = sums
    negatives = counts - positives
    area = _stepped_area(positives[:, ::-1], negatives[:, ::-1])
    pairs, spread = counts * (counts - 1) / 2, np.maximum(counts * squares - positives**2, 0.0)
    within = np.minimum(positives * negatives - positives + squares, np.sqrt(pairs * spread)).sum(axis=1)
    total = positives.sum(axis=1) * negatives.sum(axis=1)
    return area, within / 2 / np.where(total > 0, total, np.nan)


def expected_roc_aucs(score: np.ndarray, positive: np.ndarray) -> list[float | None]:
    """``expected_roc_auc`` of each column (rows x columns; the scores are probabilities), each within
    ``AREA_TOLERANCE / sqrt(rows)`` of it: binned, or exact (sorted) where the bound does not hold that."""
    tolerance = AREA_TOLERANCE / math.sqrt(score.shape[0])
    # The bound falls about as 1 / bins, under 0.02 / bins on the benchmark's models: 0.04 / tolerance bins (or up to
    # twice that, a power of 2) leave room; more bins cost time (2048 at 10,000 rows, 32,768 at a million).
    areas, bounds = binned_roc_areas(score, positive, 2 ** math.ceil(math.log2(0.04 / tolerance)))
    return [
        _defined(area) if bound <= tolerance else expected_roc_auc(score[:, k], positive[:, k])
        for k, (area, bound) in enumerate(zip(areas, bounds, strict=True))
    ]


def _defined(area: np.ndarray) -> float | None:
    return None if np.isnan(area) else float(area)


def _f1(true_positive: float, false_positive: float, false_negative: float) -> float | None:
    """F1 from (expected) counts; None when there is nothing to score (no positive expected and none predicted)."""
    denominator = 2 * true_positive + false_positive + false_negative
    return float(2 * true_positive / denominator) if denominator > 0 else None


def estimate_metrics(
    task: str, classes: Sequence[Any], probabilities: Any, calibrator: Calibrator
) -> dict[str, float | None]:
    """The expected metrics (``tasks.ESTIMABLE_METRICS``) of a classifier's predictions, without labels.

    Args:
        task: binary or multiclass.
        classes: ``target.classes``, in the order of the probability columns.
        probabilities: the model's output, rows x classes (binary [negative, positive]), e.g. rebuilt from the
            prediction log with ``tasks.probabilities_of``.
        calibrator: the model's calibrator (from its package).

    Returns:
        binary: ``roc_auc``, ``accuracy``, ``f1`` (the positive class at the decision threshold); multiclass:
        ``roc_auc`` (macro one-vs-rest), ``accuracy``, ``macro_f1``. None where undefined: no rows, ROC AUC where
        a class is expected nowhere (or everywhere), binary F1 with no positive expected or predicted. A class of
        macro F1 with nothing to score counts 0, as realized macro F1 counts it (``zero_division=0``).

    Raises:
        ValueError: a task without estimation (regression), a calibrator of another task or classes, or
            probabilities that are not rows x classes.
    """
    if task not in ESTIMABLE_METRICS:
        raise ValueError(f"{task} performance cannot be estimated: only {sorted(ESTIMABLE_METRICS)} can")
    if calibrator.task != task or list(calibrator.classes) != list(classes):
        raise ValueError(
            f"the calibrator is of a {calibrator.task} model of classes {calibrator.classes}, not of this {task} "
            f"model of classes {list(classes)}: use the calibrator from the model's own package"
        )
    values = np.asarray(probabilities, dtype=np.float64)
    calibrated = calibrator.apply(values)
    rows = values.shape[0]
    if rows == 0:
        return dict.fromkeys(ESTIMABLE_METRICS[task])
    predicted = predicted_positions(task, values)
    # The expected confusion matrix: rows of class j (calibrated) predicted as class c, at [j, c].
    confusion = np.column_stack([calibrated.T @ (predicted == c) for c in range(len(classes))])
    true_positive = np.diagonal(confusion)
    false_positive, false_negative = confusion.sum(axis=0) - true_positive, confusion.sum(axis=1) - true_positive
    f1 = [_f1(*counts) for counts in zip(true_positive, false_positive, false_negative, strict=True)]
    scored = slice(1, None) if task == "binary" else slice(None)  # binary: the positive class
    areas = expected_roc_aucs(values[:, scored], calibrated[:, scored])
    accuracy = float(true_positive.sum() / rows)
    if task == "binary":
        return {"roc_auc": areas[0], "accuracy": accuracy, "f1": f1[1]}
    return {
        "roc_auc": None if None in areas else float(np.mean(areas)),
        "accuracy": accuracy,
        "macro_f1": float(np.mean([0.0 if value is None else value for value in f1])),
    }
