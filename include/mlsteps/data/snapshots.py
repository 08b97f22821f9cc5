"""Content-addressed snapshots of an input table: read CSV or Parquet as it is, hash it, store it once.

A snapshot lives at ``<store>/<dataset>/<snapshot id>/`` as ``data.parquet`` plus ``schema.json``. The id is a
hash of the column names, dtypes and values, so the same data gives the same id whether it came from CSV or
Parquet, from local disk or S3, and work on an unchanged snapshot can be skipped.

``stream_snapshot`` does this a batch of rows at a time (``processing.batch_rows``), so its memory does not grow with
the input: CSV through pyarrow's streaming reader, Parquet by record batches, each batch typed as ``prepare`` types a
whole table and hashed into the id as it passes. ``read_table`` and ``prepare`` remain for tables known to be small.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import uuid
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlsteps.config import DatasetConfig
from mlsteps.data import storage
from mlsteps.data.batches import ParquetBatchWriter
from mlsteps.errors import DataError

logger = logging.getLogger(__name__)

TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_WHAT_A_FILE_MUST_BE = {"csv": "a complete, UTF-8 encoded CSV file", "parquet": "a complete Parquet file"}
DATA_FILE = "data.parquet"
SCHEMA_FILE = "schema.json"
SNAPSHOT_ID_LENGTH = 16
# pandas 3 parses date-time strings to microseconds; one fixed unit keeps the id independent of the source format.
TIMESTAMP_UNIT = "us"
_EXAMPLES_SHOWN = 5
_CSV_HEADER_BYTES = 1 << 16  # enough for the header line of a table with thousands of columns


@dataclass(frozen=True)
class Snapshot:
    """Where a stored snapshot lives and whether an existing copy was reused."""

    snapshot_id: str
    data_uri: str
    schema_uri: str
    reused: bool


def table_format(uri: str) -> str | None:
    """``csv`` or ``parquet`` from the URI's extension (case-insensitive), else None."""
    return TABLE_FORMATS.get(PurePosixPath(uri).suffix.lower())


def unknown_extension_message(uri: str) -> str:
    """What to tell the user when ``table_format`` does not know the URI's extension."""
    *others, last = TABLE_FORMATS
    return (
        f"unknown file extension {PurePosixPath(uri).suffix!r}; "
        f"name a CSV or Parquet file ending in {', '.join(others)} or {last}"
    )


def write_table(frame: pd.DataFrame, uri: str) -> None:
    """Write a DataFrame as CSV or Parquet, chosen by the URI's extension (see ``table_format``)."""
    if table_format(uri) == "csv":
        storage.write_bytes(uri, frame.to_csv(index=False).encode("utf-8"))
    else:
        storage.write_parquet(frame, uri)


