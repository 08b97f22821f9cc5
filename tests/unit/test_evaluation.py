"""The promotion gate, the choice among candidates, the report's plot data and HTML, and the evaluate step per task."""

from __future__ import annotations

import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mlsteps import registry, results, tracking
from mlsteps.config import EvaluationConfig, PipelineConfig
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.evaluation.metrics import best_candidate, calibration_bin, gate_decision, slice_metrics, task_metrics
from mlsteps.evaluation.report import ROC_POINTS, SCATTER_POINTS, curves, render_report_html
from mlsteps.evaluation.tasks import METRICS
from mlsteps.steps import evaluate

ABSOLUTE = EvaluationConfig(threshold=0.70, max_degradation=0.01)
NO_THRESHOLD = EvaluationConfig(threshold=None, max_degradation=0.01)
COLOURS = ["red", "<green>", "blue"]


def _auc(value: float | None) -> dict:
    return {"roc_auc": value}


def _rmse(value: float | None) -> dict:
    return {"rmse": value}


def _binary_gate(challenger: float | None, champion: float | None = None, **options: object):
    config = options.pop("config", ABSOLUTE)
    champion_metrics = None if champion is None else _auc(champion)
    return gate_decision(_auc(challenger), champion_metrics, config, "roc_auc", "binary", **options)


# The gate, higher is better (roc_auc)


def test_gate_without_champion_judges_the_threshold_only() -> None:
    decision = _binary_gate(0.812)
    assert decision.passed and not decision.forced
    assert decision.reasons == [
        "challenger roc_auc=0.812 >= threshold 0.7",
        "no champion yet: judged on the threshold only",
    ]
    assert decision.to_dict() == {
        "passed": True,
        "reasons": decision.reasons,
        "primary_metric": "roc_auc",
        "higher_is_better": True,
        "threshold": 0.70,
        "max_degradation": 0.01,
        "degradation": "absolute",
        "forced": False,
    }


def test_gate_allows_a_small_worsening_and_says_both_numbers() -> None:
    decision = _binary_gate(0.812, 0.820)
    assert decision.passed
    assert decision.reasons[1] == (
        "challenger roc_auc=0.812 vs champion 0.82: worse by 0.008, within the allowed worsening 0.01"
    )
    better = _binary_gate(0.83, 0.82)
    assert better.passed and better.reasons[1].endswith("better by 0.01, within the allowed worsening 0.01")


def test_gate_worsening_equal_to_the_allowance_passes_despite_rounding() -> None:
    assert 0.83 - 0.82 > 0.01  # the float noise this guards against
    assert _binary_gate(0.82, 0.83).passed


def test_gate_fails_on_too_much_worsening_and_collects_every_failed_check() -> None:
    decision = _binary_gate(0.790, 0.820)
    assert not decision.passed
    assert decision.reasons[1] == (
        "challenger roc_auc=0.79 vs champion 0.82: worse by 0.03, beyond the allowed worsening 0.01"
    )
    both = _binary_gate(0.650, 0.820)
    assert not both.passed
    assert both.reasons == [
        "challenger roc_auc=0.65 < threshold 0.7",
        "challenger roc_auc=0.65 vs champion 0.82: worse by 0.17, beyond the allowed worsening 0.01",
    ]


def test_gate_without_threshold_judges_the_champion_only() -> None:
    decision = _binary_gate(0.52, config=NO_THRESHOLD)
    assert decision.passed and decision.threshold is None
    assert decision.reasons[0] == "challenger roc_auc=0.52; no threshold set (evaluation.threshold is null)"
    assert not _binary_gate(0.52, 0.60, config=NO_THRESHOLD).passed


@pytest.mark.parametrize("undefined", [None, math.nan])
def test_gate_fails_when_the_challenger_metric_is_undefined(undefined: float | None) -> None:
    decision = _binary_gate(undefined, 0.8)
    assert not decision.passed
    assert decision.reasons == [
        "challenger roc_auc is undefined on this holdout (see the metrics' notes): it must be defined to reach "
        "threshold 0.7 and to be compared with the champion"
    ]


