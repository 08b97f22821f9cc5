"""train: fit the tabular network on the train split, early-stopped on validation loss, and log it to MLflow.

Retries resume instead of starting over: every epoch writes a checkpoint (weights, optimizer, random states,
best weights so far) under <run-root>/train/checkpoints/ (or --checkpoint-dir), and the MLflow run id is stored
in <run-root>/train/mlflow_run.json before the first epoch, so a retried pod continues at the next epoch in
the same MLflow run. Seeds and deterministic kernels make a run repeatable on the same hardware.

Started by torchrun with several processes (one per GPU of the pod), the same code trains data-parallel: the
network is wrapped in DistributedDataParallel, each rank trains on its shard of every epoch's shuffled rows and
evaluates its share of the validation rows, and only rank 0 talks to MLflow and writes checkpoints and the result.
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable
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
from mlsteps.distributed import World
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

    def __init__(
        self, preprocessor: TabularPreprocessor, training: TrainingConfig, device: torch.device, world: World
    ) -> None:
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
        self.world = world
        self.network = TabularNet(spec).to(device)
        # Checkpoints, evaluation and the logged model use the plain network; only training steps go through
        # the wrapper, which averages gradients over the ranks of a distributed run.
        self.model = world.wrap(self.network, device)
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

        # Only this process's GPU: reading every visible one would open a CUDA context on each from every rank.
        cuda = self.device.type == "cuda"
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_weights,
            "progress": asdict(self.progress),
            "random": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle.get_state(),
                "cuda": [torch.cuda.get_rng_state(self.device)] if cuda else [],
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
            torch.cuda.set_rng_state(state["random"]["cuda"][0], self.device)

    def fit(
        self,
        criterion: torch.nn.Module,
        train: Split,
        validation: Split,
        after_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
    ) -> None:
        """Train until the epoch budget is spent or early stopping triggers; nothing when a checkpoint says so."""
        while not self.progress.finished(self.training):
            after_epoch(self.fit_epoch(criterion, train, validation))

    def fit_epoch(self, criterion: torch.nn.Module, train: Split, validation: Split) -> dict[str, float]:
        """Train one epoch, evaluate on validation, and keep the weights if validation loss improved.

        Every rank of a distributed run gets the same metrics, so all make the same early-stopping decision.
        """
        epoch = self.progress.epoch + 1
        train_loss = self._train_pass(criterion, train, f"epoch {epoch}/{self.training.epochs}")
        val_loss, val_roc_auc = _evaluate(self.network, criterion, validation, self.world)
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
        """One pass over this rank's shard of the shuffled train split; returns the mean train loss of all ranks.

        Every rank draws the same permutation from the shared shuffle stream and takes its own shard of it, and
        each step's rows are split over the ranks, so an optimizer step still sees ``batch_size`` rows.
        """
        import torch
        from tqdm import tqdm

        numeric, categories, labels = data
        self.model.train()
        rows = self.world.shard(torch.randperm(len(labels), generator=self.shuffle).to(self.device))
        step_rows = self.world.share(self.training.batch_size)
        total = torch.zeros((), device=self.device)
        starts = range(0, len(rows), step_rows)
        cuda = self.device.type == "cuda"
        for start in tqdm(starts, desc=description, unit="batch", file=sys.stderr, disable=not sys.stderr.isatty()):
            batch = rows[start : start + step_rows]
            # bf16 autocast only on CUDA: on CPU it is slower for layers this small and changes the numbers.
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = self.model(numeric[batch], categories[batch])
            loss = criterion(logits.float(), labels[batch])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(batch)
        sums = torch.stack([total.double(), torch.tensor(len(rows), dtype=torch.float64, device=self.device)])
        loss_sum, rows_seen = self.world.all_reduce_sum(sums).tolist()
        return loss_sum / rows_seen


def parse_tags(values: list[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into MLflow tags; ``KEY=`` sets nothing (a templated tag that does not apply).

    Raises:
        ConfigError: listing every value that is not ``KEY=VALUE``.
    """
    malformed = [value for value in values if "=" not in value or not value.partition("=")[0].strip()]
    if malformed:
        raise ConfigError(f"--tag values {malformed} are not KEY=VALUE: write them like --tag trigger=drift_alert")
    return {key.strip(): value for key, _, value in (item.partition("=") for item in values) if value}


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


def default_checkpoint_dir(run_root: str) -> str:
    """Where a run's checkpoints go unless --checkpoint-dir names another folder."""
    return storage.join(step_dir(run_root, STEP), CHECKPOINT_DIR)


def checkpoint_uri(checkpoints: str, epoch: int) -> str:
    """Where the checkpoint of one epoch lives."""
    return storage.join(checkpoints, f"epoch-{epoch:03d}.pt")


