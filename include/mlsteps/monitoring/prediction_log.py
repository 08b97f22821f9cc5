"""The prediction log: every scored row, stored as Parquet partitioned by model and hour, for drift and label joins.

Layout (hive-style, so pyarrow.dataset, Spark and Athena read it as a table with ``model``, ``date`` and ``hour``
partition columns)::

    <store>/model=<model name>/date=YYYY-MM-DD/hour=HH/<unique>.parquet

The default store is ``<artifact root>/predictions`` (``mlsteps.results.prediction_store``). Files are never
rewritten: each write adds new files with unique names, so concurrent writers (model server replicas, batch
``score`` runs) never clash, and each file appears whole or not at all (local writes are atomic renames, S3 puts
are atomic).

One record per scored row:

- ``request_id`` (string): the row's id. Batch scoring uses the dataset's ``id_column`` when the input has it, so
  labels that arrive later join on it (``mlsteps.monitoring.performance.labels.match_labels``); rows without an
  id get a random 128-bit hex id.
- every feature column as the model received it, under the dataset's column names (raw values: not imputed,
  not scaled). Log the frame the model scored, typed as its signature says (numbers as float64, categories as
  strings), so a column keeps one type across files.
- the model's outputs, the columns of its task's predict contract (``mlsteps.evaluation.tasks.output_columns``):
  binary ``probability``, multiclass ``probability_<class>`` per class (float64), and ``prediction``: the class
  label (int64 when every class label is an integer, else a string) or, for regression, the value (float64).
  ``output_schema`` gives them; the writer of a model's records needs its ``TaskInfo`` to know them.
- ``model_name`` (string), ``model_version`` (int64) and ``scored_at`` (UTC timestamp, microseconds; it decides
  the partition).

Reading is task-agnostic: a window returns every column its files hold, whole (``read_window``) or a bounded number
of rows at a time (``WindowReader``). Read one ``model_version`` at a time when
the versions of a model name predict differently typed labels.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlsteps.data import batches, storage
from mlsteps.errors import ConfigError, DataError
from mlsteps.evaluation.tasks import (
    PREDICTION,
    integer_labels,
    is_classification,
    output_columns,
    probability_columns,
)

if TYPE_CHECKING:
    from mlsteps.inference import TaskInfo

logger = logging.getLogger(__name__)

REQUEST_ID = "request_id"
# Requests whose id starts with this are smoke tests (the deploy step's): not production traffic, so a server does
# not log them, and they never reach a drift check.
SMOKE_REQUEST_PREFIX = "smoke-"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
# The columns every record has besides the features and the model's outputs, with their stored types.
RECORD_SCHEMA = pa.schema(
    [
        (REQUEST_ID, pa.large_string()),
        (MODEL_NAME, pa.large_string()),
        (MODEL_VERSION, pa.int64()),
        (SCORED_AT, TIMESTAMP_TYPE),
    ]
)
_PARTITION_FILE = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/[^/]+\.parquet$")
_READ_THREADS = 16  # S3 reads of many small files are latency-bound; local reads decompress outside the GIL

TimeLike = str | datetime | pd.Timestamp | np.datetime64


def as_utc(value: TimeLike) -> pd.Timestamp:
    """A point in time as a UTC timestamp (microseconds); a value without an offset is taken as UTC.

    Raises:
        ValueError: the value is not a date-time (ISO 8601 text such as ``2025-03-01T14:00:00Z``).
    """
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a date-time: write it like 2025-03-01T14:00:00Z ({exc})") from None
    if pd.isna(stamp):
        raise ValueError(f"{value!r} is not a date-time: write it like 2025-03-01T14:00:00Z")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.as_unit("us")


def window_before(window_end: TimeLike | None, hours: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The monitoring window ``[end - hours, end)``; no end: the start of the current hour.

    Raises:
        ConfigError: ``window_end`` is not a date-time.
    """
    try:
        end = as_utc(window_end) if window_end else pd.Timestamp.now(tz="UTC").floor("h").as_unit("us")
    except ValueError as exc:
        raise ConfigError(f"--window-end: {exc}") from None
    return end - pd.Timedelta(hours=hours), end


def model_prefix(store_uri: str, model_name: str) -> str:
    """The folder of one model's records (the name URL-encoded, as hive partitioning expects)."""
    return storage.join(store_uri, f"model={quote(model_name, safe='')}")


