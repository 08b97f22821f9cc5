"""score: batch-score a CSV or Parquet file with a registered model and append the rows to the prediction log.

The scored rows carry the model's predict contract for its task (``mlsteps.evaluation.tasks``): binary
``probability`` and ``prediction``; multiclass ``probability_<class>`` per class and ``prediction``; regression
``prediction``. The result summarises them per task: the predicted-class shares (and, binary, the positive rate)
or the mean predicted value.

The drift monitor reads the prediction log, so scored files count as traffic of the model version that scored
them. A retry for the same run root never logs the same rows twice: a completed run is skipped, and an
interrupted one rewrites its own log file (fixed name, same ``scored_at``) instead of adding another.

The input is read ``processing.batch_rows`` rows at a time (``snapshots.read_batches``), so memory follows that
setting, not the size of the file. Each batch is predicted, turned into records and appended to
``predictions.parquet``, the ``--output-uri`` copy and the log file, each written to a temporary file that takes its
place only once every batch was scored: a value the model cannot score in the last rows leaves no output and no log
rows behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.batches import CsvBatchWriter, ParquetBatchWriter
from mlsteps.data.features import numeric_frame, require_columns
from mlsteps.data.snapshots import read_batches, table_format, unknown_extension_message
from mlsteps.errors import ConfigError, DataError, StepError
from mlsteps.evaluation.predictions import check_predictions
from mlsteps.evaluation.tasks import PREDICTION, is_classification
from mlsteps.monitoring import prediction_log

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mlflow.pyfunc import PyFuncModel

    from mlsteps.inference import TaskInfo

STEP = "score"
PREDICTIONS_FILE = "predictions.parquet"
# Written before the log is appended: a retry of an interrupted run reuses its scored_at, hence its log file.
ATTEMPT_FILE = "attempt.json"
DEFAULT_BATCH_ROWS = 50_000
_ROWS_SHOWN = 5
_VALUES_SHOWN = 3  # as many as numeric_frame names per column


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


class _BadValues:
    """Feature values the model cannot score, gathered over every batch so the error describes the whole file."""

    def __init__(self) -> None:
        self.not_numbers: dict[str, list[Any]] = {}
        self.infinite_rows: dict[str, int] = {}
        self.infinite_shown: dict[str, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.not_numbers or self.infinite_rows)

    def note_not_numbers(self, frame: pd.DataFrame, columns: Sequence[str]) -> None:
        """Keep the first values of each column that are not numbers (as ``numeric_frame`` finds them)."""
        for column in columns:
            values = frame[column]
            bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
            if bad.any():
                kept = self.not_numbers.setdefault(column, [])
                kept.extend(values[bad].head(_VALUES_SHOWN - len(kept)).tolist())

    def note_infinite(self, infinite: pd.DataFrame, first_row: int) -> None:
        """Count each column's infinite values and keep the first row numbers (counted over the whole file)."""
        for column, rows in infinite.items():
            if rows.any():
                self.infinite_rows[str(column)] = self.infinite_rows.get(str(column), 0) + int(rows.sum())
                shown = self.infinite_shown.setdefault(str(column), [])
                shown.extend((first_row + np.flatnonzero(rows)[: _ROWS_SHOWN - len(shown)]).tolist())

    def error(self, what: str, columns: Sequence[str]) -> DataError:
        """The error the whole input read at once gives: values that are not numbers first, else infinite ones."""
        if self.not_numbers:
            named = [column for column in columns if column in self.not_numbers]
            examples = pd.DataFrame({column: pd.Series(self.not_numbers[column], dtype=object) for column in named})
            try:
                numeric_frame(examples, named)
            except DataError as exc:
                return DataError(f"{what}: {exc}")
        details = "; ".join(
            f"{column}: {self.infinite_rows[column]} row(s), e.g. rows {self.infinite_shown[column]}"
            for column in columns
            if column in self.infinite_rows
        )
        return DataError(
            f"{what}: numeric feature column(s) hold infinite values ({details}; rows count from 0, header "
            "excluded). Replace them with numbers, or leave them empty to have them imputed like other nulls."
        )


