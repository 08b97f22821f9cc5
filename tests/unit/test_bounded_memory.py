"""The data steps hold a batch of rows at a time: batch by batch they give what the whole table gives, and a snapshot
larger than the memory a step may use goes through snapshot, validate and preprocess."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsteps import results
from mlsteps.config import DEFAULT_CONFIG_PATH, DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import storage, validation
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import NumericStats, TabularPreprocessor
from mlsteps.data.snapshots import (
    prepare,
    read_batches,
    read_table,
    snapshot_id,
    stream_snapshot,
    write_table,
)
from mlsteps.errors import DataError
from mlsteps.steps import preprocess

ROWS = 3500
BATCH = 1000  # the smallest processing.batch_rows allowed: several batches of ROWS


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return generate_churn(ROWS, seed=11)


def batches(frame: pd.DataFrame, rows: int = BATCH) -> Iterator[pd.DataFrame]:
    """A table as the steps read a snapshot: consecutive batches, each indexed from 0."""
    for start in range(0, len(frame), rows):
        yield frame.iloc[start : start + rows].reset_index(drop=True)


# --- snapshot ---


def _csv_whose_types_change_late(path: Path) -> None:
    """A CSV of about 300 kB (several read blocks) whose columns look like ints in the first block only."""
    rows = 6000
    frame = pd.DataFrame(
        {
            "row": np.arange(rows),
            "to_float": np.arange(rows).astype(str),
            "to_text": np.arange(rows).astype(str),
            "null_late": np.arange(rows).astype(str),
            "flag_null_late": np.where(np.arange(rows) % 2, "True", "False"),
            "empty_early": [""] * rows,
            "code": [f"{i % 50:03d}" for i in range(rows)],
            "when": [f"2025-01-{1 + i % 28:02d}T00:00:00Z" for i in range(rows)],
        }
    )
    frame.loc[5000, "to_float"] = "2.5"
    frame.loc[5100, "to_text"] = "abc"
    frame.loc[5200, ["null_late", "flag_null_late"]] = ""
    frame.loc[5300:, "empty_early"] = "7"
    frame.to_csv(path, index=False)


def test_a_csv_column_whose_type_changes_in_a_later_batch_reads_as_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "changing.csv"
    _csv_whose_types_change_late(path)

    streamed = list(read_batches(str(path), BATCH, text_columns=["code"]))

    assert len(streamed) > 2
    whole = read_table(str(path), text_columns=["code"])
    pd.testing.assert_frame_equal(pd.concat(streamed, ignore_index=True), whole)
    assert str(whole["to_float"].dtype) == "float64" and str(whole["null_late"].dtype) == "float64"
    assert whole["flag_null_late"].dtype == object and whole["to_text"].iloc[5100] == "abc"


@pytest.mark.parametrize("name", ["churn.csv", "churn.parquet"])
def test_a_streamed_snapshot_has_the_id_and_rows_of_the_whole_table(
    churn: pd.DataFrame, dataset: DatasetConfig, tmp_path: Path, name: str
) -> None:
    frame = churn.copy()
    frame.loc[ROWS - 10, "num_devices"] = None  # an int column with one null, in the last batch only
    uri = str(tmp_path / name)
    write_table(frame, uri)

    streamed = stream_snapshot(uri, dataset, str(tmp_path / "store"), BATCH)

    whole = prepare(read_table(uri, text_columns=dataset.categorical_features), dataset, uri)
    assert streamed.snapshot.snapshot_id == snapshot_id(whole) == snapshot_id(prepare(frame, dataset, uri))
    assert streamed.rows == ROWS
    pd.testing.assert_frame_equal(storage.read_parquet(streamed.snapshot.data_uri), whole)


def test_streamed_errors_count_over_every_batch_and_name_the_cut_last_record(
    churn: pd.DataFrame, dataset: DatasetConfig, tmp_path: Path
) -> None:
    times = churn.astype({"event_time": "str"})
    times.loc[[5, 2500, 3400], "event_time"] = ["yesterday", "soon", "yesterday"]
    write_table(times, str(tmp_path / "times.csv"))
    with pytest.raises(
        DataError, match=r"has 3 values that are not ISO 8601 date-times, e\.g\. \['yesterday', 'soon'\]"
    ):
        stream_snapshot(str(tmp_path / "times.csv"), dataset, str(tmp_path / "store"), BATCH)

    path = tmp_path / "cut.csv"
    write_table(churn, str(path))
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rindex(",", 0, len(text) - 40)])
    with pytest.raises(DataError, match=rf"^{path}: line {ROWS + 1}, the last record, has \d+ of 19 fields"):
        stream_snapshot(str(path), dataset, str(tmp_path / "store"), BATCH)
    assert storage.list_files(str(tmp_path / "store")) == []


# --- validate ---


def test_validation_batch_by_batch_gives_the_outcomes_of_the_whole_table(
    churn: pd.DataFrame, dataset: DatasetConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a leakage sample smaller than the table, so its rows are gathered from several batches
    monkeypatch.setattr(validation, "LEAKAGE_SAMPLE_ROWS", 600)
    frame = churn.head(1500).copy()
    frame.loc[[10, 700, 1300], "customer_id"] = frame.loc[5, "customer_id"]  # duplicates across batches
    frame.loc[[20, 600, 1100, 1200], "age"] = [-5, 130, 7, 250]
    frame.loc[[30, 800], "plan"] = "platinum"
    frame.loc[1400, "churned"] = None
    now = datetime.now(UTC)
    frame.loc[1450, "event_time"] = pd.Timestamp(now + timedelta(days=30)).as_unit("us")

    whole = validation.validate_frame(frame, dataset, now)
    batched = validation.validate_batches(
        lambda columns=None: batches(frame[columns] if columns else frame, 750), dataset, len(frame), now
    )

    assert batched.outcomes == whole.outcomes
    assert batched.statistics == whole.statistics
    failed = {(o.column, o.expectation) for o in batched.failures}
    assert {
        ("customer_id", "expect_column_values_to_be_unique"),
        ("age", "expect_column_values_to_be_between"),
    } <= failed
    unique = next(o for o in batched.outcomes if o.expectation == "expect_column_values_to_be_unique")
    assert unique.detail.startswith("4 of 1500 values (0.3%) are duplicates")


# --- preprocess ---


def assert_same_stats(fitted: NumericStats, whole: NumericStats, column: str) -> None:
    """Median and range exact, mean and standard deviation up to float rounding (summed in another order)."""
    assert (fitted.median, fitted.minimum, fitted.maximum) == (whole.median, whole.minimum, whole.maximum), column
    assert (fitted.mean, fitted.std) == pytest.approx((whole.mean, whole.std), rel=1e-12), column


def _config(method: str, batch_rows: int = BATCH) -> PipelineConfig:
    return load_pipeline_config(overrides={"split": {"method": method}, "processing": {"batch_rows": batch_rows}})


@pytest.mark.parametrize("method", ["time", "hash"])
def test_preprocess_batch_by_batch_gives_the_splits_and_preprocessor_of_the_whole_table(
    churn: pd.DataFrame, tmp_path: Path, method: str
) -> None:
    frame = churn.copy()
    frame.loc[::7, "total_charges"] = None
    root = str(tmp_path / "run")
    uri = storage.join(root, "snapshot", "data.parquet")
    storage.write_parquet(frame, uri)
    results.write_result(root, "snapshot", {"snapshot_id": "abc", "snapshot_uri": uri, "rows": ROWS})
    config = _config(method)
    dataset = config.dataset

    payload = preprocess.run(root, config)

    if method == "time":
        expected, holdout_start = preprocess.time_split(frame, dataset.timestamp_column, config.split)
        assert payload["split"]["holdout_start"] == holdout_start
    else:
        expected = preprocess.hash_split(frame, dataset.id_column, config.split)
    for name in preprocess.SPLITS:
        written = storage.read_parquet(payload[f"{name}_uri"])
        # the same rows in the same order: snapshot order (hash), time order (time)
        pd.testing.assert_frame_equal(written, expected[name].reset_index(drop=True))
    assert payload["class_counts"] == preprocess.target_summary(expected, dataset)["class_counts"]
    fitted = TabularPreprocessor.from_dict(storage.read_json(payload["preprocessor_uri"]))
    whole = TabularPreprocessor.fit(expected["train"], dataset.numeric_features, dataset.categorical_features)
    assert fitted.vocabularies == whole.vocabularies
    for column, stats in whole.numeric.items():
        assert_same_stats(fitted.numeric[column], stats, column)


def test_the_fitted_statistics_are_exact_whatever_the_batches(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    frame = churn.copy()
    frame.loc[::5, "age"] = None
    frame["satisfaction_score"] = np.nan  # all null: median 0, unit scale, no range
    numeric, categorical = dataset.numeric_features, dataset.categorical_features
    whole = TabularPreprocessor.fit(frame, numeric, categorical)

    for rows, keep in [(BATCH, 50), (333, 10_000)]:
        fitted = TabularPreprocessor.fit_batches(
            lambda columns, rows=rows: batches(frame[list(columns)], rows), numeric, categorical, keep_at_most=keep
        )
        assert fitted.vocabularies == whole.vocabularies
        for column, stats in whole.numeric.items():
            assert_same_stats(fitted.numeric[column], stats, column)


# --- a snapshot larger than the memory a step may use ---

MEMORY_ROWS = 500_000
MEMORY_BATCH_ROWS = 20_000
WIDE_COLUMNS = 60  # float64 columns the steps carry along: 500,000 rows x 65 columns is about 260 MB in memory
# The limit is on address space (RLIMIT_AS, set in the child before it runs): the interpreter with every step module
# imported, measured by a probe in the same environment, plus this allowance. The allowance holds what a step adds
# when streaming (Great Expectations' import and context, about 170 MiB, and a few batches in flight: the steps peak
# 120 to 400 MiB above the probe) but not the table read whole, which needs it at least twice (Arrow table and
# DataFrame: 2 x 260 MB > 480 MiB); read whole, each step fails to allocate the 244 MB block of the float columns.
STEP_ALLOWANCE = 480 << 20
# One allocator path and no per-thread arenas, so that address space follows what is allocated: pyarrow's default
# pool and glibc's per-thread arenas reserve address space by the hundreds of MiB up front, whatever is used.
LEAN_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}
WIDE_DATASET = {
    "name": "wide",
    "description": "rows with many columns the steps carry along",
    "target": {"name": "churned", "task": "binary", "classes": [0, 1]},
    "id_column": "customer_id",
    "timestamp_column": "event_time",
    "min_rows": 1,
    "features": [
        {"name": "age", "type": "numeric", "min": 0, "max": 200},
        {"name": "plan", "type": "categorical", "categories": ["basic", "premium"]},
    ],
}


def write_wide_parquet(path: Path, rows: int) -> None:
    """A table of ``rows`` rows that compresses to a few MB: cheap to write, large once read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    chunk = 100_000
    start_time = np.datetime64("2025-01-01T00:00:00", "us")
    with pq.ParquetWriter(path, _wide_schema(), compression="zstd") as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            filler = pa.array(rng.integers(0, 4, n).astype(np.float64))
            columns = [
                pa.array(np.char.add("c", np.arange(start, start + n).astype(str))),
                pa.array(start_time + rng.integers(0, 365 * 86_400 * 10**6, n).astype("timedelta64[us]")).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                pa.array(rng.uniform(18, 90, n)),
                pa.array(np.array(["basic", "premium"])[rng.integers(0, 2, n)]),
                pa.array(rng.integers(0, 2, n)),
                *[filler] * WIDE_COLUMNS,
            ]
            writer.write_table(pa.table(columns, schema=writer.schema))