def _hour_folder(store_uri: str, model_name: str, hour: pd.Timestamp) -> str:
    return storage.join(model_prefix(store_uri, model_name), f"date={hour:%Y-%m-%d}", f"hour={hour:%H}")


def output_schema(info: TaskInfo) -> pa.Schema:
    """The model's output columns (its task's predict contract) with the types the log stores them as.

    Probabilities are float64; ``prediction`` is float64 for regression, int64 when every class label is an
    integer (so 0/1 labels stay numbers) and a string otherwise.
    """
    if not is_classification(info.task):
        label = pa.float64()
    else:
        label = pa.int64() if integer_labels(info.classes) else pa.large_string()
    probabilities = [pa.field(name, pa.float64()) for name in probability_columns(info.task, info.classes)]
    return pa.schema([*probabilities, pa.field(PREDICTION, label)])


def check_batch(
    features: pd.DataFrame, predictions: pd.DataFrame, info: TaskInfo, ids: Sequence[Any] | None = None
) -> None:
    """Check that features, predictions and ids describe the same rows and that the names do not clash.

    Raises:
        TypeError: features or predictions is not a DataFrame.
        ValueError: the row counts differ, an output column of the task is missing, or a feature has a record
            column's name.
    """
    if not isinstance(features, pd.DataFrame) or not isinstance(predictions, pd.DataFrame):
        raise TypeError(
            f"features and predictions must be DataFrames, got {type(features).__name__} and "
            f"{type(predictions).__name__}"
        )
    counts = {"features": len(features), "predictions": len(predictions)}
    if ids is not None:
        counts["ids"] = len(ids)
    _check_batch_parts(info, counts, features.columns, predictions.columns)


def _check_batch_parts(
    info: TaskInfo, counts: dict[str, int], feature_names: Iterable[Any], output_names: Iterable[Any]
) -> None:
    """The task's outputs are all there, every part of a batch has the same number of rows, and no feature takes
    a record column's name.

    Raises:
        ValueError: naming the missing outputs, the counts or the clashing columns.
    """
    expected = output_columns(info.task, info.classes)
    present = list(output_names)
    missing = [column for column in expected if column not in present]
    if missing:
        raise ValueError(
            f"predictions lack column(s) {missing} of the {info.task} predict contract; they have {present}"
        )
    if len(set(counts.values())) > 1:
        raise ValueError(f"row counts differ: {counts}")
    reserved = [*RECORD_SCHEMA.names, *expected]
    clashes = sorted(set(map(str, feature_names)) & set(reserved))
    if clashes:
        raise ValueError(f"feature column(s) {clashes} clash with prediction log columns {reserved}")


def _stored_output(values: Any, field: pa.Field) -> Any:
    """One output column in its stored type (``output_schema``).

    Raises:
        ValueError: the values do not have that type (e.g. text labels where the classes are integers).
    """
    if pa.types.is_large_string(field.type):
        return pd.Series(values, copy=False).astype("str").array
    dtype = np.float64 if pa.types.is_floating(field.type) else np.int64
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"predictions column {field.name!r} is not {dtype.__name__} ({exc})") from None


def _random_ids(rows: int) -> np.ndarray:
    """Random 128-bit hex ids, made without a Python loop over the rows."""
    return np.frombuffer(os.urandom(16 * rows).hex().encode("ascii"), dtype="S32").astype(str)


