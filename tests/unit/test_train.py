"""The train step: learning, determinism, resuming after a failed attempt, and the logged MLflow model package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import mlsteps
from mlsteps import results
from mlsteps.cli import app
from mlsteps.config import DEFAULT_CONFIG_PATH, PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import TabularPreprocessor
from mlsteps.errors import ConfigError
from mlsteps.steps import preprocess, train
from mlsteps.training import trainer
from mlsteps.training.checkpoints import check_resumable, fingerprint

# Small and quick, yet enough to learn something in a few epochs.
TINY_TRAINING = {"epochs": 3, "hidden_units": [16], "batch_size": 128, "learning_rate": 0.01}


def prepare_run(root: str, rows: int = 3000, **training: Any) -> PipelineConfig:
    """Snapshot + preprocess results for a run root; returns the config to train with."""
    uri = storage.join(root, "snapshot", "data.parquet")
    storage.write_parquet(generate_churn(rows, seed=5), uri)
    results.write_result(
        root, "snapshot", {"snapshot_id": "abc", "snapshot_uri": uri, "dataset": "churn", "rows": rows}
    )
    config = load_pipeline_config(overrides={"training": {**TINY_TRAINING, **training}})
    preprocess.run(root, config)
    return config


def config_file(directory: Path, **training: Any) -> Path:
    """A pipeline YAML with the tiny training settings (plus overrides), for runs started from the command line."""
    pipeline = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    pipeline["dataset"] = str(DEFAULT_CONFIG_PATH.parent / pipeline["dataset"])
    pipeline["training"].update(TINY_TRAINING, **training)
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path


def metric_steps(run_id: str, metric: str) -> list[tuple[int, float]]:
    history = mlflow.MlflowClient().get_metric_history(run_id, metric)
    return sorted((point.step, point.value) for point in history)


def learning_curve(run_id: str) -> list[dict[str, float]]:
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/native_model/learning_curve.json")["epochs"]


def test_loss_decreases_and_the_run_is_tracked(mlflow_tracking: str, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    config = prepare_run(root)

    payload = train.run(root, config, {"trigger": "test"})

    train_loss = metric_steps(payload["mlflow_run_id"], "train_loss")
    assert [step for step, _ in train_loss] == [1, 2, 3]
    losses = [value for _, value in train_loss]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]
    assert payload["metrics"]["epochs_run"] == 3 and payload["device"] == "cpu"
    assert payload["metrics"]["val_roc_auc"] > 0.6
    assert payload["checkpoint_dir"].endswith("train/mlp/checkpoints")
    assert storage.list_files(payload["checkpoint_dir"])[-1].endswith("epoch-003.pt")
    assert payload["family"] == "mlp" and payload["export_check"]["max_abs_difference"] <= 1e-4
    assert results.read_result(root, "train/mlp")["model_uri"] == payload["model_uri"]
    run = mlflow.get_run(payload["mlflow_run_id"])
    assert run.data.params["hidden_units"] == "[16]" and run.data.params["snapshot_id"] == "abc"
    assert run.data.params["device"] == "cpu" and run.data.params["dataset"] == "churn"
    assert run.data.tags["trigger"] == "test"
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(payload["mlflow_run_id"])}
    assert {"native_model", "preprocessor.json"} <= artifacts


def test_same_seed_gives_the_same_metrics(mlflow_tracking: str, tmp_path: Path) -> None:
    runs = []
    for name in ("first", "second"):
        root = str(tmp_path / name)
        runs.append(train.run(root, prepare_run(root, epochs=2)))

    assert runs[0]["mlflow_run_id"] != runs[1]["mlflow_run_id"]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert learning_curve(runs[0]["mlflow_run_id"]) == learning_curve(runs[1]["mlflow_run_id"])


def test_retry_resumes_from_the_latest_checkpoint_in_the_same_mlflow_run(
    mlflow_tracking: str, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = f"{s3_bucket}/runs/ml_retrain/manual-1"
    interrupted = train.run(root, prepare_run(root, epochs=1))
    capsys.readouterr()

    resumed = train.run(root, prepare_run(root, epochs=2))

    log = capsys.readouterr().out
    assert "resuming after epoch 1 from" in log
    assert "epoch 1/2:" not in log and "epoch 2/2:" in log
    run_id = resumed["mlflow_run_id"]
    assert run_id == interrupted["mlflow_run_id"] == storage.read_json(f"{root}/train/mlp/mlflow_run.json")["run_id"]
    assert [step for step, _ in metric_steps(run_id, "train_loss")] == [1, 2]
    assert mlflow.get_run(run_id).data.tags["resumed_with.epochs"] == "2"
    assert [uri.rsplit("/", 1)[1] for uri in storage.list_files(f"{root}/train/mlp/checkpoints")] == [
        "epoch-001.pt",
        "epoch-002.pt",
    ]
    # Restored weights, optimizer and random streams: exactly what an uninterrupted run computes.
    straight_root = str(tmp_path / "straight")
    straight = train.run(straight_root, prepare_run(straight_root, epochs=2))
    assert learning_curve(run_id) == learning_curve(straight["mlflow_run_id"])

    again = train.run(root, prepare_run(root, epochs=2))
    assert "nothing to do" in capsys.readouterr().out
    assert again["model_uri"] == resumed["model_uri"]


def test_checkpoint_dir_holds_the_checkpoints_and_a_retry_resumes_from_it(mlflow_tracking: str, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    checkpoints = str(tmp_path / "volume" / "ml_retrain" / "run")
    interrupted = train.run(root, prepare_run(root, epochs=1), checkpoint_dir=checkpoints)
    assert interrupted["checkpoint_dir"] == f"{checkpoints}/mlp"
    assert storage.list_files(f"{root}/train/mlp/checkpoints") == []

    outcome = CliRunner().invoke(
        app,
        ["train", "--run-root", root, "--config", str(config_file(tmp_path)), "--epochs", "2"]
        + ["--checkpoint-dir", checkpoints],
    )

    assert outcome.exit_code == 0, outcome.output
    assert f"resuming after epoch 1 from {checkpoints}/mlp/epoch-001.pt" in outcome.output
    resumed = results.read_result(root, "train/mlp")
    assert resumed["mlflow_run_id"] == interrupted["mlflow_run_id"] and resumed["metrics"]["epochs_run"] == 2
    assert [Path(uri).name for uri in storage.list_files(f"{checkpoints}/mlp")] == ["epoch-001.pt", "epoch-002.pt"]

    other_root = str(tmp_path / "other-run")
    with pytest.raises(ConfigError, match=rf"mlp/epoch-002.pt belongs to run root '{root}', not '{other_root}'.*own"):
        train.run(other_root, prepare_run(other_root, epochs=2), checkpoint_dir=checkpoints)


def test_retry_with_other_network_settings_is_refused(pipeline_config: PipelineConfig) -> None:
    preprocessor = TabularPreprocessor(numeric={}, vocabularies={"plan": ["basic"]})
    inputs = {"run_root": "/runs/1", "snapshot_id": "abc", "preprocessor": preprocessor.to_dict()}
    saved = fingerprint(pipeline_config.training, inputs)
    longer = pipeline_config.training.model_copy(update={"epochs": 50, "patience": 9})
    wider = pipeline_config.training.model_copy(update={"hidden_units": [256]})

    check_resumable(saved, fingerprint(longer, inputs), "epoch-003.pt")
    with pytest.raises(ConfigError, match=r"training.hidden_units: \[128, 64\] -> \[256\].*new --run-root"):
        check_resumable(saved, fingerprint(wider, inputs), "epoch-003.pt")
    with pytest.raises(ConfigError, match="snapshot_id: 'abc' -> 'def'"):
        check_resumable(saved, fingerprint(pipeline_config.training, {**inputs, "snapshot_id": "def"}), "epoch-003.pt")


def test_cli_model_loads_and_predicts_raw_rows(mlflow_tracking: str, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    prepare_run(root, rows=5000)
    config_path = config_file(tmp_path, hidden_units=[32], learning_rate=0.002)

    outcome = CliRunner().invoke(
        app,
        ["train", "--run-root", root, "--config", str(config_path), "--epochs", "4", "--learning-rate", "0.01"]
        + ["--tag", "trigger=drift"],
    )

    assert outcome.exit_code == 0, outcome.output
    payload = results.read_result(root, "train/mlp")
    assert payload["params"]["epochs"] == 4 and payload["params"]["learning_rate"] == 0.01
    assert mlflow.get_run(payload["mlflow_run_id"]).data.tags["trigger"] == "drift"
    model = mlflow.pyfunc.load_model(payload["model_uri"])
    holdout = storage.read_parquet(results.read_result(root, "preprocess")["holdout_uri"])
    odd_rows = holdout.head(3).copy()
    odd_rows.loc[odd_rows.index[0], ["total_charges", "age"]] = np.nan
    odd_rows.loc[odd_rows.index[1], "plan"] = "platinum"
    odd_rows.loc[odd_rows.index[2], "contract_type"] = None
    predictions = model.predict(pd.concat([holdout, odd_rows], ignore_index=True))

    assert list(predictions.columns) == ["probability", "prediction"]
    assert predictions.dtypes.to_dict() == {"probability": np.float64, "prediction": np.int64}
    assert len(predictions) == len(holdout) + 3
    assert predictions["probability"].between(0, 1).all()
    assert (predictions["prediction"] == (predictions["probability"] >= 0.5)).all()
    assert roc_auc_score(holdout["churned"], predictions["probability"].iloc[: len(holdout)]) > 0.7

    signature = model.metadata.signature
    features = load_pipeline_config().dataset
    assert signature.inputs.input_names() == [column.name for column in features.features]
    assert {spec.name: spec.type.name for spec in signature.inputs.inputs}["plan"] == "string"
    assert {spec.name: spec.type.name for spec in signature.inputs.inputs}["age"] == "double"
    assert all(spec.required for spec in signature.inputs.inputs)
    assert signature.outputs.input_names() == ["probability", "prediction"]
    example = model.input_example
    assert list(example.columns) == signature.inputs.input_names() and len(example) == 5
    assert model.predict(example)["probability"].between(0, 1).all()


def test_model_package_carries_the_drift_reference_of_its_training_data(mlflow_tracking: str, tmp_path: Path) -> None:
    from mlsteps.model import download_package, reference_profile_path
    from mlsteps.monitoring.drift import detect_drift, load_profile

    root = str(tmp_path / "run")
    config = prepare_run(root, rows=3000, epochs=2)
    train.run(root, config)
    payload = results.read_result(root, "train/mlp")

    package = download_package(payload["model_uri"], tmp_path / "profile")
    profile = load_profile(str(reference_profile_path(package, payload["model_uri"])))
    train_split = storage.read_parquet(results.read_result(root, "preprocess")["train_uri"])
    assert list(profile.features) == [column.name for column in config.dataset.features]
    assert profile.rows == len(train_split)
    assert set(profile.predictions) == {"probability"}, "the model's outputs are profiled for prediction drift"
    # The training data and the model's validation scores show no drift against their own profile.
    validation = storage.read_parquet(results.read_result(root, "preprocess")["validation_uri"])
    scores = mlflow.pyfunc.load_model(payload["model_uri"]).predict(validation)["probability"]
    report = detect_drift(profile, train_split, predictions={"probability": scores.to_numpy()}, config=config.drift)
    assert not report.dataset.drift_detected and not report.data_quality_failed
    assert report.prediction[0].statistic == pytest.approx(0.0, abs=1e-6) and not report.prediction[0].drifted


def test_model_package_loads_where_mlsteps_is_not_installed(mlflow_tracking: str, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    payload = train.run(root, prepare_run(root, epochs=1))
    holdout_uri = results.read_result(root, "preprocess")["holdout_uri"]
    include_dir = Path(mlsteps.__file__).resolve().parents[1]
    script = f"""
