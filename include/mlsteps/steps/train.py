"""train: fit the tabular network on the train split, early-stopped on validation loss, and log it to MLflow.

Retries resume instead of starting over: every epoch writes a checkpoint (weights, optimizer, random states,
best weights so far) under <run-root>/train/checkpoints/, and the MLflow run id is stored in
<run-root>/train/mlflow_run.json before the first epoch, so a retried pod continues at the next epoch in
the same MLflow run. Seeds and deterministic kernels make a run repeatable on the same hardware.
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

import mlsteps
from mlsteps import storage, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, TrainingConfig, load_pipeline_config
from mlsteps.errors import ConfigError
from mlsteps.features import TabularPreprocessor, binary_labels
from mlsteps.results import read_result, result_uri, step_dir, write_result

if TYPE_CHECKING:
    import torch

STEP = "train"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"epoch-(\d+)\.pt$")
MLFLOW_RUN_FILE = "mlflow_run.json"
# A retry may change these and still resume its checkpoint; any other change would mix two different models in
# one run. The device setting is among them because a retry may land on another kind of node.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "device"})

Split = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a retry continues exactly here."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_roc_auc: float = math.nan
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def finished(self, training: TrainingConfig) -> bool:
        """Whether the epoch budget is spent or early stopping has triggered."""
        return self.epoch >= training.epochs or self.stopped_early(training)

    def stopped_early(self, training: TrainingConfig) -> bool:
        """Whether validation loss has not improved for ``patience`` epochs."""
        return self.epochs_without_improvement >= training.patience


class Trainer:
    """The network, optimizer, random streams and progress of one run: everything a checkpoint must hold."""

    def __init__(self, preprocessor: TabularPreprocessor, training: TrainingConfig, device: torch.device) -> None:
        import torch

        from mlsteps.model import NetworkSpec, TabularNet

        seed_everything(training.seed)
        spec = NetworkSpec(
            numeric_features=len(preprocessor.numeric_columns),
            cardinalities=preprocessor.cardinalities,
            hidden_units=list(training.hidden_units),
            dropout=training.dropout,
            max_embedding_dim=training.max_embedding_dim,
        )
        self.training = training
        self.device = device
        self.network = TabularNet(spec).to(device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
        )
        self.shuffle = torch.Generator().manual_seed(training.seed)
        self.progress = Progress()
        self.best_weights = self._copy_weights()

    def _copy_weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.network.state_dict().items()}

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores (loadable with ``torch.load(weights_only=True)``)."""
        import torch

        cuda = self.device.type == "cuda"
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_weights,
            "progress": asdict(self.progress),
            "random": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state, random streams included, as if training had never stopped."""
        import torch

        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_weights = {name: tensor.to(self.device) for name, tensor in state["best_model"].items()}
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["random"]["torch"])
        self.shuffle.set_state(state["random"]["shuffle"])
        if self.device.type == "cuda" and state["random"]["cuda"]:
            torch.cuda.set_rng_state_all(state["random"]["cuda"])

    def fit_epoch(self, criterion: torch.nn.Module, train: Split, validation: Split) -> dict[str, float]:
        """Train one epoch, evaluate on validation, and keep the weights if validation loss improved."""
        epoch = self.progress.epoch + 1
        train_loss = self._train_pass(criterion, train, f"epoch {epoch}/{self.training.epochs}")
        val_loss, val_roc_auc = _evaluate(self.network, criterion, validation)
        progress = self.progress
        progress.epoch = epoch
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_roc_auc": val_roc_auc}
        progress.history.append({"epoch": epoch, **metrics})
        if val_loss < progress.best_val_loss:
            progress.best_epoch, progress.best_val_loss, progress.best_val_roc_auc = epoch, val_loss, val_roc_auc
            progress.epochs_without_improvement = 0
            self.best_weights = self._copy_weights()
        else:
            progress.epochs_without_improvement += 1
        return metrics

    def _train_pass(self, criterion: torch.nn.Module, data: Split, description: str) -> float:
        """One pass over the shuffled train split; returns the mean train loss."""
        import torch
        from tqdm import tqdm

        numeric, categories, labels = data
        self.network.train()
        order = torch.randperm(len(labels), generator=self.shuffle).to(self.device)
        total = torch.zeros((), device=self.device)
        starts = range(0, len(labels), self.training.batch_size)
        cuda = self.device.type == "cuda"
        for start in tqdm(starts, desc=description, unit="batch", file=sys.stderr, disable=not sys.stderr.isatty()):
            batch = order[start : start + self.training.batch_size]
            # bf16 autocast only on CUDA: on CPU it is slower for layers this small and changes the numbers.
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = self.network(numeric[batch], categories[batch])
            loss = criterion(logits.float(), labels[batch])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(batch)
        return float(total) / len(labels)


def parse_tags(values: list[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into MLflow tags.

    Raises:
        ConfigError: listing every value that is not ``KEY=VALUE``.
    """
    malformed = [value for value in values if "=" not in value or not value.partition("=")[0].strip()]
    if malformed:
        raise ConfigError(f"--tag values {malformed} are not KEY=VALUE: write them like --tag trigger=drift_alert")
    return {key.strip(): value for key, _, value in (item.partition("=") for item in values)}


