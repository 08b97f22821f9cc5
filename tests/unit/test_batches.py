"""Parquet in batches: what is written batch by batch reads back whole; a failed write leaves the target as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from mlsteps.data import storage
from mlsteps.data.batches import ParquetBatchWriter, iter_frames, iter_record_batches, parquet_rows, parquet_schema
from mlsteps.data.datasets import generate_churn


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return generate_churn(2500, seed=5)


def write_in_batches(frame: pd.DataFrame, uri: str, rows: int) -> None:
    with ParquetBatchWriter(uri) as writer:
        for start in range(0, len(frame), rows):
            writer.write(frame.iloc[start : start + rows])


def test_batches_written_read_back_as_the_whole_table(churn: pd.DataFrame, tmp_path: Path) -> None:
    uri = str(tmp_path / "out" / "data.parquet")
    write_in_batches(churn, uri, 1000)

    assert parquet_rows(uri) == len(churn)
    assert parquet_schema(uri).names == list(churn.columns)
    pd.testing.assert_frame_equal(storage.read_parquet(uri), churn)
    frames = list(iter_frames(uri, 700, columns=["customer_id", "age"]))
    assert [len(frame) for frame in frames] == [700, 700, 700, 400]
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), churn[["customer_id", "age"]])
    assert sum(batch.num_rows for batch in iter_record_batches(uri, 1000)) == len(churn)


def test_a_failed_write_leaves_the_target_as_it_was(churn: pd.DataFrame, tmp_path: Path) -> None:
    uri = str(tmp_path / "data.parquet")
    storage.write_parquet(churn.head(3), uri)

    with pytest.raises(RuntimeError, match="stopped"), ParquetBatchWriter(uri) as writer:
        writer.write(churn.head(100))
        raise RuntimeError("stopped")

    pd.testing.assert_frame_equal(storage.read_parquet(uri), churn.head(3))
    assert [path.name for path in tmp_path.iterdir()] == ["data.parquet"]


def test_nothing_written_gives_an_empty_table_with_the_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "empty.parquet")
    schema = pa.schema([("id", pa.string()), ("value", pa.float64())])
    with ParquetBatchWriter(uri, schema):
        pass
    assert parquet_rows(uri) == 0
    assert parquet_schema(uri).names == ["id", "value"]


def test_batches_to_and_from_s3(churn: pd.DataFrame, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/splits/train.parquet"
    write_in_batches(churn, uri, 1000)

    pd.testing.assert_frame_equal(pd.concat(iter_frames(uri, 1000), ignore_index=True), churn)
    with pytest.raises(RuntimeError), ParquetBatchWriter(f"{s3_bucket}/splits/failed.parquet") as writer:
        writer.write(churn.head(10))
        raise RuntimeError("stopped")
    assert not storage.exists(f"{s3_bucket}/splits/failed.parquet")
