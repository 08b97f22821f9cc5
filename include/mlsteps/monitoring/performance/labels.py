"""Delayed labels: read from files, checked and counted, then matched to the model's logged predictions.

Labels arrive late, from another system, as CSV or Parquet files under one URI (a folder, read recursively, or one
file; local, ``file://`` or ``s3://``), one row per labelled prediction: its id, its label and optionally when the
label became known. Bad rows are dropped and counted, never silently used, and never fail the check:

- ``missing_id``: no id (null or blank);
- ``wrong_type``: a label that is not a declared class (matched as ``tasks.class_positions`` does, text or number)
  or, for regression, not a finite number;
- ``duplicates``: the same id with the same label again, kept once (the earliest ``labelled_at``);
- ``conflicting``: one id with different labels; every row of that id is dropped, as its true label is unknown.

A file that cannot be used as a whole (a column missing, ids that are fractional numbers) is an error naming the
file. Ids are matched as text, as the prediction log stores request ids: CSV ids are read as written (``007`` stays
``007``), integer ids become their decimal text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.data import storage
from mlsteps.data.snapshots import read_table, table_format, utc_column
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import (
    PREDICTION,
    class_positions,
    finite_numbers,
    is_classification,
    probabilities_of,
    probability_columns,
)
from mlsteps.monitoring.prediction_log import MODEL_VERSION, REQUEST_ID

LABEL = "label"
LABELLED_AT = "labelled_at"
_EXAMPLES = 3
# Per row while reading: whether the label is usable, the label as written (for examples) and its file.
_VALID, _RAW, _FILE = "_valid", "_raw", "_file"


@dataclass
class LabelSet:
    """Usable labels, one per id, with the count of every row read and kept or dropped, and why."""

    frame: pd.DataFrame  # request_id (str), label (class position int64, or float64), labelled_at (UTC or NaT)
    counts: dict[str, int]  # rows_read, usable, duplicates, conflicting, wrong_type, missing_id
    problems: list[str]  # one sentence per kind of dropped row, with examples
    files: list[str]


@dataclass
class LabelledWindow:
    """The labelled predictions of one model version: the labels and the model's raw output, aligned by row."""

    y_true: np.ndarray  # as tasks.encode_target: class positions (int64) or float64
    output: np.ndarray  # raw model output: probabilities (rows x classes) or predictions (rows)
    counts: dict[str, Any]  # predictions, labelled, unlabelled, other_version, label_share


class NoLabelsYet(DataError):
    """No label file under the labels URI: nothing has arrived yet (or the URI is wrong; the message names it)."""


def label_files(uri: str) -> list[str]:
    """The label files of a URI: itself when it names a CSV or Parquet file, else every such file under it, sorted.

    Raises:
        NoLabelsYet: no CSV or Parquet file under the URI.
    """
    if table_format(uri) is not None:
        return [uri]
    files = [path for path in storage.list_files(uri) if table_format(path)]
    if not files:
        raise NoLabelsYet(
            f"no label file under {uri}: labels are CSV or Parquet files (.csv, .parquet, .pq) in that folder or "
            "below, or one such file; check monitoring.performance.labels.uri"
        )
    return files


def _ids_as_text(values: pd.Series, column: str, uri: str) -> pd.Series:
    """Ids as text (nulls kept): integers as their decimal text, whole floats too (a null makes integers float).

    Raises:
        DataError: some ids are numbers that are not integers.
    """
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        fractional = present[~np.isfinite(present) | (present % 1 != 0)]
        if not fractional.empty:
            raise DataError(
                f"labels file {uri}: id column {column!r} holds {len(fractional)} number(s) that are not integers "
                f"({values.dtype}), e.g. {fractional.drop_duplicates().head(_EXAMPLES).tolist()}: ids must be text "
                "or integers, as they are matched to the prediction log's request ids as text; write the ids as "
                "integers or strings"
            )
        values = values.astype("Int64")
    return values.astype("str")


