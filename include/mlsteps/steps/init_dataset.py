"""The ``init-dataset`` command: infer a dataset config from a CSV or Parquet file, as commented YAML to review.

Writing a dataset config by hand means knowing every column's type, range, categories and share of nulls. This
command reads the file as the snapshot step will and writes a config that ``load_dataset_config`` accepts and the
file itself passes validation with; comments say what was inferred and what to check. It chooses the safe reading
wherever the data is ambiguous:

- booleans become categorical, with the categories spelled as the snapshot reads them (``true``/``false`` from a
  CSV, ``True``/``False`` from Parquet);
- text that looks numeric but has symbols (``$1,200``, ``12%``) or stray words stays categorical, with a comment
  to clean it at the source;
- ranges get a margin of ``RANGE_MARGIN`` of the observed span (never below 0 for a column that has no negative
  values), and null shares a margin above the observed share;
- columns a model cannot use (all null, constant, free text, dates that are not the event time, extra ids) are
  left out, each named in a comment with the reason.

It makes a config rather than running a pipeline step, so it takes no run root and writes no result.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import typer
import yaml
from pydantic import ValidationError

from mlsteps.config import DatasetConfig
from mlsteps.data import storage
from mlsteps.data.snapshots import prepare, read_table, table_format
from mlsteps.errors import ConfigError, DataError

DEFAULT_MAX_CATEGORIES = 50
DEFAULT_MIN_ROWS = 100
RANGE_MARGIN = 0.1  # share of the observed span added below the minimum and above the maximum
NULL_MARGIN = 0.5  # share of the observed null share added on top (plus NULL_SLACK)
NULL_SLACK = 0.02
PARSE_SHARE = 0.95  # text counts as numbers or dates when this share of its non-null values parses
FREE_TEXT_SHARE = 0.5  # text with more distinct values than this share of its rows is free text (or an id)
MAX_SLICE_CATEGORIES = 10
MAX_SLICE_COLUMNS = 2
EXAMPLES_SHOWN = 3
_ID_NAME = re.compile(r"(^|[^a-z])(id|uuid|guid)$")
_CAMEL_ID_NAME = re.compile(r"[a-z](Id|ID)$")
_TIME_NAME = re.compile(r"time|date|_at$|^at$|timestamp|created|updated", re.IGNORECASE)
_NUMBER_SYMBOLS = re.compile(r"[\s$€£¥%,]")

Choice = Literal["auto", "binary", "multiclass", "regression"]


@dataclass
class InferredConfig:
    """A dataset config inferred from a file, with the comments that explain it.

    Attributes:
        config: the fields of the dataset config, as ``DatasetConfig`` reads them.
        notes: comments above a field, keyed by field name (``target``, ``id_column``, ...) or ``features.<column>``.
        left_out: columns not in the config, each with the reason.
        source: the file the config was inferred from.
        rows: rows in that file.
    """

    config: dict[str, Any]
    notes: dict[str, list[str]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    source: str = ""
    rows: int = 0

    def note(self, key: str, text: str) -> None:
        """Add a comment above the field ``key``."""
        self.notes.setdefault(key, []).append(text)


def _plain(value: Any) -> Any:
    """A numpy or pandas scalar as a plain Python value; whole floats as ints (``0`` not ``0.0``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _examples(values: pd.Series) -> str:
    return ", ".join(repr(_plain(v)) for v in values.drop_duplicates().head(EXAMPLES_SHOWN))


def _is_boolean(present: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(present) or (
        len(present) > 0 and present.map(lambda v: isinstance(v, bool | np.bool_)).all()
    )


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _is_whole(present: pd.Series) -> bool:
    return bool((present % 1 == 0).all())


def _share_parsed(parsed: pd.Series) -> float:
    return float(parsed.notna().mean()) if len(parsed) else 0.0


def _iso_times(present: pd.Series) -> pd.Series:
    """Text parsed exactly as the snapshot step parses the timestamp column (ISO 8601, UTC without an offset)."""
    return pd.to_datetime(present.astype("str"), utc=True, format="ISO8601", errors="coerce")


def _looks_like_dates(present: pd.Series) -> bool:
    """Text whose values (nearly all) hold a digit and parse as dates in some format; month names alone do not."""
    text = present.astype("str")
    with_digits = text[text.str.contains(r"\d", regex=True)]
    if len(with_digits) < PARSE_SHARE * len(text):
        return False
    return _share_parsed(pd.to_datetime(with_digits, errors="coerce", format="mixed")) >= PARSE_SHARE


def _numbers_in_text(present: pd.Series) -> str | None:
    """Why text looks numeric (symbols, or a few words among numbers), or None when it does not."""
    text = present.astype("str")
    if _share_parsed(pd.to_numeric(text, errors="coerce")) >= PARSE_SHARE:
        not_numbers = text[pd.to_numeric(text, errors="coerce").isna()]
        return f"mostly numbers, but {len(not_numbers)} value(s) are not, e.g. {_examples(not_numbers)}"
    cleaned = text.str.replace(_NUMBER_SYMBOLS, "", regex=True)
    if _share_parsed(pd.to_numeric(cleaned, errors="coerce")) >= PARSE_SHARE:
        return f"numbers written with symbols, e.g. {_examples(text)}"
    return None


def _is_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name.lower()) or _CAMEL_ID_NAME.search(name))


