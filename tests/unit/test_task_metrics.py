"""Holdout metrics per task, slices and the predict contract (mlsteps.evaluation.metrics and .predictions)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlsteps.errors import StepError
from mlsteps.evaluation.metrics import MISSING_SLICE, expected_calibration_error, slice_metrics, task_metrics
from mlsteps.evaluation.predictions import check_predictions
from mlsteps.evaluation.tasks import METRICS, output_frame

BINARY = [0, 1]
COLOURS = ["red", "green", "blue"]
# Six rows of three classes, worked by hand: rows 3 and 4 are wrong (most probable class 1 and 0).
HAND_LABELS = np.array([0, 1, 2, 0, 1, 2])
HAND_PROBABILITIES = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
)


def _both(positive: np.ndarray) -> np.ndarray:
    """Binary raw output: [negative, positive] probability columns."""
    return np.column_stack([1 - positive, positive])


def _labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them, so the scores carry signal."""
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0, 1, rows)
    return (rng.uniform(0, 1, rows) < probability).astype(int), probability


def _multiclass(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities over three classes and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (rows, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in probabilities])
    return labels, probabilities


def test_binary_metrics_worked_by_hand() -> None:
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    result = task_metrics("binary", BINARY, [0, 0, 1, 1], _both(positive), calibration_bins=10)
    assert result["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 positive/negative pairs ranked right
    assert result["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1 at recall 1/2, 2/3 at recall 1
    assert result["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.35, 0.8])))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx(2 / 3)  # predicted positive: 0.8 only; one of the two positives found
    assert result["positive_rate"] == 0.5 and result["mean_probability"] == pytest.approx(0.4125)
    assert result["rows"] == 4 and result["notes"] == []
    assert set(METRICS["binary"]) <= set(result)


def test_binary_metrics_equal_sklearn() -> None:
    y, p = _labelled(800, seed=1)
    result = task_metrics("binary", BINARY, y, _both(p), calibration_bins=10)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert result["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert result["ece"] == pytest.approx(expected_calibration_error(y, p, 10))
    assert result["positive_rate"] == pytest.approx(y.mean())
    assert result["mean_probability"] == pytest.approx(p.mean())
    assert result["rows"] == 800
    assert 0.7 < result["roc_auc"] < 0.95


def test_ece_is_zero_when_calibrated_and_measures_the_gap_otherwise() -> None:
    # Twenty rows at each bin centre, with exactly that share of positives.
    centres = np.arange(0.05, 1.0, 0.1)
    probability = np.repeat(centres, 20)
    labels = np.concatenate([[1] * round(c * 20) + [0] * (20 - round(c * 20)) for c in centres])
    assert expected_calibration_error(labels, probability, bins=10) == pytest.approx(0.0, abs=1e-9)
    overconfident = np.full(10, 0.9)
    half = np.array([1, 0] * 5)
    assert expected_calibration_error(half, overconfident, bins=10) == pytest.approx(0.4)


def test_ece_counts_probabilities_of_exactly_zero_and_one() -> None:
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]), bins=5) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 0]), np.array([0.0, 1.0]), bins=5) == pytest.approx(1.0)


def test_single_class_reports_undefined_ranking_metrics_and_says_why() -> None:
    positive = np.array([0.1, 0.4, 0.2, 0.7])
    result = task_metrics("binary", ["stayed", "churned"], [0, 0, 0, 0], _both(positive), calibration_bins=10)
    assert result["roc_auc"] is None and result["pr_auc"] is None
    assert result["notes"] == ["roc_auc and pr_auc undefined: all 4 rows have label 'stayed'; it needs both classes"]
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == 0.0  # a false alarm (0.7) and no positive: F1 is defined, and 0
    assert result["log_loss"] == pytest.approx(skm.log_loss([0, 0, 0, 0], positive, labels=[0, 1]))
    assert result["positive_rate"] == 0.0


def test_binary_f1_is_undefined_without_positives_or_positive_predictions() -> None:
    result = task_metrics("binary", ["stayed", "churned"], [0, 0, 0], _both(np.array([0.1, 0.4, 0.2])), 10)
    assert result["f1"] is None and result["accuracy"] == 1.0
    assert result["notes"][-1] == "f1 undefined: none of the 3 rows is positive or predicted positive"


