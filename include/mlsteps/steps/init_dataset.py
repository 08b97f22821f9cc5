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

With ``--model-config`` and ``--model-name`` it also writes the model config that gives the dataset a loop of its
own: it extends the shared defaults and names the dataset config (both by paths relative to itself), the registered
model and its experiment, the task's primary metric (``DEFAULT_PRIMARY_METRIC``; regression also drops the defaults'
absolute bar, which is in another metric's units) and a local serving port that no other model config of its folder
claims, with the fields people usually change as commented examples. Onboarding a model is then: infer, review,
commit. The folder is read as plain YAML (following ``extends``), not through the orchestration package, which step
code never imports; a name that is not a DNS-1123 label (``MODEL_NAME``) or that another config of the folder already
has is refused before anything is written.

It makes configs rather than running a pipeline step, so it takes no run root and writes no result.json.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import typer
import yaml
from pydantic import ValidationError

from mlsteps.config import (
    CANARY_SUFFIX,
    DEFAULT_CONFIG_PATH,
    MAX_MODEL_NAME_LENGTH,
    MODEL_NAME,
    SERVER_NAME_PREFIX,
    DatasetConfig,
    LocalServingConfig,
    load_pipeline_config,
    read_config_yaml,
)
from mlsteps.data import storage
from mlsteps.data.snapshots import prepare, read_table, table_format
from mlsteps.errors import ConfigError, DataError
from mlsteps.evaluation.tasks import DEFAULT_PRIMARY_METRIC, METRICS

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


MODEL_NAME_RULE = (
    f"lowercase letters, digits and '-', starting and ending with a letter or digit, at most {MAX_MODEL_NAME_LENGTH} "
    f"characters (it names the DAGs, the registered model and the Kubernetes objects, the longest of which is "
    f"{SERVER_NAME_PREFIX}<model>{CANARY_SUFFIX})"
)
EXPERIMENT_SUFFIX = "-retraining"
# A regression model's gate, as in include/config/examples/claims.yaml: no absolute bar (its units are the target's,
# which the defaults cannot know) and at most this share worse than the champion.
REGRESSION_MAX_DEGRADATION = 0.02
_COMMENT_COLUMN = 34  # where a line's comment starts, as in pipeline.yaml


@dataclass(frozen=True)
class ModelPlan:
    """A model config to write, checked against the other model configs of its folder.

    Attributes:
        path: where it is written (a local file).
        name: ``registry.model_name``.
        port: ``serving.local.port``, one that no other config of the folder claims.
        taken_ports: the ports the other configs claim (their own, or inherited through ``extends``).
        unread: other YAML files of the folder that could not be read, so their name and port are not known.
    """

    path: Path
    name: str
    port: int
    taken_ports: tuple[int, ...] = ()
    unread: tuple[str, ...] = ()


def _dig(raw: Any, *keys: str) -> Any:
    """``raw[k1][k2]...``, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(key)
    return raw


def _claims(path: Path) -> tuple[Any, Any]:
    """The model name and local serving port a model config claims, its own or through ``extends`` (plain YAML).

    The port may come from the shared defaults (a config that sets none serves on theirs); the name never does, as
    a model config without its own name is refused by the loader anyway.

    Raises:
        OSError, yaml.YAMLError: the file cannot be read or parsed.
    """
    name = port = None
    current: Path | None = path
    seen: set[Path] = set()
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        raw = yaml.safe_load(current.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            break
        if name is None and current.resolve() != DEFAULT_CONFIG_PATH:
            name = _dig(raw, "registry", "model_name")
        if port is None:
            port = _dig(raw, "serving", "local", "port")
        base = raw.get("extends")
        current = current.parent / base if isinstance(base, str) and not storage.is_s3(base) else None
    return name, port


def _default_port() -> int:
    """The shared defaults' local serving port (where the search for a free one starts)."""
    port = _dig(read_config_yaml(str(DEFAULT_CONFIG_PATH)), "serving", "local", "port")
    return port if isinstance(port, int) else LocalServingConfig.model_fields["port"].default