def select_device(requested: str) -> torch.device:
    """CUDA for ``auto`` when present, else CPU.

    Raises:
        ConfigError: ``cuda`` was requested but no CUDA device is visible.
    """
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device is 'cuda' but torch sees no CUDA device: set training.device to auto or cpu, "
            "or run the step on a GPU node"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch and ask for deterministic kernels, so the same seed gives the same model."""
    import torch

    # cuBLAS needs this workspace setting for deterministic matmuls; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def checkpoint_uri(out: str, epoch: int) -> str:
    """Where the checkpoint of one epoch lives."""
    return storage.join(out, CHECKPOINT_DIR, f"epoch-{epoch:03d}.pt")


def latest_checkpoint(out: str) -> str | None:
    """The checkpoint with the highest epoch under the step folder, or None before the first epoch ends."""
    found = {
        int(match.group(1)): uri
        for uri in storage.list_files(storage.join(out, CHECKPOINT_DIR))
        if (match := CHECKPOINT_NAME.search(uri))
    }
    return found[max(found)] if found else None


def save_checkpoint(payload: dict[str, Any], uri: str) -> None:
    """torch.save to a local file, then upload it, so local and S3 run roots work alike."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(payload, path)
        storage.upload_file(path, uri)


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (random states must be CPU tensors; weights move when loaded)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        return torch.load(
            storage.download_file(uri, Path(tmp) / "checkpoint.pt"), map_location="cpu", weights_only=True
        )


def fingerprint(training: TrainingConfig, snapshot_id: str, preprocessor: TabularPreprocessor) -> dict[str, Any]:
    """What must not change between an attempt and its retry for a checkpoint to be resumed."""
    settings = {
        f"training.{key}": value for key, value in training.model_dump().items() if key not in RESUMABLE_CHANGES
    }
    return {**settings, "snapshot_id": snapshot_id, "preprocessor": preprocessor.to_dict()}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], uri: str) -> None:
    """Raise one ConfigError naming every setting that differs from the checkpoint's."""
    changed = [key for key in current if saved.get(key) != current[key]]
    if changed:
        details = "; ".join(
            "the preprocess output changed"
            if key == "preprocessor"
            else f"{key}: {saved.get(key)!r} -> {current[key]!r}"
            for key in changed
        )
        raise ConfigError(
            f"checkpoint {uri} was written with different settings ({details}). A retry may only change "
            f"{sorted(RESUMABLE_CHANGES)}: restore the settings, or use a new --run-root to train from scratch"
        )


def _split_tensors(
    frame: pd.DataFrame, preprocessor: TabularPreprocessor, dataset: DatasetConfig, device: torch.device, what: str
) -> Split:
    """Numeric inputs, category indices and float labels of one split, on the training device."""
    import torch

    numeric, categories = preprocessor.transform(frame)
    labels = binary_labels(frame[dataset.target.name], dataset.target.classes, what)
    return (
        torch.from_numpy(numeric).to(device),
        torch.from_numpy(categories).to(device),
        torch.from_numpy(labels).float().to(device),
    )


