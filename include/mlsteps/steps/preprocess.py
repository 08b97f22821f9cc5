"""preprocess: split the snapshot into train, validation and holdout, and fit the feature preprocessing on train.

The splits keep their raw columns: the model package applies the preprocessing itself, so evaluation and
serving feed it the same raw rows that arrive in production. Only the train split is used to fit, so nothing
about the validation or holdout rows leaks into the model.

The split is by time or by id hash, never by the target: a time split has to mirror production, and a hash split
must keep an id in one split whatever else the snapshot holds. Instead each split is checked to hold every class
(classification) or a varying target (regression), and the result records each split's class counts or target
mean and standard deviation.

The step holds ``processing.batch_rows`` rows at a time: the splits are written batch by batch, each row routed by
its hash or its time, and the preprocessor is fitted in passes over the written train split. A time split holds one
column whole, the event times, with each row's position in time order (8 bytes a row each, about 250 MB at the
peak for 10 million rows), to place the cuts exactly where sorting the whole snapshot puts them, and writes each
split in time order by an external merge sort through a temporary folder (as much disk as the snapshot). The
splits hold the rows, in the order, that splitting the whole snapshot at once gives.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, SplitConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.batches import ParquetBatchWriter, iter_frames, iter_record_batches, parquet_schema
from mlsteps.data.features import TabularPreprocessor, require_columns
from mlsteps.errors import ConfigError, DataError, ValidationFailed
from mlsteps.evaluation.tasks import encode_target, is_classification
from mlsteps.results import optional_result, read_result, result_uri, step_dir, write_result

STEP = "preprocess"
VALIDATE_STEP = "validate"
SPLITS = ("train", "validation", "holdout")
PREPROCESSOR_FILE = "preprocessor.json"


def split_column(dataset: DatasetConfig, split: SplitConfig) -> str:
    """The column the split method needs: the timestamp for ``time``, the id for ``hash``.

    Raises:
        ConfigError: the dataset config does not name that column.
    """
    field = "timestamp_column" if split.method == "time" else "id_column"
    column = getattr(dataset, field)
    if not column:
        other = "hash" if split.method == "time" else "time"
        raise ConfigError(
            f"split.method is {split.method!r} but dataset {dataset.name!r} has no {field}: "
            f"set {field} in the dataset config or use split.method: {other}"
        )
    return column


def time_split(frame: pd.DataFrame, column: str, split: SplitConfig) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Sort by time: the latest rows are the holdout, the validation rows come just before them.

    This mirrors production, where the model is trained on the past and judged on what came after.

    Returns:
        The three splits and the ISO time of the first holdout row (None when the holdout is empty).

    Raises:
        DataError: the time column has missing or unparseable values.
    """
    times = pd.to_datetime(frame[column], utc=True, errors="coerce")
    if times.isna().any():
        examples = frame[column][times.isna()].head(3).tolist()
        raise DataError(
            f"timestamp column {column!r} has {int(times.isna().sum())} missing or unparseable value(s), "
            f"e.g. {examples}: fix the data or use split.method: hash"
        )
    order = np.argsort(times.to_numpy(), kind="stable")
    ordered = frame.iloc[order].reset_index(drop=True)
    holdout_start = len(ordered) - round(len(ordered) * split.holdout_fraction)
    validation_start = holdout_start - round(len(ordered) * split.validation_fraction)
    splits = {
        "train": ordered.iloc[:validation_start],
        "validation": ordered.iloc[validation_start:holdout_start],
        "holdout": ordered.iloc[holdout_start:],
    }
    first_holdout_time = times.iloc[order[holdout_start]].isoformat() if holdout_start < len(ordered) else None
    return splits, first_holdout_time