def _wide_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("customer_id", pa.string()),
            ("event_time", pa.timestamp("us", tz="UTC")),
            ("age", pa.float64()),
            ("plan", pa.string()),
            ("churned", pa.int64()),
            *[(f"x{i}", pa.float64()) for i in range(WIDE_COLUMNS)],
        ]
    )


def address_space_after_imports(env: dict[str, str]) -> int:
    """Bytes of address space (VmPeak) of an interpreter that imported every step module, in this environment."""
    probe = "import mlsteps.cli; print(next(l for l in open('/proc/self/status') if l.startswith('VmPeak')))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    return int(out.split()[1]) << 10


def run_steps_within(limit: int, root: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """snapshot, validate and preprocess as the orchestrator runs them, each limited to ``limit`` bytes of address
    space (RLIMIT_AS: an allocation beyond it fails, so a step that reads the whole table dies); stops at the first
    step that fails."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    config = root / "pipeline.yaml"
    run_root = str(root / "run")
    commands = [
        ["snapshot", "--input-uri", str(root / "wide.parquet"), "--snapshot-store", str(root / "snapshots")],
        ["validate"],
        ["preprocess"],
    ]
    done = []
    for command in commands:
        done.append(
            subprocess.run(
                [sys.executable, "-m", "mlsteps", *command, "--run-root", run_root, "--config", str(config)],
                env=env,
                preexec_fn=limited,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        if done[-1].returncode:
            break
    return done


def prepare_wide_run(root: Path) -> None:
    """The wide table and a pipeline config on it with small batches."""
    (root / "wide.yaml").write_text(yaml.safe_dump(WIDE_DATASET))
    pipeline = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    pipeline["dataset"] = str(root / "wide.yaml")
    pipeline["processing"] = {"batch_rows": MEMORY_BATCH_ROWS}
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    write_wide_parquet(root / "wide.parquet", MEMORY_ROWS)


def test_the_steps_run_on_a_snapshot_larger_than_their_memory(tmp_path: Path) -> None:
    prepare_wide_run(tmp_path)
    env = {**os.environ, **LEAN_ENV}
    limit = address_space_after_imports(env) + STEP_ALLOWANCE

    done = run_steps_within(limit, tmp_path, env)

    assert [step.returncode for step in done] == [0, 0, 0], done[-1].stderr[-3000:]
    result = results.read_result(str(tmp_path / "run"), "preprocess")
    assert sum(result["rows"].values()) == MEMORY_ROWS
    assert results.read_result(str(tmp_path / "run"), "validate")["success"]
    # the table read whole (as Arrow and as a DataFrame) would not fit in the allowance
    assert 2 * MEMORY_ROWS * (WIDE_COLUMNS + 5) * 8 > STEP_ALLOWANCE