def _evaluate(network: torch.nn.Module, criterion: torch.nn.Module, data: Split) -> tuple[float, float]:
    """Validation loss (weighted as in training) and ROC AUC, without dropout."""
    from sklearn.metrics import roc_auc_score

    from mlsteps.model import predict_logits

    numeric, categories, labels = data
    logits = predict_logits(network, numeric, categories)
    return float(criterion(logits, labels)), float(roc_auc_score(labels.cpu().numpy(), logits.cpu().numpy()))


def _stored_run_id(out: str) -> str | None:
    uri = storage.join(out, MLFLOW_RUN_FILE)
    return storage.read_json(uri)["run_id"] if storage.exists(uri) else None


def _log_params_once(run_id: str, params: dict[str, Any]) -> None:
    """Log params not yet in the run; MLflow params are immutable, so a retry's changed value becomes a tag."""
    import mlflow

    logged = mlflow.get_run(run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})
    changed = {key: str(value) for key, value in params.items() if key in logged and logged[key] != str(value)}
    if changed:
        before = {key: logged[key] for key in changed}
        print(f"{STEP}: this attempt changes params {before} -> {changed}; recorded as resumed_with.* tags", flush=True)
        mlflow.set_tags({f"resumed_with.{key}": value for key, value in changed.items()})


def _example_rows(frame: pd.DataFrame, dataset: DatasetConfig, rows: int = 5) -> pd.DataFrame:
    """Raw feature rows typed as serving sends them: numbers as float64 (nulls allowed), categories as strings."""
    types = {**dict.fromkeys(dataset.numeric_features, "float64"), **dict.fromkeys(dataset.categorical_features, "str")}
    return frame[[column.name for column in dataset.features]].head(rows).reset_index(drop=True).astype(types)


def _finished_result(run_root: str, run_id: str | None, progress: Progress, training: TrainingConfig) -> Any:
    """The earlier result when this run root already finished the same training, else None."""
    uri = result_uri(run_root, STEP)
    if run_id is None or not progress.finished(training) or not storage.exists(uri):
        return None
    previous = storage.read_json(uri)
    same = previous.get("mlflow_run_id") == run_id and previous.get("epochs_run") == progress.epoch
    return previous if same else None


