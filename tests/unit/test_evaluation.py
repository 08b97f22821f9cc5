"""Holdout metrics, slices, the promotion gate and the HTML report of mlsteps.evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlsteps.config import EvaluationConfig
from mlsteps.evaluation import (
    MISSING_SLICE,
    classification_metrics,
    expected_calibration_error,
    gate_decision,
    render_report_html,
    slice_metrics,
)

THRESHOLDS = EvaluationConfig(min_roc_auc=0.70, max_roc_auc_regression=0.01)


def _labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them, so the scores carry signal."""
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0, 1, rows)
    return (rng.uniform(0, 1, rows) < probability).astype(int), probability


def test_metrics_equal_sklearn() -> None:
    y, p = _labelled(800, seed=1)
    result = classification_metrics(y, p, calibration_bins=10)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert result["positive_rate"] == pytest.approx(y.mean())
    assert result["mean_probability"] == pytest.approx(p.mean())
    assert result["rows"] == 800
    assert result["notes"] == []
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


def test_single_class_reports_undefined_roc_auc_and_says_why() -> None:
    result = classification_metrics([0, 0, 0, 0], [0.1, 0.4, 0.2, 0.7], calibration_bins=10)
    assert result["roc_auc"] is None
    assert result["notes"] == ["roc_auc undefined: all 4 rows have label 0; it needs both classes"]
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["log_loss"] == pytest.approx(skm.log_loss([0, 0, 0, 0], [0.1, 0.4, 0.2, 0.7], labels=[0, 1]))
    assert result["positive_rate"] == 0.0


def test_metrics_refuse_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="got 3 and 2"):
        classification_metrics([0, 1, 1], [0.2, 0.8], calibration_bins=10)
    with pytest.raises(ValueError, match="at least one"):
        classification_metrics([], [], calibration_bins=10)


def test_slices_report_each_value_with_enough_rows() -> None:
    y, p = _labelled(300, seed=2)
    plan = np.array(["basic"] * 150 + ["premium"] * 120 + ["enterprise"] * 20 + [None] * 10, dtype=object)
    frame = pd.DataFrame({"plan": plan, "region": ["north", "south"] * 150, "age": np.arange(300)})
    result = slice_metrics(frame, ["plan", "region"], y, p, min_rows=30, calibration_bins=10)
    assert list(result["plan"]) == ["basic", "premium"]  # enterprise (20) and missing (10) are too small
    assert list(result["region"]) == ["north", "south"]
    basic = plan == "basic"
    assert result["plan"]["basic"] == classification_metrics(y[basic], p[basic], 10)
    assert result["region"]["south"]["rows"] == 150
    with_missing = slice_metrics(frame, ["plan"], y, p, min_rows=10, calibration_bins=10)
    assert with_missing["plan"][MISSING_SLICE]["rows"] == 10


def _metrics(roc_auc: float | None) -> dict:
    return {"roc_auc": roc_auc}


def test_gate_without_champion_judges_the_minimum_only() -> None:
    decision = gate_decision(_metrics(0.812), None, THRESHOLDS)
    assert decision.passed and not decision.forced
    assert decision.reasons == [
        "challenger roc_auc=0.812 >= minimum 0.700",
        "no champion yet: judged on the minimum only",
    ]
    assert decision.to_dict() == {
        "passed": True,
        "forced": False,
        "reasons": decision.reasons,
        "min_roc_auc": 0.70,
        "max_roc_auc_regression": 0.01,
    }


def test_gate_allows_a_small_drop_and_says_both_numbers() -> None:
    decision = gate_decision(_metrics(0.812), _metrics(0.820), THRESHOLDS)
    assert decision.passed
    assert "challenger roc_auc=0.812 vs champion 0.820: drop 0.008 <= allowed 0.010" in decision.reasons


def test_gate_drop_equal_to_the_allowance_passes_despite_rounding() -> None:
    assert 0.83 - 0.82 > 0.01  # the float noise this guards against
    assert gate_decision(_metrics(0.82), _metrics(0.83), THRESHOLDS).passed


def test_gate_fails_on_regression() -> None:
    decision = gate_decision(_metrics(0.790), _metrics(0.820), THRESHOLDS)
    assert not decision.passed
    assert decision.reasons[1] == "challenger roc_auc=0.790 vs champion 0.820: drop 0.030 > allowed 0.010"


def test_gate_collects_every_failed_check() -> None:
    decision = gate_decision(_metrics(0.650), _metrics(0.820), THRESHOLDS)
    assert not decision.passed
    assert decision.reasons == [
        "challenger roc_auc=0.650 < minimum 0.700",
        "challenger roc_auc=0.650 vs champion 0.820: drop 0.170 > allowed 0.010",
    ]


def test_gate_fails_when_roc_auc_is_undefined() -> None:
    decision = gate_decision(_metrics(None), _metrics(None), THRESHOLDS)
    assert not decision.passed
    assert "undefined on this holdout" in decision.reasons[0]
    assert "minimum 0.700" in decision.reasons[0]


def test_force_passes_a_failing_gate_and_says_so() -> None:
    decision = gate_decision(_metrics(0.650), _metrics(0.820), THRESHOLDS, force=True)
    assert decision.passed and decision.forced
    assert decision.reasons[:2] == gate_decision(_metrics(0.650), _metrics(0.820), THRESHOLDS).reasons
    assert decision.reasons[2] == "forced: promoted although 2 check(s) failed"
    passing = gate_decision(_metrics(0.9), None, THRESHOLDS, force=True)
    assert passing.passed and not passing.forced  # nothing was overridden


def test_report_html_shows_metrics_slices_and_gate() -> None:
    y, p = _labelled(200, seed=3)
    frame = pd.DataFrame({"plan": ["basic<b>"] * 200})
    model = {
        "metrics": classification_metrics(y, p, 10),
        "slices": slice_metrics(frame, ["plan"], y, p, min_rows=30, calibration_bins=10),
    }
    gate = gate_decision(model["metrics"], model["metrics"], THRESHOLDS).to_dict()
    report = {
        "model_name": "churn",
        "holdout_uri": "s3://b/holdout.parquet",
        "challenger": model,
        "champion": {**model, "version": 7},
        "gate": gate,
    }
    page = render_report_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "champion v7" in page
    assert f"{model['metrics']['roc_auc']:.4f}" in page
    assert "basic&lt;b&gt;" in page and "basic<b>" not in page
    assert "drop 0.000 &lt;= allowed 0.010" in page
    assert "<script" not in page and "http" not in page.replace("s3://", "")
