"""Holdout metrics per task and the champion/challenger gate, as pure functions.

The ``evaluate`` step scores the challenger and the current champion on the same holdout with ``task_metrics``
and ``slice_metrics``, then ``gate_decision`` says whether the challenger may be promoted, judged on one primary
metric (``mlsteps.evaluation.tasks.METRICS``). Every check of the gate is judged and explained (both numbers in
each line), so one report lists all the reasons a challenger was held back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.config import EvaluationConfig
from mlsteps.evaluation.tasks import is_classification, predicted_positions
from mlsteps.evaluation.tasks import metric as metric_definition

MISSING_SLICE = "(missing)"
# Metric differences come from subtraction; a worsening equal to the allowed one must not fail on rounding noise.
_TOLERANCE = 1e-9


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int) -> float:
    """Mean gap between predicted probability and observed rate over equal-width bins, weighted by rows.

    Args:
        y_true: 0/1 outcomes (binary: the label; top-label: whether the most probable class was right).
        probability: the predicted probability of that outcome.
        bins: number of equal-width bins over [0, 1].

    Returns:
        The expected calibration error (0 for a perfectly calibrated model).
    """
    bin_index = calibration_bin(probability, bins)
    error = 0.0
    for index in np.unique(bin_index):
        in_bin = bin_index == index
        error += in_bin.mean() * abs(y_true[in_bin].mean() - probability[in_bin].mean())
    return float(error)


def calibration_bin(probability: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin (0..bins-1) of each probability; exactly 1.0 falls into the last bin."""
    return np.digitize(probability, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=False)


def _single_class_note(labels: np.ndarray, classes: Sequence[Any]) -> str | None:
    """Why ranking metrics are undefined on these labels, or None when every class is present."""
    absent = [classes[position] for position in range(len(classes)) if not (labels == position).any()]
    if not absent:
        return None
    if len(classes) == 2:
        present = classes[int(labels[0])]
        return f"all {labels.size} rows have label {present!r}; it needs both classes"
    return f"class(es) {absent} do not occur in these {labels.size} rows; it needs every class"


def _all_classes_present(labels: np.ndarray, probabilities: np.ndarray) -> bool:
    """Whether every class occurs in the labels: ranking metrics (ROC AUC, PR AUC) need them all."""
    return bool(np.bincount(labels, minlength=probabilities.shape[1]).all())