def _model_input(
    frame: pd.DataFrame, dataset: DatasetConfig, what: str, bad: _BadValues, first_row: int
) -> pd.DataFrame | None:
    """A batch's feature columns typed as serving sends them: numbers as float64, categories as strings.

    Returns:
        None when this batch or an earlier one holds numeric values the model cannot score (values that are not
        numbers or are infinite, for which it would return NaN); ``bad`` notes them, for the error raised once
        the whole input was read.

    Raises:
        DataError: a feature column is missing.
    """
    names = [column.name for column in dataset.features]
    require_columns(frame, names, what)
    try:
        numeric = numeric_frame(frame, dataset.numeric_features)
    except DataError:
        bad.note_not_numbers(frame, dataset.numeric_features)
        return None
    infinite = np.isinf(numeric)
    if infinite.to_numpy().any():
        bad.note_infinite(infinite, first_row)
    if bad:
        return None
    categorical = frame[dataset.categorical_features].astype("str")
    return pd.concat([numeric, categorical], axis=1)[names]


def _load_model(model_uri: str) -> tuple[PyFuncModel, TaskInfo]:
    """The model and its task.

    Raises:
        StepError: the model is not an mlsteps package with a task (logged by an older version).
    """
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    info = getattr(model.unwrap_python_model(), "info", None)
    if info is None:
        raise StepError(
            f"model {model_uri} has no task (task.json): it was logged by an older version of mlsteps; retrain it"
        )
    return model, info


def _predict(
    model: PyFuncModel, info: TaskInfo, model_uri: str, features: pd.DataFrame, batch_rows: int
) -> pd.DataFrame:
    """The model's predict contract for every row, predicted ``batch_rows`` rows at a time.

    Raises:
        StepError: the model's output breaks the contract.
    """
    chunks = (features.iloc[start : start + batch_rows] for start in range(0, len(features), batch_rows))
    checked = [
        check_predictions(model.predict(chunk), len(chunk), model_uri, info.task, info.classes) for chunk in chunks
    ]
    return pd.concat(checked, ignore_index=True)


class _PredictionTally:
    """What the scored rows were predicted, summed batch by batch: the result's few numbers without holding them.

    Classification: ``class_shares`` (label -> share of rows, every class listed), and for binary the
    ``positive_rate`` (share of the positive class, the second of the classes); regression: ``mean_prediction``.
    """

    def __init__(self, info: TaskInfo) -> None:
        self.info = info
        self.rows = 0
        self.class_rows = dict.fromkeys(map(str, info.classes or []), 0)
        # the sum of the predicted values as high + low part, so that it stays exact over any number of batches
        self.high = self.low = 0.0

    def add(self, predictions: pd.Series) -> None:
        self.rows += len(predictions)
        if is_classification(self.info.task):
            counts = predictions.astype("str").value_counts()
            for label in self.class_rows:
                self.class_rows[label] += int(counts.get(label, 0))
            return
        values = [self.high, self.low, *predictions.to_numpy(dtype=np.float64).tolist()]
        total = math.fsum(values)
        self.high, self.low = total, math.fsum([*values, -total])

    def summary(self) -> dict[str, Any]:
        if not is_classification(self.info.task):
            return {"mean_prediction": math.fsum([self.high, self.low]) / self.rows}
        shares = {label: rows / self.rows for label, rows in self.class_rows.items()}
        summary: dict[str, Any] = {"class_shares": shares}
        if self.info.task == "binary":
            summary["positive_rate"] = shares[str(self.info.classes[1])]
        return summary