def _suggested_name(name: str) -> str:
    """A valid model name close to ``name``: ``Payments_Fraud`` -> ``payments-fraud``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:MAX_MODEL_NAME_LENGTH].rstrip("-") or "my-model"


def plan_model(model_config: str, model_name: str, output_uri: str, force: bool) -> tuple[ModelPlan | None, list[str]]:
    """Check where the model config goes and what it claims, before anything is written; choose its port.

    Args:
        model_config: where to write the model config (a local path).
        model_name: its ``registry.model_name``.
        output_uri: where the dataset config is written; the model config names it by a relative path.
        force: whether an existing model config may be overwritten.

    Returns:
        The plan, or None, and every problem found (each naming the option or file, the value and the fix).
    """
    problems = []
    if storage.is_s3(model_config):
        problems.append(
            f"--model-config {model_config}: must be a local path; the DAG files read model configs from a local "
            "folder (include/config/models/ or $ML_MODELS_DIR)"
        )
    if storage.is_s3(output_uri):
        problems.append(
            f"--output-uri {output_uri}: a model config names its dataset config by a path relative to itself, read "
            "when the DAG files are parsed; write the dataset config to a local path (include/config/datasets/)"
        )
    if not MODEL_NAME.match(model_name) or len(model_name) > MAX_MODEL_NAME_LENGTH:
        problems.append(
            f"--model-name {model_name!r} is not a valid model name: {MODEL_NAME_RULE}; e.g. "
            f"{_suggested_name(model_name)!r}"
        )
    if problems:
        return None, problems
    path = storage.local_path(model_config)
    if path.exists() and not force:
        problems.append(f"--model-config {model_config} exists: pass --force to overwrite it, or choose another path")
    first_port = _default_port()
    taken: dict[Any, Path] = {}
    unread = []
    siblings = sorted(p for p in path.parent.glob("*.yaml") if p.resolve() != path.resolve())
    for sibling in siblings:
        try:
            name, port = _claims(sibling)
        except (OSError, yaml.YAMLError):
            unread.append(str(sibling))
            continue
        if name == model_name:
            problems.append(
                f"--model-name {model_name!r} is already registry.model_name of {sibling}: choose another name (each "
                "model of a folder has its own), or pass that file as --model-config with --force to replace it"
            )
        taken.setdefault(first_port if port is None else port, sibling)
    port = next((p for p in range(first_port, 65536) if p not in taken), None)
    if port is None:
        problems.append(f"{path.parent}: every local serving port from {first_port} up is taken")
    if problems or port is None:
        return None, problems
    ports = tuple(sorted(p for p in taken if isinstance(p, int)))
    return ModelPlan(path, model_name, port, ports, tuple(unread)), []


def _relative(target: Path, plan: ModelPlan) -> str:
    """``target`` as a path relative to the model config's folder (how ``extends`` and ``dataset`` are read)."""
    return PurePosixPath(os.path.relpath(target.resolve(), plan.path.parent.resolve())).as_posix()


def _commented(line: str, comment: str) -> str:
    return f"{line:<{_COMMENT_COLUMN - 1}} # {comment}"


def _evaluation_lines(task: str, defaults: dict[str, Any]) -> list[str]:
    """The ``evaluation`` section: the task's primary metric, and for regression a gate in the target's units."""
    name = DEFAULT_PRIMARY_METRIC[task]
    chosen = METRICS[task][name]
    direction = "higher is better" if chosen.higher_is_better else "lower is better"
    lines = ["evaluation:", _commented(f"  primary_metric: {name}", f"{chosen.description}; {direction}")]
    if task == "regression":
        return [
            *lines,
            _commented("  threshold: null", "check: no absolute bar; set one in the target's units to have one"),
            f"  max_degradation: {REGRESSION_MAX_DEGRADATION}",
            _commented(
                "  degradation: relative",
                f"at most {REGRESSION_MAX_DEGRADATION:.0%} worse than the champion's {name}",
            ),
        ]
    threshold = _dig(defaults, "evaluation", "threshold")
    return [
        *lines,
        _commented(
            f"  # threshold: {_flow(threshold)}",
            "check: the defaults' bar on the holdout; set what this model must reach",
        ),
    ]