def latest_checkpoint(checkpoints: str) -> str | None:
    """The checkpoint with the highest epoch in the checkpoint folder, or None before the first epoch ends."""
    found = {
        int(match.group(1)): uri for uri in storage.list_files(checkpoints) if (match := CHECKPOINT_NAME.search(uri))
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


def _evaluate(network: torch.nn.Module, criterion: torch.nn.Module, data: Split, world: World) -> tuple[float, float]:
    """Validation loss (weighted as in training) and ROC AUC, without dropout.

    Each rank predicts every ``size``-th row from position ``rank`` and the logits are summed over the ranks into
    one full tensor, so every rank computes the same numbers from all validation rows.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from mlsteps.model import predict_logits

    numeric, categories, labels = data
    rows = slice(world.rank, None, world.size)
    logits = torch.zeros_like(labels)
    logits[rows] = predict_logits(network, numeric[rows], categories[rows])
    world.all_reduce_sum(logits)
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


def _resume(trainer: Trainer, checkpoints: str, expected: dict[str, Any], run_root: str) -> None:
    """Restore the latest checkpoint, if any; every rank reads the same file, so all continue from one state.

    Raises:
        ConfigError: the checkpoint belongs to another run root, or a retry changed settings it depends on.
    """
    uri = latest_checkpoint(checkpoints)
    if uri is None:
        return
    state = load_checkpoint(uri)
    # Checkpoints without the field predate --checkpoint-dir and so lie under their own run root.
    owner = state.get("run_root", run_root)
    if owner != run_root:
        raise ConfigError(
            f"checkpoint {uri} belongs to run root {owner!r}, not {run_root!r}: give every run its own "
            "--checkpoint-dir (for example <volume>/<dag id>/<run id>)"
        )
    check_resumable(state["fingerprint"], expected, uri)
    trainer.restore(state)
    print(f"{STEP}: resuming after epoch {trainer.progress.epoch} from {uri}", flush=True)


def _reference_profile(
    config: PipelineConfig, frames: dict[str, pd.DataFrame], preprocessor: TabularPreprocessor, network: Any, tmp: Path
) -> Path:
    """Profile the train split's features and the model's validation scores once, for every later drift check.

    Validation scores, not train scores: they are what the model gives on rows it did not fit, as in production.
    """
    from mlsteps.drift import build_profile, save_profile
    from mlsteps.model import REFERENCE_PROFILE_FILE, predict_frame

    scores = predict_frame(preprocessor, network, frames["validation"])["probability"].to_numpy()
    profile = build_profile(frames["train"], config.dataset.features, scores=scores, config=config.drift)
    path = tmp / REFERENCE_PROFILE_FILE
    save_profile(profile, str(path))
    return path


def run(
    run_root: str, config: PipelineConfig, tags: dict[str, str] | None = None, checkpoint_dir: str | None = None
) -> dict[str, Any] | None:
    """Train (or resume training) for one run root and log the model package to MLflow.

    Under torchrun with several processes, every rank trains its shard and rank 0 alone tracks and writes.

    Args:
        run_root: folder of this run's artifacts; the preprocess step must have run for it.
        config: the pipeline config.
        tags: MLflow tags of the run, e.g. what triggered it.
        checkpoint_dir: folder of this run's epoch checkpoints; default: <run-root>/train/checkpoints.

    Returns:
        The payload written to ``result.json``; None on the other ranks of a distributed run.

    Raises:
        ConfigError: ``cuda`` requested without a GPU, more torchrun processes than GPUs, or a retry changed
            settings its checkpoint depends on.
        DataError: a split lacks feature columns or has target values outside the configured classes.
    """
    world = World.from_env()
    device = world.place(select_device(config.training.device))
    with world.process_group(device):
        return _train(run_root, config, tags or {}, checkpoint_dir or default_checkpoint_dir(run_root), world, device)


def _train(
    run_root: str,
    config: PipelineConfig,
    tags: dict[str, str],
    checkpoints: str,
    world: World,
    device: torch.device,
) -> dict[str, Any] | None:
    """The body of ``run`` on one rank, inside its process group."""
    import mlflow
    import torch

    from mlsteps.model import log_model_package

    dataset, training = config.dataset, config.training
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
    trainer = Trainer(preprocessor, training, device, world)
    _resume(trainer, checkpoints, expected, run_root)
    # Unweighted BCE keeps the probabilities calibrated (log loss, ECE and the 0.5 threshold stay meaningful).
    criterion = torch.nn.BCEWithLogitsLoss()
    train_rows = len(train[2])
    print(
        f"{STEP}: rank {world.rank}/{world.size} trains on {world.share(train_rows)} of {train_rows} train rows "
        f"per epoch, {world.share(training.batch_size)} rows per step on {device}",
        flush=True,
    )
    if not world.is_main:
        trainer.fit(criterion, train, validation)
        return None

    progress = trainer.progress
    run_id = _stored_run_id(out)
    if (previous := _finished_result(run_root, run_id, progress, training)) is not None:
        print(f"{STEP}: already finished for this run root (MLflow run {run_id}); nothing to do", flush=True)
        return previous

    params = {
        **training.model_dump(exclude={"device"}),
        "device": device.type,
        "world_size": world.size,
        "dataset": dataset.name,
        "snapshot_id": snapshot_id,
        "train_rows": train_rows,
        "validation_rows": len(validation[2]),
    }

    def record_epoch(metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=progress.epoch)
        state = {**trainer.state(), "fingerprint": expected, "run_root": run_root}
        save_checkpoint(state, checkpoint_uri(checkpoints, progress.epoch))
        print(
            f"epoch {progress.epoch}/{training.epochs}: "
            + " ".join(f"{name}={value:.4f}" for name, value in metrics.items())
            + f" (best val_loss={progress.best_val_loss:.4f} at epoch {progress.best_epoch})",
            flush=True,
        )

    tracking.start_experiment(config.registry.experiment_name)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{dataset.name}-{snapshot_id[:12]}") as active:
        run_id = active.info.run_id
        _log_params_once(run_id, params)
        lineage = {"dataset": dataset.name, "snapshot_id": snapshot_id, "mlsteps_version": mlsteps.__version__}
        mlflow.set_tags({**lineage, "run_root": run_root, **tags})
        storage.write_json(storage.join(out, MLFLOW_RUN_FILE), {"run_id": run_id})

        trainer.fit(criterion, train, validation, record_epoch)
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
        with tempfile.TemporaryDirectory() as tmp:
            profile = _reference_profile(config, frames, preprocessor, trainer.network, Path(tmp))
            model_info = log_model_package(
                preprocessor, trainer.network, _example_rows(frames["train"], dataset), profile
            )

    payload = {
        "mlflow_run_id": run_id,
        "model_uri": model_info.model_uri,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "metrics": {"val_loss": progress.best_val_loss, "val_roc_auc": progress.best_val_roc_auc},
        "device": device.type,
        "world_size": world.size,
        "train_rows_per_rank": world.share(train_rows),
        "checkpoint_uri": checkpoint_uri(checkpoints, progress.epoch),
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
    checkpoint_dir: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-dir",
            help="folder (path or URI) of this run's epoch checkpoints, read again when a retry resumes; give "
            "every run its own; default: <run-root>/train/checkpoints",
        ),
    ] = None,
) -> None:
    """Train the tabular network on the train split and log the model package to MLflow.

    Reads the preprocess step's result. Early-stops on validation loss (training.patience) and keeps the best
    epoch's weights. Writes a checkpoint per epoch under <run-root>/train/checkpoints/ or --checkpoint-dir; a
    retry for the same run root resumes from the latest one in the same MLflow run. Uses CUDA with bf16 autocast
    when present. Started by torchrun (through python -m mlsteps.distributed, which keeps exit code 2 for bad
    input) with one process per GPU, it trains data-parallel; training.batch_size rows per step are split over
    the processes.

    Args:
        run_root: folder of this run's artifacts; the preprocess step must have run for it.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.
        epochs: maximum number of epochs; default: training.epochs.
        learning_rate: AdamW learning rate; default: training.learning_rate.
        batch_size: rows per optimisation step; default: training.batch_size.
        tag: KEY=VALUE tags of the MLflow run, e.g. what triggered it.
        checkpoint_dir: folder of this run's epoch checkpoints, read again when a retry resumes (e.g. on a
            volume mounted in the pod); give every run its own; default: <run-root>/train/checkpoints.

    Examples:
        MLFLOW_TRACKING_URI=sqlite:///state/mlflow.db python -m mlsteps train --run-root ./state/runs/ml_retrain/m-1

        python -m mlsteps train --run-root s3://ml-artifacts/runs/ml_retrain/m-1 --epochs 30 --tag trigger=drift_alert

        python -m mlsteps.distributed --standalone --nnodes=1 --nproc-per-node=4 -m mlsteps train
            --run-root s3://ml-artifacts/runs/ml_retrain/m-1 --checkpoint-dir /checkpoints/ml_retrain/m-1
    """
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size}
    tags = parse_tags(tag or [])
    training = {key: value for key, value in overrides.items() if value is not None}
    run(run_root, load_pipeline_config(config, {"training": training}), tags, checkpoint_dir)