def run(run_root: str, config: PipelineConfig, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train (or resume training) for one run root and log the model package to MLflow.

    Returns:
        The payload written to ``result.json``.

    Raises:
        ConfigError: ``cuda`` requested without a GPU, or a retry changed settings its checkpoint depends on.
        DataError: a split lacks feature columns or has target values outside the configured classes.
    """
    import mlflow
    import torch

    from mlsteps.model import log_model_package

    dataset, training = config.dataset, config.training
    device = select_device(training.device)
    upstream = read_result(run_root, "preprocess")
    snapshot_id = upstream["snapshot_id"]
    preprocessor = TabularPreprocessor.from_dict(storage.read_json(upstream["preprocessor_uri"]))
    frames = {name: storage.read_parquet(upstream[f"{name}_uri"]) for name in ("train", "validation")}
    train, validation = (
        _split_tensors(frames[name], preprocessor, dataset, device, f"{name} split {upstream[f'{name}_uri']}")
        for name in ("train", "validation")
    )

    out = step_dir(run_root, STEP)
    expected = fingerprint(training, snapshot_id, preprocessor)
    trainer = Trainer(preprocessor, training, device)
    resume_uri = latest_checkpoint(out)
    if resume_uri is not None:
        state = load_checkpoint(resume_uri)
        check_resumable(state["fingerprint"], expected, resume_uri)
        trainer.restore(state)
        print(f"{STEP}: resuming after epoch {trainer.progress.epoch} from {resume_uri}", flush=True)
    progress = trainer.progress
    run_id = _stored_run_id(out)
    if (previous := _finished_result(run_root, run_id, progress, training)) is not None:
        print(f"{STEP}: already finished for this run root (MLflow run {run_id}); nothing to do", flush=True)
        return previous

    # Unweighted BCE keeps the probabilities calibrated (log loss, ECE and the 0.5 threshold stay meaningful).
    criterion = torch.nn.BCEWithLogitsLoss()
    params = {
        **training.model_dump(exclude={"device"}),
        "device": device.type,
        "dataset": dataset.name,
        "snapshot_id": snapshot_id,
        "train_rows": len(train[2]),
        "validation_rows": len(validation[2]),
    }
    tracking.start_experiment(config.registry.experiment_name)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{dataset.name}-{snapshot_id[:12]}") as active:
        run_id = active.info.run_id
        _log_params_once(run_id, params)
        lineage = {"dataset": dataset.name, "snapshot_id": snapshot_id, "mlsteps_version": mlsteps.__version__}
        mlflow.set_tags({**lineage, "run_root": run_root, **(tags or {})})
        storage.write_json(storage.join(out, MLFLOW_RUN_FILE), {"run_id": run_id})

        while not progress.finished(training):
            metrics = trainer.fit_epoch(criterion, train, validation)
            mlflow.log_metrics(metrics, step=progress.epoch)
            save_checkpoint({**trainer.state(), "fingerprint": expected}, checkpoint_uri(out, progress.epoch))
            print(
                f"epoch {progress.epoch}/{training.epochs}: "
                + " ".join(f"{name}={value:.4f}" for name, value in metrics.items())
                + f" (best val_loss={progress.best_val_loss:.4f} at epoch {progress.best_epoch})",
                flush=True,
            )
        if progress.stopped_early(training):
            print(
                f"{STEP}: early stop after epoch {progress.epoch}: val_loss did not improve on "
                f"{progress.best_val_loss:.4f} (epoch {progress.best_epoch}) for {progress.epochs_without_improvement} "
                f"epochs >= patience {training.patience}",
                flush=True,
            )

        trainer.network.load_state_dict(trainer.best_weights)
        mlflow.log_metrics({"best_val_loss": progress.best_val_loss, "best_val_roc_auc": progress.best_val_roc_auc})
        mlflow.log_dict({"best_epoch": progress.best_epoch, "epochs": progress.history}, "learning_curve.json")
        mlflow.log_dict(preprocessor.to_dict(), "preprocessor.json")
        model_info = log_model_package(preprocessor, trainer.network, _example_rows(frames["train"], dataset))

    payload = {
        "mlflow_run_id": run_id,
        "model_uri": model_info.model_uri,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "metrics": {"val_loss": progress.best_val_loss, "val_roc_auc": progress.best_val_roc_auc},
        "device": device.type,
        "checkpoint_uri": checkpoint_uri(out, progress.epoch),
        "params": params,
        "snapshot_id": snapshot_id,
    }
    write_result(run_root, STEP, payload)
    print(
        f"{STEP}: best epoch {progress.best_epoch} of {progress.epoch}: val_loss={progress.best_val_loss:.4f} "
        f"val_roc_auc={progress.best_val_roc_auc:.4f}; model {model_info.model_uri}",
        flush=True,
    )
    return payload


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="maximum number of epochs; default: training.epochs")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="AdamW learning rate; default: training.learning_rate")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="rows per optimisation step; default: training.batch_size")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="KEY=VALUE tag of the MLflow run, repeatable (e.g. --tag trigger=drift_alert)"),
    ] = None,
) -> None:
    """Train the tabular network on the train split and log the model package to MLflow.

    Reads the preprocess step's result. Early-stops on validation loss (training.patience) and keeps the best
    epoch's weights. Writes a checkpoint per epoch under <run-root>/train/checkpoints/; a retry for the same
    run root resumes from the latest one in the same MLflow run. Uses CUDA with bf16 autocast when present.

    Args:
        run_root: folder of this run's artifacts; the preprocess step must have run for it.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.
        epochs: maximum number of epochs; default: training.epochs.
        learning_rate: AdamW learning rate; default: training.learning_rate.
        batch_size: rows per optimisation step; default: training.batch_size.
        tag: KEY=VALUE tags of the MLflow run, e.g. what triggered it.

    Examples:
        MLFLOW_TRACKING_URI=sqlite:///state/mlflow.db python -m mlsteps train --run-root ./state/runs/ml_retrain/m-1

        python -m mlsteps train --run-root s3://ml-artifacts/runs/ml_retrain/m-1 --epochs 30 --tag trigger=drift_alert
    """
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size}
    tags = parse_tags(tag or [])
    training = {key: value for key, value in overrides.items() if value is not None}
    run(run_root, load_pipeline_config(config, {"training": training}), tags)