_MODEL_HEADER = [
    "# Everything not set here comes from the shared defaults it extends: set only what differs. Review the lines",
    "# marked 'check' and the commented examples, then commit: the DAG files give the model its own retrain, monitor",
    "# and deploy DAGs, named after registry.model_name.",
]
_RUNTIME_HINT = [
    _commented("# runtime:", "per model; mode, artifact_root, mlflow_tracking_uri and the cluster's namespace,"),
    _commented("#", "connection_id, config_map and secrets are deployment-wide and refused here"),
]


def _runtime_hints(inferred: InferredConfig, runtime: dict[str, Any]) -> list[str]:
    """Commented examples of the per-model runtime fields: the data scheduled runs read, schedules, team labels."""
    labels = _dig(runtime, "kubernetes", "labels") or {"team": "my-team"}
    name = inferred.config["name"]
    return [
        *_RUNTIME_HINT,
        f"#   # what scheduled runs read (s3:// on Kubernetes); default $ML_DATASET_URI, else "
        f"<state>/datasets/{name}.csv",
        f"#   dataset_uri: {_flow(inferred.source)}",
        _commented(f'#   retrain_cron: "{runtime.get("retrain_cron")}"', "the defaults' schedules (UTC)"),
        f'#   monitor_cron: "{runtime.get("monitor_cron")}"',
        "#   kubernetes:",
        _commented(f"#     labels: {_flow(labels)}", "pod labels; team also tags the DAGs team:<team>"),
    ]


def render_model_config(plan: ModelPlan, inferred: InferredConfig, dataset_path: Path) -> str:
    """A model config as commented YAML, in the style of ``include/config/models/tiers.yaml``.

    Args:
        plan: where it goes, its name and its port.
        inferred: the dataset config it trains on (the task decides the gate).
        dataset_path: where that dataset config is written.

    Returns:
        The YAML text: what the model sets, and commented examples of what it often changes.
    """
    defaults = read_config_yaml(str(DEFAULT_CONFIG_PATH))
    task = inferred.config["target"]["task"]
    taken = ", ".join(map(str, plan.taken_ports)) or "none"
    return "\n".join(
        [
            f"# A {task} model of the {inferred.config['name']} dataset, written by `python -m mlsteps init-dataset`.",
            *_MODEL_HEADER,
            _yaml_line("extends", _relative(DEFAULT_CONFIG_PATH, plan)),
            _yaml_line("dataset", _relative(dataset_path, plan)),
            "# training:",
            _commented("#   model: gbdt", "mlp (the network) | gbdt (XGBoost) | your own trainer as module:Class"),
            _commented(
                "#   candidates: [mlp, gbdt]",
                f"one pod each; the better on the holdout's {DEFAULT_PRIMARY_METRIC[task]} is the challenger",
            ),
            *_evaluation_lines(task, defaults),
            "registry:",
            _yaml_line("model_name", plan.name, 2),
            _yaml_line("experiment_name", plan.name + EXPERIMENT_SUFFIX, 2),
            "serving:",
            "  local:",
            _commented(f"    port: {plan.port}", f"free in this folder (taken: {taken})"),
            *_runtime_hints(inferred, defaults.get("runtime") or {}),
            "",
        ]
    )


def write_model_config(plan: ModelPlan, inferred: InferredConfig, dataset_uri: str) -> None:
    """Write the model config and load it as the steps do, with the dataset config it names.

    Raises:
        ConfigError: the written config does not load (a fault of this command, not of the input).
    """
    storage.write_text(str(plan.path), render_model_config(plan, inferred, storage.local_path(dataset_uri)))
    try:
        load_pipeline_config(str(plan.path))
    except ConfigError as exc:
        raise ConfigError(f"the model config written to {plan.path} does not load: {exc}") from None