def time_split_codes(times: pd.Series, column: str, split: SplitConfig) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``time_split`` from the time column alone: each row's split as 0 (train), 1 (validation) or 2 (holdout).

    The cuts are where ``time_split`` puts them, rows of equal time in row order (a stable sort), so the same rows
    land in each split.

    Returns:
        The split code of every row and its position in time order (int64), both in row order, and the ISO time of
        the first holdout row (None when the holdout is empty).

    Raises:
        DataError: the time column has missing or unparseable values.
    """
    parsed = pd.to_datetime(times, utc=True, errors="coerce")
    if parsed.isna().any():
        examples = times[parsed.isna()].head(3).tolist()
        raise DataError(
            f"timestamp column {column!r} has {int(parsed.isna().sum())} missing or unparseable value(s), "
            f"e.g. {examples}: fix the data or use split.method: hash"
        )
    order = np.argsort(parsed.to_numpy(), kind="stable")
    holdout_start = len(order) - round(len(order) * split.holdout_fraction)
    validation_start = holdout_start - round(len(order) * split.validation_fraction)
    codes = np.zeros(len(order), dtype=np.int8)
    codes[order[validation_start:holdout_start]] = 1
    codes[order[holdout_start:]] = 2
    first_holdout_time = parsed.iloc[order[holdout_start]].isoformat() if holdout_start < len(order) else None
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return codes, ranks, first_holdout_time


def hash_split_codes(ids: pd.Series, split: SplitConfig) -> np.ndarray:
    """Each row's split by the hash of its id, as ``hash_split`` assigns it: 0 train, 1 validation, 2 holdout."""
    hashes = pd.util.hash_pandas_object(ids.astype("str"), index=False).to_numpy()
    # The top 53 bits give an exact float in [0, 1) (dividing all 64 bits could round up to 1.0).
    position = (hashes >> np.uint64(11)).astype(np.float64) / 2.0**53
    holdout = position < split.holdout_fraction
    validation = ~holdout & (position < split.holdout_fraction + split.validation_fraction)
    return np.where(holdout, 2, np.where(validation, 1, 0)).astype(np.int8)


def hash_split(frame: pd.DataFrame, column: str, split: SplitConfig) -> dict[str, pd.DataFrame]:
    """Assign each row by a hash of its id, so an id lands in the same split whatever the row order or run.

    Raises:
        DataError: the id column has missing values.
    """
    ids = frame[column]
    if ids.isna().any():
        raise DataError(f"id column {column!r} has {int(ids.isna().sum())} missing value(s): fix the data")
    codes = hash_split_codes(ids, split)
    return {name: frame[codes == code] for code, name in enumerate(SPLITS)}


def target_summary(splits: dict[str, pd.DataFrame], dataset: DatasetConfig) -> dict[str, Any]:
    """What each split holds of the target: ``class_counts`` (classification) or ``target_stats`` (regression).

    Returns:
        ``{"class_counts": {split: {class as text: rows}}}`` in class order, or
        ``{"target_stats": {split: {"mean": ..., "std": ...}}}``.

    Raises:
        DataError: a target value is not a declared class (classification) or not a finite number (regression);
            or a split lacks a class (classification) or has fewer than two distinct target values (regression):
            training, early stopping and the holdout metrics need them. The message lists every such split.
    """
    tally = TargetTally(dataset)
    for name, part in splits.items():
        tally.add(name, part[dataset.target.name])
    return tally.summary()


