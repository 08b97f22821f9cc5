"""Parquet in batches: the data steps read and write tables a bounded number of rows at a time.

A step's peak memory then follows ``processing.batch_rows`` and the number of columns, not the size of the data.
Reading goes through pyarrow's ``ParquetFile.iter_batches`` on ``storage.open_input`` (ranged reads on S3), so a
reader that needs a few columns fetches only those. Writing goes to a local temporary file beside the target (or
in ``$TMPDIR`` for S3) that is renamed or uploaded once complete: a crash never leaves half a table at the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Self

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlsteps.data import storage

COMPRESSION = "zstd"  # as storage.write_parquet writes whole tables


def parquet_rows(uri: str) -> int:
    """The number of rows of a Parquet file, from its footer alone.

    Raises:
        FileNotFoundError: naming the URI.
    """
    with storage.open_input(uri) as source:
        return pq.ParquetFile(source).metadata.num_rows


def parquet_schema(uri: str) -> pa.Schema:
    """The Arrow schema of a Parquet file, from its footer alone.

    Raises:
        FileNotFoundError: naming the URI.
    """
    with storage.open_input(uri) as source:
        return pq.ParquetFile(source).schema_arrow


def iter_record_batches(uri: str, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of a Parquet file in file order, at most ``batch_rows`` at a time, as Arrow record batches.

    Raises:
        FileNotFoundError: naming the URI.
    """
    with storage.open_input(uri) as source:
        parquet = pq.ParquetFile(source)
        yield from parquet.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)


def iter_frames(uri: str, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """The rows of a Parquet file in file order, at most ``batch_rows`` at a time, as DataFrames with the dtypes
    ``storage.read_parquet`` gives the whole table.

    Raises:
        FileNotFoundError: naming the URI.
    """
    for batch in iter_record_batches(uri, batch_rows, columns):
        yield batch.to_pandas()


class _StagedFile:
    """A file written beside its target (or in ``$TMPDIR`` for S3) that takes the target's place only on ``close``.

    Use as a context manager: leaving it by an exception discards what was written, and the target, if it existed,
    stays as it was. The staging name starts with a dot and ends in ``.part``, so readers that list a folder's
    tables (the prediction log's, pyarrow datasets) never take it for one.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        if storage.is_s3(uri):
            folder = Path(tempfile.gettempdir())
        else:
            folder = storage.local_path(uri).parent
            storage.make_folder(folder, uri)
        # created by the writer under the process umask, as a plain open() would (mkstemp would make it 0600)
        self._path = folder / f".{PurePosixPath(uri).name}.{uuid.uuid4().hex}.part"

    def _finish(self) -> None:
        """Complete the staged file (the format's footer, say); runs before it moves."""

    def _abandon(self) -> None:
        """Release the staged file without completing it."""

    def close(self) -> None:
        """Complete the file and put it at the target: renamed locally (atomic), uploaded to S3."""
        self._finish()
        if storage.is_s3(self.uri):
            try:
                storage.upload_file(self._path, self.uri)
            finally:
                self._path.unlink(missing_ok=True)
        else:
            os.replace(self._path, storage.local_path(self.uri))

    def discard(self) -> None:
        """Drop what was written; the target is left as it was."""
        with contextlib.suppress(Exception):
            self._abandon()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


class ParquetBatchWriter(_StagedFile):
    """Append DataFrames (or Arrow batches) of one schema to a Parquet file; the target appears only on ``close``
    (an empty table with the schema when nothing was written)."""

    def __init__(self, uri: str, schema: pa.Schema | None = None) -> None:
        super().__init__(uri)
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: pd.DataFrame | pa.RecordBatch | pa.Table) -> None:
        """Append rows; the first call fixes the schema unless one was given."""
        if isinstance(rows, pd.DataFrame):
            rows = pa.Table.from_pandas(rows, schema=self.schema, preserve_index=False)
        elif isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if self._writer is None:
            self.schema = self.schema or rows.schema
            self._writer = pq.ParquetWriter(self._path, self.schema, compression=COMPRESSION)
        self._writer.write_table(rows.cast(self.schema) if rows.schema != self.schema else rows)
        self.rows += rows.num_rows

    def _finish(self) -> None:
        if self._writer is None:
            if self.schema is None:
                raise ValueError(f"nothing was written to {self.uri} and no schema was given")
            self._writer = pq.ParquetWriter(self._path, self.schema, compression=COMPRESSION)
        self._writer.close()

    def _abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CsvBatchWriter(_StagedFile):
    """Append DataFrames to a UTF-8 CSV file, the header once; the target appears only on ``close``."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._file = self._path.open("w", encoding="utf-8", newline="")
        self._header = True

    def write(self, rows: pd.DataFrame) -> None:
        """Append rows (their columns as the first batch's)."""
        rows.to_csv(self._file, index=False, header=self._header)
        self._header = False

    def _finish(self) -> None:
        self._file.close()

    def _abandon(self) -> None:
        self._file.close()
