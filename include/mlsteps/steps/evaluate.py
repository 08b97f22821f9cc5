"""evaluate: score every candidate and the current champion on the same holdout, pick the best candidate as the
challenger (on the primary metric of the dataset's task) and judge the promotion gate.

A failed gate is a decision, not an error: the step exits 0 and the orchestrator branches on ``gate.passed``.

The holdout is read ``processing.batch_rows`` rows at a time: once for the target and the slice columns, then once
per model, which is loaded once and predicts batch by batch. What is kept for every row is only what the metrics need
(the encoded target, each model's output and a category code per slice column), so the raw columns never sit in
memory whole, and the results are those of reading the holdout in one piece.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import batches, storage
from mlsteps.data.features import require_columns
from mlsteps.errors import DataError
from mlsteps.evaluation.metrics import MISSING_SLICE, best_candidate, gate_decision, slice_metrics, task_metrics
from mlsteps.evaluation.predictions import check_predictions
from mlsteps.evaluation.report import curves, render_report_html
from mlsteps.evaluation.tasks import PREDICTION, TargetEncoding, is_classification, probabilities_of

STEP = "evaluate"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"


@dataclass(frozen=True)
class _Holdout:
    """What the metrics need of the holdout, kept for all its rows; the feature columns are read batch by batch.

    Per row that is the encoded target (8 bytes) and one category code per slice column (4 bytes each), against
    hundreds of bytes for the raw columns: memory follows ``processing.batch_rows``, plus a few numbers per row.
    """

    uri: str
    rows: int
    y_true: np.ndarray
    slices: pd.DataFrame  # one categorical column per slice column (codes + the keys of ``slice_metrics``)
    feature_types: dict[str, str]  # the dtype each feature is cast to, as the model signature types it
    nullable_integers: list[str]  # integer columns with a null somewhere: read as float64 whole, so in every batch


def _features_of(batch: pd.DataFrame, holdout: _Holdout) -> pd.DataFrame:
    """A batch's feature columns typed as serving sends rows: numbers as float64, categories as strings.

    An integer column with a null anywhere in the file is float64 when the whole file is read (pandas has no null
    integer there), so its categories read ``"1.0"``; a batch without nulls is cast to float64 first to match.
    """
    for column in holdout.nullable_integers:
        batch[column] = batch[column].astype("float64")
    return batch[list(holdout.feature_types)].astype(holdout.feature_types)


def _slice_codes(keys: pd.Series, categories: dict[str, int]) -> np.ndarray:
    """Category codes of one batch's slice keys, in the order keys were first seen over all batches."""
    batch = pd.Categorical(keys)
    for key in batch.categories:
        categories.setdefault(str(key), len(categories))
    to_global = np.array([categories[str(key)] for key in batch.categories], dtype=np.int32)
    return to_global[batch.codes] if to_global.size else np.zeros(len(keys), dtype=np.int32)


def _slice_keys(categories: dict[str, int], float_integers: bool) -> list[str]:
    """The slice keys in code order; an integer column with a null somewhere reads as float64 (``"1.0"``)."""
    keys = list(categories)
    if not float_integers:
        return keys
    return [key if key == MISSING_SLICE else str(float(int(key))) for key in keys]