class TargetTally:
    """``target_summary`` of splits seen a batch at a time: class counts, or the count, mean and spread of a
    regression target (merged batch by batch, exact up to float rounding), in memory that does not grow with rows."""

    def __init__(self, dataset: DatasetConfig) -> None:
        self.target = dataset.target
        self.classification = is_classification(self.target.task)
        self.classes = list(self.target.classes or [])
        self.counts = {name: np.zeros(len(self.classes), dtype=np.int64) for name in SPLITS}
        # regression: rows, mean, sum of squared deviations, and up to two distinct values seen
        self.moments = {name: (0, 0.0, 0.0) for name in SPLITS}
        self.distinct: dict[str, set[float]] = {name: set() for name in SPLITS}

    def add(self, split: str, values: pd.Series) -> None:
        """Count a batch of one split's target values.

        Raises:
            DataError: a value is not a declared class or not a finite number (as ``encode_target``).
        """
        encoded = encode_target(values, self.target.task, self.target.classes, f"{split} split")
        if self.classification:
            self.counts[split] += np.bincount(encoded, minlength=len(self.classes))
            return
        if not len(encoded):
            return
        rows, mean, squares = self.moments[split]
        batch_mean = float(encoded.mean())
        batch_squares = float(np.square(encoded - batch_mean).sum())
        total = rows + len(encoded)
        delta = batch_mean - mean
        # Chan et al.'s merge of two (count, mean, sum of squared deviations)
        self.moments[split] = (
            total,
            mean + delta * len(encoded) / total,
            squares + batch_squares + delta**2 * rows * len(encoded) / total,
        )
        if len(self.distinct[split]) < 2:
            self.distinct[split].update(np.unique(encoded)[:2].tolist())

    def summary(self) -> dict[str, Any]:
        """As ``target_summary``; raises its DataError when a split lacks a class or a varying target."""
        if self.classification:
            problems = [
                f"{name}: {int(by_class.sum())} rows, "
                + ", ".join(f"{n} of {label!r}" for label, n in zip(self.classes, by_class.tolist(), strict=True))
                for name, by_class in self.counts.items()
                if 0 in by_class
            ]
            needed = f"every class of {self.target.name!r} {self.classes}"
        else:
            problems = [
                f"{name}: {self.moments[name][0]} rows, {len(self.distinct[name])} distinct value(s)"
                for name in SPLITS
                if len(self.distinct[name]) < 2
            ]
            needed = f"at least two distinct values of {self.target.name!r}"
        if problems:
            raise DataError(
                f"every split needs {needed}:\n- "
                + "\n- ".join(problems)
                + "\nUse a snapshot with more rows, larger split fractions or the other split.method."
            )
        if self.classification:
            return {
                "class_counts": {
                    name: dict(zip(map(str, self.classes), n.tolist(), strict=True)) for name, n in self.counts.items()
                }
            }
        return {
            "target_stats": {
                name: {"mean": float(mean), "std": float(np.sqrt(squares / rows))}
                for name, (rows, mean, squares) in self.moments.items()
            }
        }


def refuse_unvalidated(run_root: str, snapshot: dict[str, Any]) -> None:
    """Refuse a snapshot that the validate step of this run failed, or validated as another snapshot.

    A run whose validate step did not run at all is accepted, so a snapshot can be split on its own by hand.

    Raises:
        ValidationFailed: the validate result of this run root failed, or names another snapshot id.
    """
    validated = optional_result(run_root, VALIDATE_STEP)
    if validated is None:
        return
    where = f"{result_uri(run_root, VALIDATE_STEP)} (report: {validated.get('report_html_uri', 'none')})"
    if validated.get("snapshot_id") != snapshot.get("snapshot_id"):
        raise ValidationFailed(
            f"run {run_root}: validation in {where} is of snapshot {validated.get('snapshot_id')}, but the snapshot "
            f"is now {snapshot.get('snapshot_id')}: run `{VALIDATE_STEP}` for this --run-root again first"
        )
    if not validated.get("success"):
        failed = len(validated.get("failures") or [])
        raise ValidationFailed(
            f"run {run_root}: snapshot {snapshot.get('snapshot_id')} failed validation ({failed} failed "
            f"expectation(s)) in {where}: fix the data and run `snapshot` and `{VALIDATE_STEP}` again, "
            "or adjust the dataset config's limits if the data is right"
        )