def read_table(uri: str, text_columns: Collection[str] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file as it is.

    Args:
        uri: local path, ``file://`` or ``s3://`` URI ending in .csv, .parquet or .pq.
        text_columns: CSV columns to read as strings, so that codes such as ``007`` stay as written.

    Raises:
        DataError: the URI is a folder, the extension is unknown, or the file is missing, empty, unreadable, has
            no rows, or is a CSV whose last record has fewer fields than the header (cut off; a missing final
            newline after a complete record is fine).
    """
    file_format = _table_format_of_a_file(uri)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise DataError(f"input file not found: {exc}; check the input URI") from None
    if not data:
        raise DataError(f"input file {uri} is empty (0 bytes); export the data again")
    try:
        if file_format == "csv":
            frame = pd.read_csv(io.BytesIO(data), dtype=dict.fromkeys(text_columns, "str"))
        else:
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except (ValueError, pa.ArrowException) as exc:
        raise DataError(
            f"cannot read {uri} as {file_format.upper()}: {exc}; check that it is {_WHAT_A_FILE_MUST_BE[file_format]}"
        ) from None
    if frame.empty:
        raise DataError(f"input file {uri} has no rows (columns: {list(frame.columns)}); it needs at least one row")
    if file_format == "csv":
        _refuse_a_cut_last_record(data, uri)
    return frame


def _table_format_of_a_file(uri: str) -> str:
    """``csv`` or ``parquet`` for a URI that names a file with a known extension.

    Raises:
        DataError: the URI is a local folder, or its extension is unknown.
    """
    if not storage.is_s3(uri) and storage.local_path(uri).is_dir():
        tables = [path for path in storage.list_files(uri) if table_format(path)]
        example = f" in it, e.g. {tables[0]}" if tables else " (this folder holds none)"
        raise DataError(f"input {uri} is a folder, not a file: give the path of one CSV or Parquet file{example}")
    file_format = table_format(uri)
    if file_format is None:
        raise DataError(f"cannot read {uri}: {unknown_extension_message(uri)}")
    return file_format


def _cut_record_error(uri: str, line: int, fields: int, header: list[str]) -> DataError:
    """The error for a CSV whose last record (ending on ``line``) has only ``fields`` of the header's fields."""
    missing = header[fields:]
    return DataError(
        f"{uri}: line {line}, the last record, has {fields} of {len(header)} fields (no values for "
        f"{missing[:_EXAMPLES_SHOWN]}{' ...' if len(missing) > _EXAMPLES_SHOWN else ''}): the file was cut off "
        "while being written or copied; export it again"
    )


def _refuse_a_cut_last_record(data: bytes, uri: str) -> None:
    """Refuse a CSV whose last record has fewer fields than its header: the export was cut off mid-record.

    pandas would fill the missing fields with NaN and the cut would pass unnoticed. A last record that is complete
    but lacks the final newline is accepted, since many tools write files that way. A record cut inside its last
    value, or right after a comma, still has every field and cannot be told from a complete one here; validation's
    range and null checks are what catch those values.

    Raises:
        DataError: naming the file, the line of the last record and how many fields it has of how many.
    """
    # Trailing blank lines are no record (pandas skips them too); without them the reader ends on the last record.
    reader = csv.reader(io.StringIO(data.decode("utf-8").rstrip("\r\n"), newline=""))
    header = next(reader)
    last = deque(reader, maxlen=1)  # consumed in C: the check costs a fraction of the parse
    if not last:
        return
    record, line = last[0], reader.line_num
    if len(record) < len(header):
        raise _cut_record_error(uri, line, len(record), header)


def read_columns(uri: str) -> list[str]:
    """The column names of a CSV or Parquet file, from its header line or Parquet footer only: a cheap check that a
    file exists and can be read, before a run starts.

    Raises:
        DataError: the extension is unknown, or the file is missing, empty or not readable as its format.
    """
    file_format = table_format(uri)
    if file_format is None:
        raise DataError(f"cannot read {uri}: {unknown_extension_message(uri)}")
    try:
        with storage.open_input(uri) as source:
            if file_format == "parquet":
                return list(pq.read_schema(source).names)
            head = source.read(_CSV_HEADER_BYTES)
    except FileNotFoundError as exc:
        raise DataError(f"input file not found: {exc}; check the input URI") from None
    except (ValueError, pa.ArrowException) as exc:
        raise DataError(
            f"cannot read {uri} as {file_format.upper()}: {exc}; check that it is {_WHAT_A_FILE_MUST_BE[file_format]}"
        ) from None
    if not head:
        raise DataError(f"input file {uri} is empty (0 bytes); export the data again")
    line, newline, _ = head.partition(b"\n")
    try:
        # a header line cut at the read's end may end mid-character: only a complete line must decode
        cut = not newline and len(head) == _CSV_HEADER_BYTES
        header = line.decode("utf-8", errors="ignore" if cut else "strict").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {uri} as CSV: {exc}; check that it is {_WHAT_A_FILE_MUST_BE['csv']}") from None
    return next(csv.reader([header]))


def _as_text(values: pd.Series, whole: bool | None = None) -> pd.Series:
    """Category labels as strings with nulls kept; whole floats lose their ``.0`` (a null turns int codes to float).

    ``whole`` is whether every value of the whole column is a whole number, when ``values`` is one batch of it (so
    that ``1.0`` reads ``1`` in every batch or in none); None decides from ``values``.
    """
    if pd.api.types.is_float_dtype(values.dtype) and (_all_whole(values) if whole is None else whole):
        values = values.astype("Int64")
    return values.astype("str")


def _all_whole(values: pd.Series) -> bool:
    return bool((values.dropna() % 1 == 0).all())


def utc_column(values: pd.Series, column: str, uri: str) -> pd.Series:
    """Event times as UTC datetimes; strings without an offset are taken as UTC.

    Raises:
        DataError: some non-null values are not ISO 8601 date-times (a few are shown).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC")
    else:
        parsed, bad = _parse_utc_text(values)
        if not bad.empty:
            raise _bad_times_error(uri, column, len(bad), bad.drop_duplicates().head(_EXAMPLES_SHOWN).tolist())
    return parsed.dt.as_unit(TIMESTAMP_UNIT)


def _parse_utc_text(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Values parsed as ISO 8601 date-times (UTC when without offset), and the non-null ones that are not."""
    text = values.astype("str")
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    return parsed, text[parsed.isna() & text.notna()]


def _bad_times_error(uri: str, column: str, count: int, examples: list[str]) -> DataError:
    return DataError(
        f"{uri}: timestamp column {column!r} has {count} values that are not ISO 8601 date-times, "
        f"e.g. {examples}; write them like 2025-01-31T12:00:00Z (no offset means UTC)"
    )


def prepare(frame: pd.DataFrame, dataset: DatasetConfig, uri: str) -> pd.DataFrame:
    """The data as read, with categorical features as strings and the timestamp column as UTC datetimes.

    Missing columns are only logged: the validate step reports them together with every other problem.

    Raises:
        DataError: the timestamp column has values that are not date-times.
    """
    missing = [column for column in dataset.required_columns if column not in frame.columns]
    if missing:
        logger.warning(
            "%s lacks columns %s of dataset %r; the validate step will fail on them", uri, missing, dataset.name
        )
    prepared = frame.copy()
    for column in dataset.categorical_features:
        if column in prepared.columns:
            prepared[column] = _as_text(prepared[column])
    timestamp = dataset.timestamp_column
    if timestamp is not None and timestamp in prepared.columns:
        prepared[timestamp] = utc_column(prepared[timestamp], timestamp, uri)
    return prepared


def schema_of(frame: pd.DataFrame) -> list[dict[str, str]]:
    """Column names and dtypes in column order."""
    return [{"name": str(column), "dtype": str(dtype)} for column, dtype in frame.dtypes.items()]


def snapshot_id(frame: pd.DataFrame) -> str:
    """A short sha256 over the schema and every value, in row order; the index is ignored."""
    content = ContentId()
    content.update(frame)
    return content.hexdigest()


class ContentId:
    """``snapshot_id`` of a table fed to ``update`` batch by batch, in row order.

    The id is a sha256 over the schema (names and dtypes) followed by one 64-bit hash per row; a row's hash depends
    on that row alone, so hashing batch by batch gives the id of the whole table, whatever the batch sizes.
    """

    def __init__(self) -> None:
        self._digest: hashlib._Hash | None = None
        self.schema: list[dict[str, str]] = []

    def update(self, frame: pd.DataFrame) -> None:
        """Add the next rows.

        Raises:
            ValueError: the batch's columns or dtypes differ from the first batch's.
        """
        schema = schema_of(frame)
        if self._digest is None:
            self.schema = schema
            self._digest = hashlib.sha256(json.dumps(schema).encode("utf-8"))
        elif schema != self.schema:
            changed = [new for old, new in zip(self.schema, schema, strict=False) if old != new]
            raise ValueError(f"a batch has another schema than the first: {changed or schema} vs {self.schema}")
        row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        self._digest.update(row_hashes.astype("<u8").tobytes())

    def hexdigest(self) -> str:
        """The id: the first ``SNAPSHOT_ID_LENGTH`` hex digits."""
        digest = self._digest or hashlib.sha256(json.dumps([]).encode("utf-8"))
        return digest.hexdigest()[:SNAPSHOT_ID_LENGTH]


# --- streaming: the same snapshot, a batch of rows at a time ---

# pandas.read_csv's default missing-value markers, so a streamed CSV has its nulls where read_table has them.
CSV_NULL_VALUES = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
# The types a CSV column can have when streamed, and what a column becomes when a later block holds a value its
# type cannot take: the widening pandas applies when it reads the file whole (ints to floats, anything to text).
_CSV_WIDER = {pa.null(): pa.int64(), pa.int64(): pa.float64(), pa.float64(): pa.string(), pa.bool_(): pa.string()}
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_CSV_BYTES_PER_ROW_GUESS = 200
_CSV_MIN_BLOCK = 1 << 16
_CSV_MAX_BLOCK = 1 << 28
_UTF8_CHECK_BYTES = 1 << 20
_TAIL_SLACK = 1 << 12  # trailing blank lines kept with the last record


@dataclass
class _Plan:
    """What a batch needs so its dtypes equal those of the whole table read at once.

    A batch alone cannot tell: an int column with a null in any batch is float64 in the whole table, a bool column
    with a null is object, and a float category column is written without ``.0`` only if every value is whole.
    """

    csv_types: dict[str, pa.DataType] = field(default_factory=dict)
    ints_with_nulls: set[str] = field(default_factory=set)
    bools_with_nulls: set[str] = field(default_factory=set)
    whole_floats: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamedSnapshot:
    """A snapshot written by ``stream_snapshot``, with the size and columns of its data."""

    snapshot: Snapshot
    rows: int
    columns: list[str]


def read_batches(
    uri: str, batch_rows: int, text_columns: Collection[str] = (), dataset: DatasetConfig | None = None
) -> Iterator[pd.DataFrame]:
    """``read_table`` a batch of at most about ``batch_rows`` rows at a time; every batch has the dtypes the whole
    table has when read at once, and with ``dataset`` each batch is typed as ``prepare`` types the whole table.

    A CSV is read twice: once to learn each column's type over the whole file (a column of ints with a float, a
    text or a null further down is what pandas makes of it reading the whole file), once to yield the batches.
    A Parquet file is read once, plus a pass over the few columns whose dtype depends on the whole column.

    Raises:
        DataError: as ``read_table`` (folder, unknown extension, missing, empty, unreadable, no rows, cut last CSV
            record), and as ``prepare`` for the timestamp column (counted over the whole file), raised once the
            whole file was read. A CSV record with fewer fields than the header before the last one is refused
            too (pandas would have filled it with nulls).
    """
    file_format = _table_format_of_a_file(uri)
    _refuse_missing_or_empty(uri)
    header = _unique_names(read_columns(uri), uri)
    plan = _Plan()
    if file_format == "csv":
        block_size = _csv_block_size(uri, batch_rows)
        plan = _csv_plan(uri, header, text_columns, block_size)
        batches = _csv_record_batches(uri, header, plan.csv_types, block_size)
    else:
        plan = _parquet_plan(uri, dataset)
        batches = _parquet_record_batches(uri, batch_rows)
    rows, bad_times, bad_examples = 0, 0, []
    schema: pa.Schema | None = None
    for batch in batches:
        schema = batch.schema
        if not batch.num_rows:
            continue
        frame = _as_frame(batch, plan)
        if dataset is not None:
            frame, bad, examples = _prepare_batch(frame, dataset, uri, plan, warn=rows == 0)
            bad_times += bad
            bad_examples = list(dict.fromkeys([*bad_examples, *examples]))[:_EXAMPLES_SHOWN]
        rows += len(frame)
        if not bad_times:
            yield frame
    if not rows:
        columns = list(schema.names) if schema is not None else (read_columns(uri) if file_format == "csv" else [])
        raise DataError(f"input file {uri} has no rows (columns: {columns}); it needs at least one row")
    if bad_times and dataset is not None and dataset.timestamp_column:
        raise _bad_times_error(uri, dataset.timestamp_column, bad_times, bad_examples)


def stream_snapshot(input_uri: str, dataset: DatasetConfig, store: str, batch_rows: int) -> StreamedSnapshot:
    """Read, type (as ``prepare``) and store the input as a snapshot, a batch of rows at a time.

    The id is known only once every row was hashed, so the rows go to a staging file beside the store (or in the
    temporary folder for S3) that becomes ``<store>/<dataset>/<id>/data.parquet`` at the end, unless that snapshot
    is already stored; ``schema.json`` follows it, marking the snapshot complete.

    Raises:
        DataError: as ``read_batches``; nothing is left in the store then.
    """
    content = ContentId()
    staging_folder, created = _staging_folder(storage.join(store, dataset.name))
    staged = staging_folder / f".incoming-{uuid.uuid4().hex}.parquet"
    columns: list[str] = []
    try:
        with ParquetBatchWriter(str(staged)) as writer:
            for frame in read_batches(input_uri, batch_rows, dataset.categorical_features, dataset):
                try:
                    content.update(frame)
                except ValueError as exc:
                    raise DataError(f"{input_uri}: {exc}; the column types change within the file") from None
                columns = [str(column) for column in frame.columns]
                writer.write(frame)
        rows = writer.rows
        frame_id = content.hexdigest()
        folder = storage.join(store, dataset.name, frame_id)
        data_uri = storage.join(folder, DATA_FILE)
        schema_uri = storage.join(folder, SCHEMA_FILE)
        if storage.exists(schema_uri) and storage.exists(data_uri):
            return StreamedSnapshot(Snapshot(frame_id, data_uri, schema_uri, reused=True), rows, columns)
        if storage.is_s3(data_uri):
            storage.upload_file(staged, data_uri)
        else:
            storage.local_path(folder).mkdir(parents=True, exist_ok=True)
            os.replace(staged, storage.local_path(data_uri))
    finally:
        staged.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                staging_folder.rmdir()  # made for this snapshot: removed unless the snapshot is in it now
    storage.write_json(
        schema_uri,
        {
            "snapshot_id": frame_id,
            "dataset": dataset.name,
            "rows": rows,
            "columns": content.schema,
            "source_uri": input_uri,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return StreamedSnapshot(Snapshot(frame_id, data_uri, schema_uri, reused=False), rows, columns)


def _staging_folder(dataset_uri: str) -> tuple[Path, bool]:
    """Where a snapshot is written before its id is known: the dataset's folder of a local store (the data is then
    moved, not copied), the temporary folder for S3; and whether the folder was made here.

    Raises:
        StorageError: a file stands where a folder of the store belongs.
    """
    if storage.is_s3(dataset_uri):
        return Path(tempfile.gettempdir()), False
    folder = storage.local_path(dataset_uri)
    created = not folder.is_dir()
    storage.make_folder(folder, f"{dataset_uri}/")
    return folder, created


def _unique_names(header: list[str], uri: str) -> list[str]:
    """The column names, refused when one is repeated: which of two ``age`` columns is the feature cannot be guessed
    (pandas would quietly rename the second ``age.1``).

    Raises:
        DataError: naming each repeated column and how often it appears.
    """
    repeated = {name: header.count(name) for name in dict.fromkeys(header) if header.count(name) > 1}
    if repeated:
        listed = ", ".join(f"{name!r} {count} times" for name, count in repeated.items())
        raise DataError(
            f"{uri}: duplicate column names in the header: {listed}; give each column one name and export it again"
        )
    return header


def _refuse_missing_or_empty(uri: str) -> None:
    try:
        with storage.open_input(uri) as source:
            first = source.read(1)
    except FileNotFoundError as exc:
        raise DataError(f"input file not found: {exc}; check the input URI") from None
    if not first:
        raise DataError(f"input file {uri} is empty (0 bytes); export the data again")


def _unreadable(uri: str, file_format: str, exc: Exception) -> DataError:
    return DataError(
        f"cannot read {uri} as {file_format.upper()}: {exc}; check that it is {_WHAT_A_FILE_MUST_BE[file_format]}"
    )


def _csv_block_size(uri: str, batch_rows: int) -> int:
    """Bytes per CSV block so that a block holds about ``batch_rows`` rows, from the size of the first rows."""
    with storage.open_input(uri) as source:
        head = source.read(_CSV_MIN_BLOCK)
    lines = head.count(b"\n")
    per_row = len(head) / lines if lines > 1 else _CSV_BYTES_PER_ROW_GUESS
    return int(min(max(per_row * batch_rows, _CSV_MIN_BLOCK), _CSV_MAX_BLOCK))


def _csv_reader(
    source: io.RawIOBase, header: list[str], types: dict[str, pa.DataType], block_size: int, short: list
) -> pa_csv.CSVStreamingReader:
    def keep_short_rows(row: pa_csv.InvalidRow) -> str:
        # A record with fewer fields than the header: collected, so that a cut last record gets its own message.
        if row.actual_columns < row.expected_columns:
            short.append(row)
            return "skip"
        return "error"

    return pa_csv.open_csv(
        source,
        # the names as pandas gives them, in place of the header line
        read_options=pa_csv.ReadOptions(block_size=block_size, use_threads=False, column_names=header, skip_rows=1),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep_short_rows),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            null_values=CSV_NULL_VALUES,
            strings_can_be_null=True,
            true_values=["True", "TRUE", "true"],
            false_values=["False", "FALSE", "false"],
        ),
    )


def _csv_plan(uri: str, header: list[str], text_columns: Collection[str], block_size: int) -> _Plan:
    """Each column's type over the whole CSV, and which int and bool columns hold a null anywhere.

    The reader infers types from the first block; a later value a column's type cannot take (``1.5`` in an int
    column, ``n/a`` in a float one) stops the read, the column is widened as pandas would (int, float, text) and
    the read starts again. Dates stay text, as pandas reads them.
    """
    types: dict[str, pa.DataType] = {name: pa.string() for name in header if name in set(text_columns)}
    for _ in range(3 * len(header) + 2):
        plan = _Plan()
        short: list = []
        try:
            with storage.open_input(uri) as source:
                reader = _csv_reader(source, header, types, block_size, short)
                inferred = {f.name: f.type for f in reader.schema}
                dates = [n for n, t in inferred.items() if n not in types and not _csv_type_is_kept(t)]
                if dates:
                    types.update(dict.fromkeys(dates, pa.string()))
                    continue
                types = inferred
                for batch in reader:
                    for name, column in zip(batch.schema.names, batch.columns, strict=True):
                        if column.null_count and pa.types.is_integer(column.type):
                            plan.ints_with_nulls.add(name)
                        elif column.null_count and pa.types.is_boolean(column.type):
                            plan.bools_with_nulls.add(name)
        except pa.ArrowInvalid as exc:
            match = _CSV_COLUMN.search(str(exc))
            name = header[int(match.group(1))] if match else None
            if name is None or pa.types.is_string(types.get(name, pa.null())):
                # not a value its column's type cannot take: bytes that are not UTF-8, or a broken file
                _refuse_undecodable(uri)
                raise _unreadable(uri, "csv", exc) from None
            types[name] = _CSV_WIDER.get(types.get(name, pa.string()), pa.string())
            continue
        _refuse_short_rows(uri, header, short)
        # A column null on every row is float64 to pandas.
        plan.csv_types = {name: pa.float64() if pa.types.is_null(t) else t for name, t in types.items()}
        return plan
    raise DataError(f"cannot read {uri} as CSV: its column types did not settle; check that it is a complete CSV")


def _csv_type_is_kept(arrow_type: pa.DataType) -> bool:
    return arrow_type in _CSV_WIDER or pa.types.is_string(arrow_type)


def _csv_record_batches(
    uri: str, header: list[str], types: dict[str, pa.DataType], block_size: int
) -> Iterator[pa.RecordBatch]:
    short: list = []
    try:
        with storage.open_input(uri) as source:
            yield from _csv_reader(source, header, types, block_size, short)
    except pa.ArrowInvalid as exc:
        raise _unreadable(uri, "csv", exc) from None
    _refuse_short_rows(uri, header, short)


def _refuse_undecodable(uri: str) -> None:
    """Raise Python's own UTF-8 error (with the byte and its position in the file) for a CSV that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with storage.open_input(uri) as source:
        while chunk := source.read(_UTF8_CHECK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                exc.start += offset
                exc.end += offset
                raise _unreadable(uri, "csv", exc) from None
            offset += len(chunk)


def _refuse_short_rows(uri: str, header: list[str], short: list) -> None:
    """Refuse records with fewer fields than the header: the last one as cut off (see ``_refuse_a_cut_last_record``,
    and the record's line is counted here), any other as unreadable."""
    if not short:
        return
    row = short[-1]
    with storage.open_input(uri) as source:
        lines, tail = 0, b""
        while chunk := source.read(_UTF8_CHECK_BYTES):
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-len(row.text.encode("utf-8")) - _TAIL_SLACK :]
    # Trailing blank lines are no record; the last record ends on the last line that is not blank.
    trailing = len(tail) - len(tail.rstrip(b"\r\n"))
    if len(short) == 1 and tail.rstrip(b"\r\n").endswith(row.text.encode("utf-8")):
        line = lines + 1 - tail[len(tail) - trailing :].count(b"\n")
        raise _cut_record_error(uri, line, row.actual_columns, header)
    raise DataError(
        f"cannot read {uri} as CSV: {len(short)} records have fewer fields than the header's {len(header)}, e.g. "
        f"{short[0].text[:200]!r}; check that it is {_WHAT_A_FILE_MUST_BE['csv']}"
    )


def _parquet_plan(uri: str, dataset: DatasetConfig | None) -> _Plan:
    """Which int and bool columns hold a null anywhere and whether float category columns are whole, from one pass
    over those columns only."""
    try:
        with storage.open_input(uri) as source:
            parquet = pq.ParquetFile(source)
            schema = parquet.schema_arrow
            categories = set(dataset.categorical_features) if dataset else set()
            ints_or_bools = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)]
            floats = [f.name for f in schema if pa.types.is_floating(f.type) and f.name in categories]
            plan = _Plan(whole_floats=dict.fromkeys(floats, True))
            if not ints_or_bools and not floats:
                return plan
            for batch in parquet.iter_batches(columns=[*ints_or_bools, *floats]):
                for name in ints_or_bools:
                    column = batch.column(name)
                    if column.null_count:
                        nulls = plan.bools_with_nulls if pa.types.is_boolean(column.type) else plan.ints_with_nulls
                        nulls.add(name)
                for name in floats:
                    values = batch.column(name).to_numpy(zero_copy_only=False)
                    plan.whole_floats[name] &= bool(np.all(np.isnan(values) | (values % 1 == 0)))
            return plan
    except (ValueError, pa.ArrowException) as exc:
        raise _unreadable(uri, "parquet", exc) from None


