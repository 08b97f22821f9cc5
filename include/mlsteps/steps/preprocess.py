"""preprocess: split the snapshot into train, validation and holdout, and fit the feature preprocessing on train.

The splits keep their raw columns: the model package applies the preprocessing itself, so evaluation and
serving feed it the same raw rows that arrive in production. Only the train split is used to fit, so nothing
about the validation or holdout rows leaks into the model.

The split is by time or by id hash, never by the target: a time split has to mirror production, and a hash split
must keep an id in one split whatever else the snapshot holds. Instead each split is checked to hold every class
(classification) or a varying target (regression), and the result records each split's class counts or target
mean and standard deviation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, SplitConfig, load_pipeline_config
from mlsteps.data import storage
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


def hash_split(frame: pd.DataFrame, column: str, split: SplitConfig) -> dict[str, pd.DataFrame]:
    """Assign each row by a hash of its id, so an id lands in the same split whatever the row order or run.

    Raises:
        DataError: the id column has missing values.
    """
    ids = frame[column]
    if ids.isna().any():
        raise DataError(f"id column {column!r} has {int(ids.isna().sum())} missing value(s): fix the data")
    hashes = pd.util.hash_pandas_object(ids.astype("str"), index=False).to_numpy()
    # The top 53 bits give an exact float in [0, 1) (dividing all 64 bits could round up to 1.0).
    position = (hashes >> np.uint64(11)).astype(np.float64) / 2.0**53
    holdout = position < split.holdout_fraction
    validation = ~holdout & (position < split.holdout_fraction + split.validation_fraction)
    return {"train": frame[~holdout & ~validation], "validation": frame[validation], "holdout": frame[holdout]}


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
    target = dataset.target
    encoded = {
        name: encode_target(part[target.name], target.task, target.classes, f"{name} split")
        for name, part in splits.items()
    }
    if is_classification(target.task):
        classes = list(target.classes or [])
        counts = {name: np.bincount(codes, minlength=len(classes)).tolist() for name, codes in encoded.items()}
        problems = [
            f"{name}: {len(encoded[name])} rows, "
            + ", ".join(f"{n} of {label!r}" for label, n in zip(classes, by_class, strict=True))
            for name, by_class in counts.items()
            if 0 in by_class
        ]
        needed = f"every class of {target.name!r} {classes}"
    else:
        problems = [
            f"{name}: {len(values)} rows, {len(np.unique(values))} distinct value(s)"
            for name, values in encoded.items()
            if len(np.unique(values)) < 2
        ]
        needed = f"at least two distinct values of {target.name!r}"
    if problems:
        raise DataError(
            f"every split needs {needed}:\n- "
            + "\n- ".join(problems)
            + "\nUse a snapshot with more rows, larger split fractions or the other split.method."
        )
    if is_classification(target.task):
        return {"class_counts": {name: dict(zip(map(str, classes), n, strict=True)) for name, n in counts.items()}}
    return {"target_stats": {name: {"mean": float(v.mean()), "std": float(v.std())} for name, v in encoded.items()}}


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
    dataset, split = config.dataset, config.split
    column = split_column(dataset, split)
    snapshot = read_result(run_root, "snapshot")
    refuse_unvalidated(run_root, snapshot)
    frame = storage.read_parquet(snapshot["snapshot_uri"])
    require_columns(frame, dataset.required_columns, f"snapshot {snapshot['snapshot_uri']}")
    target = dataset.target
    encode_target(frame[target.name], target.task, target.classes, f"snapshot {snapshot['snapshot_uri']}")

    holdout_start = None
    if split.method == "time":
        splits, holdout_start = time_split(frame, column, split)
    else:
        splits = hash_split(frame, column, split)
    rows = {name: len(part) for name, part in splits.items()}
    print(f"{STEP}: {split.method} split of {len(frame)} rows by {column!r}: {rows}", flush=True)
    summary = target_summary(splits, dataset)

    preprocessor = TabularPreprocessor.fit(splits["train"], dataset.numeric_features, dataset.categorical_features)
    out = step_dir(run_root, STEP)
    uris = {f"{name}_uri": storage.join(out, f"{name}.parquet") for name in SPLITS}
    for name in SPLITS:
        storage.write_parquet(splits[name], uris[f"{name}_uri"])
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