def _null_limit(share: float) -> float:
    """The accepted null share: the observed one with a margin, rounded up to whole percent; 0 when none."""
    if share == 0:
        return 0.0
    return min(1.0, math.ceil((share * (1 + NULL_MARGIN) + NULL_SLACK) * 100) / 100)


def _range(present: pd.Series) -> tuple[float, float]:
    """The observed range widened by ``RANGE_MARGIN`` of its span, rounded outward to a readable step."""
    finite = present[np.isfinite(present.astype("float64"))]
    low, high = float(finite.min()), float(finite.max())
    span = high - low or abs(high) or 1.0
    step = 10.0 ** (math.floor(math.log10(span)) - 1)
    if _is_whole(present):
        step = max(step, 1.0)
    lower = low - RANGE_MARGIN * span
    if low >= 0:
        lower = max(lower, 0.0)
    digits = max(0, -math.floor(math.log10(step)))
    return (
        _plain(round(math.floor(lower / step) * step, digits)),
        _plain(round(math.ceil((high + RANGE_MARGIN * span) / step) * step, digits)),
    )


def _refuse_target(values: pd.Series, uri: str, max_categories: int) -> None:
    """Refuse a target no model can learn: all null, constant, dates, or free text.

    Raises:
        DataError: naming the column, what it holds and what to do.
    """
    present = values.dropna()
    where = f"{uri}: target column {values.name!r}"
    if present.empty:
        raise DataError(f"{where} has no values (all {len(values)} rows are null): choose the column with the labels")
    if present.nunique() == 1:
        raise DataError(
            f"{where} is constant ({_examples(present)} on every labelled row): a model needs at least two values"
        )
    if pd.api.types.is_datetime64_any_dtype(values):
        raise DataError(f"{where} holds date-times: a target is classes or numbers")
    text = not _is_numeric(values) and not _is_boolean(present)
    if text and present.nunique() > max_categories:
        why = _numbers_in_text(present)
        fix = (
            "strip the symbols at the source so it reads as numbers (then task: regression)"
            if why and why.startswith("numbers written")
            else f"map it to at most {max_categories} classes (--max-categories raises the limit)"
        )
        raise DataError(
            f"{where} is text with {present.nunique()} distinct values (e.g. {_examples(present)}): neither classes "
            f"a model can learn nor numbers; {fix}"
        )