def _read_holdout(holdout_uri: str, dataset: DatasetConfig, batch_rows: int) -> _Holdout:
    """The holdout's encoded target (``tasks.encode_target``) and slice keys, read ``batch_rows`` rows at a time.

    Raises:
        DataError: the holdout lacks a feature or the target column, has no rows, or its target does not fit
            ``dataset.target`` (counting the bad values of all rows).
    """
    import pyarrow as pa

    feature_names = [column.name for column in dataset.features]
    target = dataset.target
    what = f"holdout {holdout_uri}"
    schema = batches.parquet_schema(holdout_uri)
    require_columns(schema.empty_table().to_pandas(), [*feature_names, target.name], what)
    rows = batches.parquet_rows(holdout_uri)
    if rows == 0:
        raise DataError(f"{holdout_uri}: holdout has no rows: raise split.holdout_fraction or use a larger snapshot")
    integers = [name for name in feature_names if pa.types.is_integer(schema.field(name).type)]
    slice_columns = list(dataset.slice_columns)
    encoding = TargetEncoding(target.task, target.classes, what)
    codes: dict[str, list[np.ndarray]] = {column: [] for column in slice_columns}
    categories: dict[str, dict[str, int]] = {column: {} for column in slice_columns}
    y_true, with_nulls = [], set()
    columns = list(dict.fromkeys([target.name, *slice_columns, *integers]))
    for batch in batches.iter_frames(holdout_uri, batch_rows, columns):
        y_true.append(encoding.encode(batch[target.name]))
        with_nulls.update(column for column in integers if batch[column].isna().any())
        for column in slice_columns:
            keys = batch[column].astype("Int64") if column in integers else batch[column].astype("str")
            codes[column].append(_slice_codes(keys.astype("string").fillna(MISSING_SLICE), categories[column]))
    encoding.check()
    slices = pd.DataFrame(
        {
            column: pd.Categorical.from_codes(
                np.concatenate(codes[column]), categories=_slice_keys(categories[column], column in with_nulls)
            )
            for column in slice_columns
        },
        index=pd.RangeIndex(rows),
    )
    # Typed as serving sends rows (the model signature's types): numbers as float64, categories as strings.
    types = {**dict.fromkeys(dataset.numeric_features, "float64"), **dict.fromkeys(dataset.categorical_features, "str")}
    return _Holdout(
        uri=holdout_uri,
        rows=rows,
        y_true=np.concatenate(y_true),
        slices=slices,
        feature_types={name: types[name] for name in feature_names},
        nullable_integers=[column for column in integers if column in with_nulls],
    )


def _model_output(model_uri: str, holdout: _Holdout, dataset: DatasetConfig, batch_rows: int) -> np.ndarray:
    """The model's raw output on the holdout: class probabilities (rows x classes) or predicted values.

    The package is loaded once, as any consumer loads it (MLflow pyfunc, the predict contract), so evaluation judges
    exactly what serving and scoring will run; it then predicts ``batch_rows`` holdout rows at a time. Only the
    output is kept: rows x classes float64, small next to the raw feature columns.

    Raises:
        StepError: the output of a batch breaks the predict contract of the task (counted in that batch).
    """
    import mlflow

    task, classes = dataset.target.task, dataset.target.classes
    model = mlflow.pyfunc.load_model(model_uri)
    outputs = []
    for batch in batches.iter_frames(holdout.uri, batch_rows, list(holdout.feature_types)):
        features = _features_of(batch, holdout)
        checked = check_predictions(model.predict(features), len(features), model_uri, task, classes)
        if is_classification(task):
            outputs.append(probabilities_of(task, classes or [], checked))
        else:
            outputs.append(checked[PREDICTION].to_numpy(dtype=np.float64))
    return np.concatenate(outputs)


def _score_model(model_uri: str, holdout: _Holdout, config: PipelineConfig) -> tuple[dict[str, Any], np.ndarray]:
    """One model's holdout metrics (with its URI) and its raw output, for the details of the models reported."""
    target = config.dataset.target
    output = _model_output(model_uri, holdout, config.dataset, config.processing.batch_rows)
    metrics = task_metrics(target.task, target.classes, holdout.y_true, output, config.evaluation.calibration_bins)
    print(f"{STEP}: {model_uri} on {metrics['rows']} holdout rows: {_summary(metrics)}", flush=True)
    return {"model_uri": model_uri, "metrics": metrics}, output


def _with_details(
    model: dict[str, Any], output: np.ndarray, holdout: _Holdout, config: PipelineConfig
) -> dict[str, Any]:
    """A reported model (challenger or champion) with its slices and the data of its plots."""
    target, evaluation = config.dataset.target, config.evaluation
    slices = slice_metrics(
        holdout.slices,
        config.dataset.slice_columns,
        target.task,
        target.classes,
        holdout.y_true,
        output,
        min_rows=evaluation.slice_min_rows,
        calibration_bins=evaluation.calibration_bins,
    )
    plots = curves(target.task, target.classes, holdout.y_true, output, evaluation.calibration_bins)
    return {**model, "slices": slices, "curves": plots}


def _summary(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float))


def _without_curves(model: dict[str, Any] | None) -> dict[str, Any] | None:
    """A model's entry for result.json: the plot data stays in report.json, so the result stays small."""
    return None if model is None else {key: value for key, value in model.items() if key != "curves"}