def _check_outputs(
    output_uri: str, model_config: str | None, model_name: str | None, force: bool
) -> tuple[ModelPlan | None, list[str]]:
    """Every reason not to write the outputs (existing files, a model name that is invalid or taken), found at once
    before anything is read or written; and the model config's plan when one is asked for and nothing is wrong."""
    problems = []
    # A model config refuses a dataset config on S3 (plan_model says why): no need to ask S3 whether it exists.
    model_refuses_s3 = model_config is not None and storage.is_s3(output_uri)
    if not model_refuses_s3 and storage.exists(output_uri) and not force:
        problems.append(f"--output-uri {output_uri} exists: pass --force to overwrite it, or choose another path")
    if model_config is None and model_name is None:
        return None, problems
    if model_config is None or model_name is None:
        given, missing = (
            ("--model-name", "--model-config") if model_config is None else ("--model-config", "--model-name")
        )
        problems.append(
            f"{given} needs {missing}: pass both to write a model config (e.g. --model-config "
            "include/config/models/payments.yaml --model-name payments-fraud), or neither"
        )
        return None, problems
    plan, model_problems = plan_model(model_config, model_name, output_uri, force)
    return (None if problems else plan), problems + model_problems


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
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help="also write a model config here (local path, e.g. include/config/models/<model>.yaml); "
            "needs --model-name",
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="the model config's registry.model_name: lowercase letters, digits and '-' (it names the DAGs)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="overwrite --output-uri and --model-config if they exist")
    ] = False,
) -> None:
    r"""Infer a dataset config from a CSV or Parquet file and write it as commented YAML; optionally a model config.

    Column types, ranges (with a margin), category lists, null shares, the id and timestamp columns and the task
    are inferred from the data; comments mark what to check. The file passes validation with the written config.
    With --model-config and --model-name, a model config is written too: it extends the shared defaults, names the
    dataset config, the registered model and its experiment, the task's primary metric and a local serving port no
    other model config of its folder claims, with commented examples of what is often changed (candidates,
    schedules, team labels). Everything is checked before anything is written.

    Args:
        input_uri: the data file.
        target: the column the model predicts.
        output_uri: where to write the config; refused if it exists, unless --force.
        name: the dataset name.
        task: the task, or auto to infer it from the target.
        max_categories: most categories listed per categorical column.
        model_config: where to write the model config (local); refused if it exists, unless --force.
        model_name: the model's registered name; refused if invalid or another config of the folder has it.
        force: overwrite existing outputs.

    Raises:
        ConfigError: the target is not a column, the task does not fit it, an output exists, or the model name is
            invalid or taken.
        DataError: the file cannot be read, or the target or features cannot be used.

    Examples:
        python -m mlsteps init-dataset --input-uri data/payments.csv --target is_fraud \
            --output-uri include/config/datasets/payments.yaml

        python -m mlsteps init-dataset --input-uri data/payments.csv --target is_fraud \
            --output-uri include/config/datasets/payments.yaml \
            --model-config include/config/models/payments.yaml --model-name payments-fraud

        python -m mlsteps init-dataset --input-uri s3://ml/in/claims.parquet --target cost --task regression
    """
    plan, problems = _check_outputs(output_uri, model_config, model_name, force)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "\n- ".join(["nothing written:", *problems]))
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
    if plan is not None:
        write_model_config(plan, inferred, output_uri)
        task = config["target"]["task"]
        print(
            f"init-dataset: wrote {plan.path}: model {plan.name!r} ({task}, gate {DEFAULT_PRIMARY_METRIC[task]}, "
            f"local port {plan.port}); review it and commit both files",
            flush=True,
        )
        for path in plan.unread:
            print(f"init-dataset: could not read {path} as YAML: its model name and port were not checked", flush=True)
