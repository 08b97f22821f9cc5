"""The train step for every family and task: the ONNX package it logs gives what the native model gave, and a
trainer or an export that cannot be trusted stops the step with exit code 2 before anything is logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from mlsteps import results
from mlsteps.config import DEFAULT_CONFIG_PATH, PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import BUILT_IN
from mlsteps.errors import ConfigError
from mlsteps.evaluation.tasks import output_columns
from mlsteps.steps import preprocess, train
from mlsteps.training.onnx_export import ExportError

EXAMPLE = "examples.trainers.sklearn_gbt:GradientBoostingTrainer"
SHIPPED = {"binary": "models/churn.yaml", "multiclass": "models/tiers.yaml", "regression": "examples/claims.yaml"}
QUICK = {"epochs": 2, "hidden_units": [16], "gbdt": {"n_estimators": 40}, "params": {"n_estimators": 30}}


def prepare(root: str, task: str, model: str, rows: int = 2500) -> PipelineConfig:
    """Snapshot + preprocess results of the task's built-in data; the config to train ``model`` with."""
    uri = storage.join(root, "snapshot", "data.parquet")
    storage.write_parquet(BUILT_IN[task].generate(rows, seed=5), uri)
    snapshot = {"snapshot_id": f"{task}-5", "snapshot_uri": uri, "dataset": BUILT_IN[task].name, "rows": rows}
    results.write_result(root, "snapshot", snapshot)
    overrides: dict[str, Any] = {"training": {**QUICK, "model": model, "candidates": []}}
    config = load_pipeline_config(str(DEFAULT_CONFIG_PATH.parent / SHIPPED[task]), overrides)
    preprocess.run(root, config)
    return config


@pytest.mark.parametrize(
    ("task", "model"),
    [("binary", "gbdt"), ("binary", EXAMPLE), ("multiclass", "mlp"), ("multiclass", "gbdt"), ("regression", "mlp")]
    + [("regression", "gbdt"), ("regression", EXAMPLE)],
)
def test_every_family_logs_an_onnx_package_that_predicts_the_task(
    mlflow_tracking: str, tmp_path: Path, task: str, model: str
) -> None:
    root = str(tmp_path / "run")
    config = prepare(root, task, model)

    payload = train.run(root, config)

    assert payload["family"] == model and payload["task"] == task
    # The step only logs an export within its tolerance (absolute for probabilities, relative for values).
    assert payload["export_check"]["rows"] > 0 and payload["export_check"]["tolerance"] == 1e-4
    assert results.read_result(root, results.candidate_step(model))["model_uri"] == payload["model_uri"]
    holdout = storage.read_parquet(results.read_result(root, "preprocess")["holdout_uri"])
    predictions = mlflow.pyfunc.load_model(payload["model_uri"]).predict(holdout)
    target = config.dataset.target
    assert list(predictions.columns) == output_columns(task, target.classes or [])
    if task == "regression":
        assert np.isfinite(predictions["prediction"]).all()
        correlation = np.corrcoef(predictions["prediction"], holdout[target.name])[0, 1]
        assert correlation > 0.2, "the model learned something of the target"
    else:
        assert set(predictions["prediction"]) <= set(target.classes)
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(payload["mlflow_run_id"])}
    assert ("native_model" in artifacts) == (model != EXAMPLE), "built-in families log their native model too"


def test_a_trainer_that_does_not_import_is_refused_before_training(tmp_path: Path) -> None:
    config = load_pipeline_config(overrides={"training": {"model": "no_such_package.trainers:Forest"}})
    with pytest.raises(ConfigError, match=r"training.model 'no_such_package.trainers:Forest': cannot import module"):
        train.run(str(tmp_path / "run"), config)


class LyingTrainer:
    """Predicts with the example's model but exports a different one: what the train step must refuse."""

    def __init__(self, context: Any) -> None:
        from examples.trainers.sklearn_gbt import GradientBoostingTrainer

        self.inner = GradientBoostingTrainer(context)
        self.other = GradientBoostingTrainer(context)

    def fit(self, train: Any, validation: Any) -> dict[str, float]:
        self.other.fit(validation, train)  # another model: fitted on the other split
        return self.inner.fit(train, validation)

    def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        return self.inner.predict(numeric, categories)

    def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> Any:
        return self.other.to_onnx(numeric, categories)


def test_an_export_that_does_not_reproduce_the_model_is_refused_and_nothing_is_logged(
    mlflow_tracking: str, tmp_path: Path
) -> None:
    root = str(tmp_path / "run")
    config = prepare(root, "binary", f"{__name__}:LyingTrainer")

    with pytest.raises(ExportError, match=r"does not reproduce the native model: largest difference .* not registered"):
        train.run(root, config)

    assert not storage.exists(results.result_uri(root, results.candidate_step(config.training.model)))
    experiment = mlflow.get_experiment_by_name(config.registry.experiment_name)
    assert mlflow.search_logged_models([experiment.experiment_id], output_format="list") == []


@pytest.mark.parametrize("model", ["mlp", "gbdt", EXAMPLE])
def test_every_family_serves_its_package_through_both_protocols(
    mlflow_tracking: str, tmp_path: Path, model: str
) -> None:
    from starlette.testclient import TestClient

    from mlsteps.serve.app import create_app
    from mlsteps.serve.model import ModelHandle, load_model
    from mlsteps.serving_bundle import export_bundle, read_bundle

    root = str(tmp_path / "run")
    config = prepare(root, "multiclass", model)
    payload = train.run(root, config)
    package = Path(mlflow.artifacts.download_artifacts(payload["model_uri"], dst_path=str(tmp_path / "package")))
    export_bundle(package, tmp_path / "bundle", "tiers-model", 1, payload["model_uri"])
    bundle = read_bundle(tmp_path / "bundle")
    holdout = storage.read_parquet(results.read_result(root, "preprocess")["holdout_uri"]).head(20)
    expected = mlflow.pyfunc.load_model(payload["model_uri"]).predict(holdout)
    rows = json.loads(holdout[[column.name for column in bundle.columns]].to_json(orient="records"))
    tensors = [
        {
            "name": column.name,
            "datatype": "FP64" if column.type == "double" else "BYTES",
            "shape": [len(rows)],
            "data": [row[column.name] for row in rows],
        }
        for column in bundle.columns
    ]

    with TestClient(create_app(ModelHandle(load_model(bundle)))) as client:
        v2 = client.post("/v2/models/tiers-model/infer", json={"inputs": tensors})
        mlflow_format = client.post("/invocations", json={"dataframe_records": rows})

    assert v2.status_code == mlflow_format.status_code == 200
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    classes = config.dataset.target.classes
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(len(rows), len(classes))
    np.testing.assert_allclose(probabilities, expected[[f"probability_{label}" for label in classes]], atol=1e-6)
    assert outputs["prediction"]["data"] == expected["prediction"].tolist()
    answered = [record["prediction"] for record in mlflow_format.json()["predictions"]]
    assert answered == expected["prediction"].tolist()