def _storable(values: pd.Series) -> pd.Series:
    """A feature column with one Parquet type: mixed or text object columns become strings (nulls stay null)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.astype("str")
    if not pd.api.types.is_object_dtype(values.dtype):
        return values
    inferred = values.infer_objects()  # e.g. floats with None from JSON requests stay numbers
    if not pd.api.types.is_object_dtype(inferred.dtype) or inferred.isna().all():
        return inferred  # an all-null column is stored as Parquet's null type, which reading merges with any type
    return inferred.astype("str")


def build_records(
    features: pd.DataFrame,
    predictions: pd.DataFrame,
    info: TaskInfo,
    model_name: str,
    model_version: int,
    scored_at: TimeLike | Sequence[TimeLike] | None = None,
    ids: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """The prediction-log records of scored rows (see the module docstring for the columns).

    Args:
        features: the feature rows the model scored (raw values, dataset column names).
        predictions: the model's output for them, its task's predict contract, one row per feature row.
        info: the model's task and classes (``mlsteps.model.TaskInfo``): which output columns are logged, typed how.
        model_name: registered model name.
        model_version: registered model version.
        scored_at: when the rows were scored: one time for all rows, one per row, or None for now.
        ids: one id per row (the dataset's id column); None generates random ids.

    Returns:
        One record per row, in input order.

    Raises:
        TypeError: features or predictions is not a DataFrame.
        ValueError: as ``check_batch`` says, an output column does not hold its stored type, or ``scored_at`` is
            not a date-time or not one time per row.
    """
    check_batch(features, predictions, info, ids)
    rows = len(features)
    if scored_at is None or pd.api.types.is_scalar(scored_at):
        at = as_utc(pd.Timestamp.now(tz="UTC") if scored_at is None else scored_at)
        times = pd.DatetimeIndex(np.full(rows, at.tz_localize(None).to_datetime64())).tz_localize("UTC")
    else:
        times = pd.DatetimeIndex(pd.to_datetime(scored_at, utc=True, format="ISO8601"))
        if len(times) != rows:
            raise ValueError(f"scored_at has {len(times)} time(s) for {rows} row(s)")
    request_ids = _random_ids(rows) if ids is None else pd.Series(ids).astype("str").array
    columns: dict[str, Any] = {REQUEST_ID: request_ids}
    columns.update({str(name): _storable(values).array for name, values in features.items()})
    columns.update({field.name: _stored_output(predictions[field.name], field) for field in output_schema(info)})
    columns[MODEL_NAME] = pd.array(np.full(rows, model_name), dtype="str")
    columns[MODEL_VERSION] = np.full(rows, int(model_version), dtype=np.int64)
    columns[SCORED_AT] = times.as_unit("us").array
    return pd.DataFrame(columns)


def file_uri(store_uri: str, model_name: str, scored_at: TimeLike, file_stem: str) -> str:
    """The log file ``<file_stem>.parquet`` of a model's records scored in the hour of ``scored_at``.

    A writer that streams records of one time into a file of its own (batch ``score``) writes them here, where
    ``write_records`` would put them and where ``window_files`` finds them.
    """
    hour = as_utc(scored_at).floor("h")
    return storage.join(_hour_folder(store_uri, model_name, hour), f"{file_stem}.parquet")


def write_records(store_uri: str, records: pd.DataFrame, file_stem: str | None = None) -> list[str]:
    """Write records as one new file per model and hour partition they touch.

    Args:
        store_uri: the prediction log's root folder (path or URI).
        records: as ``build_records`` makes them.
        file_stem: file name without ``.parquet``; None gives a unique (uuid) name. A fixed stem lets a retried
            batch job overwrite its own earlier files instead of adding the rows twice.

    Returns:
        The URIs written, sorted.
    """
    if records.empty:
        return []
    written = []
    hours = records[SCORED_AT].dt.floor("h")
    for (model_name, hour), part in records.groupby([records[MODEL_NAME], hours], sort=True):
        uri = file_uri(store_uri, model_name, hour, file_stem or uuid.uuid4().hex)
        storage.write_parquet(part, uri)
        written.append(uri)
    return sorted(written)


def append(
    store_uri: str,
    features: pd.DataFrame,
    predictions: pd.DataFrame,
    info: TaskInfo,
    model_name: str,
    model_version: int,
    scored_at: TimeLike | Sequence[TimeLike] | None = None,
    ids: Sequence[Any] | None = None,
) -> list[str]:
    """Append scored rows to the prediction log: ``build_records``, then ``write_records`` with unique names.

    Args:
        store_uri: the prediction log's root folder (path or URI).
        features: the feature rows the model scored.
        predictions: the model's output per row (its task's predict contract).
        info: the model's task and classes.
        model_name: registered model name.
        model_version: registered model version.
        scored_at: one time for all rows, one per row, or None for now.
        ids: one id per row; None generates random ids.

    Returns:
        The URIs of the new files, one per hour partition touched.
    """
    records = build_records(features, predictions, info, model_name, model_version, scored_at, ids)
    return write_records(store_uri, records)


def _window_bounds(start: TimeLike, end: TimeLike) -> tuple[pd.Timestamp, pd.Timestamp]:
    start_at, end_at = as_utc(start), as_utc(end)
    if start_at >= end_at:
        raise ValueError(f"the window is empty: start {start_at.isoformat()} is not before end {end_at.isoformat()}")
    return start_at, end_at


def window_files(store_uri: str, model_name: str, start: TimeLike, end: TimeLike) -> list[str]:
    """The files of the hour partitions that overlap ``[start, end)``; only their days' folders are listed.

    Raises:
        ValueError: start is not before end, or either is not a date-time.
    """
    start_at, end_at = _window_bounds(start, end)
    prefix = model_prefix(store_uri, model_name)
    last_hour = (end_at - pd.Timedelta(1, "us")).floor("h")
    found = []
    for day in pd.date_range(start_at.floor("D"), last_hour.floor("D"), freq="D"):
        for uri in storage.list_files(storage.join(prefix, f"date={day:%Y-%m-%d}")):
            match = _PARTITION_FILE.search(uri)
            if match and start_at.floor("h") <= pd.Timestamp(f"{match[1]}T{match[2]}:00Z") <= last_hour:
                found.append(uri)
    return found


def _read_file(
    uri: str, columns: list[str] | None, start: pd.Timestamp, end: pd.Timestamp, version: int | None
) -> pa.Table:
    """One file's rows inside ``[start, end)`` (and of ``version``), reading only the wanted columns it has."""
    parquet = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
    present = parquet.schema_arrow.names
    needed = None if columns is None else dict.fromkeys([*columns, SCORED_AT, MODEL_VERSION])
    wanted = None if needed is None else [column for column in needed if column in present]
    table = parquet.read(columns=wanted).replace_schema_metadata(None)
    scored_at = table[SCORED_AT]
    keep = pc.and_(
        pc.greater_equal(scored_at, pa.scalar(start.to_pydatetime(), TIMESTAMP_TYPE)),
        pc.less(scored_at, pa.scalar(end.to_pydatetime(), TIMESTAMP_TYPE)),
    )
    if version is not None:
        keep = pc.and_(keep, pc.equal(table[MODEL_VERSION], version))
    return table.filter(keep)


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """The wanted columns in the wanted order; one that no file had comes back all null."""
    if columns is None:
        return table
    for column in columns:
        if column not in table.column_names:
            known = RECORD_SCHEMA.field(column).type if column in RECORD_SCHEMA.names else pa.null()
            table = table.append_column(pa.field(column, known), pa.nulls(table.num_rows, known))
    return table.select(columns)


