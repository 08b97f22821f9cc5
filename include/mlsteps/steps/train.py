"""train: fit the configured model family on the train split, export it to ONNX, check the export against the native
model, and log the model package to MLflow.

The family (``training.model``: mlp, gbdt or your own ``module:Class``, see ``mlsteps.training.api``) only fits and
predicts; this step prepares its data for the task, tracks the run, and refuses an ONNX export that does not
reproduce the native model on the validation rows (exit code 2, nothing logged), so what evaluation scores and the
server serves is exactly what was trained.

Every candidate family writes under <run-root>/train/<family>/. Retries resume instead of starting over: the MLflow
run id is stored in mlflow_run.json there before training, so a retried pod continues in the same MLflow run; the
mlp family also writes a checkpoint every epoch under checkpoints/ there (or --checkpoint-dir/<family>) and continues
at the next epoch. Seeds and deterministic kernels make a run repeatable on the same hardware.

Started by torchrun with several processes (one per GPU, in one pod or in each pod of a multi-node Job), the mlp family
trains data-parallel: each rank trains on its part of every global batch of the epoch's shuffled rows, and only rank 0
talks to MLflow and writes checkpoints and the result. Other families run as one process.

Memory follows ``processing.batch_rows``, not the size of the splits: they are read and encoded that many rows at a
time into memory-mapped arrays in the step's work folder (``mlsteps.training.streaming``), which the families read in
blocks; the raw tables are never in memory whole. The drift reference profile reads one raw feature column at a time.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

import mlsteps
from mlsteps import tracking
from mlsteps.cli_options import ConfigUri, RunRoot, above_zero
from mlsteps.config import (
    DISTRIBUTED_FAMILIES,
    ColumnSpec,
    DatasetConfig,
    DriftConfig,
    PipelineConfig,
    load_pipeline_config,
)
from mlsteps.data import batches, storage
from mlsteps.data.features import TabularPreprocessor
from mlsteps.distributed import World
from mlsteps.errors import ConfigError
from mlsteps.evaluation.tasks import encode_target, is_classification, output_frame
from mlsteps.results import candidate_step, read_result, result_uri, safe_name, step_dir, write_result
from mlsteps.training.api import TrainingData
from mlsteps.training.checkpoints import CHECKPOINT_DIR
from mlsteps.training.families import load_trainer, trainer_context
from mlsteps.training.streaming import encode_split, read_rows
from mlsteps.training.trainer import select_device

STEP = "train"
MLFLOW_RUN_FILE = "mlflow_run.json"
# Validation rows the ONNX export is checked on (all of them when fewer): enough to meet every tree leaf that
# matters, few enough to keep the check to a second.
EXPORT_CHECK_ROWS = 10_000


def parse_tags(values: list[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into MLflow tags; ``KEY=`` sets nothing (a templated tag that does not apply).

    Raises:
        ConfigError: listing every value that is not ``KEY=VALUE``.
    """
    malformed = [value for value in values if "=" not in value or not value.partition("=")[0].strip()]
    if malformed:
        raise ConfigError(f"--tag values {malformed} are not KEY=VALUE: write them like --tag trigger=drift")
    return {key.strip(): value for key, _, value in (item.partition("=") for item in values) if value}


def default_checkpoint_dir(run_root: str, family: str) -> str:
    """Where a run's checkpoints of one family go unless --checkpoint-dir names another folder."""
    return storage.join(step_dir(run_root, candidate_step(family)), CHECKPOINT_DIR)


def training_data(
    frame: pd.DataFrame, preprocessor: TabularPreprocessor, dataset: DatasetConfig, what: str
) -> TrainingData:
    """One split as the families see it: the preprocessor's matrices and the target encoded for the task.

    The step itself encodes its splits batch by batch into files (``mlsteps.training.streaming.encode_split``),
    with the same values as this gives for the whole table in memory.
    """
    numeric, categories = preprocessor.transform(frame)
    target = dataset.target
    return TrainingData(numeric, categories, encode_target(frame[target.name], target.task, target.classes, what))


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


def _example_rows(uri: str, dataset: DatasetConfig, rows: int = 5) -> pd.DataFrame:
    """The split's first raw feature rows typed as serving sends them: numbers as float64 (nulls allowed), categories
    as strings. Only the first batch of ``rows`` rows is read."""
    types = {**dict.fromkeys(dataset.numeric_features, "float64"), **dict.fromkeys(dataset.categorical_features, "str")}
    columns = [column.name for column in dataset.features]
    frame = next(batches.iter_frames(uri, rows, columns), None)
    if frame is None:
        frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in columns})
    return frame[columns].head(rows).reset_index(drop=True).astype(types)