def _binary_roc_auc(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float | None:
    from sklearn import metrics

    if not _all_classes_present(labels, probabilities):
        return None
    return float(metrics.roc_auc_score(labels, probabilities[:, 1]))


def _binary_pr_auc(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float | None:
    from sklearn import metrics

    if not _all_classes_present(labels, probabilities):
        return None
    return float(metrics.average_precision_score(labels, probabilities[:, 1]))


def _binary_log_loss(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    return float(metrics.log_loss(labels, probabilities[:, 1], labels=[0, 1]))


def _binary_brier(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    return float(metrics.brier_score_loss(labels, probabilities[:, 1], pos_label=1))


def _binary_ece(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    return expected_calibration_error(labels, probabilities[:, 1], bins)


def _accuracy(task: str, labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Share of rows whose predicted class (``tasks.predicted_positions`` of the task) is right."""
    from sklearn import metrics

    return float(metrics.accuracy_score(labels, predicted_positions(task, probabilities)))


def _binary_f1(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float | None:
    """F1 of the positive class at the decision threshold; undefined when no row is positive or predicted so."""
    from sklearn import metrics

    predicted = predicted_positions("binary", probabilities)
    if not (labels.any() or predicted.any()):
        return None
    return float(metrics.f1_score(labels, predicted, pos_label=1))


def _multiclass_roc_auc(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float | None:
    from sklearn import metrics

    if not _all_classes_present(labels, probabilities):
        return None
    # Macro one-vs-rest: the mean of each class's binary AUC (what sklearn's multi_class="ovr" computes).
    return float(
        np.mean([metrics.roc_auc_score(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])])
    )


def _multiclass_log_loss(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    return float(metrics.log_loss(labels, probabilities, labels=list(range(probabilities.shape[1]))))


def _macro_f1(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    chosen = predicted_positions("multiclass", probabilities)
    return float(metrics.f1_score(labels, chosen, average="macro", zero_division=0))


def _top_label_ece(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    chosen = probabilities.argmax(axis=1)
    return expected_calibration_error((chosen == labels).astype(int), probabilities.max(axis=1), bins)


def _rmse(target: np.ndarray, prediction: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    return float(metrics.root_mean_squared_error(target, prediction))


def _mae(target: np.ndarray, prediction: np.ndarray, bins: int) -> float:
    from sklearn import metrics

    return float(metrics.mean_absolute_error(target, prediction))


def _r2(target: np.ndarray, prediction: np.ndarray, bins: int) -> float | None:
    from sklearn import metrics

    return None if np.all(target == target[0]) else float(metrics.r2_score(target, prediction))


# Each metric of ``tasks.METRICS`` as one function of (checked labels, checked output, calibration bins), in the
# order ``task_metrics`` reports them. None: undefined on these rows (``task_metrics``' notes say why).
_METRIC_FUNCTIONS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray, int], float | None]]] = {
    "binary": {
        "roc_auc": _binary_roc_auc,
        "pr_auc": _binary_pr_auc,
        "log_loss": _binary_log_loss,
        "brier": _binary_brier,
        "ece": _binary_ece,
        "accuracy": functools.partial(_accuracy, "binary"),
        "f1": _binary_f1,
    },
    "multiclass": {
        "roc_auc": _multiclass_roc_auc,
        "log_loss": _multiclass_log_loss,
        "accuracy": functools.partial(_accuracy, "multiclass"),
        "macro_f1": _macro_f1,
        "ece": _top_label_ece,
    },
    "regression": {"rmse": _rmse, "mae": _mae, "r2": _r2},
}


def _all_metrics(task: str, truth: np.ndarray, values: np.ndarray, bins: int) -> dict[str, float | None]:
    return {name: function(truth, values, bins) for name, function in _METRIC_FUNCTIONS[task].items()}


def _binary_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any], bins: int) -> dict[str, Any]:
    missing_class = _single_class_note(labels, classes)
    notes = [] if missing_class is None else [f"roc_auc and pr_auc undefined: {missing_class}"]
    result = _all_metrics("binary", labels, probabilities, bins)
    if result["f1"] is None:
        notes.append(f"f1 undefined: none of the {labels.size} rows is positive or predicted positive")
    return {
        **result,
        "positive_rate": float(labels.mean()),
        "mean_probability": float(probabilities[:, 1].mean()),
        "rows": int(labels.size),
        "notes": notes,
    }


def _multiclass_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any], bins: int
) -> dict[str, Any]:
    missing_class = _single_class_note(labels, classes)
    return {
        **_all_metrics("multiclass", labels, probabilities, bins),
        "rows": int(labels.size),
        "class_shares": {str(label): float((labels == k).mean()) for k, label in enumerate(classes)},
        "notes": [] if missing_class is None else [f"roc_auc undefined: {missing_class}"],
    }


def _regression_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, Any]:
    result = _all_metrics("regression", target, prediction, 0)
    constant = f"r2 undefined: all {target.size} rows have target {target[0]:g}; it needs a varying target"
    return {
        **result,
        "rows": int(target.size),
        "mean_target": float(target.mean()),
        "mean_prediction": float(prediction.mean()),
        "notes": [] if result["r2"] is not None else [constant],
    }


def checked_output(task: str, classes: Sequence[Any] | None, y_true: Any, output: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and raw output as checked arrays: probabilities renormalised per row, regression output flat.

    Rows are renormalised because the ONNX model computes in float32: its rows sum to 1 only within ~1e-7,
    which scikit-learn's log loss would warn about.

    Raises:
        ValueError: no rows, labels and output differ in length, or probabilities lack a column per class.
    """
    values = np.asarray(output, dtype=np.float64)
    if is_classification(task):
        truth = np.asarray(y_true, dtype=np.int64)
        width = len(classes or [])
        if values.ndim != 2 or values.shape[1] != width:
            raise ValueError(f"{task} output needs one probability column per class ({width}); got {values.shape}")
        values = values / values.sum(axis=1, keepdims=True)
    else:
        truth = np.asarray(y_true, dtype=np.float64)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise ValueError(f"regression output needs one value per row; got {values.shape}")
    if truth.ndim != 1 or len(values) != truth.size or truth.size == 0:
        raise ValueError(f"need equally many labels and predictions, at least one; got {truth.size} and {len(values)}")
    return truth, values


def task_metrics(
    task: str, classes: Sequence[Any] | None, y_true: Any, output: Any, calibration_bins: int
) -> dict[str, Any]:
    """The holdout metrics of one set of predictions for the model's task.

    Args:
        task: binary, multiclass or regression.
        classes: ``target.classes`` (classification), in the order of the probability columns.
        y_true: the encoded target (``tasks.encode_target``): class positions, or numbers for regression.
        output: the raw model output: probabilities (rows x classes; binary [negative, positive]), or values.
        calibration_bins: bins of the expected calibration error.

    Returns:
        binary: ``roc_auc``, ``pr_auc`` (None when the labels hold one class; ``notes`` says why), ``log_loss``,
        ``brier``, ``ece``, ``accuracy`` and ``f1`` of the positive class (at ``DECISION_THRESHOLD``; None when no
        row is positive or predicted positive), ``positive_rate``, ``mean_probability``;
        multiclass: macro one-vs-rest ``roc_auc`` (None when a class is absent), ``log_loss``, ``accuracy``,
        ``macro_f1``, top-label ``ece``, ``class_shares``; regression: ``rmse``, ``mae``, ``r2`` (None for a
        constant target), ``mean_target``, ``mean_prediction``. All with ``rows`` and ``notes``.

    Raises:
        ValueError: no rows, labels and output differ in length, or the output does not fit the task.
    """
    truth, values = checked_output(task, classes, y_true, output)
    if task == "binary":
        return _binary_metrics(truth, values, list(classes or []), calibration_bins)
    if task == "multiclass":
        return _multiclass_metrics(truth, values, list(classes or []), calibration_bins)
    return _regression_metrics(truth, values)


def metric_value(
    task: str, classes: Sequence[Any] | None, metric: str, y_true: Any, output: Any, calibration_bins: int = 10
) -> float | None:
    """One holdout metric, computed as ``task_metrics`` computes it, without the rest.

    For callers that compute one metric many times (a bootstrap of the sampling error): ``task_metrics`` computes
    every metric, notes and shares each time.

    Args:
        task: binary, multiclass or regression.
        classes: ``target.classes`` (classification), in the order of the probability columns.
        metric: a metric of the task (``tasks.METRICS``).
        y_true: the encoded target (``tasks.encode_target``).
        output: the raw model output: probabilities (rows x classes), or values.
        calibration_bins: bins of the expected calibration error (``evaluation.calibration_bins``).

    Returns:
        The value, or None where it is undefined on these rows (as ``task_metrics`` reports it).

    Raises:
        ValueError: ``metric`` is not a metric of the task, or the output does not fit (as ``task_metrics``).
    """
    metric_definition(task, metric)  # an unknown metric raises here, naming the task's metrics
    truth, values = checked_output(task, classes, y_true, output)
    return _METRIC_FUNCTIONS[task][metric](truth, values, calibration_bins)


def _slice_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's slice as a code, and the key (the value as text, missing ones ``MISSING_SLICE``) of every code
    that occurs, in the order of the codes.

    A categorical column is used as it is, its categories being the keys (the evaluate step keeps slice columns so,
    a few bytes a row); any other column is read as text first.
    """
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype("string").fillna(MISSING_SLICE).astype("category")
    keys = [*(str(key) for key in column.cat.categories), MISSING_SLICE]
    codes = np.where(column.cat.codes.to_numpy() < 0, len(keys) - 1, column.cat.codes.to_numpy())
    # one code per key text (a category may read like another, or like MISSING_SLICE), only keys that occur
    first = {key: position for position, key in reversed(list(enumerate(keys)))}
    codes = np.array([first[key] for key in keys])[codes]
    return codes, [keys[code] for code in np.unique(codes)]


def slice_metrics(
    frame: pd.DataFrame,
    slice_columns: list[str],
    task: str,
    classes: Sequence[Any] | None,
    y_true: Any,
    output: Any,
    *,
    min_rows: int,
    calibration_bins: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics per value of each slice column, so a model that is worse for one segment is visible.

    Args:
        frame: holds the slice columns, one row per prediction (other columns are ignored); a categorical column
            is sliced by its categories' text.
        slice_columns: categorical columns to slice by; missing values form the ``(missing)`` slice.
        task: the model's task.
        classes: ``target.classes`` (classification).
        y_true: the encoded target, aligned with the rows of ``frame``.
        output: the raw model output, aligned with the rows of ``frame``.
        min_rows: slices with fewer rows are left out (their metrics would be noise).
        calibration_bins: bins of the expected calibration error.

    Returns:
        ``{column: {value: metrics}}`` with values sorted by name.
    """
    truth, values = checked_output(task, classes, y_true, output)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for column in slice_columns:
        codes, keys = _slice_codes(frame[column])
        code_of = {key: code for code, key in zip(np.unique(codes), keys, strict=True)}
        result[column] = {}
        for value in sorted(keys):
            in_slice = codes == code_of[value]
            if in_slice.sum() >= min_rows:
                result[column][str(value)] = task_metrics(
                    task, classes, truth[in_slice], values[in_slice], calibration_bins
                )
    return result


def best_candidate(metrics_by_family: dict[str, dict[str, Any]], primary_metric: str, task: str) -> str:
    """The family whose model is best on the primary metric: the challenger among the candidates.

    An undefined metric ranks last; ties go to the family listed first.

    Raises:
        ValueError: no candidates, or ``primary_metric`` is not a metric of ``task``.
    """
    if not metrics_by_family:
        raise ValueError("no candidates to choose from")
    higher_is_better = metric_definition(task, primary_metric).higher_is_better

    def rank(family: str) -> tuple[bool, float]:
        value = _defined(metrics_by_family[family].get(primary_metric))
        if value is None:
            return True, 0.0
        return False, -value if higher_is_better else value

    return min(metrics_by_family, key=rank)


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger may be promoted, every reason, and the rule it was judged by."""

    passed: bool
    reasons: list[str]
    primary_metric: str
    higher_is_better: bool
    threshold: float | None
    max_degradation: float
    degradation: str
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data."""
        return asdict(self)


def _number(value: float) -> str:
    """A metric value in a reason: six significant digits, so float noise does not show."""
    return f"{value:.6g}"


def _defined(value: Any) -> float | None:
    """The metric as a float, or None when it is missing, None or NaN (undefined on this holdout)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _threshold_check(name: str, value: float, threshold: float | None, higher_is_better: bool) -> tuple[bool, str]:
    if threshold is None:
        return True, f"challenger {name}={_number(value)}; no threshold set (evaluation.threshold is null)"
    passed = value >= threshold if higher_is_better else value <= threshold
    relation = (">=" if passed else "<") if higher_is_better else ("<=" if passed else ">")
    return passed, f"challenger {name}={_number(value)} {relation} threshold {_number(threshold)}"


def worsening(challenger: float, champion: float, higher_is_better: bool, degradation: str) -> float:
    """How much worse the challenger is than the champion (negative when better), in the gate's units.

    ``relative`` divides by the champion's magnitude; against a champion of exactly 0 any worsening is infinite.
    """
    change = (champion - challenger) if higher_is_better else (challenger - champion)
    if degradation == "absolute":
        return change
    if champion == 0:
        return math.copysign(math.inf, change) if change else 0.0
    return change / abs(champion)


def _champion_check(
    name: str, challenger: float, champion: float, higher_is_better: bool, config: EvaluationConfig
) -> tuple[bool, str]:
    worse = worsening(challenger, champion, higher_is_better, config.degradation)

    def amount(value: float) -> str:
        return f"{100 * value:.4g}% of the champion's" if config.degradation == "relative" else _number(value)

    movement = f"worse by {amount(worse)}" if worse > 0 else f"better by {amount(-worse)}" if worse else "equal"
    passed = worse <= config.max_degradation + _TOLERANCE
    return passed, (
        f"challenger {name}={_number(challenger)} vs champion {_number(champion)}: {movement}, "
        f"{'within' if passed else 'beyond'} the allowed worsening {amount(config.max_degradation)}"
    )


def _checks(
    name: str,
    challenger: float | None,
    champion_metrics: dict[str, Any] | None,
    higher_is_better: bool,
    config: EvaluationConfig,
) -> Iterator[tuple[bool, str]]:
    """Yield (passed, reason) for the metric being defined, the threshold and, with a champion, the worsening."""
    if challenger is None:
        bar = "" if config.threshold is None else f" to reach threshold {_number(config.threshold)} and"
        yield (
            False,
            f"challenger {name} is undefined on this holdout (see the metrics' notes): it must be defined{bar} to be "
            "compared with the champion",
        )
        return
    yield _threshold_check(name, challenger, config.threshold, higher_is_better)
    if champion_metrics is None:
        yield True, "no champion yet: judged on the threshold only"
        return
    champion = _defined(champion_metrics.get(name))
    if champion is None:
        yield True, f"champion {name} is undefined on this holdout: no worsening to judge"
    else:
        yield _champion_check(name, challenger, champion, higher_is_better, config)


def gate_decision(
    challenger_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    config: EvaluationConfig,
    primary_metric: str,
    task: str,
    force: bool = False,
) -> GateDecision:
    """Judge the challenger's primary metric: defined, past the threshold, and not much worse than the champion's.

    All checks are judged (none short-circuits on a failure), so the reasons list every failure at once.

    Args:
        challenger_metrics: the challenger's holdout metrics (from ``task_metrics``).
        champion_metrics: the champion's metrics on the same holdout, or None when no model is promoted yet.
        config: ``threshold`` (None: no absolute bar), ``max_degradation`` and ``degradation`` (absolute or
            relative to the champion's value).
        primary_metric: the metric judged (``PipelineConfig.primary_metric``).
        task: the model's task; with the metric it decides whether higher or lower is better.
        force: promote even if a check failed; the decision then passes with ``forced=True`` and says so.

    Returns:
        The decision; ``forced`` is True only when force overrode a failing check.

    Raises:
        ValueError: ``primary_metric`` is not a metric of ``task``.
    """
    higher_is_better = metric_definition(task, primary_metric).higher_is_better
    challenger = _defined(challenger_metrics.get(primary_metric))
    checks = list(_checks(primary_metric, challenger, champion_metrics, higher_is_better, config))
    passed = all(ok for ok, _ in checks)
    reasons = [reason for _, reason in checks]
    forced = force and not passed
    if forced:
        failed = sum(not ok for ok, _ in checks)
        reasons.append(f"forced: promoted although {failed} check(s) failed")
    return GateDecision(
        passed=passed or forced,
        reasons=reasons,
        primary_metric=primary_metric,
        higher_is_better=higher_is_better,
        threshold=config.threshold,
        max_degradation=config.max_degradation,
        degradation=config.degradation,
        forced=forced,
    )