def _log_performance_reference(run_id: str, y_true: np.ndarray, output: np.ndarray, config: PipelineConfig) -> None:
    """The challenger's holdout labels and outputs, with every metric's sampling error, on its training run: once it
    is champion, the performance monitor's expected value and band at any window size. A retry writes the same file
    again."""
    from mlsteps.model import PERFORMANCE_REFERENCE_DIR, PERFORMANCE_REFERENCE_FILE
    from mlsteps.monitoring.performance.reference import PerformanceReference

    target = config.dataset.target
    reference = PerformanceReference.from_holdout(target.task, list(target.classes or []), y_true, output)
    reference = reference.with_sampling_errors(config.monitoring.performance.bootstrap_samples)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PERFORMANCE_REFERENCE_FILE
        reference.save(path)
        tracking.client().log_artifact(run_id, str(path), PERFORMANCE_REFERENCE_DIR)


def _challenger(
    run_root: str, holdout: _Holdout, config: PipelineConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every candidate family's model and pick the best on the primary metric as the challenger.

    Returns:
        The challenger (``family``, ``model_uri``, ``metrics``, ``slices``, ``curves``) and every candidate
        (``family``, ``model_uri``, ``metrics``), in the order of ``training.candidate_families``.
    """
    scored = {}
    for family in config.training.candidate_families:
        trained = results.read_result(run_root, results.candidate_step(family))
        model, output = _score_model(trained["model_uri"], holdout, config)
        scored[family] = ({"family": family, "mlflow_run_id": trained["mlflow_run_id"], **model}, output)
    candidates = [model for model, _ in scored.values()]
    primary = config.primary_metric
    chosen = best_candidate(
        {family: model["metrics"] for family, (model, _) in scored.items()}, primary, config.dataset.target.task
    )
    _log_performance_reference(scored[chosen][0]["mlflow_run_id"], holdout.y_true, scored[chosen][1], config)
    if len(scored) > 1:
        ranking = ", ".join(f"{model['family']} {primary}={model['metrics'][primary]}" for model in candidates)
        print(f"{STEP}: candidates {ranking}: {chosen} is the challenger", flush=True)
    return _with_details(*scored[chosen], holdout, config), candidates


def _record_on_training_runs(candidates: list[dict[str, Any]], challenger: str) -> None:
    """Each candidate's holdout metrics (``holdout_<metric>``) and whether it became the challenger, on its own
    MLflow training run, so the runs compare side by side in the MLflow UI. A retry records the same values."""
    from mlflow.entities import Metric, RunTag

    client = tracking.client()
    for candidate in candidates:
        numbers = {key: value for key, value in candidate["metrics"].items() if isinstance(value, int | float)}
        now = int(time.time() * 1000)
        client.log_batch(
            candidate["mlflow_run_id"],
            metrics=[Metric(f"holdout_{key}", float(value), now, 0) for key, value in numbers.items()],
            tags=[RunTag("challenger", str(candidate["family"] == challenger).lower())],
        )


def run(run_root: str, config: PipelineConfig) -> dict[str, Any]:
    """Score the candidates and the champion on the holdout, judge the gate for the best candidate, and write
    report.json, report.html and the result.

    Returns:
        The payload written to ``result.json``: the report without the plot data, plus ``report_uri`` and
        ``report_html_uri``.

    Raises:
        DataError: the holdout lacks columns or rows, or its target does not fit ``dataset.target``.
        StepError: a candidate's train result is missing, or a model's predictions break the task's contract.
    """
    model_name, target = config.registry.model_name, config.dataset.target
    preprocess = results.read_result(run_root, "preprocess")
    holdout = _read_holdout(preprocess["holdout_uri"], config.dataset, config.processing.batch_rows)

    challenger, candidates = _challenger(run_root, holdout, config)
    _record_on_training_runs(candidates, challenger["family"])
    champion_version = registry.alias_version(tracking.client(), model_name, registry.CHAMPION)
    champion = None
    if champion_version is None:
        print(f"{STEP}: {model_name} has no {registry.CHAMPION} yet: the gate judges the threshold only", flush=True)
    else:
        version = int(champion_version.version)
        model, output = _score_model(registry.model_uri(model_name, version), holdout, config)
        details = _with_details(model, output, holdout, config)
        champion = {"version": version, "run_id": champion_version.run_id, **details}

    gate = gate_decision(
        challenger["metrics"],
        champion["metrics"] if champion else None,
        config.evaluation,
        config.primary_metric,
        target.task,
    )
    for reason in gate.reasons:
        print(f"{STEP}: gate: {reason}", flush=True)
    print(f"{STEP}: gate {'PASSED' if gate.passed else 'FAILED'} for {challenger['model_uri']}", flush=True)

    report = {
        "model_name": model_name,
        "task": target.task,
        "classes": target.classes,
        "holdout_uri": preprocess["holdout_uri"],
        "snapshot_id": preprocess["snapshot_id"],
        "candidates": candidates,
        "challenger": challenger,
        "champion": champion,
        "gate": gate.to_dict(),
    }
    folder = results.step_dir(run_root, STEP)
    report_uri = storage.join(folder, REPORT_FILE)
    report_html_uri = storage.join(folder, REPORT_HTML_FILE)
    storage.write_json(report_uri, report)
    storage.write_text(report_html_uri, render_report_html(report))
    payload = {
        **report,
        "challenger": _without_curves(challenger),
        "champion": _without_curves(champion),
        "report_uri": report_uri,
        "report_html_uri": report_html_uri,
    }
    results.write_result(run_root, STEP, payload)
    return payload


NO_THRESHOLD = "none"


def _overrides(
    candidates: str | None,
    primary_metric: str | None,
    threshold: str | None,
    max_degradation: float | None,
    degradation: str | None,
) -> dict[str, Any]:
    """The CLI's options as config overrides; the config validates them (a ConfigError names what is wrong)."""
    given: dict[str, Any] = {
        "primary_metric": primary_metric,
        "max_degradation": max_degradation,
        "degradation": degradation,
    }
    evaluation = {key: value for key, value in given.items() if value is not None}
    if threshold is not None:
        evaluation["threshold"] = None if str(threshold).strip().lower() == NO_THRESHOLD else threshold
    overrides: dict[str, Any] = {"evaluation": evaluation} if evaluation else {}
    if candidates is not None:
        overrides["training"] = {"candidates": [name.strip() for name in candidates.split(",") if name.strip()]}
    return overrides


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            "--candidates",
            help="comma-separated families whose train results compete (the best on the primary metric becomes "
            "the challenger); overrides training.candidates",
        ),
    ] = None,
    primary_metric: Annotated[
        str | None,
        typer.Option(
            "--primary-metric",
            help="the gate's metric, one of the task's (mlsteps.evaluation.tasks.METRICS); overrides the config. "
            "The config's threshold still applies: pass --threshold with it",
        ),
    ] = None,
    threshold: Annotated[
        str | None,
        typer.Option(
            "--threshold",
            help="the challenger's primary metric must reach this (at most this, when lower is better), or "
            f"{NO_THRESHOLD!r} for no absolute bar; overrides the config",
        ),
    ] = None,
    max_degradation: Annotated[
        float | None,
        typer.Option(
            "--max-degradation",
            min=0.0,
            help="largest worsening of the primary metric versus the champion that still passes; overrides the config",
        ),
    ] = None,
    degradation: Annotated[
        str | None,
        typer.Option(
            "--degradation",
            help="absolute: max-degradation in the metric's units; relative: a share of the champion's value "
            "(0.05 is 5%); overrides the config",
        ),
    ] = None,
) -> None:
    r"""Score the candidates and the champion on the same holdout and judge the promotion gate.

    Reads the preprocess result (holdout) and the train result of every
    candidate family (training.candidates, else training.model); the best on
    the primary metric is the challenger. The champion is the version behind
    the registry alias ``champion`` of registry.model_name, if there is one. Writes report.json (with the plot
    data), report.html and result.json under <run-root>/evaluate/. A failed
    gate still exits 0: gate.passed in result.json tells the orchestrator
    which way to go. A metric that does not fit the dataset's task, or a
    threshold outside the metric's range, is a config error (exit 2).

    Args:
        run_root: folder of this run's artifacts.
        config: pipeline config YAML.
        candidates: overrides training.candidates.
        primary_metric: overrides evaluation.primary_metric.
        threshold: overrides evaluation.threshold.
        max_degradation: overrides evaluation.max_degradation.
        degradation: overrides evaluation.degradation.

    Examples:
        python -m mlsteps evaluate --run-root /tmp/runs/r1

        python -m mlsteps evaluate --run-root s3://ml/runs/r1 --candidates mlp,gbdt \
            --primary-metric pr_auc --threshold 0.4 --max-degradation 0.005

        python -m mlsteps evaluate --run-root /tmp/runs/r1 \
            --threshold none --max-degradation 0.02 --degradation relative
    """
    overrides = _overrides(candidates, primary_metric, threshold, max_degradation, degradation)
    run(run_root, load_pipeline_config(config, overrides))