def _parquet_record_batches(uri: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        with storage.open_input(uri) as source:
            parquet = pq.ParquetFile(source)
            if parquet.metadata.num_rows == 0:
                yield pa.RecordBatch.from_pylist([], schema=parquet.schema_arrow)
                return
            yield from parquet.iter_batches(batch_size=batch_rows)
    except (ValueError, pa.ArrowException) as exc:
        raise _unreadable(uri, "parquet", exc) from None


def _as_frame(batch: pa.RecordBatch, plan: _Plan) -> pd.DataFrame:
    """A batch as a DataFrame with the dtypes of the whole table (see ``_Plan``)."""
    for name in plan.ints_with_nulls:
        position = batch.schema.get_field_index(name)
        batch = batch.set_column(position, name, batch.column(position).cast(pa.float64()))
    frame = batch.to_pandas()
    for name in plan.bools_with_nulls:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), np.nan)
    return frame


def _prepare_batch(
    frame: pd.DataFrame, dataset: DatasetConfig, uri: str, plan: _Plan, warn: bool
) -> tuple[pd.DataFrame, int, list[str]]:
    """``prepare`` for one batch; bad event times are counted (with examples) instead of raised, so that the error
    can name them over the whole file."""
    if warn:
        prepare(frame.head(0), dataset, uri)  # logs the missing columns once
    prepared = frame.copy()
    for column in dataset.categorical_features:
        if column in prepared.columns:
            prepared[column] = _as_text(prepared[column], plan.whole_floats.get(column))
    timestamp = dataset.timestamp_column
    if timestamp is None or timestamp not in prepared.columns:
        return prepared, 0, []
    values = prepared[timestamp]
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        prepared[timestamp] = utc_column(values, timestamp, uri)
        return prepared, 0, []
    parsed, bad = _parse_utc_text(values)
    prepared[timestamp] = parsed.dt.as_unit(TIMESTAMP_UNIT)
    return prepared, len(bad), bad.drop_duplicates().head(_EXAMPLES_SHOWN).tolist()