def _read_file(
    uri: str, id_column: str, label_column: str, labelled_at_column: str | None, task: str, classes: Sequence[Any]
) -> pd.DataFrame:
    """One file's rows: text id, encoded label (-1 / NaN where unusable), UTC ``labelled_at``, validity and source.

    Raises:
        DataError: the file is unreadable or empty, lacks a configured column, or holds fractional ids.
    """
    frame = read_table(uri, text_columns=[id_column])
    wanted = {"id_column": id_column, "label_column": label_column, "labelled_at_column": labelled_at_column}
    missing = {name: column for name, column in wanted.items() if column is not None and column not in frame.columns}
    if missing:
        settings = ", ".join(f"{name}={column!r}" for name, column in missing.items())
        raise DataError(
            f"labels file {uri} lacks the column(s) {list(missing.values())} ({settings}); it has "
            f"{list(frame.columns)}: name its columns in monitoring.performance.labels, or fix the file"
        )
    raw = frame[label_column]
    if is_classification(task):
        label: np.ndarray = class_positions(raw, classes, match_text=True)
        valid = label >= 0
    else:
        label = finite_numbers(raw)
        valid = ~np.isnan(label)
    if labelled_at_column is None:
        labelled_at = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    else:
        labelled_at = utc_column(frame[labelled_at_column], labelled_at_column, uri)
    return pd.DataFrame(
        {
            REQUEST_ID: _ids_as_text(frame[id_column], id_column, uri),
            LABEL: label,
            LABELLED_AT: labelled_at,
            _VALID: valid,
            _RAW: raw.astype("str").fillna("(missing)"),
            _FILE: uri,
        }
    )


def _examples(values: pd.Series) -> list[Any]:
    return values.drop_duplicates().head(_EXAMPLES).tolist()


def read_labels(
    uri: str,
    *,
    id_column: str,
    label_column: str,
    labelled_at_column: str | None,
    task: str,
    classes: Sequence[Any],
) -> LabelSet:
    """Read, check and count the labels under a URI (see the module docstring for what is dropped and why).

    Args:
        uri: a folder (every .csv, .parquet and .pq file under it) or one file; path, ``file://`` or ``s3://``.
        id_column: the column of the prediction's id (its ``request_id`` in the prediction log).
        label_column: the column of the label: a class (as text or number) or, for regression, a number.
        labelled_at_column: the column of when the label became known (ISO 8601, no offset means UTC); None: none.
        task: the model's task.
        classes: ``target.classes`` (classification); labels are encoded as their positions.

    Returns:
        The usable labels (``frame``: ``request_id``, ``label`` encoded as ``tasks.encode_target`` does,
        ``labelled_at``), the ``counts`` (``rows_read`` = ``usable`` + every dropped count), a sentence per
        problem and the files read.

    Raises:
        DataError: no label file under the URI, or a file that is unreadable, empty, lacks a configured column,
            holds fractional ids or ``labelled_at`` values that are not date-times; the message names the file.
    """
    files = label_files(uri)
    rows = pd.concat(
        [_read_file(path, id_column, label_column, labelled_at_column, task, classes) for path in files],
        ignore_index=True,
    )
    no_id = rows[REQUEST_ID].isna() | (rows[REQUEST_ID].str.strip() == "")
    wrong_type = ~no_id & ~rows[_VALID]
    kept = rows[~no_id & rows[_VALID]]
    labels_per_id = kept.groupby(REQUEST_ID)[LABEL].nunique()
    conflicting = kept[REQUEST_ID].isin(labels_per_id.index[labels_per_id > 1])
    agreed = kept[~conflicting].sort_values(LABELLED_AT, kind="stable", na_position="last")
    repeated = agreed[REQUEST_ID].duplicated()
    usable = agreed[~repeated].sort_index()
    counts = {
        "rows_read": len(rows),
        "usable": len(usable),
        "duplicates": int(repeated.sum()),
        "conflicting": int(conflicting.sum()),
        "wrong_type": int(wrong_type.sum()),
        "missing_id": int(no_id.sum()),
    }
    what = f"one of the classes {list(classes)}" if is_classification(task) else "a finite number"
    problems = [
        f"{counts['missing_id']} label row(s) have no id in column {id_column!r} (in {_examples(rows[_FILE][no_id])}):"
        " dropped; every label needs the request id of its prediction",
        f"{counts['wrong_type']} label(s) in column {label_column!r} are not {what}, e.g. "
        f"{_examples(rows[_RAW][wrong_type])}: dropped; fix them"
        + (", or add the class to dataset.target.classes" if is_classification(task) else ""),
        f"{counts['duplicates']} label row(s) repeat the label of an id already labelled, e.g. ids "
        f"{_examples(agreed[REQUEST_ID][repeated])}: counted once",
        f"{counts['conflicting']} label row(s) of {int((labels_per_id > 1).sum())} id(s) give different labels to "
        f"the same id, e.g. ids {_examples(kept[REQUEST_ID][conflicting])}: all dropped, as the true label is "
        "unknown; keep one label per id",
    ]
    dropped = [counts[name] for name in ("missing_id", "wrong_type", "duplicates", "conflicting")]
    return LabelSet(
        frame=usable[[REQUEST_ID, LABEL, LABELLED_AT]].reset_index(drop=True),
        counts=counts,
        problems=[sentence for sentence, count in zip(problems, dropped, strict=True) if count],
        files=files,
    )