def _infer_task(values: pd.Series, choice: Choice, max_categories: int, uri: str) -> str:
    """The task: as given, or from the values (2 -> binary, few whole numbers or labels -> multiclass, else regression).

    Raises:
        ConfigError: the given task does not fit the values.
    """
    present = values.dropna()
    distinct = present.nunique()
    numeric = _is_numeric(values)
    where = f"{uri}: target column {values.name!r}"
    if choice == "binary" and distinct != 2:
        raise ConfigError(f"--task binary needs exactly two distinct target values; {where} has {distinct}")
    if choice == "multiclass" and distinct < 3:
        raise ConfigError(f"--task multiclass needs at least three distinct target values; {where} has {distinct}")
    if choice == "regression" and not numeric:
        raise ConfigError(
            f"--task regression needs numbers; {where} holds {present.dtype} values (e.g. {_examples(present)})"
        )
    if choice != "auto":
        return choice
    if distinct == 2:
        return "binary"
    if numeric and not (_is_whole(present) and distinct <= max_categories):
        return "regression"
    return "multiclass"


def infer_target(values: pd.Series, choice: Choice, max_categories: int, inferred: InferredConfig) -> None:
    """Fill ``config["target"]``: task, classes (classification) or min/max (regression), with comments.

    Raises:
        ConfigError: the given task does not fit the values.
        DataError: the target is all null, constant, dates or free text.
    """
    uri = inferred.source
    _refuse_target(values, uri, max_categories)
    task = _infer_task(values, choice, max_categories, uri)
    present = values.dropna()
    target: dict[str, Any] = {"name": str(values.name), "task": task}
    how = "as given by --task" if choice != "auto" else "inferred"
    if task == "regression":
        target["min"], target["max"] = _range(present)
        inferred.note(
            "target",
            f"{how}: {present.nunique()} distinct numbers from {_plain(present.min())} to "
            f"{_plain(present.max())}; min/max add a margin",
        )
    else:
        classes = sorted((_plain(v) for v in present.unique()), key=lambda v: (str(type(v)), v))
        target["classes"] = classes
        inferred.note(
            "target", f"{how}: {len(classes)} distinct values; classes are written as they appear in the data"
        )
        if task == "binary":
            inferred.note(
                "target", f"check: the positive class is the second, {classes[1]!r}; swap the two if it is the other"
            )
        elif _is_numeric(values):
            inferred.note(
                "target",
                "check: whole numbers taken as classes; if they are quantities, set task: "
                "regression with min/max and remove classes",
            )
        if len(classes) > max_categories:
            inferred.note("target", f"check: {len(classes)} classes, more than --max-categories {max_categories}")
    if values.isna().any():
        inferred.note(
            "target",
            f"check: {int(values.isna().sum())} row(s) have no target; validation needs one on every row, so drop "
            "those rows from the data the pipeline reads",
        )
    inferred.config["target"] = target


@dataclass(frozen=True)
class _Column:
    """What one candidate column holds, looked at once."""

    name: str
    values: pd.Series
    present: pd.Series

    @property
    def null_share(self) -> float:
        return float(self.values.isna().mean())

    @property
    def unique(self) -> bool:
        return not self.values.isna().any() and self.present.is_unique


def _classify(column: _Column, max_categories: int) -> tuple[str, str]:
    """The column's role (``numeric``, ``categorical``, ``id``, ``timestamp`` or ``left_out``) and a note on it."""
    values, present = column.values, column.present
    if present.empty:
        return "left_out", "every value is null"
    if present.nunique() == 1:
        return "left_out", f"constant: {_examples(present)} on every non-null row"
    if _is_id_name(column.name) and column.unique:
        return "id", ""
    if pd.api.types.is_datetime64_any_dtype(values):
        return "timestamp", ""
    if _is_boolean(present):
        return "categorical", "booleans: categorical, spelled as the snapshot reads them"
    if _is_numeric(values):
        return "numeric", ""
    numbers = _numbers_in_text(present)
    if numbers:
        return (
            "categorical",
            f"check: {numbers}: kept categorical, which is safe but weak; clean it at the source into numbers, "
            "then make it type: numeric",
        )
    if _share_parsed(_iso_times(present)) == 1.0:
        return "timestamp", ""
    if _looks_like_dates(present):
        return (
            "left_out",
            "dates, but not ISO 8601, which the snapshot step needs for timestamp_column: rewrite them "
            "like 2025-01-31T12:00:00Z to use this as the event time",
        )
    distinct = present.nunique()
    if distinct > max_categories and distinct > FREE_TEXT_SHARE * len(present):
        how = "every value differs" if present.is_unique else f"{distinct} distinct values in {len(present)} rows"
        return "left_out", f"free text or an id ({how}); set id_column to it if it identifies rows"
    return "categorical", ""