import sys
import subprocess
import sys
from pathlib import Path
sys.path = [entry for entry in sys.path if Path(entry or '.').resolve() != Path({str(include_dir)!r})]
import mlflow, pandas
predictions = mlflow.pyfunc.load_model({payload["model_uri"]!r}).predict(pandas.read_parquet({holdout_uri!r}))
import mlsteps
print(mlsteps.__file__, len(predictions))
"""

    finished = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)

    assert finished.returncode == 0, finished.stderr
    bundled_from, rows = finished.stdout.split()
    assert "/artifacts/code/mlsteps/" in bundled_from
    assert int(rows) == len(storage.read_parquet(holdout_uri))


def test_malformed_tag_is_rejected_before_training(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(app, ["train", "--run-root", str(tmp_path), "--tag", "trigger", "--tag", "=x"])

    assert outcome.exit_code == 2
    assert "--tag values ['trigger', '=x'] are not KEY=VALUE" in outcome.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="training.device is 'cuda' but torch sees no CUDA device"):
        trainer.select_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_and_the_package_predicts_on_cpu(mlflow_tracking: str, tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    config = prepare_run(root, device="cuda")

    payload = train.run(root, config)

    assert payload["device"] == "cuda"
    holdout = storage.read_parquet(results.read_result(root, "preprocess")["holdout_uri"])
    predictions = mlflow.pyfunc.load_model(payload["model_uri"]).predict(holdout)
    assert predictions["probability"].between(0, 1).all()
