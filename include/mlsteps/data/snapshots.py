"""Content-addressed snapshots of an input table: read CSV or Parquet as it is, hash it, store it once.

A snapshot lives at ``<store>/<dataset>/<snapshot id>/`` as ``data.parquet`` plus ``schema.json``. The id is a
hash of the column names, dtypes and values, so the same data gives the same id whether it came from CSV or
Parquet, from local disk or S3, and work on an unchanged snapshot can be skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlsteps.config import DatasetConfig
from mlsteps.data import storage
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
    if not storage.is_s3(uri) and storage.local_path(uri).is_dir():
        tables = [path for path in storage.list_files(uri) if table_format(path)]
        example = f" in it, e.g. {tables[0]}" if tables else " (this folder holds none)"
        raise DataError(f"input {uri} is a folder, not a file: give the path of one CSV or Parquet file{example}")
    file_format = table_format(uri)
    if file_format is None:
        raise DataError(f"cannot read {uri}: {unknown_extension_message(uri)}")
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
        missing = header[len(record) :]
        raise DataError(
            f"{uri}: line {line}, the last record, has {len(record)} of {len(header)} fields (no values for "
            f"{missing[:_EXAMPLES_SHOWN]}{' ...' if len(missing) > _EXAMPLES_SHOWN else ''}): the file was cut off "
            "while being written or copied; export it again"
        )


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


def _as_text(values: pd.Series) -> pd.Series:
    """Category labels as strings with nulls kept; whole floats lose their ``.0`` (a null turns int codes to float)."""
    if pd.api.types.is_float_dtype(values.dtype) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    return values.astype("str")


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
        text = values.astype("str")
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        bad = text[parsed.isna() & text.notna()]
        if not bad.empty:
            examples = bad.drop_duplicates().head(_EXAMPLES_SHOWN).tolist()
            raise DataError(
                f"{uri}: timestamp column {column!r} has {len(bad)} values that are not ISO 8601 date-times, "
                f"e.g. {examples}; write them like 2025-01-31T12:00:00Z (no offset means UTC)"
            )
    return parsed.dt.as_unit(TIMESTAMP_UNIT)


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
    digest = hashlib.sha256(json.dumps(schema_of(frame)).encode("utf-8"))
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest.update(row_hashes.astype("<u8").tobytes())
    return digest.hexdigest()[:SNAPSHOT_ID_LENGTH]


def store_snapshot(frame: pd.DataFrame, store: str, dataset: str, source_uri: str) -> Snapshot:
    """Write a snapshot under ``<store>/<dataset>/<id>/`` unless it is already there.

    ``schema.json`` is written after ``data.parquet``, so its presence marks a complete snapshot; a partial one
    left by a crash is written again.
    """
    frame_id = snapshot_id(frame)
    folder = storage.join(store, dataset, frame_id)
    data_uri = storage.join(folder, DATA_FILE)
    schema_uri = storage.join(folder, SCHEMA_FILE)
    if storage.exists(schema_uri) and storage.exists(data_uri):
        return Snapshot(frame_id, data_uri, schema_uri, reused=True)
    storage.write_parquet(frame, data_uri)
    storage.write_json(
        schema_uri,
        {
            "snapshot_id": frame_id,
            "dataset": dataset,
            "rows": len(frame),
            "columns": schema_of(frame),
            "source_uri": source_uri,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return Snapshot(frame_id, data_uri, schema_uri, reused=False)