def _pick_timestamp(candidates: list[_Column], inferred: InferredConfig) -> None:
    """Set ``timestamp_column`` to the best complete date-time column; comment on the others."""
    complete = [c for c in candidates if not c.values.isna().any()]
    ranked = sorted(complete, key=lambda c: not _TIME_NAME.search(c.name))
    chosen = ranked[0].name if ranked else None
    inferred.config["timestamp_column"] = chosen
    for column in candidates:
        if column.values.isna().any():
            inferred.left_out[column.name] = "date-times with nulls, which validation refuses in timestamp_column"
        elif column.name != chosen:
            inferred.left_out[column.name] = f"date-times: a timestamp_column candidate besides {chosen!r}"
    if chosen is None:
        inferred.note(
            "timestamp_column",
            "no complete date-time column: split.method: time cannot be used; set split.method: hash in pipeline.yaml",
        )
    else:
        inferred.note("timestamp_column", "the event time: time splits order by it (text without an offset is UTC)")
    if len(candidates) > 1:
        inferred.note("timestamp_column", f"check: chosen among the date-time columns {[c.name for c in candidates]}")


def _pick_id(candidates: list[_Column], inferred: InferredConfig) -> None:
    """Set ``id_column`` to the first unique column with an id-like name; the others are left out."""
    chosen = candidates[0].name if candidates else None
    inferred.config["id_column"] = chosen
    for column in candidates[1:]:
        inferred.left_out[column.name] = f"another id (unique, id-like name) besides {chosen!r}"
    if chosen is None:
        inferred.note(
            "id_column",
            "no unique column with an id-like name: split.method: hash needs one, and labels cannot be joined later",
        )


def infer_columns(frame: pd.DataFrame, max_categories: int, inferred: InferredConfig) -> list[str]:
    """Fill id_column, timestamp_column and the features (without category lists), with comments.

    Returns:
        The categorical features, whose category lists come from the data as the snapshot step reads it.

    Raises:
        DataError: no column is left to be a feature.
    """
    target = inferred.config["target"]["name"]
    features: list[dict[str, Any]] = []
    ids: list[_Column] = []
    times: list[_Column] = []
    for name in frame.columns:
        if name == target:
            continue
        column = _Column(str(name), frame[name], frame[name].dropna())
        role, note = _classify(column, max_categories)
        if role == "id":
            ids.append(column)
        elif role == "timestamp":
            times.append(column)
        elif role == "left_out":
            inferred.left_out[column.name] = note
        else:
            features.append(_feature(column, role, note, inferred))
    _pick_id(ids, inferred)
    _pick_timestamp(times, inferred)
    if not features:
        raise DataError(
            f"{inferred.source}: no column can be a feature besides the target {target!r}: "
            + "; ".join(f"{name}: {why}" for name, why in inferred.left_out.items())
        )
    inferred.config["features"] = features
    return [f["name"] for f in features if f["type"] == "categorical"]


