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

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

import mlsteps
from mlsteps import tracking
from mlsteps.cli_options import ConfigUri, RunRoot, above_zero
from mlsteps.config import DatasetConfig, PipelineConfig, TrainingConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.features import TabularPreprocessor, binary_labels
from mlsteps.distributed import World
from mlsteps.errors import ConfigError
from mlsteps.results import read_result, result_uri, step_dir, write_result
from mlsteps.training.checkpoints import (
    CHECKPOINT_DIR,
    check_resumable,
    checkpoint_uri,
    fingerprint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mlsteps.training.trainer import Progress, Split, Trainer, select_device

if TYPE_CHECKING:
    import torch

STEP = "train"
MLFLOW_RUN_FILE = "mlflow_run.json"


def parse_tags(values: list[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into MLflow tags; ``KEY=`` sets nothing (a templated tag that does not apply).

    Raises:
        ConfigError: listing every value that is not ``KEY=VALUE``.
    """
    malformed = [value for value in values if "=" not in value or not value.partition("=")[0].strip()]
    if malformed:
        raise ConfigError(f"--tag values {malformed} are not KEY=VALUE: write them like --tag trigger=drift_alert")
    return {key.strip(): value for key, _, value in (item.partition("=") for item in values) if value}


def default_checkpoint_dir(run_root: str) -> str:
    """Where a run's checkpoints go unless --checkpoint-dir names another folder."""
    return storage.join(step_dir(run_root, STEP), CHECKPOINT_DIR)


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
        int | None,
        typer.Option("--epochs", min=1, max=1000, help="maximum number of epochs; default: training.epochs"),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            max=1.0,
            callback=above_zero,
            help="AdamW learning rate, above 0; default: training.learning_rate",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="rows per optimisation step; default: training.batch_size"),
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