def match_labels(
    records: pd.DataFrame, labels: LabelSet, task: str, classes: Sequence[Any], model_version: int
) -> LabelledWindow:
    """The labelled predictions of one model version: its logged records joined to the labels on ``request_id``.

    Only records of ``model_version`` are judged predictions; each one with a label counts (an id the version
    scored twice counts twice). Labels of ids that only other versions scored in ``records`` are counted as
    ``other_version``: they belong to another model's performance.

    Args:
        records: prediction-log rows (``prediction_log.read_window``) with ``request_id``, ``model_version`` and
            the task's output columns (``tasks.output_columns``) for the rows of ``model_version``.
        labels: from ``read_labels``.
        task: the model's task.
        classes: ``target.classes`` (classification).
        model_version: the version whose performance is measured.

    Returns:
        ``y_true`` and ``output`` (probabilities rebuilt with ``tasks.probabilities_of``, or the predicted values)
        of the labelled predictions, and ``counts``: ``predictions``, ``labelled``, ``unlabelled``,
        ``other_version`` and ``label_share`` (labelled / predictions; 0 without predictions).

    Raises:
        DataError: the records lack a column, or labelled predictions of the version have no logged output there
            (they were logged for other classes or another task).
    """
    outputs = probability_columns(task, classes) if is_classification(task) else [PREDICTION]
    missing = [column for column in (REQUEST_ID, MODEL_VERSION, *outputs) if column not in records.columns]
    if missing:
        raise DataError(
            f"prediction log records lack column(s) {missing} of a {task} model of classes {list(classes)}; they have "
            f"{list(records.columns)}: read the window with the model's output columns (tasks.output_columns)"
        )
    version = records[MODEL_VERSION] == model_version
    judged = records.loc[version, [REQUEST_ID, *outputs]]
    matched = judged.merge(labels.frame[[REQUEST_ID, LABEL]], on=REQUEST_ID, how="inner")
    if matched[outputs].isna().to_numpy().any():
        raise DataError(
            f"labelled predictions of model version {model_version} have no logged value in some of {outputs}: "
            f"they were not logged as a {task} model of classes {list(classes)}; check the model's task and classes"
        )
    other_ids = set(records.loc[~version, REQUEST_ID]) - set(judged[REQUEST_ID])
    output = (
        probabilities_of(task, classes, matched)
        if is_classification(task)
        else matched[PREDICTION].to_numpy(dtype=np.float64)
    )
    predictions, labelled = len(judged), len(matched)
    return LabelledWindow(
        y_true=matched[LABEL].to_numpy(),
        output=output,
        counts={
            "predictions": predictions,
            "labelled": labelled,
            "unlabelled": predictions - labelled,
            "other_version": int(labels.frame[REQUEST_ID].isin(other_ids).sum()),
            "label_share": labelled / predictions if predictions else 0.0,
        },
    )


def unknown_label_ids(labels: LabelSet, logged_ids: Iterable[str]) -> int:
    """How many labels have an id that no logged prediction has (a wrong id, or a prediction never logged)."""
    return int((~labels.frame[REQUEST_ID].isin(set(logged_ids))).sum())
