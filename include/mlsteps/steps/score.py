"""score: batch-score a CSV or Parquet file with a registered model and append the rows to the prediction log.

The scored rows carry the model's predict contract for its task (``mlsteps.evaluation.tasks``): binary
``probability`` and ``prediction``; multiclass ``probability_<class>`` per class and ``prediction``; regression
``prediction``. The result summarises them per task: the predicted-class shares (and, binary, the positive rate)
or the mean predicted value.

The drift monitor reads the prediction log, so scored files count as traffic of the model version that scored
them. A retry for the same run root never logs the same rows twice: a completed run is skipped, and an
interrupted one rewrites its own log file (fixed name, same ``scored_at``) instead of adding another.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.features import numeric_frame, require_columns
from mlsteps.data.snapshots import read_table, table_format, unknown_extension_message, write_table
from mlsteps.errors import ConfigError, DataError, StepError
from mlsteps.evaluation.predictions import check_predictions
from mlsteps.evaluation.tasks import PREDICTION, is_classification
from mlsteps.monitoring import prediction_log

if TYPE_CHECKING:
    from mlsteps.inference import TaskInfo

STEP = "score"
PREDICTIONS_FILE = "predictions.parquet"
# Written before the log is appended: a retry of an interrupted run reuses its scored_at, hence its log file.
ATTEMPT_FILE = "attempt.json"
DEFAULT_BATCH_ROWS = 50_000
_ROWS_SHOWN = 5


def _model_version(client: Any, model_name: str, alias: str, version: int | None) -> int:
    """The version to score with: ``version`` when given (checked to exist), else the one behind ``alias``.

    Raises:
        StepError: the version or the alias does not exist in the registry.
    """
    from mlflow.exceptions import MlflowException

    if version is None:
        found = registry.alias_version_number(client, model_name, alias)
        if found is None:
            raise StepError(
                f"registered model {model_name!r} has no alias {alias!r} (or does not exist) in the MLflow registry: "
                "promote a version first, pass another --model-alias, or pass --model-version"
            )
        return found
    try:
        client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        if not registry.is_missing(exc):
            raise
        raise StepError(
            f"registered model {model_name!r} has no version {version} in the MLflow registry: "
            "pass an existing --model-version, or --model-alias instead"
        ) from None
    return version


def _model_input(frame: pd.DataFrame, dataset: DatasetConfig, what: str) -> pd.DataFrame:
    """The feature columns typed as serving sends them: numbers as float64, categories as strings.

    Raises:
        DataError: a feature column is missing, or a numeric one holds values that are not numbers or are infinite
            (the model would return NaN for those rows).
    """
    names = [column.name for column in dataset.features]
    require_columns(frame, names, what)
    try:
        numeric = numeric_frame(frame, dataset.numeric_features)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    infinite = np.isinf(numeric)
    if infinite.to_numpy().any():
        details = "; ".join(
            f"{column}: {int(rows.sum())} row(s), e.g. rows {np.flatnonzero(rows)[:_ROWS_SHOWN].tolist()}"
            for column, rows in infinite.items()
            if rows.any()
        )
        raise DataError(
            f"{what}: numeric feature column(s) hold infinite values ({details}; rows count from 0, header "
            "excluded). Replace them with numbers, or leave them empty to have them imputed like other nulls."
        )
    categorical = frame[dataset.categorical_features].astype("str")
    return pd.concat([numeric, categorical], axis=1)[names]


def _predict(model_uri: str, features: pd.DataFrame, batch_rows: int) -> tuple[pd.DataFrame, TaskInfo]:
    """The model's predict contract for every row, predicted ``batch_rows`` rows at a time, and its task.

    Raises:
        StepError: the model is not an mlsteps package with a task (logged by an older version), or its output
            breaks the contract.
    """
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    info = getattr(model.unwrap_python_model(), "info", None)
    if info is None:
        raise StepError(
            f"model {model_uri} has no task (task.json): it was logged by an older version of mlsteps; retrain it"
        )
    batches = (features.iloc[start : start + batch_rows] for start in range(0, len(features), batch_rows))
    checked = [
        check_predictions(model.predict(batch), len(batch), model_uri, info.task, info.classes) for batch in batches
    ]
    return pd.concat(checked, ignore_index=True), info


def _prediction_summary(info: TaskInfo, predictions: pd.Series) -> dict[str, Any]:
    """What the scored rows were predicted, in a few numbers of the result.

    Classification: ``class_shares`` (label -> share of rows, every class listed), and for binary the
    ``positive_rate`` (share of the positive class, the second of the classes); regression: ``mean_prediction``.
    """
    if not is_classification(info.task):
        return {"mean_prediction": float(predictions.mean())}
    labels = predictions.astype("str")
    shares = {str(label): float((labels == str(label)).mean()) for label in info.classes}
    summary: dict[str, Any] = {"class_shares": shares}
    if info.task == "binary":
        summary["positive_rate"] = shares[str(info.classes[1])]
    return summary


def _described(summary: dict[str, Any]) -> str:
    """The summary as a log line, e.g. ``class shares 0 0.8312, 1 0.1688; positive rate 0.1688``."""

    def text(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{key} {share:.4f}" for key, share in value.items())
        return f"{value:.4f}"

    return "; ".join(f"{name.replace('_', ' ')} {text(value)}" for name, value in summary.items())


def _scored_at(value: str | None, attempt: dict[str, Any] | None, identity: dict[str, Any]) -> pd.Timestamp:
    """The time the rows are logged at: ``--scored-at``, else that of an interrupted attempt, else now.

    Raises:
        ConfigError: ``--scored-at`` is not a date-time.
    """
    if value is not None:
        try:
            return prediction_log.as_utc(value)
        except ValueError as exc:
            raise ConfigError(f"--scored-at {exc}") from None
    if attempt is not None and all(attempt.get(key) == identity[key] for key in identity):
        return prediction_log.as_utc(attempt["scored_at"])
    return prediction_log.as_utc(pd.Timestamp.now(tz="UTC"))


def _log_file_stem(run_root: str, identity: dict[str, Any]) -> str:
    """A log file name fixed for this run root, input and model version, so a retry overwrites its own file."""
    key = json.dumps([registry.run_root_tag(run_root), identity], sort_keys=True)
    return f"{STEP}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}"


def run(
    run_root: str,
    config: PipelineConfig,
    input_uri: str,
    prediction_store: str,
    model_alias: str = registry.CHAMPION,
    model_version: int | None = None,
    output_uri: str | None = None,
    scored_at: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """Score a file with a registered model, log the rows to the prediction log and write the result.

    Args:
        run_root: folder of this run's artifacts.
        config: the pipeline config (``registry.model_name`` and the dataset's columns).
        input_uri: the CSV or Parquet file to score.
        prediction_store: root folder of the prediction log.
        model_alias: registry alias of the version to use, unless ``model_version`` is given.
        model_version: version to use instead of the alias.
        output_uri: extra copy of the scored rows, CSV or Parquet by extension.
        scored_at: ISO 8601 time the rows are logged at (no offset means UTC); default: that of an interrupted
            attempt for the same run root, input and version, else now.
        batch_rows: rows per predict call.

    Returns:
        The payload written to ``result.json``; when this run root already scored the same input with the same
        version and store, that earlier result, and nothing is logged again.

    Raises:
        ConfigError: ``output_uri`` has no CSV or Parquet extension, or ``scored_at`` is not a date-time.
        StepError: the version or alias does not exist, or the model has no task or breaks its output contract.
        DataError: the input cannot be read, lacks feature columns, or holds numeric values that are not finite
            numbers.
    """
    if output_uri is not None and table_format(output_uri) is None:
        raise ConfigError(f"--output-uri {output_uri}: {unknown_extension_message(output_uri)}")
    dataset = config.dataset
    model_name = config.registry.model_name
    version = _model_version(tracking.client(), model_name, model_alias, model_version)
    identity = {
        "input_uri": input_uri,
        "model_name": model_name,
        "model_version": version,
        "prediction_store": prediction_store,
    }
    previous = results.optional_result(run_root, STEP)
    if previous is not None and all(previous.get(key) == value for key, value in identity.items()):
        print(
            f"{STEP}: {input_uri} was already scored by {model_name} v{version} for this run root "
            f"({previous['rows']} rows logged at {previous['scored_at']}); skipping so the log holds them once",
            flush=True,
        )
        return previous

    id_column = dataset.id_column
    # ids are read as text, so codes such as 007 join with their labels as written
    frame = read_table(input_uri, text_columns=[*dataset.categorical_features, *([id_column] if id_column else [])])
    features = _model_input(frame, dataset, f"input {input_uri}")
    ids = frame[id_column] if id_column in frame.columns else None
    if ids is None:
        print(f"{STEP}: {input_uri} has no id column ({id_column}): random request ids are generated", flush=True)
    model_uri = registry.model_uri(model_name, version)
    predictions, info = _predict(model_uri, features, batch_rows)

    folder = results.step_dir(run_root, STEP)
    attempt_uri = storage.join(folder, ATTEMPT_FILE)
    attempt = storage.read_json(attempt_uri) if storage.exists(attempt_uri) else None
    logged_at = _scored_at(scored_at, attempt, identity)
    storage.write_json(attempt_uri, {**identity, "scored_at": logged_at.isoformat()})
    records = prediction_log.build_records(features, predictions, info, model_name, version, logged_at, ids)
    predictions_uri = storage.join(folder, PREDICTIONS_FILE)
    storage.write_parquet(records, predictions_uri)
    if output_uri is not None:
        write_table(records, output_uri)
    log_files = prediction_log.write_records(prediction_store, records, _log_file_stem(run_root, identity))

    summary = _prediction_summary(info, records[PREDICTION])
    print(
        f"{STEP}: scored {len(records)} rows of {input_uri} with {model_uri} ({info.task}): {_described(summary)}; "
        f"logged at {logged_at.isoformat()} to {', '.join(log_files)}",
        flush=True,
    )
    payload = {
        **identity,
        "model_alias": None if model_version is not None else model_alias,
        "model_uri": model_uri,
        "rows": len(records),
        "log_files": log_files,
        "task": info.task,
        **summary,
        "scored_at": logged_at.isoformat(),
        "predictions_uri": predictions_uri,
        "output_uri": output_uri,
    }
    results.write_result(run_root, STEP, payload)
    return payload


def main(
    run_root: RunRoot,
    input_uri: Annotated[
        str,
        typer.Option("--input-uri", help="CSV or Parquet file to score (.csv, .parquet, .pq; path, file:// or s3://)"),
    ],
    prediction_store: Annotated[
        str,
        typer.Option(
            "--prediction-store",
            help="root folder of the prediction log, e.g. <artifact root>/predictions (path or URI)",
        ),
    ],
    model_alias: Annotated[
        str, typer.Option("--model-alias", help="registry alias of the model version to score with")
    ] = registry.CHAMPION,
    model_version: Annotated[
        int | None,
        typer.Option("--model-version", min=1, help="model version to score with; replaces --model-alias"),
    ] = None,
    output_uri: Annotated[
        str | None,
        typer.Option(
            "--output-uri", help="also write the scored rows here (.csv, .parquet or .pq; path, file:// or s3://)"
        ),
    ] = None,
    scored_at: Annotated[
        str | None,
        typer.Option(
            "--scored-at",
            help="ISO 8601 time the rows are logged at (no offset means UTC), e.g. 2025-03-01T14:00:00Z; "
            "default: now. Places a batch in a given hour of the log (tests, demos, backfills)",
        ),
    ] = None,
    batch_rows: Annotated[
        int, typer.Option("--batch-rows", min=1, help="rows per predict call; bounds the model's memory")
    ] = DEFAULT_BATCH_ROWS,
    config: ConfigUri = None,
) -> None:
    r"""Score a file with a registered model and append the rows to the prediction log.

    Loads registry.model_name at --model-version, else at --model-alias,
    checks that the input has every feature column, predicts in batches of
    --batch-rows and appends one record per row (the dataset's id column as
    request_id, the features, the model's outputs for its task, model name
    and version, scored_at) to <prediction-store>/model=<name>/date=.../hour=.../.
    Writes the records to <run-root>/score/predictions.parquet (and to
    --output-uri when given) and result.json. Re-running for the same run
    root, input and model version skips, so no row is logged twice.

    Args:
        run_root: folder of this run's artifacts.
        input_uri: the CSV or Parquet file to score.
        prediction_store: root folder of the prediction log.
        model_alias: registry alias of the version to use (default champion).
        model_version: version to use instead of the alias.
        output_uri: extra copy of the scored rows, CSV or Parquet by extension.
        scored_at: ISO 8601 time the rows are logged at; default now.
        batch_rows: rows per predict call.
        config: pipeline config; registry.model_name and the dataset columns.

    Examples:
        python -m mlsteps score --run-root /tmp/runs/s1 \
            --input-uri data/new_customers.csv \
            --prediction-store /tmp/artifacts/predictions

        python -m mlsteps score --run-root s3://ml/runs/s2 \
            --input-uri s3://ml/in/week10.parquet \
            --prediction-store s3://ml/predictions \
            --model-version 3 --scored-at 2025-03-01T14:00:00Z
    """
    run(
        run_root,
        load_pipeline_config(config),
        input_uri,
        prediction_store,
        model_alias=model_alias,
        model_version=model_version,
        output_uri=output_uri,
        scored_at=scored_at,
        batch_rows=batch_rows,
    )