def test_gate_passes_over_an_undefined_champion_metric() -> None:
    decision = _binary_gate(0.8, math.nan)
    assert decision.passed
    assert decision.reasons[1] == "champion roc_auc is undefined on this holdout: no worsening to judge"


def test_force_passes_a_failing_gate_and_says_so() -> None:
    decision = _binary_gate(0.650, 0.820, force=True)
    assert decision.passed and decision.forced
    assert decision.reasons[:2] == _binary_gate(0.650, 0.820).reasons
    assert decision.reasons[2] == "forced: promoted although 2 check(s) failed"
    passing = _binary_gate(0.9, force=True)
    assert passing.passed and not passing.forced  # nothing was overridden


def test_gate_refuses_a_metric_the_task_does_not_have() -> None:
    with pytest.raises(ValueError, match="'rmse' is not a binary metric"):
        gate_decision(_rmse(1.0), None, ABSOLUTE, "rmse", "binary")


# The gate, lower is better (rmse), absolute and relative


def test_lower_is_better_threshold_is_a_ceiling() -> None:
    config = EvaluationConfig(threshold=12.0, max_degradation=0.5)
    passing = gate_decision(_rmse(11.5), None, config, "rmse", "regression")
    assert passing.passed and not passing.higher_is_better
    assert passing.reasons[0] == "challenger rmse=11.5 <= threshold 12"
    failing = gate_decision(_rmse(12.5), None, config, "rmse", "regression")
    assert not failing.passed and failing.reasons[0] == "challenger rmse=12.5 > threshold 12"


def test_lower_is_better_worsening_is_a_rise() -> None:
    config = EvaluationConfig(threshold=None, max_degradation=0.5)
    rise = gate_decision(_rmse(10.75), _rmse(10.0), config, "rmse", "regression")
    assert not rise.passed
    assert rise.reasons[1] == "challenger rmse=10.75 vs champion 10: worse by 0.75, beyond the allowed worsening 0.5"
    fall = gate_decision(_rmse(9.0), _rmse(10.0), config, "rmse", "regression")
    assert fall.passed and fall.reasons[1].endswith("better by 1, within the allowed worsening 0.5")


def test_relative_worsening_is_a_share_of_the_champion() -> None:
    config = EvaluationConfig(threshold=None, max_degradation=0.04, degradation="relative")
    five_percent = gate_decision(_rmse(10.5), _rmse(10.0), config, "rmse", "regression")
    assert not five_percent.passed and five_percent.degradation == "relative"
    assert five_percent.reasons[1] == (
        "challenger rmse=10.5 vs champion 10: worse by 5% of the champion's, beyond the allowed worsening 4% of the "
        "champion's"
    )
    assert gate_decision(_rmse(10.4), _rmse(10.0), config, "rmse", "regression").passed
    # Higher is better: 0.78 against 0.80 is 2.5% worse.
    auc = gate_decision(_auc(0.78), _auc(0.80), config, "roc_auc", "binary")
    assert auc.passed and "worse by 2.5% of the champion's" in auc.reasons[1]
    assert not gate_decision(_auc(0.76), _auc(0.80), config, "roc_auc", "binary").passed


def test_relative_worsening_against_a_champion_of_zero() -> None:
    config = EvaluationConfig(threshold=None, max_degradation=0.5, degradation="relative")
    assert not gate_decision({"r2": -0.1}, {"r2": 0.0}, config, "r2", "regression").passed
    assert gate_decision({"r2": 0.1}, {"r2": 0.0}, config, "r2", "regression").passed
    assert (
        gate_decision({"r2": 0.0}, {"r2": 0.0}, config, "r2", "regression")
        .reasons[1]
        .endswith("equal, within the allowed worsening 50% of the champion's")
    )


# Choosing the challenger among the candidates