def run(run_root: str, config: PipelineConfig) -> dict[str, Any]:
    """Split the snapshot, fit the preprocessor on train, and write the splits, the preprocessor and the result.

    Returns:
        The payload written to ``result.json``.

    Raises:
        ConfigError: the split method needs a column the dataset config does not name.
        DataError: the snapshot lacks columns, has bad target/time/id values, or a split lacks a class
            (classification) or a varying target (regression).
        ValidationFailed: the validate step of this run failed, or validated another snapshot.
    """
    dataset, split, target = config.dataset, config.split, config.dataset.target
    batch_rows = config.processing.batch_rows
    column = split_column(dataset, split)
    snapshot = read_result(run_root, "snapshot")
    refuse_unvalidated(run_root, snapshot)
    snapshot_uri = snapshot["snapshot_uri"]
    what = f"snapshot {snapshot_uri}"
    schema = parquet_schema(snapshot_uri)
    require_columns(schema.empty_table().to_pandas(), dataset.required_columns, what)
    codes, ranks, holdout_start = _split_codes(snapshot_uri, column, dataset, split, batch_rows)
    out = step_dir(run_root, STEP)
    uris = {f"{name}_uri": storage.join(out, f"{name}.parquet") for name in SPLITS}
    tally = TargetTally(dataset)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(ParquetBatchWriter(uris[f"{name}_uri"], schema)) for name in SPLITS]
        if ranks is None:
            _write_in_row_order(snapshot_uri, codes, writers, tally, target.name, batch_rows)
        else:
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="preprocess-")))
            _write_in_time_order(snapshot_uri, codes, ranks, writers, tally, target.name, batch_rows, staging)
        rows = {name: writer.rows for name, writer in zip(SPLITS, writers, strict=True)}
        print(f"{STEP}: {split.method} split of {len(codes)} rows by {column!r}: {rows}", flush=True)
        summary = tally.summary()  # raising here discards the splits

    preprocessor = TabularPreprocessor.fit_batches(
        lambda columns: iter_frames(uris["train_uri"], batch_rows, columns),
        dataset.numeric_features,
        dataset.categorical_features,
        keep_at_most=batch_rows,
    )
    preprocessor_uri = storage.join(out, PREPROCESSOR_FILE)
    storage.write_json(preprocessor_uri, preprocessor.to_dict())
    payload = {
        **uris,
        "preprocessor_uri": preprocessor_uri,
        "rows": rows,
        **summary,
        "split": {
            "method": split.method,
            "validation_fraction": split.validation_fraction,
            "holdout_fraction": split.holdout_fraction,
            "holdout_start": holdout_start,
        },
        "snapshot_id": snapshot["snapshot_id"],
    }
    write_result(run_root, STEP, payload)
    print(f"{STEP}: wrote splits and {PREPROCESSOR_FILE} under {out}", flush=True)
    return payload


def _write_in_row_order(
    uri: str,
    codes: np.ndarray,
    writers: list[ParquetBatchWriter],
    tally: TargetTally,
    target: str,
    batch_rows: int,
) -> None:
    """Route each batch's rows to its split's writer, keeping the snapshot's row order (as ``hash_split`` does)."""
    offset = 0
    for batch in iter_record_batches(uri, batch_rows):
        batch_codes = codes[offset : offset + batch.num_rows]
        offset += batch.num_rows
        for code, (name, writer) in enumerate(zip(SPLITS, writers, strict=True)):
            rows = batch.filter(pa.array(batch_codes == code))
            writer.write(rows)
            tally.add(name, rows.select([target]).to_pandas()[target])