def test_multiclass_metrics_worked_by_hand() -> None:
    result = task_metrics("multiclass", COLOURS, HAND_LABELS, HAND_PROBABILITIES, calibration_bins=2)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # F1: red 1/2 (1 right, 1 false alarm, 1 missed), green 1/2 likewise, blue 1 (both right, no false alarm).
    assert result["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.6, 0.6, 0.3, 0.3, 0.8])))
    # Top label: bin [0, 0.5) holds the 0.4 row (wrong); bin [0.5, 1] holds 0.5 (wrong), 0.6, 0.6, 0.7, 0.8 (right).
    assert result["ece"] == pytest.approx(1 / 6 * 0.4 + 5 / 6 * abs(0.8 - 0.64))
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(HAND_LABELS, HAND_PROBABILITIES, multi_class="ovr", average="macro")
    )
    assert result["class_shares"] == pytest.approx({"red": 1 / 3, "green": 1 / 3, "blue": 1 / 3})
    assert result["rows"] == 6 and result["notes"] == []
    assert set(METRICS["multiclass"]) <= set(result)


def test_multiclass_metrics_equal_sklearn_on_float32_output_without_warnings() -> None:
    labels, probabilities = _multiclass(600, seed=4)
    single = probabilities.astype(np.float32)  # what the ONNX model returns: rows sum to 1 only within ~1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = task_metrics("multiclass", COLOURS, labels, single, calibration_bins=10)
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probabilities), abs=1e-6)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, probabilities.argmax(axis=1)))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(labels, probabilities.argmax(axis=1), average="macro"))
    assert 0.6 < result["roc_auc"] < 0.95


def test_multiclass_roc_auc_is_undefined_when_a_class_is_absent() -> None:
    result = task_metrics("multiclass", COLOURS, [0, 1, 0, 1], HAND_PROBABILITIES[:4], calibration_bins=10)
    assert result["roc_auc"] is None
    assert result["notes"] == [
        "roc_auc undefined: class(es) ['blue'] do not occur in these 4 rows; it needs every class"
    ]
    assert result["log_loss"] == pytest.approx(skm.log_loss([0, 1, 0, 1], HAND_PROBABILITIES[:4], labels=[0, 1, 2]))
    assert result["class_shares"]["blue"] == 0.0