def _feature(column: _Column, kind: str, note: str, inferred: InferredConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": column.name, "type": kind}
    if kind == "numeric":
        spec["min"], spec["max"] = _range(column.present)
    null_limit = _null_limit(column.null_share)
    if null_limit:
        spec["max_null_fraction"] = null_limit
        inferred.note(f"features.{column.name}", f"{column.null_share:.1%} null")
    if note:
        inferred.note(f"features.{column.name}", note)
    return spec


def add_categories(snapshot_frame: pd.DataFrame, max_categories: int, inferred: InferredConfig) -> None:
    """Give each categorical feature its categories as the snapshot step stores them, up to ``max_categories``.

    Args:
        snapshot_frame: the file as the snapshot step reads and prepares it (categorical features as text).
        max_categories: columns with more distinct values get no list (validation then accepts any value).
        inferred: the config whose categorical features get their lists.
    """
    for spec in inferred.config["features"]:
        if spec["type"] != "categorical":
            continue
        values = sorted(snapshot_frame[spec["name"]].dropna().unique().tolist())
        if len(values) <= max_categories:
            spec["categories"] = values
        else:
            inferred.note(
                f"features.{spec['name']}",
                f"{len(values)} distinct values, more than --max-categories {max_categories}: no category list, so "
                "validation accepts any value",
            )
    small = [
        s["name"] for s in inferred.config["features"] if 2 <= len(s.get("categories") or []) <= MAX_SLICE_CATEGORIES
    ]
    inferred.config["slice_columns"] = small[:MAX_SLICE_COLUMNS]
    if small:
        inferred.note(
            "slice_columns", f"per-slice metrics; candidates (at most {MAX_SLICE_CATEGORIES} categories): {small}"
        )


def dataset_name(uri: str) -> str:
    """A dataset name from a file name: ``s3://b/in/Customer Churn.csv`` -> ``customer_churn``."""
    stem = PurePosixPath(uri.rstrip("/")).stem
    return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_-") or "dataset"


def infer(
    input_uri: str,
    target: str,
    name: str | None = None,
    task: Choice = "auto",
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> InferredConfig:
    """Infer a dataset config from a CSV or Parquet file.

    Args:
        input_uri: the file (path, file:// or s3:// URI).
        target: the column the model predicts.
        name: the dataset name; default: from the file name.
        task: ``auto`` infers it from the target's values.
        max_categories: most categories listed per categorical column (and most classes ``auto`` calls multiclass).

    Returns:
        The config, its comments and the columns left out.

    Raises:
        ConfigError: the target is not a column, or the given task does not fit it.
        DataError: the file cannot be read, or the target or the features cannot be used.
    """
    frame = read_table(input_uri)
    if target not in frame.columns:
        raise ConfigError(
            f"--target {target!r} is not a column of {input_uri}; its columns are {[str(c) for c in frame.columns]}"
        )
    inferred = InferredConfig(
        config={
            "name": name or dataset_name(input_uri),
            "description": f"inferred from {PurePosixPath(input_uri).name}; say what one row is",
        },
        source=input_uri,
        rows=len(frame),
    )
    infer_target(frame[target], task, max_categories, inferred)
    categorical = infer_columns(frame, max_categories, inferred)
    inferred.config["min_rows"] = min(DEFAULT_MIN_ROWS, len(frame))
    if len(frame) < DEFAULT_MIN_ROWS:
        inferred.note("min_rows", f"check: the file has only {len(frame)} rows; train on more when you can")
    # The categories as the snapshot step will store them: CSV categorical columns read as text, then as strings.
    as_read = read_table(input_uri, text_columns=categorical) if table_format(input_uri) == "csv" else frame
    add_categories(prepare(as_read, _validated(inferred), input_uri), max_categories, inferred)
    _validated(inferred)
    return inferred


def _validated(inferred: InferredConfig) -> DatasetConfig:
    """The config as ``DatasetConfig``; a failure here means the inference is wrong, not the data."""
    try:
        return DatasetConfig.model_validate(inferred.config)
    except ValidationError as exc:
        raise ConfigError(f"the config inferred from {inferred.source} does not validate: {exc}") from None


_FEATURE_KEYS = ("name", "type", "min", "max", "categories", "max_null_fraction")


def _flow(value: Any) -> str:
    """A value as one line of YAML (flow style), quoted where YAML needs it (``'no'``, ``'1'``, ``'true'``)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**9)
    return text.removesuffix("\n...\n").strip()


def _yaml_line(key: str, value: Any, indent: int = 0) -> str:
    return f"{' ' * indent}{key}: {_flow(value)}"


def _comments(lines: list[str], notes: list[str], indent: int = 0) -> None:
    lines.extend(" " * indent + "# " + note.replace("\n", " ") for note in notes)


def render(inferred: InferredConfig) -> str:
    """The config as commented YAML, in the order and style of ``include/config/datasets/churn.yaml``."""
    config, notes = inferred.config, inferred.notes
    lines = [
        f"# Inferred by `python -m mlsteps init-dataset` from {inferred.source} ({inferred.rows} rows).",
        "# Review every line marked 'check', write a description, then point pipeline.yaml's `dataset:` here.",
        f"# Ranges add {RANGE_MARGIN:.0%} of the observed span (never below 0 for columns without negative values);",
        "# max_null_fraction is the observed share of nulls with a margin (absent: no nulls were seen, none allowed).",
        _yaml_line("name", config["name"]),
        _yaml_line("description", config["description"]),
    ]
    _comments(lines, notes.get("target", []))
    lines.append("target:")
    lines.extend(_yaml_line(key, value, 2) for key, value in config["target"].items())
    for key in ("id_column", "timestamp_column", "min_rows", "slice_columns"):
        _comments(lines, notes.get(key, []))
        lines.append(_yaml_line(key, config[key]))
    lines.append("features:")
    for spec in config["features"]:
        _comments(lines, notes.get(f"features.{spec['name']}", []), 2)
        lines.append("  - " + _flow({key: spec[key] for key in _FEATURE_KEYS if key in spec}))
    if inferred.left_out:
        lines.append("# Left out (not features):")
        _comments(lines, [f"{name}: {why}" for name, why in inferred.left_out.items()])
    return "\n".join(lines) + "\n"


def main(
    input_uri: Annotated[
        str, typer.Option("--input-uri", help="CSV or Parquet file to describe (.csv, .parquet, .pq; path or URI)")
    ],
    target: Annotated[str, typer.Option("--target", help="the column the model predicts")],
    output_uri: Annotated[
        str, typer.Option("--output-uri", help="where to write the dataset config YAML (path or URI)")
    ] = "dataset.yaml",
    name: Annotated[
        str | None, typer.Option("--name", help="dataset name (snapshot paths, MLflow tags); default: the file name")
    ] = None,
    task: Annotated[
        Choice,
        typer.Option("--task", help="auto: 2 values binary, few whole numbers or labels multiclass, else regression"),
    ] = "auto",
    max_categories: Annotated[
        int,
        typer.Option("--max-categories", min=2, help="most categories listed per column and classes auto calls"),
    ] = DEFAULT_MAX_CATEGORIES,
    force: Annotated[bool, typer.Option("--force", help="overwrite --output-uri if it exists")] = False,
) -> None:
    r"""Infer a dataset config from a CSV or Parquet file and write it as commented YAML.

    Column types, ranges (with a margin), category lists, null shares, the id and timestamp columns and the task
    are inferred from the data; comments mark what to check. The file passes validation with the written config.

    Args:
        input_uri: the data file.
        target: the column the model predicts.
        output_uri: where to write the config; refused if it exists, unless --force.
        name: the dataset name.
        task: the task, or auto to infer it from the target.
        max_categories: most categories listed per categorical column.
        force: overwrite an existing output.

    Raises:
        ConfigError: the target is not a column, the task does not fit it, or the output exists.
        DataError: the file cannot be read, or the target or features cannot be used.

    Examples:
        python -m mlsteps init-dataset --input-uri data/payments.csv --target is_fraud \
            --output-uri include/config/datasets/payments.yaml

        python -m mlsteps init-dataset --input-uri s3://ml/in/claims.parquet --target cost --task regression
    """
    if storage.exists(output_uri) and not force:
        raise ConfigError(f"--output-uri {output_uri} exists: pass --force to overwrite it, or choose another path")
    inferred = infer(input_uri, target, name=name, task=task, max_categories=max_categories)
    storage.write_text(output_uri, render(inferred))
    config = inferred.config
    features = config["features"]
    numeric = sum(f["type"] == "numeric" for f in features)
    print(
        f"init-dataset: wrote {output_uri}: {config['target']['task']} target {target!r}, {len(features)} features "
        f"({numeric} numeric, {len(features) - numeric} categorical), id_column {config['id_column']!r}, "
        f"timestamp_column {config['timestamp_column']!r}, {len(inferred.left_out)} column(s) left out; "
        "review the lines marked 'check'",
        flush=True,
    )
