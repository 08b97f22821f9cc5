"""The drift step on real prediction logs of a real champion: a same-distribution window shows no drift, a shifted
one does, small windows and a missing champion are skipped, a data-quality problem is reported as such; the
prediction signals of multiclass and regression champions drift when their outputs move."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from fake_models import TASK, task_model
from test_score import register_package
from test_train import prepare_run

from mlsteps import registry, results, tracking
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.errors import ConfigError
from mlsteps.monitoring import prediction_log
from mlsteps.steps import drift, score, train

HOUR = pd.Timestamp("2026-11-20T10:00:00Z")


def _champion(root: str) -> str:
    """Train a small model, register it and make it the champion; returns its model name."""
    config = prepare_run(root, rows=3000, epochs=2)
    trained = train.run(root, config)
    client = tracking.client()
    name = config.registry.model_name
    version, _ = registry.register_once(client, name, trained["model_uri"], root)
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    return name


def score_window(tmp_path: Path, store: str, name: str, frame: pd.DataFrame, hour: pd.Timestamp) -> None:
    """Score ``frame`` with the champion and log it in the given hour."""
    uri = str(tmp_path / f"{name}.parquet")
    storage.write_parquet(frame, uri)
    score.main(
        run_root=str(tmp_path / "runs" / name),
        input_uri=uri,
        prediction_store=store,
        scored_at=(hour + pd.Timedelta(minutes=30)).isoformat(),
    )


def _check(tmp_path: Path, store: str, name: str, hour: pd.Timestamp, **options) -> dict:
    root = str(tmp_path / "monitor" / name)
    drift.main(run_root=root, prediction_store=store, window_end=(hour + pd.Timedelta(hours=1)).isoformat(), **options)
    return results.read_result(root, "drift")


def test_windows_of_the_champions_predictions(mlflow_tracking: str, tmp_path: Path) -> None:
    model_name = _champion(str(tmp_path / "train"))
    store = str(tmp_path / "predictions")
    score_window(tmp_path, store, "steady", generate_churn(2000, seed=21), HOUR)
    score_window(
        tmp_path, store, "shifted", generate_churn(2000, seed=22, covariate_drift=1.0), HOUR + pd.Timedelta(hours=1)
    )

    steady = _check(tmp_path, store, "steady", HOUR)
    assert steady["status"] == "ok" and steady["rows"] == 2000 and steady["task"] == "binary"
    assert steady["drift_detected"] is False and steady["drifted_features"] == []
    assert steady["prediction_drift"] is False and steady["drifted_predictions"] == []
    assert steady["window"] == {"start": HOUR.isoformat(), "end": (HOUR + pd.Timedelta(hours=1)).isoformat()}
    report = storage.read_json(steady["report_uri"])
    assert {feature["name"] for feature in report["features"]} >= {"age", "plan", "monthly_charges"}
    assert [signal["name"] for signal in report["prediction"]] == ["probability"]
    assert report["prediction"][0]["status"] == "ok" and report["prediction"][0]["current_count"] == 2000
    assert "<table" in storage.read_text(steady["report_html_uri"])

    shifted = _check(tmp_path, store, "shifted", HOUR + pd.Timedelta(hours=1))
    assert shifted["status"] == "ok" and shifted["drift_detected"] is True
    assert len(shifted["drifted_features"]) >= 3
    run = mlflow.get_run(shifted["mlflow_run_id"])
    assert run.data.tags["model_name"] == model_name and run.data.tags["status"] == "ok"
    assert run.data.metrics["drifted_features"] == len(shifted["drifted_features"])
    assert run.data.metrics["drifted_predictions"] == len(shifted["drifted_predictions"])
    assert "prediction_statistic.probability" in run.data.metrics
    assert {artifact.path for artifact in mlflow.MlflowClient().list_artifacts(run.info.run_id)} == {
        "report.html",
        "report.json",
    }

    # A retry of the same window adds nothing (no second MLflow run).
    again = _check(tmp_path, store, "shifted", HOUR + pd.Timedelta(hours=1))
    assert again == shifted

    small = _check(tmp_path, store, "small", HOUR, min_rows=5000)
    assert small["status"] == "skipped" and "fewer than monitoring.min_rows=5000" in small["message"]
    assert small["drift_detected"] is False

    # Logs without a feature column: a data-quality failure, never drift.
    broken = generate_churn(800, seed=23).drop(columns=["age"])
    predictions = pd.DataFrame({"probability": 0.2, "prediction": 0}, index=broken.index)
    quality_at = HOUR + pd.Timedelta(hours=3, minutes=5)
    prediction_log.append(store, broken, predictions, TASK, model_name, 1, scored_at=quality_at)
    quality = _check(tmp_path, store, "quality", HOUR + pd.Timedelta(hours=3))
    assert quality["status"] == "data_quality_failed" and quality["drift_detected"] is False
    assert any("age" in problem for problem in quality["data_quality_problems"])


def test_a_multiclass_champion_whose_class_mix_shifts(mlflow_tracking: str, tmp_path: Path) -> None:
    info, preprocessor, model = task_model("multiclass")  # plan change: stay, downgrade or leave
    register_package(info, preprocessor, model, registry.CHAMPION)
    store = str(tmp_path / "predictions")
    score_window(tmp_path, store, "steady", generate_churn(2000, seed=21), HOUR)
    # Only monthly contracts of customers who call support: "leave" and "downgrade" take over from "stay".
    customers = generate_churn(12_000, seed=22)
    unsettled = customers[(customers["contract_type"] == "monthly") & (customers["support_calls_90d"] >= 2)]
    score_window(tmp_path, store, "unsettled", unsettled.head(2000), HOUR + pd.Timedelta(hours=1))

    steady = _check(tmp_path, store, "steady", HOUR)
    assert steady["status"] == "ok" and steady["task"] == "multiclass"
    assert steady["prediction_drift"] is False and steady["drifted_predictions"] == []
    signals = [signal["name"] for signal in storage.read_json(steady["report_uri"])["prediction"]]
    assert signals == [*(f"probability_{label}" for label in info.classes), "prediction"]

    shifted = _check(tmp_path, store, "unsettled", HOUR + pd.Timedelta(hours=1))
    assert shifted["status"] == "ok" and shifted["prediction_drift"] is True
    assert "prediction" in shifted["drifted_predictions"]  # the predicted-class mix
    assert {"probability_stay", "probability_leave"} <= set(shifted["drifted_predictions"])
    mix = next(s for s in storage.read_json(shifted["report_uri"])["prediction"] if s["name"] == "prediction")
    assert mix["kind"] == "categorical" and set(mix["histogram"]["labels"]) <= set(info.classes)
    assert 'Prediction: <strong class="failed">DRIFT</strong>' in storage.read_text(shifted["report_html_uri"])


def test_a_regression_champion_whose_predictions_shift(mlflow_tracking: str, tmp_path: Path) -> None:
    info, preprocessor, model = task_model("regression")  # next month's spend
    register_package(info, preprocessor, model, registry.CHAMPION)
    store = str(tmp_path / "predictions")
    score_window(tmp_path, store, "steady", generate_churn(2000, seed=21), HOUR)
    customers = generate_churn(12_000, seed=22)
    big_spenders = customers[customers["monthly_charges"] > customers["monthly_charges"].quantile(0.6)]
    score_window(tmp_path, store, "big", big_spenders.head(2000), HOUR + pd.Timedelta(hours=1))

    steady = _check(tmp_path, store, "steady", HOUR)
    assert steady["status"] == "ok" and steady["task"] == "regression" and steady["prediction_drift"] is False
    (signal,) = storage.read_json(steady["report_uri"])["prediction"]
    assert (signal["name"], signal["kind"], signal["status"]) == ("prediction", "numeric", "ok")

    shifted = _check(tmp_path, store, "big", HOUR + pd.Timedelta(hours=1))
    assert shifted["prediction_drift"] is True and shifted["drifted_predictions"] == ["prediction"]


def test_without_a_champion_the_window_is_skipped(mlflow_tracking: str, tmp_path: Path) -> None:
    result = _check(tmp_path, str(tmp_path / "predictions"), "empty", HOUR)
    assert result["status"] == "skipped"
    assert "no model version has alias 'champion' yet" in result["message"]


def test_bad_window_end_names_the_option(mlflow_tracking: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--window-end: 'yesterday' is not a date-time"):
        drift.main(run_root=str(tmp_path / "r"), prediction_store=str(tmp_path / "p"), window_end="yesterday")