def read_window(
    store_uri: str,
    model_name: str,
    start: TimeLike,
    end: TimeLike,
    columns: Sequence[str] | None = None,
    model_version: int | None = None,
) -> pd.DataFrame:
    """The records of one model scored in ``[start, end)``, oldest first.

    Only the hour partitions that overlap the window are listed and read (``window_files``); rows are then
    filtered on ``scored_at`` exactly. Works for local folders and ``s3://`` alike.

    Args:
        store_uri: the prediction log's root folder (path or URI).
        model_name: registered model name.
        start: first instant of the window (inclusive); no offset means UTC.
        end: end of the window (exclusive).
        columns: the columns to return, in this order; None returns every column.
        model_version: only rows scored by this version; None for all versions.

    Returns:
        A DataFrame; with no rows in the window, an empty one with the wanted (or the record) columns.

    Raises:
        ValueError: start is not before end, or either is not a date-time.
        DataError: the window's files store one column with types that cannot be merged (number and text).
    """
    start_at, end_at = _window_bounds(start, end)
    wanted = None if columns is None else list(columns)
    files = window_files(store_uri, model_name, start_at, end_at)
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, max(len(files), 1))) as pool:
        tables = list(pool.map(lambda uri: _read_file(uri, wanted, start_at, end_at, model_version), files))
    if not tables:
        return _select(RECORD_SCHEMA.empty_table(), wanted).to_pandas()
    try:
        table = pa.concat_tables(tables, promote_options="permissive").sort_by(SCORED_AT)
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise _type_conflict(model_name, files, exc) from None
    logger.info(
        "read %d prediction record(s) of %s scored in [%s, %s) from %d file(s)",
        table.num_rows,
        model_name,
        start_at.isoformat(),
        end_at.isoformat(),
        len(files),
    )
    return _select(table, wanted).to_pandas()


