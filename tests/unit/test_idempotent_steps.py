"""Every step of the retrain loop, run twice for the same run root, does its work once.

A retried Airflow task runs the same command again: the second run must leave the same results, register no second
model version and move no alias again. The smallest run the churn dataset accepts (its ``min_rows``) and one epoch
keep the loop quick.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_train import TINY_TRAINING

from mlsteps import registry, results, tracking
from mlsteps.config import load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.steps import evaluate, preprocess, promote, register, snapshot, train, validate

# The only result fields a rerun may change: how long the step took, and the snapshot's ``reused``, which says
# whether the content-addressed snapshot was already stored (true on every rerun, by design; same snapshot id).
RERUN_FIELDS = frozenset({"elapsed_s", "reused"})
ALIASES = (registry.CHAMPION, registry.CHALLENGER)


def _without_rerun_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in RERUN_FIELDS}


def test_each_step_run_twice_for_one_run_root_does_its_work_once(mlflow_tracking: str, tmp_path: Path) -> None:
    # One epoch on a few hundred rows learns little: a threshold of 0.5 lets the gate pass so promote moves champion.
    config = load_pipeline_config(
        overrides={"training": {**TINY_TRAINING, "epochs": 1}, "evaluation": {"threshold": 0.5}}
    )
    rows = config.dataset.min_rows
    input_uri = str(tmp_path / "input.parquet")
    storage.write_parquet(generate_churn(rows, seed=5), input_uri)
    root = str(tmp_path / "runs" / "manual-1")
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("snapshot", lambda: snapshot.run(root, config, input_uri, str(tmp_path / "snapshots"))),
        ("validate", lambda: validate.run(root, config)),
        ("preprocess", lambda: preprocess.run(root, config)),
        ("train/mlp", lambda: train.run(root, config)),
        ("evaluate", lambda: evaluate.run(root, config)),
        ("register", lambda: register.run(root, config)),
        ("promote", lambda: promote.run(root, config)),
    ]
    client, model_name = tracking.client(), config.registry.model_name

    for step, run_step in steps:
        run_step()
        first = results.read_result(root, step)
        versions = client.search_model_versions(f"name='{model_name}'")
        history = {alias: registry.alias_history(client, model_name, alias) for alias in ALIASES}

        run_step()

        assert _without_rerun_fields(results.read_result(root, step)) == _without_rerun_fields(first), step
        assert client.search_model_versions(f"name='{model_name}'") == versions, step
        assert {alias: registry.alias_history(client, model_name, alias) for alias in ALIASES} == history

    assert len(versions) == 1
    assert [event.to_version for event in history[registry.CHAMPION]] == [1]


def test_the_drift_step_run_twice_for_one_run_root_reports_once(mlflow_tracking: str, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd
    from fake_models import GOOD, TASK, log_model

    from mlsteps.monitoring import prediction_log
    from mlsteps.steps import drift

    config = load_pipeline_config()
    model_name = config.registry.model_name
    version = int(mlflow.register_model(log_model(GOOD)[1], model_name).version)
    tracking.client().set_registered_model_alias(model_name, registry.CHAMPION, str(version))
    hour = pd.Timestamp("2026-11-20T10:00:00Z")
    shifted = generate_churn(config.monitoring.min_rows, seed=22, covariate_drift=1.0)
    predictions = pd.DataFrame({"probability": 0.2, "prediction": 0}, index=shifted.index)
    store = str(tmp_path / "predictions")
    prediction_log.append(
        store, shifted, predictions, TASK, model_name, version, scored_at=hour + pd.Timedelta(minutes=5)
    )
    root, window_end = str(tmp_path / "monitor" / "m-1"), (hour + pd.Timedelta(hours=1)).isoformat()

    drift.run(root, config, store, window_end)
    first = results.read_result(root, "drift")
    report = storage.read_bytes(first["report_uri"])
    drift.run(root, config, store, window_end)

    assert first["drift_detected"] is True
    assert _without_rerun_fields(results.read_result(root, "drift")) == _without_rerun_fields(first)
    assert storage.read_bytes(first["report_uri"]) == report
    experiment = f"{config.registry.experiment_name}-drift"
    assert len(mlflow.search_runs(experiment_names=[experiment])) == 1  # no second drift run for the monitor to read


def test_a_drift_result_decided_twice_alerts_once() -> None:
    from orchestration import monitor

    # One drifted window judged on its own and no cooldown: only idempotency can stop a second retraining trigger
    # when a cleared monitor task decides on the same drift result again.
    monitoring = load_pipeline_config(
        overrides={"monitoring": {"consecutive_windows": 1, "cooldown_hours": 0}}
    ).monitoring
    drifted = {
        "status": "ok",
        "drift_detected": True,
        "window": {"start": "2026-11-20T10:00:00+00:00", "end": "2026-11-20T11:00:00+00:00"},
        "model_version": 1,
        "model_trained_at": "2026-11-01T00:00:00+00:00",
        "drifted_share": 0.875,
        "drifted_features": ["age"],
        "message": "1 of 1 judged features drifted",
    }

    first, state = monitor.decide(drifted, None, {}, monitoring)
    again, _ = monitor.decide(drifted, None, state, monitoring)

    assert first.action == "alert"
    assert again.action != "alert"