def _finished_result(run_root: str, run_id: str | None, params: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier result when this run root already finished training with the same params in the same MLflow run.

    Other params (a retry with more epochs, say) train again: the mlp family then resumes from its checkpoint.
    """
    uri = result_uri(run_root, candidate_step(params["model"]))
    if run_id is None or not storage.exists(uri):
        return None
    previous = storage.read_json(uri)
    same_params = previous.get("params") == json.loads(json.dumps(params))
    return previous if previous.get("mlflow_run_id") == run_id and same_params else None


def _reference_profile(config: PipelineConfig, train_uri: str, outputs: pd.DataFrame, folder: Path) -> Path:
    """Profile the train split's features and the model's validation outputs once, for every later drift check.

    Validation outputs, not train outputs: they are what the model gives on rows it did not fit, as in production.
    """
    from mlsteps.model import REFERENCE_PROFILE_FILE
    from mlsteps.monitoring.drift import build_profile, save_profile
    from mlsteps.monitoring.drift.profile import prediction_signals

    target = config.dataset.target
    signals = prediction_signals(target.task, target.classes or [], outputs)
    rows, features = feature_profiles(train_uri, config.dataset.features, config.processing.batch_rows, config.drift)
    profile = build_profile(pd.DataFrame(), [], predictions=signals, config=config.drift)
    path = folder / REFERENCE_PROFILE_FILE
    save_profile(replace(profile, rows=rows, features=features), str(path))
    return path


def feature_profiles(
    uri: str, features: list[ColumnSpec], batch_rows: int, drift: DriftConfig
) -> tuple[int, dict[str, Any]]:
    """The rows of a Parquet split and the drift profile of each feature, as ``build_profile`` makes them of the
    whole table (``build_profile_from_batches``: exactly, or within its stated bound on long numeric columns).

    Parquet is columnar, so each pass reads that column only, ``batch_rows`` rows at a time: memory holds one batch
    of one column and the profile's bounded state, whatever the rows.
    """
    from mlsteps.monitoring.drift.profile import build_profile_from_batches

    profiles: dict[str, Any] = {}
    rows = 0
    for spec in features:
        profile = build_profile_from_batches(batches.iter_frames(uri, batch_rows, [spec.name]), [spec], config=drift)
        profiles |= profile.features
        rows = profile.rows
    return rows, profiles


def _predict_in_batches(session: Any, data: TrainingData, task: str, batch_rows: int) -> np.ndarray:
    """``predict_raw`` of a split's rows, ``batch_rows`` at a time: memory holds one batch of features."""
    from mlsteps.inference import predict_raw

    return np.concatenate(
        [
            predict_raw(
                session,
                read_rows(data.numeric, start, start + batch_rows),
                read_rows(data.categories, start, start + batch_rows),
                task,
            )
            for start in range(0, max(len(data), 1), batch_rows)
        ]
    )


def _calibrator(task: str, classes: list[Any], y_true: Any, probabilities: Any) -> dict[str, Any] | None:
    """A classifier's calibration on the validation split, for estimating its performance before labels arrive.

    The validation split, not the train split: the model's probabilities on rows it fitted are overconfident.
    """
    from mlsteps.monitoring.performance.calibration import fit_calibrator

    return fit_calibrator(task, classes, y_true, probabilities).to_dict() if is_classification(task) else None


def run(
    run_root: str, config: PipelineConfig, tags: dict[str, str] | None = None, checkpoint_dir: str | None = None
) -> dict[str, Any] | None:
    """Train (or resume training) for one run root and log the model package to MLflow.

    Under torchrun with several processes (mlp only), every rank trains its shard and rank 0 alone tracks and writes.

    Args:
        run_root: folder of this run's artifacts; the preprocess step must have run for it.
        config: the pipeline config.
        tags: MLflow tags of the run, e.g. what triggered it.
        checkpoint_dir: folder of this run's checkpoints, one subfolder per family; default:
            <run-root>/train/<family>/checkpoints.

    Returns:
        The payload written to ``result.json``; None on the other ranks of a distributed run.

    Raises:
        ConfigError: ``cuda`` requested without a GPU, more torchrun processes than GPUs or than one for a family
            other than mlp, a trainer that does not load, or a retry changed settings its checkpoint depends on.
        DataError: a split lacks feature columns or has target values the task does not allow.
        ExportError: the ONNX export does not reproduce the native model.
    """
    family = config.training.model
    trainer_class = load_trainer(family)
    world = World.from_env()
    if world.size > 1 and family not in DISTRIBUTED_FAMILIES:
        raise ConfigError(
            f"training.model {family!r} trains in one process, but torchrun started {world.size}: set "
            f"runtime.steps.train.gpus to 0 or 1 and runtime.steps.train.nodes to 1, or train {DISTRIBUTED_FAMILIES}"
        )
    device = world.place(select_device(config.training.device))
    # the fluent MLflow calls (start_run, log_model) fail as the client's do: refusals exit 2, outages are retried
    with world.process_group(device), tracking.mlflow_errors():
        return _train(
            run_root,
            config,
            tags or {},
            storage.join(checkpoint_dir, safe_name(family))
            if checkpoint_dir
            else default_checkpoint_dir(run_root, family),
            world,
            str(device),
            trainer_class,
        )


def _train(
    run_root: str,
    config: PipelineConfig,
    tags: dict[str, str],
    checkpoints: str,
    world: World,
    device: str,
    trainer_class: type,
) -> dict[str, Any] | None:
    """The body of ``run`` on one rank, inside its process group."""
    import mlflow

    from mlsteps.inference import TaskInfo, onnx_session
    from mlsteps.model import log_model_package
    from mlsteps.training.onnx_export import check_export, to_contract

    dataset, training, target = config.dataset, config.training, config.dataset.target
    family = training.model
    upstream = read_result(run_root, "preprocess")
    snapshot_id = upstream["snapshot_id"]
    preprocessor = TabularPreprocessor.from_dict(storage.read_json(upstream["preprocessor_uri"]))
    split_uris = {name: upstream[f"{name}_uri"] for name in ("train", "validation")}
    batch_rows = config.processing.batch_rows
    out = step_dir(run_root, candidate_step(family))
    run_id = _stored_run_id(out)
    params = {
        **training.model_dump(exclude={"device", "params", "gbdt"}),
        **({f"gbdt.{key}": value for key, value in training.gbdt.model_dump().items()} if family == "gbdt" else {}),
        **({f"params.{key}": value for key, value in training.params.items()} if ":" in family else {}),
        "task": target.task,
        "device": device,
        "world_size": world.size,
        "dataset": dataset.name,
        "snapshot_id": snapshot_id,
        "train_rows": batches.parquet_rows(split_uris["train"]),
        "validation_rows": batches.parquet_rows(split_uris["validation"]),
    }
    if world.is_main and (previous := _finished_result(run_root, run_id, params)) is not None:
        print(f"{STEP}: already finished for this run root (MLflow run {run_id}); nothing to do", flush=True)
        return previous

    with tempfile.TemporaryDirectory(prefix="train-") as work_dir:
        train, validation = (
            encode_split(uri, preprocessor, dataset, f"{name} split {uri}", Path(work_dir) / "data" / name, batch_rows)
            for name, uri in split_uris.items()
        )
        context = trainer_context(
            training,
            family,
            target,
            preprocessor,
            device,
            work_dir=work_dir,
            log_metrics=mlflow.log_metrics if world.is_main else lambda metrics, step=None: None,
            checkpoint_dir=checkpoints,
            # batch_rows sets the windows of the epoch's order: another value trains on other batches.
            resume_key={
                "run_root": run_root,
                "snapshot_id": snapshot_id,
                "preprocessor": preprocessor.to_dict(),
                "processing.batch_rows": batch_rows,
            },
            batch_rows=batch_rows,
        )
        if not world.is_main:
            trainer_class(context).fit(train, validation)
            return None

        tracking.start_experiment(config.registry.experiment_name)
        run_name = None if run_id else f"{dataset.name}-{family.rpartition(':')[2]}-{snapshot_id[:12]}"
        with mlflow.start_run(run_id=run_id, run_name=run_name) as active:
            run_id = active.info.run_id
            _log_params_once(run_id, params)
            lineage = {"dataset": dataset.name, "snapshot_id": snapshot_id, "mlsteps_version": mlsteps.__version__}
            mlflow.set_tags({**lineage, "run_root": run_root, "family": family, "task": target.task, **tags})
            storage.write_json(storage.join(out, MLFLOW_RUN_FILE), {"run_id": run_id})

            trainer = trainer_class(context)
            fit_metrics = trainer.fit(train, validation)
            mlflow.log_metrics(
                {f"best_{key}" if key.startswith("val_") else key: value for key, value in fit_metrics.items()}
            )
            numeric, categories = (
                read_rows(values, 0, EXPORT_CHECK_ROWS) for values in (validation.numeric, validation.categories)
            )
            exported = to_contract(
                trainer.to_onnx(numeric, categories), target.task, numeric.shape[1], categories.shape[1]
            )
            check = check_export(
                exported, trainer.predict(numeric, categories), numeric, categories, target.task, family=family
            )
            print(
                f"{STEP}: the ONNX export reproduces the {family} model on {check.rows} validation rows: largest "
                f"difference {check.max_abs_difference:.3g} <= tolerance {check.tolerance}",
                flush=True,
            )
            info = TaskInfo(
                task=target.task,
                classes=list(target.classes or []),
                target=target.name,
                family=family,
                export_check=asdict(check),
            )
            mlflow.log_dict(preprocessor.to_dict(), "preprocessor.json")
            if hasattr(trainer, "save"):
                native = Path(work_dir) / "native_model"
                native.mkdir()
                trainer.save(native)
                mlflow.log_artifacts(str(native), "native_model")
            # The validation split's outputs of the exported model, from the matrices training already made.
            session = onnx_session(exported.SerializeToString())
            raw = _predict_in_batches(session, validation, target.task, batch_rows)
            outputs = output_frame(target.task, info.classes, raw)
            profile = _reference_profile(config, split_uris["train"], outputs, Path(work_dir))
            model_info = log_model_package(
                preprocessor,
                exported,
                info,
                _example_rows(split_uris["train"], dataset),
                profile,
                _calibrator(target.task, info.classes, read_rows(validation.target, 0, len(validation)), raw),
            )

    payload = {
        "mlflow_run_id": run_id,
        "model_uri": model_info.model_uri,
        "family": family,
        "task": target.task,
        "metrics": fit_metrics,
        "export_check": asdict(check),
        "device": device,
        "world_size": world.size,
        "checkpoint_dir": checkpoints,
        "params": params,
        "snapshot_id": snapshot_id,
    }
    write_result(run_root, candidate_step(family), payload)
    summary = ", ".join(f"{key}={value:.4g}" for key, value in fit_metrics.items())
    print(f"{STEP}: {family} trained ({summary}); model {model_info.model_uri}", flush=True)
    return payload


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, max=1000, help="mlp: maximum number of epochs; default: training.epochs"),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            max=1.0,
            callback=above_zero,
            help="mlp: AdamW learning rate, above 0; default: training.learning_rate",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="mlp: rows per optimisation step; default: training.batch_size"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="the family: mlp, gbdt or module:Class; default: training.model"),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="KEY=VALUE tag of the MLflow run, repeatable (e.g. --tag trigger=drift)"),
    ] = None,
    checkpoint_dir: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-dir",
            help="folder (path or URI) of this run's epoch checkpoints, read again when a retry resumes; give "
            "every run its own (each family uses a subfolder); default: <run-root>/train/<family>/checkpoints",
        ),
    ] = None,
) -> None:
    """Train the configured model family on the train split and log its checked ONNX package to MLflow.

    Reads the preprocess step's result. The family is training.model (mlp, gbdt or module:Class). The export to
    ONNX is checked against the native model on the validation rows and refused (exit 2) when they differ. The mlp
    family early-stops on validation loss (training.patience), keeps the best epoch's weights and writes a
    checkpoint per epoch under <run-root>/train/<family>/checkpoints/ or --checkpoint-dir/<family>; a retry for
    the same run root resumes from the latest one in the same MLflow run. Uses CUDA (bf16 autocast for mlp,
    device=cuda for gbdt) when present. Started by torchrun (through python -m mlsteps.distributed, which keeps
    exit code 2 for bad input) with one process per GPU, mlp trains data-parallel; training.batch_size rows per
    step are split over the processes.

    Args:
        run_root: folder of this run's artifacts; the preprocess step must have run for it.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.
        epochs: maximum number of epochs; default: training.epochs.
        learning_rate: AdamW learning rate; default: training.learning_rate.
        batch_size: rows per optimisation step; default: training.batch_size.
        model: the model family; default: training.model.
        tag: KEY=VALUE tags of the MLflow run, e.g. what triggered it.
        checkpoint_dir: folder of this run's epoch checkpoints, read again when a retry resumes (e.g. on a
            volume mounted in the pod); give every run its own; default: <run-root>/train/<family>/checkpoints.

    Examples:
        MLFLOW_TRACKING_URI=sqlite:///state/mlflow.db python -m mlsteps train --run-root ./state/runs/ml_retrain/m-1

        python -m mlsteps train --run-root s3://ml-artifacts/runs/ml_retrain/m-1 --epochs 30 --tag trigger=drift

        python -m mlsteps.distributed --standalone --nnodes=1 --nproc-per-node=4 -m mlsteps train
            --run-root s3://ml-artifacts/runs/ml_retrain/m-1 --checkpoint-dir /checkpoints/ml_retrain/m-1

        JOB_COMPLETION_INDEX=0 python -m mlsteps.distributed --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d
            --rdzv-endpoint=node-0:29400 --rdzv-id=m-1 -m mlsteps train --run-root s3://ml-artifacts/runs/m-1
            (and the same with JOB_COMPLETION_INDEX=1 on the second node)
    """
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "model": model}
    tags = parse_tags(tag or [])
    training = {key: value for key, value in overrides.items() if value is not None}
    run(run_root, load_pipeline_config(config, {"training": training}), tags, checkpoint_dir)