class WindowReader:
    """The records of one model scored in ``[start, end)``, read a bounded number of rows at a time.

    ``read_window`` returns the whole window as one DataFrame; this reads it file by file and ``batch_rows`` rows at
    a time (``mlsteps.data.batches``: only the wanted columns, ranged reads on S3), so memory follows the batch and
    not the window. Each batch is what ``read_window`` gives for its rows: filtered on ``scored_at`` (and the model
    version), every column in the type of the whole window (the files' types merged as one table merges them, a
    column a file lacks read as nulls). Batches come in file order, not sorted by ``scored_at``.
    """

    def __init__(
        self,
        store_uri: str,
        model_name: str,
        start: TimeLike,
        end: TimeLike,
        model_version: int | None = None,
        batch_rows: int = 100_000,
    ) -> None:
        """List the window's files and merge their schemas (footers only).

        Args:
            store_uri: the prediction log's root folder (path or URI).
            model_name: registered model name.
            start: first instant of the window (inclusive); no offset means UTC.
            end: end of the window (exclusive).
            model_version: only rows scored by this version; None for all versions.
            batch_rows: most rows read from a file at a time (``processing.batch_rows``).

        Raises:
            ValueError: start is not before end, or either is not a date-time.
            DataError: the window's files store one column with types that cannot be merged (number and text).
        """
        self.model_name = model_name
        self.start, self.end = _window_bounds(start, end)
        self.model_version = model_version
        self.batch_rows = batch_rows
        self.files = sorted(window_files(store_uri, model_name, self.start, self.end))
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, max(len(self.files), 1))) as pool:
            self._schemas = list(pool.map(batches.parquet_schema, self.files))
        self.schema: pa.Schema = RECORD_SCHEMA
        if self.files:
            try:
                self.schema = pa.unify_schemas(
                    [schema.remove_metadata() for schema in self._schemas], promote_options="permissive"
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise _type_conflict(model_name, self.files, exc) from None

    @property
    def columns(self) -> list[str]:
        """Every column some file of the window has."""
        return list(self.schema.names)

    def _tables(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The window's rows, at most ``batch_rows`` at a time, with ``columns`` (those the window has)."""
        wanted = [column for column in dict.fromkeys(columns) if column in self.schema.names]
        start = pa.scalar(self.start.to_pydatetime(), TIMESTAMP_TYPE)
        end = pa.scalar(self.end.to_pydatetime(), TIMESTAMP_TYPE)
        for uri, file_schema in zip(self.files, self._schemas, strict=True):
            needed = dict.fromkeys([*wanted, SCORED_AT, MODEL_VERSION])
            present = [column for column in needed if column in file_schema.names]
            for batch in batches.iter_record_batches(uri, self.batch_rows, present):
                table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
                keep = pc.and_(pc.greater_equal(table[SCORED_AT], start), pc.less(table[SCORED_AT], end))
                if self.model_version is not None:
                    keep = pc.and_(keep, pc.equal(table[MODEL_VERSION], self.model_version))
                table = table.filter(keep)
                if table.num_rows:
                    yield self._typed(table, wanted)

    def _typed(self, table: pa.Table, columns: list[str]) -> pa.Table:
        """The columns in the window's types; one this file lacks is all null."""
        arrays = []
        for column in columns:
            kind = self.schema.field(column).type
            if column in table.column_names:
                arrays.append(table[column].cast(kind))
            else:
                arrays.append(pa.nulls(table.num_rows, kind))
        return pa.table(arrays, schema=pa.schema([self.schema.field(column) for column in columns]))

    def rows(self) -> int:
        """The number of records in the window (reads only ``scored_at`` and ``model_version``)."""
        return sum(table.num_rows for table in self._tables([SCORED_AT]))

    def frames(self, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """The window's records as DataFrames of at most ``batch_rows`` rows.

        Args:
            columns: the columns to read, in this order, where the window has them (``columns``); None: all.

        An integer column that holds a null somewhere in the window is float64 in every batch, as pandas makes it
        when the whole window is read (it has no null integers there): a batch without nulls reads the same. That
        takes one more pass over those columns, only when there are some.
        """
        wanted = self.columns if columns is None else [c for c in dict.fromkeys(columns) if c in self.schema.names]
        integers = [c for c in wanted if pa.types.is_integer(self.schema.field(c).type)]
        with_nulls = set()
        if integers:
            for table in self._tables(integers):
                with_nulls.update(column for column in integers if table[column].null_count)
        for table in self._tables(wanted):
            frame = table.to_pandas()
            for column in with_nulls:
                frame[column] = frame[column].astype("float64")
            yield frame


def _type_conflict(model_name: str, files: Sequence[str], exc: Exception) -> DataError:
    return DataError(
        f"prediction log files of {model_name!r} in {files[0]} .. {files[-1]} store a column with types that "
        f"do not merge ({exc}): log each feature with one type (numbers as float64, categories as strings), and "
        "read one model_version at a time when versions predict labels of different types"
    )


# A batch's features or predictions: a DataFrame (``log``) or columns of equal length (``log_columns``).
_Part = pd.DataFrame | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class _PendingBatch:
    features: _Part
    predictions: _Part
    ids: Sequence[Any] | None
    scored_at: np.datetime64  # UTC, without a zone
    rows: int


def _utc_now() -> np.datetime64:
    """Now in UTC, at a tenth of the cost of ``pd.Timestamp.now(tz="UTC")`` (it runs once per queued batch)."""
    return np.datetime64(time.time_ns(), "ns")


def _concat(parts: list[_Part]) -> pd.DataFrame:
    """The parts' rows as one frame; runs of column mappings are joined column by column first.

    Joining arrays costs microseconds where building a DataFrame per part costs a millisecond, which matters for a
    server that queues thousands of one-row batches between flushes.
    """
    frames: list[pd.DataFrame] = []
    run: list[Mapping[str, np.ndarray]] = []
    for part in [*parts, None]:
        if isinstance(part, Mapping):
            run.append(part)
            continue
        if run:
            frames.append(pd.DataFrame({name: np.concatenate([columns[name] for columns in run]) for name in run[0]}))
            run = []
        if part is not None:
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


class PredictionLogWriter:
    """An in-process buffer that appends a model server's predictions to the log from a background thread.

    ``log`` only queues the batch: it never blocks on storage and never raises, so logging cannot slow down or
    break serving. The queue is bounded; a batch that does not fit is dropped and counted. The thread writes
    every ``flush_seconds`` or once ``flush_rows`` rows are queued; a write that fails is logged and its rows
    are counted as failed (not retried, so a store that is down cannot grow memory). ``close`` writes what is
    left. Counters: ``written``, ``dropped`` and ``failed`` rows.

    Do not change a frame after passing it to ``log``: it is written later as it is then.
    """

    def __init__(
        self,
        store_uri: str,
        model_name: str,
        model_version: int,
        info: TaskInfo,
        *,
        flush_seconds: float = 10.0,
        flush_rows: int = 5_000,
        max_pending_rows: int = 100_000,
    ) -> None:
        """Start the writer thread.

        Args:
            store_uri: the prediction log's root folder (path or URI).
            model_name: registered model name of the served model.
            model_version: its version.
            info: its task and classes (``mlsteps.model.TaskInfo``), which decide the logged output columns.
            flush_seconds: longest time a row waits in the buffer.
            flush_rows: write as soon as this many rows are queued.
            max_pending_rows: most rows held in memory; more are dropped.

        Raises:
            ValueError: a limit is not positive.
        """
        limits = {"flush_seconds": flush_seconds, "flush_rows": flush_rows, "max_pending_rows": max_pending_rows}
        not_positive = {name: value for name, value in limits.items() if value <= 0}
        if not_positive:
            raise ValueError(f"PredictionLogWriter limits must be positive, got {not_positive}")
        self.store_uri = store_uri
        self.model_name = model_name
        self.model_version = int(model_version)
        self.info = info
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.max_pending_rows = max_pending_rows
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[_PendingBatch] = []
        self._pending_rows = 0
        self._closed = False
        self._written = self._dropped = self._failed = 0
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{model_name}", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        """Rows written to the store."""
        return self._written

    @property
    def dropped(self) -> int:
        """Rows refused because the buffer was full or the writer was closed."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Rows lost to errors: a batch that was not a valid (features, predictions) pair, or a failed write."""
        return self._failed

    def log(self, features: pd.DataFrame, predictions: pd.DataFrame, ids: Sequence[Any] | None = None) -> bool:
        """Queue one scored batch (``scored_at`` is now); never blocks on storage and never raises.

        Args:
            features: the feature rows the model scored.
            predictions: its output per row (the task's predict contract).
            ids: request ids, one per row; None generates random ids.

        Returns:
            Whether the batch was queued (False: dropped or invalid, and counted).
        """
        rows = len(features) if isinstance(features, pd.DataFrame) else 0
        try:
            check_batch(features, predictions, self.info, ids)
        except (TypeError, ValueError) as exc:
            return self._refuse(rows, exc)
        return self._queue(_PendingBatch(features, predictions, ids, _utc_now(), rows))

    def log_columns(
        self, features: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], ids: Sequence[Any] | None = None
    ) -> bool:
        """``log`` for a server's hot path: queue column arrays; the DataFrames are built in the writer thread.

        Args:
            features: feature name -> the values the model scored (one array per column, one value per row).
            outputs: predict-contract column name -> the model's output per row (e.g. ``probability`` and
                ``prediction`` of a binary model); columns beyond the task's are not logged.
            ids: request ids, one per row; None generates random ids.

        Returns:
            Whether the batch was queued (False: dropped or invalid, and counted).
        """
        rows = len(outputs[PREDICTION]) if PREDICTION in outputs else 0
        counts = {f"feature {name}": len(values) for name, values in features.items()}
        counts |= {name: len(values) for name, values in outputs.items()}
        counts |= {} if ids is None else {"ids": len(ids)}
        try:
            _check_batch_parts(self.info, counts, features, outputs)
        except ValueError as exc:
            return self._refuse(rows, exc)
        # Only the task's columns, so that every queued mapping has the same keys when the batches are joined.
        predictions = {name: outputs[name] for name in output_columns(self.info.task, self.info.classes)}
        return self._queue(_PendingBatch(features, predictions, ids, _utc_now(), rows))

    def _refuse(self, rows: int, reason: Exception) -> bool:
        """Count an invalid batch as failed and say why; a caller's bad batch never raises into serving."""
        logger.warning("prediction log: batch of %d row(s) not logged: %s", rows, reason)
        self._count(failed=rows)
        return False

    def _queue(self, batch: _PendingBatch) -> bool:
        """Add a checked batch unless the writer is closed or the buffer is full (then count it as dropped)."""
        rows = batch.rows
        with self._lock:
            if self._closed or self._pending_rows + rows > self.max_pending_rows:
                self._dropped += rows
                return False
            self._pending.append(batch)
            self._pending_rows += rows
            full = self._pending_rows >= self.flush_rows
        if full:
            self._wake.set()
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop taking batches, write what is queued and stop the thread (waiting at most ``timeout`` seconds)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def __enter__(self) -> PredictionLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _count(self, written: int = 0, failed: int = 0) -> None:
        with self._lock:
            self._written += written
            self._failed += failed

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            with self._lock:
                closing = self._closed
            self._flush()
            if closing:
                return

    def _flush(self) -> None:
        """Write every queued batch in one ``append``; on failure log it and count the rows as failed."""
        with self._lock:
            batches, self._pending, self._pending_rows = self._pending, [], 0
        if not batches:
            return
        rows = sum(batch.rows for batch in batches)
        try:
            ids = pd.concat(
                [pd.Series(_random_ids(b.rows) if b.ids is None else b.ids, dtype="str") for b in batches],
                ignore_index=True,
            )
            files = append(
                self.store_uri,
                _concat([batch.features for batch in batches]),
                _concat([batch.predictions for batch in batches]),
                self.info,
                self.model_name,
                self.model_version,
                scored_at=np.repeat(
                    [batch.scored_at for batch in batches],
                    [batch.rows for batch in batches],
                ),
                ids=ids,
            )
        except Exception as exc:  # the store may be down or refuse; serving goes on and the loss is counted
            logger.warning("prediction log: could not write %d row(s) to %s: %s", rows, self.store_uri, exc)
            self._count(failed=rows)
            return
        logger.debug("prediction log: wrote %d row(s) to %s", rows, files)
        self._count(written=rows)