def test_the_best_candidate_on_the_primary_metric_is_chosen() -> None:
    candidates = {"mlp": _auc(0.80), "gbdt": _auc(0.83), "mine:Trainer": _auc(0.81)}
    assert best_candidate(candidates, "roc_auc", "binary") == "gbdt"
    errors = {"mlp": _rmse(4.0), "gbdt": _rmse(3.5)}
    assert best_candidate(errors, "rmse", "regression") == "gbdt"  # lower is better
    assert best_candidate({"mlp": _auc(math.nan), "gbdt": _auc(0.51)}, "roc_auc", "binary") == "gbdt"
    assert best_candidate({"mlp": _auc(0.8), "gbdt": _auc(0.8)}, "roc_auc", "binary") == "mlp"  # ties: first listed
    assert best_candidate({"mlp": _auc(None)}, "roc_auc", "binary") == "mlp"
    with pytest.raises(ValueError, match="no candidates"):
        best_candidate({}, "roc_auc", "binary")


# Plot data


def _labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0, 1, rows)
    return (rng.uniform(0, 1, rows) < probability).astype(int), np.column_stack([1 - probability, probability])


def _multiclass(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], rows)
    return np.array([rng.choice(3, p=row) for row in probabilities]), probabilities


def _regression(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.normal(50, 10, rows)
    return target, target + rng.normal(0, 2, rows)


def test_binary_curves_are_downsampled_roc_and_the_ece_bins() -> None:
    labels, output = _labelled(3000, seed=1)
    data = curves("binary", [0, 1], labels, output, calibration_bins=10)
    roc = data["roc"]
    assert len(roc["false_positive_rate"]) == len(roc["true_positive_rate"]) <= ROC_POINTS
    assert (roc["false_positive_rate"][0], roc["true_positive_rate"][0]) == (0.0, 0.0)
    assert (roc["false_positive_rate"][-1], roc["true_positive_rate"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["false_positive_rate"]) >= 0)
    calibration = data["calibration"]
    assert sum(calibration["rows"]) == 3000 and len(calibration["rows"]) == 10
    first = calibration_bin(output[:, 1], 10) == 0
    assert calibration["positive_rate"][0] == pytest.approx(labels[first].mean(), rel=1e-5)
    assert curves("binary", [0, 1], np.zeros(5, dtype=int), output[:5], 10)["roc"] is None


def test_multiclass_curves_are_the_confusion_matrix() -> None:
    labels, output = _multiclass(300, seed=2)
    confusion = curves("multiclass", COLOURS, labels, output, calibration_bins=10)["confusion"]
    assert confusion["labels"] == COLOURS
    counts = np.array(confusion["counts"])
    assert counts.shape == (3, 3) and counts.sum() == 300
    assert counts.sum(axis=1).tolist() == np.bincount(labels, minlength=3).tolist()  # rows are the actual class
    assert np.trace(counts) / 300 == pytest.approx(task_metrics("multiclass", COLOURS, labels, output, 10)["accuracy"])


def test_regression_curves_sample_the_scatter_and_bin_the_residuals() -> None:
    target, prediction = _regression(5000, seed=3)
    data = curves("regression", None, target, prediction, calibration_bins=10)
    assert len(data["scatter"]["actual"]) == len(data["scatter"]["predicted"]) == SCATTER_POINTS
    assert data == curves("regression", None, target, prediction, calibration_bins=10)  # the same sample each time
    residuals = data["residuals"]
    assert sum(residuals["counts"]) == 5000 and len(residuals["edges"]) == len(residuals["counts"]) + 1
    assert residuals["edges"][0] == pytest.approx((target - prediction).min(), rel=1e-5)
    small = curves("regression", None, target[:50], prediction[:50], calibration_bins=10)
    assert small["scatter"]["actual"] == pytest.approx(target[:50].tolist(), rel=1e-5)


# The HTML report


def _model(task: str, classes: list | None, y: np.ndarray, output: np.ndarray, frame: pd.DataFrame) -> dict:
    return {
        "metrics": task_metrics(task, classes, y, output, 10),
        "slices": slice_metrics(frame, ["plan"], task, classes, y, output, min_rows=30, calibration_bins=10),
        "curves": curves(task, classes, y, output, 10),
    }


def _report(task: str, classes: list | None, primary: str, y: np.ndarray, output: np.ndarray, champion: bool) -> dict:
    frame = pd.DataFrame({"plan": ["basic<b>"] * len(y)})
    challenger = {"family": "gbdt", "model_uri": "runs:/r2/model", **_model(task, classes, y, output, frame)}
    best = {**_model(task, classes, y, output, frame), "version": 7} if champion else None
    gate = gate_decision(challenger["metrics"], best and best["metrics"], NO_THRESHOLD, primary, task)
    other = {"family": "mlp<x>", "model_uri": "runs:/r1/model", "metrics": {primary: None}}
    return {
        "model_name": "churn",
        "task": task,
        "classes": classes,
        "holdout_uri": "s3://b/holdout.parquet",
        "candidates": [other, {key: challenger[key] for key in ("family", "model_uri", "metrics")}],
        "challenger": challenger,
        "champion": best,
        "gate": gate.to_dict(),
    }


def _self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "src=" not in page and "href=" not in page and "url(" not in page


def test_binary_report_shows_metrics_slices_gate_and_both_curves_overlaid() -> None:
    y, output = _labelled(200, seed=3)
    report = _report("binary", [0, 1], "roc_auc", y, output, champion=True)
    page = render_report_html(report)
    _self_contained(page)
    assert "champion v7" in page and "Task: binary" in page
    assert f"{report['challenger']['metrics']['pr_auc']:.4g}" in page
    assert "basic&lt;b&gt;" in page and "basic<b>" not in page
    assert "equal, within the allowed worsening 0.01" in page
    assert "Primary metric roc_auc (area under the ROC curve; higher is better), no threshold" in page
    assert "<td>mlp&lt;x&gt;</td><td>runs:/r1/model</td><td>&ndash;</td><td>no</td>" in page
    assert "<td>gbdt</td><td>runs:/r2/model</td>" in page
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert [re.search(r"<title>(.*?)</title>", svg).group(1) for svg in svgs] == [
        "ROC curve",
        "Calibration (reliability)",
    ]
    assert all(svg.count("<polyline") == 2 for svg in svgs)  # challenger and champion
    alone = render_report_html(_report("binary", [0, 1], "roc_auc", y, output, champion=False))
    assert alone.count("<svg") == 2 and "champion v7" not in alone


def test_multiclass_report_draws_the_confusion_matrix() -> None:
    labels, output = _multiclass(300, seed=4)
    page = render_report_html(_report("multiclass", COLOURS, "macro_f1", labels, output, champion=True))
    _self_contained(page)
    assert page.count("<svg") == 1 and "<title>Confusion matrix (challenger)</title>" in page
    assert "&lt;green&gt;" in page and "<green>" not in page
    grid = re.search(r"<svg.*?</svg>", page, flags=re.S).group(0)
    assert grid.count("<rect") == 9
    assert "Class shares on the holdout" in page and "challenger macro_f1" in page


def test_regression_report_draws_predicted_vs_actual_and_residuals() -> None:
    target, prediction = _regression(3000, seed=5)
    page = render_report_html(_report("regression", None, "rmse", target, prediction, champion=False))
    _self_contained(page)
    titles = re.findall(r"<svg[^>]*><title>(.*?)</title>", page)
    assert titles == [f"Predicted vs actual (challenger, {SCATTER_POINTS} rows)", "Residuals (challenger)"]
    scatter = re.search(r"<svg.*?</svg>", page, flags=re.S).group(0)
    assert scatter.count("h0") == SCATTER_POINTS  # one dot per sampled row
    assert "rmse" in page and "mean_prediction" in page and "lower is better" in page


# The evaluate step per task, on ONNX model packages in a real MLflow registry (SQLite)


def _log_task_model(task: str) -> tuple[str, str]:
    """Log the task's fake model (``fake_models.task_model``) as a model package; returns (run id, model URI)."""
    from fake_models import log_package, task_model

    return log_package(*task_model(task))


def _task_holdout(task: str, rows: int) -> tuple[pd.DataFrame, PipelineConfig]:
    """A churn holdout whose target the task's fake model predicts (labels drawn from its probabilities, values
    with noise of sd 5), and the pipeline config of that target."""
    from fake_models import PIPELINE, task_model

    from mlsteps.inference import onnx_session, predict_frame

    info, preprocessor, model = task_model(task)
    holdout = generate_churn(rows, seed=3)
    output = predict_frame(preprocessor, onnx_session(model.SerializeToString()), info, holdout)
    rng = np.random.default_rng(7)
    if task == "multiclass":
        probabilities = output[[f"probability_{label}" for label in info.classes]].to_numpy()
        holdout[info.target] = [info.classes[rng.choice(3, p=row / row.sum())] for row in probabilities]
    else:
        holdout[info.target] = output["prediction"].to_numpy() + rng.normal(0, 5, rows)
    raw = PIPELINE.model_dump()
    raw["dataset"]["target"] = {"name": info.target, "task": task, "classes": info.classes or None}
    raw["evaluation"] |= {"primary_metric": None, "threshold": None}
    return holdout, PipelineConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("task", "primary", "plots"),
    [
        ("multiclass", "roc_auc", ["Confusion matrix (challenger)"]),
        ("regression", "rmse", ["Predicted vs actual (challenger, 1500 rows)", "Residuals (challenger)"]),
    ],
)
def test_evaluate_step_scores_the_task_and_compares_with_the_champion(
    task: str, primary: str, plots: list[str], tmp_path: Path, mlflow_tracking: str
) -> None:
    holdout, config = _task_holdout(task, 1500)
    holdout_uri = str(tmp_path / "holdout.parquet")
    storage.write_parquet(holdout, holdout_uri)
    family = config.training.model

    def evaluate_run(name: str) -> dict:
        run_id, model_uri = _log_task_model(task)
        run_root = str(tmp_path / name)
        results.write_result(run_root, "preprocess", {"holdout_uri": holdout_uri, "snapshot_id": "snap-7"})
        train = {"mlflow_run_id": run_id, "model_uri": model_uri, "family": family, "task": task}
        results.write_result(run_root, results.candidate_step(family), train)
        return evaluate.run(run_root, config)

    first = evaluate_run("first")
    metrics, gate = first["challenger"]["metrics"], first["gate"]
    assert first["task"] == task and first["champion"] is None and metrics["rows"] == 1500
    assert set(METRICS[task]) <= set(metrics) and metrics["notes"] == []
    if task == "multiclass":
        assert 0.6 < metrics["roc_auc"] < 1 and sum(metrics["class_shares"].values()) == pytest.approx(1)
    else:
        assert metrics["rmse"] == pytest.approx(5, rel=0.1) and metrics["r2"] > 0.5
    assert gate["passed"] and gate["primary_metric"] == primary and gate["higher_is_better"] == (primary != "rmse")
    assert set(first["challenger"]["slices"]) == set(config.dataset.slice_columns)
    report = storage.read_json(first["report_uri"])
    assert "curves" not in first["challenger"] and set(report["challenger"]["curves"])
    page = storage.read_text(first["report_html_uri"])
    assert re.findall(r"<svg[^>]*><title>(.*?)</title>", page) == plots

    version = mlflow.register_model(first["challenger"]["model_uri"], config.registry.model_name).version
    tracking.client().set_registered_model_alias(config.registry.model_name, registry.CHAMPION, version)
    second = evaluate_run("second")  # the same model again, now against the champion
    assert second["champion"]["version"] == int(version)
    assert second["champion"]["metrics"] == second["challenger"]["metrics"]
    assert second["gate"]["passed"] and second["gate"]["reasons"][1].endswith(
        "equal, within the allowed worsening 0.01"
    )