def _write_in_time_order(
    uri: str,
    codes: np.ndarray,
    ranks: np.ndarray,
    writers: list[ParquetBatchWriter],
    tally: TargetTally,
    target: str,
    batch_rows: int,
    staging: Path,
) -> None:
    """Write each split in time order, as ``time_split`` does, by an external merge sort in bounded memory.

    Each batch's rows of a split, sorted by their position in time order, become one sorted run in a staging file,
    in row groups small enough that one group of every run fits in a batch. The runs are then merged a batch of
    output rows at a time: a run's rows are consumed front to back, so each run holds one row group in memory.
    """
    runs = max(1, -(-len(codes) // batch_rows))
    group_rows = max(1, batch_rows // runs)
    run_groups: list[list[list[int]]] = [[] for _ in SPLITS]  # per split, per run: its row groups in the file
    staged: list[pq.ParquetWriter | None] = [None] * len(SPLITS)
    groups_written = [0] * len(SPLITS)
    try:
        offset = 0
        for batch in iter_record_batches(uri, batch_rows):
            batch_codes, batch_ranks = codes[offset : offset + batch.num_rows], ranks[offset : offset + batch.num_rows]
            offset += batch.num_rows
            ranked = pa.Table.from_batches([batch.append_column(_RANK, pa.array(batch_ranks))])
            for code, name in enumerate(SPLITS):
                rows = ranked.filter(pa.array(batch_codes == code))
                if not rows.num_rows:
                    continue
                tally.add(name, rows.select([target]).to_pandas()[target])
                rows = rows.take(pc.sort_indices(rows.column(_RANK)))
                if staged[code] is None:
                    staged[code] = pq.ParquetWriter(staging / f"{name}.parquet", rows.schema)
                staged[code].write_table(rows, row_group_size=group_rows)
                groups = -(-rows.num_rows // group_rows)
                run_groups[code].append(list(range(groups_written[code], groups_written[code] + groups)))
                groups_written[code] += groups
    finally:
        for writer in staged:
            if writer is not None:
                writer.close()
    for code, writer in enumerate(writers):
        _merge_runs(staging / f"{SPLITS[code]}.parquet", run_groups[code], writer, batch_rows)


_RANK = "__position_in_time_order"


def _merge_runs(path: Path, runs: list[list[int]], writer: ParquetBatchWriter, batch_rows: int) -> None:
    """Merge sorted runs (row groups of ``path``) by their rank column into ``writer``, ``batch_rows`` at a time."""
    if not runs:
        return
    parquet = pq.ParquetFile(path)
    heads: list[pa.Table | None] = [None] * len(runs)
    next_group = [0] * len(runs)
    remaining = sum(parquet.metadata.row_group(g).num_rows for groups in runs for g in groups)
    low = min(parquet.read_row_group(groups[0], columns=[_RANK]).column(0)[0].as_py() for groups in runs)
    while remaining:
        high = low + batch_rows
        pieces = []
        for position, groups in enumerate(runs):
            while True:
                head = heads[position]
                if head is None or not head.num_rows:
                    if next_group[position] == len(groups):
                        break
                    head = parquet.read_row_group(groups[next_group[position]])
                    next_group[position] += 1
                take = int(np.searchsorted(head.column(_RANK).to_numpy(), high))
                pieces.append(head.slice(0, take))
                heads[position] = head.slice(take)
                if heads[position].num_rows:
                    break
        chunk = pa.concat_tables(pieces)
        chunk = chunk.take(pc.sort_indices(chunk.column(_RANK))).drop_columns([_RANK])
        writer.write(chunk)
        remaining -= chunk.num_rows
        low = high


def _split_codes(
    uri: str, column: str, dataset: DatasetConfig, split: SplitConfig, batch_rows: int
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Every row's split (0 train, 1 validation, 2 holdout), its position in time order (time split only) and the
    first holdout time, from the target and split columns alone; the target is checked on the way.

    Raises:
        DataError: a target value is not a declared class or not a finite number (the first batch holding one is
            named), or the split column has missing (hash) or missing or unparseable (time) values.
    """
    target = dataset.target
    what = f"snapshot {uri}"
    split_values, missing = [], 0
    for frame in iter_frames(uri, batch_rows, list(dict.fromkeys([target.name, column]))):
        encode_target(frame[target.name], target.task, target.classes, what)
        if split.method == "time":
            split_values.append(frame[column])
        else:
            missing += int(frame[column].isna().sum())
            split_values.append(pd.Series(hash_split_codes(frame[column].fillna(""), split)))
    if missing:
        raise DataError(f"id column {column!r} has {missing} missing value(s): fix the data")
    values = pd.concat(split_values, ignore_index=True) if split_values else pd.Series([], dtype="float64")
    if split.method == "time":
        # One column whole: 8 bytes a row (80 MB for 10 million rows), and its sort order as much again.
        return time_split_codes(values, column, split)
    return values.to_numpy(dtype=np.int8), None, None


def main(run_root: RunRoot, config: ConfigUri = None) -> None:
    """Split the snapshot into train, validation and holdout and fit the feature preprocessing on train.

    Reads the snapshot step's result, and refuses (exit 2) when this run's validate step failed or validated
    another snapshot. split.method "time" puts the latest rows in the holdout (validation just
    before it); "hash" assigns rows by a hash of the id column, the same id always to the same split. Every split
    must hold every class (classification) or two distinct target values (regression). Writes
    train/validation/holdout.parquet (raw columns) and preprocessor.json under <run-root>/preprocess/.

    Args:
        run_root: folder of this run's artifacts; the snapshot step must have run for it.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.

    Examples:
        python -m mlsteps preprocess --run-root ./state/runs/ml_retrain/manual-1

        python -m mlsteps preprocess --run-root s3://ml-artifacts/runs/ml_retrain/manual-1 --config pipeline.yaml
    """
    run(run_root, load_pipeline_config(config))