def _table_writer(uri: str) -> ParquetBatchWriter | CsvBatchWriter:
    """A batch writer for a CSV or Parquet file, chosen by the URI's extension (as ``write_table`` does)."""
    return CsvBatchWriter(uri) if table_format(uri) == "csv" else ParquetBatchWriter(uri)


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
        config: the pipeline config (``registry.model_name``, the dataset's columns, and
            ``processing.batch_rows``: the rows read, scored and written at a time).
        input_uri: the CSV or Parquet file to score.
        prediction_store: root folder of the prediction log.
        model_alias: registry alias of the version to use, unless ``model_version`` is given.
        model_version: version to use instead of the alias.
        output_uri: extra copy of the scored rows, CSV or Parquet by extension.
        scored_at: ISO 8601 time the rows are logged at (no offset means UTC); default: that of an interrupted
            attempt for the same run root, input and version, else now.
        batch_rows: rows per predict call, within each batch read.

    Returns:
        The payload written to ``result.json``; when this run root already scored the same input with the same
        version and store, that earlier result, and nothing is logged again.

    Raises:
        ConfigError: ``output_uri`` has no CSV or Parquet extension, or ``scored_at`` is not a date-time.
        StepError: the version or alias does not exist, or the model has no task or breaks its output contract.
        DataError: the input cannot be read, lacks feature columns, or holds numeric values that are not finite
            numbers (counted over the whole file). Nothing is written or logged then.
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
    text_columns = [*dataset.categorical_features, *([id_column] if id_column else [])]
    what = f"input {input_uri}"
    model_uri = registry.model_uri(model_name, version)
    folder = results.step_dir(run_root, STEP)
    attempt_uri = storage.join(folder, ATTEMPT_FILE)
    attempt = storage.read_json(attempt_uri) if storage.exists(attempt_uri) else None
    logged_at = _scored_at(scored_at, attempt, identity)
    predictions_uri = storage.join(folder, PREDICTIONS_FILE)
    # every record has this scored_at, so the log gets one file, named as write_records names it
    log_file = prediction_log.file_uri(prediction_store, model_name, logged_at, _log_file_stem(run_root, identity))

    bad = _BadValues()
    model: PyFuncModel | None = None
    tally: _PredictionTally | None = None
    writers: list[ParquetBatchWriter | CsvBatchWriter] = []
    rows = 0
    with contextlib.ExitStack() as stack:  # closed in reverse: predictions.parquet, the output, then the log
        for frame in read_batches(input_uri, config.processing.batch_rows, text_columns):
            first_row, rows = rows, rows + len(frame)
            features = _model_input(frame, dataset, what, bad, first_row)
            if features is None:
                continue  # the remaining batches are only checked, so that the error counts the whole file
            ids = frame[id_column] if id_column in frame.columns else None
            if model is None:
                if ids is None:
                    print(
                        f"{STEP}: {input_uri} has no id column ({id_column}): random request ids are generated",
                        flush=True,
                    )
                model, info = _load_model(model_uri)
                tally = _PredictionTally(info)
                sinks = [log_file, *([output_uri] if output_uri else []), predictions_uri]
                writers = [stack.enter_context(_table_writer(uri)) for uri in sinks]
            predictions = _predict(model, info, model_uri, features, batch_rows)
            records = prediction_log.build_records(features, predictions, info, model_name, version, logged_at, ids)
            for writer in writers:
                writer.write(records)
            tally.add(records[PREDICTION])
        if bad:
            raise bad.error(what, dataset.numeric_features)
        # before the log file appears: a retry of an interrupted run reuses this scored_at, hence that file
        storage.write_json(attempt_uri, {**identity, "scored_at": logged_at.isoformat()})
    log_files = [log_file]

    summary = tally.summary()
    print(
        f"{STEP}: scored {rows} rows of {input_uri} with {model_uri} ({tally.info.task}): {_described(summary)}; "
        f"logged at {logged_at.isoformat()} to {', '.join(log_files)}",
        flush=True,
    )
    payload = {
        **identity,
        "model_alias": None if model_version is not None else model_alias,
        "model_uri": model_uri,
        "rows": rows,
        "log_files": log_files,
        "task": tally.info.task,
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
    reads the input processing.batch_rows rows at a time, checks that it has
    every feature column, predicts in batches of --batch-rows and appends one record per row (the dataset's id column as
    request_id, the features, the model's outputs for its task, model name
    and version, scored_at) to <prediction-store>/model=<name>/date=.../hour=.../.
    Writes the records to <run-root>/score/predictions.parquet (and to
    --output-uri when given) and result.json. Re-running for the same run
    root, input and model version skips, so no row is logged twice. A
    failure leaves no output and no logged rows.

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