def test_regression_metrics_worked_by_hand() -> None:
    result = task_metrics("regression", None, [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0], calibration_bins=10)
    assert result["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 1) / 4))
    assert result["mae"] == pytest.approx(0.5)
    assert result["r2"] == pytest.approx(1 - 1.5 / 5.0)  # residual sum of squares 1.5, total 5
    assert result["mean_target"] == 2.5 and result["mean_prediction"] == 2.75
    assert result["rows"] == 4 and result["notes"] == []
    assert set(METRICS["regression"]) <= set(result)
    as_column = task_metrics("regression", None, [1.0, 2.0, 3.0, 4.0], [[1.5], [2.0], [2.5], [5.0]], 10)
    assert as_column == result  # the ONNX output may be rows x 1


def test_regression_r2_is_undefined_for_a_constant_target() -> None:
    result = task_metrics("regression", None, [3.0, 3.0, 3.0], [2.0, 3.0, 4.0], calibration_bins=10)
    assert result["r2"] is None
    assert result["notes"] == ["r2 undefined: all 3 rows have target 3; it needs a varying target"]
    assert result["mae"] == pytest.approx(2 / 3)


def test_metrics_refuse_mismatched_empty_or_misshapen_output() -> None:
    with pytest.raises(ValueError, match="got 3 and 2"):
        task_metrics("binary", BINARY, [0, 1, 1], _both(np.array([0.2, 0.8])), calibration_bins=10)
    with pytest.raises(ValueError, match="at least one"):
        task_metrics("regression", None, [], [], calibration_bins=10)
    with pytest.raises(ValueError, match=r"one probability column per class \(3\); got \(6, 2\)"):
        task_metrics("multiclass", COLOURS, HAND_LABELS, HAND_PROBABILITIES[:, :2], calibration_bins=10)
    with pytest.raises(ValueError, match="one value per row"):
        task_metrics("regression", None, [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], calibration_bins=10)


def test_slices_report_each_value_with_enough_rows() -> None:
    y, p = _labelled(300, seed=2)
    plan = np.array(["basic"] * 150 + ["premium"] * 120 + ["enterprise"] * 20 + [None] * 10, dtype=object)
    frame = pd.DataFrame({"plan": plan, "region": ["north", "south"] * 150, "age": np.arange(300)})
    result = slice_metrics(frame, ["plan", "region"], "binary", BINARY, y, _both(p), min_rows=30, calibration_bins=10)
    assert list(result["plan"]) == ["basic", "premium"]  # enterprise (20) and missing (10) are too small
    assert list(result["region"]) == ["north", "south"]
    basic = plan == "basic"
    assert result["plan"]["basic"] == task_metrics("binary", BINARY, y[basic], _both(p[basic]), 10)
    assert result["region"]["south"]["rows"] == 150
    with_missing = slice_metrics(frame, ["plan"], "binary", BINARY, y, _both(p), min_rows=10, calibration_bins=10)
    assert with_missing["plan"][MISSING_SLICE]["rows"] == 10


def test_slices_of_multiclass_and_regression_use_the_task_metrics() -> None:
    labels, probabilities = _multiclass(200, seed=5)
    frame = pd.DataFrame({"region": ["north"] * 120 + ["south"] * 80})
    north = np.arange(200) < 120
    by_region = slice_metrics(
        frame, ["region"], "multiclass", COLOURS, labels, probabilities, min_rows=30, calibration_bins=10
    )
    assert by_region["region"]["north"] == task_metrics("multiclass", COLOURS, labels[north], probabilities[north], 10)
    target = np.linspace(0, 10, 200)
    prediction = target + np.where(north, 0.5, 2.0)
    regression = slice_metrics(
        frame, ["region"], "regression", None, target, prediction, min_rows=30, calibration_bins=10
    )
    assert regression["region"]["north"]["mae"] == pytest.approx(0.5)
    assert regression["region"]["south"]["mae"] == pytest.approx(2.0)


def test_predict_contract_accepts_each_task_and_resets_the_index() -> None:
    index = pd.Index([10, 11, 12, 13, 14, 15])
    binary = output_frame("binary", BINARY, _both(HAND_PROBABILITIES[:, 0]), index)
    assert list(check_predictions(binary, 6, "models:/m/1", "binary", BINARY).index) == list(range(6))
    multiclass = output_frame("multiclass", COLOURS, HAND_PROBABILITIES.astype(np.float32), index)
    assert len(check_predictions(multiclass, 6, "models:/m/1", "multiclass", COLOURS)) == 6
    regression = output_frame("regression", None, np.arange(6.0), index)
    assert check_predictions(regression, 6, "models:/m/1", "regression", None)["prediction"].tolist() == list(
        np.arange(6.0)
    )


def test_predict_contract_names_what_is_wrong() -> None:
    frame = output_frame("multiclass", COLOURS, HAND_PROBABILITIES)
    with pytest.raises(
        StepError,
        match=r"the predict of a binary model must return a DataFrame with columns \['probability', 'prediction'\]",
    ):
        check_predictions(frame, 6, "models:/m/1", "binary", BINARY)
    with pytest.raises(StepError, match="returned 6 rows for 7 input rows"):
        check_predictions(frame, 7, "models:/m/1", "multiclass", COLOURS)
    uneven = frame.assign(probability_red=frame["probability_red"] + 0.01)
    with pytest.raises(StepError, match=r"6 row\(s\) whose probabilities do not sum to 1"):
        check_predictions(uneven, 6, "models:/m/1", "multiclass", COLOURS)
    broken = output_frame("binary", BINARY, _both(np.array([0.2, np.nan, 1.5])))
    with pytest.raises(StepError, match=r"2 row\(s\) with a probability that is NaN or outside \[0, 1\]"):
        check_predictions(broken, 3, "models:/m/1", "binary", BINARY)
    infinite = pd.DataFrame({"prediction": [1.0, np.inf]})
    with pytest.raises(StepError, match=r"1 prediction\(s\) that are not finite numbers"):
        check_predictions(infinite, 2, "models:/m/1", "regression", None)
