"""Data validation with Great Expectations: a suite built from the dataset config, its outcome, and an HTML report.

The suite is derived from ``DatasetConfig`` alone, so every snapshot of a dataset is judged by the same
expectations and the limits live in the dataset YAML, not in code. ``validate_frame`` runs it on a pandas
DataFrame in an ephemeral GX context (nothing is written to disk) and turns each GX result into one line a
person can act on, such as ``12 of 2000 non-null values (0.6%) outside [18, 100], e.g. -5, 130``.

Two checks live beside the suite, because they are not limits on one column's values: target leakage (a feature
that predicts the target almost perfectly on its own) compares columns, and event times in the future depend on the
clock at validation time. Their outcomes join the suite's in the same report, counts and failure lines.

``validate_batches`` runs all of it a batch of rows at a time, so memory follows the batch, not the data: the suite
runs on each batch and the results are merged (counts summed, shares and verdicts recomputed, examples kept up to
GX's 20, distinct values and row counts combined). What a batch cannot see is kept across batches: exact per row
where that is cheap (event-time counts and latest time, the leakage sample of fixed row positions), and for the id
column's uniqueness a 64-bit hash per row (8 bytes a row: 80 MB for 10 million rows); hashes that collide without
the values being equal would count as duplicates, with a chance below n^2 / 2^65 (3e-6 for 10 million rows).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlsteps import html_report
from mlsteps.config import DatasetConfig
from mlsteps.data.snapshots import utc_column
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import class_positions, finite_numbers, is_classification

# Dtypes that hold numbers: numpy ints, uints and floats, pandas' nullable variants, and Python int/float for
# object columns (there GX checks value by value). A numeric column read as strings ("str" in pandas 3) fails.
_INT_BITS = (8, 16, 32, 64)
NUMERIC_TYPES: list[str] = [
    *(f"int{bits}" for bits in _INT_BITS),
    *(f"uint{bits}" for bits in _INT_BITS),
    "float16",
    "float32",
    "float64",
    *(f"Int{bits}Dtype" for bits in _INT_BITS),
    *(f"UInt{bits}Dtype" for bits in _INT_BITS),
    "Float32Dtype",
    "Float64Dtype",
    "int",
    "float",
]
EXAMPLE_COUNT = 5
TABLE_LABEL = "(table)"
# The checks beside the GX suite, named like expectations so the report reads the same.
LEAKAGE = "expect_column_to_not_predict_the_target_alone"
FUTURE = "expect_column_values_to_not_be_in_the_future"
# Scores on more rows change in the third decimal at most; this keeps the check under a second on any snapshot.
LEAKAGE_SAMPLE_ROWS = 20_000
# Below this many rows with both values a near-perfect score can be chance, so the feature is not scored.
LEAKAGE_MIN_ROWS = 50


@dataclass(frozen=True)
class Outcome:
    """One evaluated expectation, in words.

    Attributes:
        column: the column it checks; None for table-level expectations.
        expectation: the GX expectation type, e.g. ``expect_column_values_to_be_between``.
        success: whether the data met it.
        detail: what was observed, e.g. ``12 of 2000 non-null values (0.6%) outside [18, 100], e.g. -5, 130``.
    """

    column: str | None
    expectation: str
    success: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-able dict (for result.json)."""
        return asdict(self)

    def line(self) -> str:
        """One line naming the column, the expectation and what was observed."""
        return f"{self.column or TABLE_LABEL}: {self.expectation}: {self.detail}"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of the suite on one DataFrame.

    Attributes:
        success: every expectation was met.
        statistics: evaluated, successful and unsuccessful expectation counts.
        outcomes: every expectation, failures first, then in suite order.
        gx_result: the full GX validation result as a JSON-able dict.
    """

    success: bool
    statistics: dict[str, int]
    outcomes: list[Outcome]
    gx_result: dict[str, Any]

    @property
    def failures(self) -> list[Outcome]:
        """The expectations the data did not meet."""
        return [outcome for outcome in self.outcomes if not outcome.success]


def build_suite(dataset: DatasetConfig) -> Any:
    """Build the GX expectation suite of a dataset from its config.

    Args:
        dataset: the dataset config; its limits (rows, ranges, categories, null and unknown shares) and its target
            (classes, or the regression range) become expectations.

    Returns:
        A ``great_expectations.ExpectationSuite`` with at most one expectation of each type per column.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    # Table: enough rows to train on, and every column the pipeline reads is there.
    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=dataset.min_rows, max_value=dataset.max_rows),
        *(gxe.ExpectColumnToExist(column=name) for name in dataset.required_columns),
    ]
    for spec in dataset.features:
        # Every feature: missing values within the configured share, so an all-null column fails
        # unless max_null_fraction is 1.
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=spec.name, mostly=1 - spec.max_null_fraction))
        if spec.type == "numeric":
            # Numeric features: stored as numbers (strings mean a broken file) and inside the plausible range.
            expectations.append(gxe.ExpectColumnValuesToBeInTypeList(column=spec.name, type_list=NUMERIC_TYPES))
            if spec.min is not None or spec.max is not None:
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(column=spec.name, min_value=spec.min, max_value=spec.max)
                )
        elif spec.categories is not None:
            # Categorical features: known categories, tolerating a small share of new ones.
            expectations.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=spec.name, value_set=spec.categories, mostly=1 - spec.max_unknown_fraction
                )
            )
    expectations += _target_expectations(dataset)
    # Id column: on every row and unique, since hash splits and label joins rely on it.
    if dataset.id_column:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=dataset.id_column),
            gxe.ExpectColumnValuesToBeUnique(column=dataset.id_column),
        ]
    # Timestamp column: on every row, since time splits order by it.
    if dataset.timestamp_column:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=dataset.timestamp_column))
    return gx.ExpectationSuite(name=f"{dataset.name}_snapshot", expectations=expectations)


def _target_expectations(dataset: DatasetConfig) -> list[Any]:
    """The target's expectations, by task."""
    import great_expectations.expectations as gxe

    target = dataset.target
    # Every task: labelled on every row (a row without a target can neither train nor be judged).
    expectations: list[Any] = [gxe.ExpectColumnValuesToNotBeNull(column=target.name)]
    if is_classification(target.task):
        # Classification: only the declared classes, and every one of them (a class never seen cannot be learnt,
        # and its one-vs-rest ROC AUC is undefined).
        classes = list(target.classes or [])
        return [
            *expectations,
            gxe.ExpectColumnValuesToBeInSet(column=target.name, value_set=classes),
            gxe.ExpectColumnDistinctValuesToContainSet(column=target.name, value_set=classes),
        ]
    # Regression: stored as numbers, within the plausible range when one is declared.
    expectations.append(gxe.ExpectColumnValuesToBeInTypeList(column=target.name, type_list=NUMERIC_TYPES))
    if target.min is not None or target.max is not None:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=target.name, min_value=target.min, max_value=target.max)
        )
    return expectations


def validate_frame(frame: pd.DataFrame, dataset: DatasetConfig, now: datetime | None = None) -> ValidationReport:
    """``validate_batches`` on one DataFrame held whole."""
    return validate_batches(
        lambda columns=None: [frame if columns is None else frame[list(columns)]], dataset, len(frame), now
    )


ReadBatches = Callable[..., Iterable[pd.DataFrame]]


def validate_batches(
    read: ReadBatches, dataset: DatasetConfig, rows: int, now: datetime | None = None
) -> ValidationReport:
    """Run the dataset's suite and the checks beside it (target leakage, future event times) batch by batch.

    A missing column does not stop the run: its ``expect_column_to_exist`` fails with "column is missing" and
    the other expectations on it fail with "skipped: column is missing". A check beside the suite that cannot run
    (a missing column, too few rows) passes with "not checked: <why>", since the suite already fails on the cause.
    The outcomes equal those of the whole table at once (see the module docstring for the id column's uniqueness).

    Args:
        read: ``read()`` starts a pass over the data, yielding DataFrames in row order; ``read(columns)`` one over
            those columns only (a second pass over the id column finds examples of duplicates across batches).
        dataset: the dataset config the suite is built from.
        rows: the number of rows ``read`` yields (it fixes the rows of the leakage sample before the pass).
        now: the validation time that event times are checked against; default: the clock's (UTC).

    Returns:
        The report: success, statistics, one outcome per expectation, and the full GX result.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite = build_suite(dataset)
    context = gx.get_context(mode="ephemeral")
    # Progress bars would fill the task log with carriage-return noise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    definition = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    now = now or datetime.now(UTC)
    facts = _Facts(dataset, rows)
    merged: dict[str, Any] | None = None
    for frame in read():
        if frame.empty and merged is not None:
            continue
        # Row labels across batches, so GX's unexpected row indices are the table's.
        frame = frame.set_axis(pd.RangeIndex(facts.offset, facts.offset + len(frame)))
        result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")
        merged = _merge_results(merged, result.to_json_dict())
        facts.add(frame, now)
    if merged is None:  # no batch at all
        merged = (
            definition.get_batch(batch_parameters={"dataframe": pd.DataFrame()})
            .validate(suite, result_format="SUMMARY")
            .to_json_dict()
        )
    facts.finish(read, merged)
    gx_result = _finish_results(merged, facts.distinct)

    # Failures first; within each group table checks, then column by column in config order.
    column_order = {name: i for i, name in enumerate(dataset.required_columns)}
    suite_order = {(e.expectation_type, getattr(e, "column", None)): i for i, e in enumerate(suite.expectations)}
    outcomes = [_outcome(item, facts) for item in gx_result["results"]]
    outcomes += [*leakage_outcomes(facts.leakage_sample(), dataset), *facts.future_outcomes(now)]
    # The checks beside the suite come after the suite's on their column.
    outcomes.sort(
        key=lambda o: (
            o.success,
            column_order.get(o.column, -1),
            suite_order.get((o.expectation, o.column), len(suite_order)),
        )
    )
    successful = sum(outcome.success for outcome in outcomes)
    return ValidationReport(
        success=successful == len(outcomes),
        statistics={"evaluated": len(outcomes), "successful": successful, "unsuccessful": len(outcomes) - successful},
        outcomes=outcomes,
        gx_result=gx_result,
    )


_PARTIAL_LIST_LIMIT = 20  # GX's SUMMARY format keeps this many unexpected values
# Distinct target values kept (a classification target has a few; beyond this many it fails its set check anyway,
# and the report shows only the first EXAMPLE_COUNT in sorted order of those kept).
_DISTINCT_KEPT = 10_000


def _merge_results(merged: dict[str, Any] | None, batch: dict[str, Any]) -> dict[str, Any]:
    """Add one batch's GX validation result to the results of the batches before it (same suite, same order)."""
    if merged is None:
        return batch
    for total, item in zip(merged["results"], batch["results"], strict=True):
        if _raised(item) and not _raised(total):
            total["exception_info"] = item["exception_info"]
        whole, part = total.setdefault("result", {}) or {}, item.get("result") or {}
        for key in ("element_count", "missing_count", "unexpected_count"):
            if key in part:
                whole[key] = int(whole.get(key) or 0) + int(part[key] or 0)
        for key in ("partial_unexpected_list", "partial_unexpected_index_list"):
            if key in part:
                whole[key] = [*(whole.get(key) or []), *part[key]][:_PARTIAL_LIST_LIMIT]
        if "partial_unexpected_counts" in part:
            counts = Counter()
            for entry in [*(whole.get("partial_unexpected_counts") or []), *part["partial_unexpected_counts"]]:
                counts[repr(entry["value"])] += entry["count"]
            values = {repr(e["value"]): e["value"] for e in part["partial_unexpected_counts"]}
            values.update({repr(e["value"]): e["value"] for e in whole.get("partial_unexpected_counts") or []})
            whole["partial_unexpected_counts"] = [
                {"value": values[key], "count": count} for key, count in counts.most_common(_PARTIAL_LIST_LIMIT)
            ]
        observed = part.get("observed_value")
        if total["expectation_config"]["type"] == "expect_table_row_count_to_be_between":
            whole["observed_value"] = int(whole.get("observed_value") or 0) + int(observed or 0)
        total["result"] = whole
    return merged


def _finish_results(merged: dict[str, Any], distinct: dict[str, set[Any]]) -> dict[str, Any]:
    """Shares and verdicts of the merged result, recomputed from its merged counts and the distinct values seen."""
    for item in merged["results"]:
        if _raised(item):
            continue
        config, result = item["expectation_config"], item.get("result") or {}
        kwargs = config["kwargs"]
        kind = config["type"]
        if kind == "expect_table_row_count_to_be_between":
            count = int(result.get("observed_value") or 0)
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            item["success"] = (low is None or count >= low) and (high is None or count <= high)
        elif kind == "expect_column_distinct_values_to_contain_set":
            observed = distinct.get(kwargs["column"], set())
            missing = [v for v in kwargs["value_set"] if v not in observed]
            result["partial_missing_list"] = missing
            item["success"] = not missing
        elif "unexpected_count" in result:
            total, missing = int(result.get("element_count") or 0), int(result.get("missing_count") or 0)
            unexpected = int(result["unexpected_count"])
            counted = total if kind == "expect_column_values_to_not_be_null" else total - missing
            if total:
                result["unexpected_percent_total"] = 100 * unexpected / total
                result["missing_percent"] = 100 * missing / total
            if counted:
                result["unexpected_percent"] = 100 * unexpected / counted
                result["unexpected_percent_nonmissing"] = 100 * unexpected / max(total - missing, 1)
            mostly = kwargs.get("mostly", 1)
            item["success"] = not counted or (counted - unexpected) / counted >= mostly
    successful = sum(bool(item["success"]) for item in merged["results"])
    evaluated = len(merged["results"])
    merged["success"] = successful == evaluated
    merged["statistics"] = {
        **merged.get("statistics", {}),
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
        "success_percent": 100 * successful / evaluated if evaluated else None,
    }
    return merged


@dataclass
class _Facts:
    """What the outcomes need to know of the whole table beyond GX's merged counts, gathered batch by batch."""

    dataset: DatasetConfig
    rows: int
    columns: list[str] = field(default_factory=list)
    dtypes: dict[str, Any] = field(default_factory=dict)
    not_numbers: dict[str, list[Any]] = field(default_factory=dict)  # column: [count, present, examples]
    id_hashes: list[np.ndarray] = field(default_factory=list)
    distinct: dict[str, set[Any]] = field(default_factory=dict)  # of columns whose distinct values are expected
    future: list[Any] = field(default_factory=lambda: [0, 0, None, None])  # values, late, latest, error
    sample_parts: list[pd.DataFrame] = field(default_factory=list)
    offset: int = 0

    def __post_init__(self) -> None:
        if self.rows > LEAKAGE_SAMPLE_ROWS:
            # the rows DataFrame.sample(LEAKAGE_SAMPLE_ROWS, random_state=0) takes, in the order it takes them
            self.sample_order = np.random.RandomState(0).choice(self.rows, LEAKAGE_SAMPLE_ROWS, replace=False)
        else:
            self.sample_order = np.arange(self.rows)
        self.sample_sorted = np.sort(self.sample_order)

    def add(self, frame: pd.DataFrame, now: datetime) -> None:
        if not self.columns:
            self.columns, self.dtypes = [str(c) for c in frame.columns], dict(frame.dtypes.items())
        for column in self._numeric_columns():
            if column in frame.columns:
                self._add_not_numbers(column, frame[column])
        target = self.dataset.target.name
        if is_classification(self.dataset.target.task) and target in frame.columns:
            seen = self.distinct.setdefault(target, set())
            if len(seen) < _DISTINCT_KEPT:
                seen.update(frame[target].dropna().unique().tolist())
        id_column = self.dataset.id_column
        if id_column and id_column in frame.columns:
            ids = frame[id_column].dropna()
            self.id_hashes.append(pd.util.hash_pandas_object(ids, index=False).to_numpy())
        self._add_times(frame, now)
        low, high = np.searchsorted(self.sample_sorted, [self.offset, self.offset + len(frame)])
        if high > low:
            part = frame.iloc[self.sample_sorted[low:high] - self.offset]
            self.sample_parts.append(part.set_axis(self.sample_sorted[low:high]))
        self.offset += len(frame)

    def _numeric_columns(self) -> list[str]:
        columns = [spec.name for spec in self.dataset.features if spec.type == "numeric"]
        if not is_classification(self.dataset.target.task):
            columns.append(self.dataset.target.name)
        return columns

    def _add_not_numbers(self, column: str, values: pd.Series) -> None:
        tally = self.not_numbers.setdefault(column, [0, 0, []])
        present = values.dropna()
        tally[1] += len(present)
        if present.empty or pd.api.types.is_numeric_dtype(present):
            return
        bad = present[pd.to_numeric(present, errors="coerce").isna()]
        tally[0] += len(bad)
        if len(tally[2]) < 100:
            tally[2] += bad.head(100 - len(tally[2])).tolist()

    def _add_times(self, frame: pd.DataFrame, now: datetime) -> None:
        column = self.dataset.timestamp_column
        if column is None or column not in frame.columns or self.future[3] is not None:
            return
        try:
            times = utc_column(frame[column], column, "the data").dropna()
        except DataError as exc:
            self.future[3] = exc
            return
        limit = pd.Timestamp(now + timedelta(seconds=self.dataset.future_tolerance_seconds))
        self.future[0] += len(times)
        self.future[1] += int((times > limit).sum())
        if not times.empty:
            latest = times.max()
            self.future[2] = latest if self.future[2] is None else max(self.future[2], latest)

    def finish(self, read: ReadBatches, merged: dict[str, Any]) -> None:
        """Replace the uniqueness result of the id column by the one over every batch."""
        id_column = self.dataset.id_column
        if not id_column or id_column not in self.columns:
            return
        hashes = np.concatenate(self.id_hashes) if self.id_hashes else np.array([], dtype=np.uint64)
        hashes.sort()
        repeated = hashes[1:][hashes[1:] == hashes[:-1]]
        duplicated = np.unique(repeated)
        # every row of a repeated value is unexpected, as GX counts them
        unexpected = int(np.isin(hashes, duplicated).sum()) if duplicated.size else 0
        examples: list[Any] = []
        rows: list[int] = []
        offset = 0
        if duplicated.size:
            for frame in read([id_column]):
                ids = frame[id_column].set_axis(pd.RangeIndex(offset, offset + len(frame))).dropna()
                offset += len(frame)
                keys = pd.util.hash_pandas_object(ids, index=False).to_numpy()
                found = ids[np.isin(keys, duplicated)].head(_PARTIAL_LIST_LIMIT - len(examples))
                examples += found.tolist()
                rows += found.index.tolist()
                if len(examples) >= _PARTIAL_LIST_LIMIT:
                    break
        for item in merged["results"]:
            config = item["expectation_config"]
            if config["type"] == "expect_column_values_to_be_unique" and config["kwargs"].get("column") == id_column:
                if _raised(item):
                    continue
                result = item.setdefault("result", {})
                result["unexpected_count"] = unexpected
                result["partial_unexpected_list"] = examples
                result["partial_unexpected_index_list"] = rows
                counts = Counter(repr(v) for v in examples)
                values = {repr(v): v for v in examples}
                result["partial_unexpected_counts"] = [
                    {"value": values[key], "count": count} for key, count in counts.most_common()
                ]

    def leakage_sample(self) -> pd.DataFrame:
        """The rows ``leakage_outcomes`` samples from the whole table, in its order."""
        if not self.sample_parts:
            return pd.DataFrame(columns=self.columns)
        gathered = pd.concat(self.sample_parts)
        return gathered.loc[self.sample_order].reset_index(drop=True)

    def future_outcomes(self, now: datetime) -> list[Outcome]:
        """``future_outcomes`` of the whole table, from the counts."""
        column = self.dataset.timestamp_column
        if column is None:
            return []
        if column not in self.columns:
            return [Outcome(column, FUTURE, True, "not checked: column is missing")]
        values, late, latest, error = self.future
        if error is not None:
            return [Outcome(column, FUTURE, False, f"could not be evaluated: {error}")]
        return [_future_outcome(column, values, late, latest, now, self.dataset)]


def leakage_outcomes(frame: pd.DataFrame, dataset: DatasetConfig) -> list[Outcome]:
    """Score every feature alone against the target on a bounded sample; one outcome per feature.

    The score is the ROC AUC (classification: the best class one-vs-rest, either direction, 0.5 to 1) or the
    absolute Spearman correlation (regression, 0 to 1) of the feature's values, so a copied, renamed, rescaled or
    reversed target scores 1. A categorical feature is scored through each row's mean target for its category,
    learnt on the other half of the sample (alternate rows), so a category seen once cannot look predictive.

    Args:
        frame: the data; at most ``LEAKAGE_SAMPLE_ROWS`` rows of it (a fixed random sample) are scored.
        dataset: names the features and the target, and holds ``leakage`` (the limit and the allowed columns).

    Returns:
        One outcome per feature: failed when the score is above ``leakage.max_single_feature_score`` and the
        feature is not in ``leakage.allowed_columns``.
    """
    target = dataset.target
    if target.name not in frame.columns:
        return [
            Outcome(spec.name, LEAKAGE, True, "not checked: the target column is missing") for spec in dataset.features
        ]
    sample = frame.sample(LEAKAGE_SAMPLE_ROWS, random_state=0) if len(frame) > LEAKAGE_SAMPLE_ROWS else frame
    if is_classification(target.task):
        labels = class_positions(sample[target.name], list(target.classes or []), match_text=True)
        known = labels >= 0
    else:
        labels = finite_numbers(sample[target.name])
        known = ~np.isnan(labels)
    outcomes = []
    for spec in dataset.features:
        if spec.name not in sample.columns:
            outcomes.append(Outcome(spec.name, LEAKAGE, True, "not checked: column is missing"))
            continue
        values = sample[spec.name][known]
        signal = (
            _out_of_fold_means(values, labels[known], len(target.classes or []))
            if spec.type == "categorical"
            else [pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)]
        )
        outcomes.append(_leakage_outcome(spec.name, signal, labels[known], dataset))
    return outcomes


def _out_of_fold_means(values: pd.Series, labels: np.ndarray, class_count: int) -> list[np.ndarray]:
    """Each row's mean target for its category, learnt on the other fold of alternate rows; NaN where the other fold
    lacks the category. Classification gives one array per class (the class's share), regression one (the mean)."""
    keys = pd.Series(values.astype("str").where(values.notna()).to_numpy())
    targets = [(labels == code).astype(np.float64) for code in range(class_count)] if class_count else [labels]
    fold = np.arange(len(keys)) % 2
    encoded = [np.full(len(keys), np.nan) for _ in targets]
    for held_out in (0, 1):
        rows = fold == held_out
        for target, out in zip(targets, encoded, strict=True):
            means = pd.Series(target[~rows]).groupby(keys[~rows].to_numpy()).mean()
            out[rows] = keys[rows].map(means).to_numpy(dtype=np.float64, na_value=np.nan)
    return encoded


def _leakage_outcome(column: str, signals: list[np.ndarray], labels: np.ndarray, dataset: DatasetConfig) -> Outcome:
    """The outcome of one feature's score: the best of its signals, as ROC AUC per class or |Spearman|."""
    target, limits = dataset.target, dataset.leakage
    classification = is_classification(target.task)
    classes = list(target.classes or [])
    scores: list[tuple[float, str]] = []
    for position, signal in enumerate(signals):
        scored = ~np.isnan(signal)
        if scored.sum() < LEAKAGE_MIN_ROWS:
            continue
        if classification:
            # A categorical feature's signal for class i is its share of class i; a numeric feature is one signal
            # scored against every class.
            for code in [position] if len(signals) > 1 else range(len(classes)):
                auc = _roc_auc(signal[scored], labels[scored] == code)
                if auc is not None:
                    scores.append((auc, f"ROC AUC for {target.name!r} = {_format_value(classes[code])} vs the rest"))
        else:
            correlation = _spearman(signal[scored], labels[scored])
            if correlation is not None:
                scores.append((abs(correlation), f"|Spearman correlation| with {target.name!r}"))
    if not scores:
        return Outcome(column, LEAKAGE, True, f"not checked: fewer than {LEAKAGE_MIN_ROWS} rows with a varying target")
    score, measure = max(scores)
    limit = limits.max_single_feature_score
    text = f"alone scores {score:.4f} ({measure}); at most {_format_value(limit)} allowed"
    if score <= limit:
        return Outcome(column, LEAKAGE, True, text)
    if column in limits.allowed_columns:
        return Outcome(column, LEAKAGE, True, f"{text}, but the column is in leakage.allowed_columns")
    return Outcome(
        column,
        LEAKAGE,
        False,
        f"{text}: it likely holds the target (leakage); drop it from features, or list it in "
        "leakage.allowed_columns if it is known when predicting",
    )


def _roc_auc(signal: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of a score for a yes/no label in either direction (0.5 to 1), from average ranks; None without both."""
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if not positives or not negatives:
        return None
    ranks = pd.Series(signal).rank().to_numpy()
    auc = (ranks[positive].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return max(auc, 1 - auc)


def _spearman(signal: np.ndarray, labels: np.ndarray) -> float | None:
    """Spearman's rank correlation; None when either side is constant."""
    ranks = [pd.Series(values).rank().to_numpy() for values in (signal, labels)]
    if any(np.ptp(r) == 0 for r in ranks):
        return None
    return float(np.corrcoef(*ranks)[0, 1])


def future_outcomes(frame: pd.DataFrame, dataset: DatasetConfig, now: datetime) -> list[Outcome]:
    """Check that no event time lies after ``now`` plus ``future_tolerance_seconds``.

    Rows from the future mean a wrong clock or time zone at the source, and a time split would put them in the
    holdout, judging the model on rows that cannot exist yet.

    Args:
        frame: the data.
        dataset: names the timestamp column (no column, no outcome) and holds the tolerance.
        now: the validation time (UTC).

    Returns:
        One outcome for the timestamp column, or none when the dataset has no timestamp column.
    """
    column = dataset.timestamp_column
    if column is None:
        return []
    if column not in frame.columns:
        return [Outcome(column, FUTURE, True, "not checked: column is missing")]
    try:
        times = utc_column(frame[column], column, "the data").dropna()
    except DataError as exc:
        return [Outcome(column, FUTURE, False, f"could not be evaluated: {exc}")]
    limit = pd.Timestamp(now + timedelta(seconds=dataset.future_tolerance_seconds))
    latest = times.max() if not times.empty else None
    return [_future_outcome(column, len(times), int((times > limit).sum()), latest, now, dataset)]


def _future_outcome(column: str, values: int, late: int, latest: Any, now: datetime, dataset: DatasetConfig) -> Outcome:
    """The outcome of ``late`` of ``values`` event times after ``now`` plus the tolerance, the latest ``latest``."""
    tolerance = timedelta(seconds=dataset.future_tolerance_seconds)
    if not values:
        return Outcome(column, FUTURE, True, "not checked: no event times")
    latest = latest.isoformat()
    if not late:
        return Outcome(column, FUTURE, True, f"latest {latest}; none after the validation time plus {tolerance}")
    share = _format_percent(late / values)
    return Outcome(
        column,
        FUTURE,
        False,
        f"{late} of {values} values ({share}) are after the validation time "
        f"{pd.Timestamp(now).isoformat(timespec='seconds')} plus the tolerance of {tolerance} "
        f"(future_tolerance_seconds: {_format_value(dataset.future_tolerance_seconds)}), latest {latest}; "
        "fix the clock or time zone at the source, or raise future_tolerance_seconds",
    )


def _outcome(item: dict[str, Any], frame: _Facts) -> Outcome:
    config = item["expectation_config"]
    kwargs = config["kwargs"]
    column = kwargs.get("column")
    return Outcome(
        column=column,
        expectation=config["type"],
        success=bool(item["success"]),
        detail=_describe(config["type"], kwargs, item, frame),
    )


def _describe(expectation: str, kwargs: dict[str, Any], item: dict[str, Any], frame: _Facts) -> str:
    """What GX observed for one expectation, in one line."""
    column = kwargs.get("column")
    result = item.get("result") or {}
    if column is not None and column not in frame.columns:  # frame: what the batches showed of the table
        return "column is missing" if expectation == "expect_column_to_exist" else "skipped: column is missing"
    if _raised(item):
        if expectation == "expect_column_values_to_be_between" and not pd.api.types.is_numeric_dtype(
            frame.dtypes[column]
        ):
            # A range check on numbers read as strings cannot compare; the type check reports the cause.
            return f"skipped: dtype {frame.dtypes[column]} is not numeric"
        return f"could not be evaluated: {_exception_message(item)}"
    if expectation == "expect_table_row_count_to_be_between":
        return f"{result.get('observed_value')} rows; expected {_range_words(kwargs)}"
    if expectation == "expect_column_to_exist":
        return "column is present"
    if expectation == "expect_column_distinct_values_to_contain_set":
        observed = _format_list(sorted(frame.distinct.get(column, ()), key=repr)[:EXAMPLE_COUNT])
        missing = result.get("partial_missing_list") or []
        if not missing:
            return f"observed {observed}"
        expected = _format_list(kwargs["value_set"])
        return f"observed {observed}, missing {_format_list(missing)}; every one of {expected} must occur"
    if "observed_value" in result:
        # The dtype-level verdict of the type check (GX only goes value by value for object columns).
        text = f"dtype {frame.dtypes[column]}; expected a numeric dtype (int or float)"
        return text if item["success"] else text + _text_among_numbers(*frame.not_numbers.get(column, [0, 0, []]))
    return _count_detail(expectation, kwargs, result)


def _text_among_numbers(not_numbers: int, present: int, examples: Sequence[Any]) -> str:
    """``; k of n non-null values (p%) are not numbers, e.g. ...`` for a column read as text, else empty."""
    if not not_numbers:
        return ""
    shown = _distinct(list(examples)[:100])[:EXAMPLE_COUNT]
    return (
        f"; {not_numbers} of {present} non-null values ({_format_percent(not_numbers / present)})"
        f" are not numbers, e.g. {', '.join(_format_value(v) for v in shown)}"
    )


_UNEXPECTED_WORDS = {
    "expect_column_values_to_not_be_null": "are null",
    "expect_column_values_to_be_unique": "are duplicates",
    "expect_column_values_to_be_in_type_list": "are not numbers",
}


def _count_detail(expectation: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    """``k of n values (p%) <what>[, e.g. ...][ (at most q% allowed)]`` for a value-by-value expectation."""
    if expectation == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = (-math.inf if low is None else low, math.inf if high is None else high)
        what = f"outside [{', '.join(_format_value(b) for b in bounds)}]"
    elif expectation == "expect_column_values_to_be_in_set":
        what = f"not in {_format_list(kwargs['value_set'])}"
    else:
        what = _UNEXPECTED_WORDS.get(expectation, "unexpected")
    total = int(result.get("element_count") or 0)
    # Null checks count over every row; the other checks ignore nulls and count over the non-null values.
    missing = int(result.get("missing_count") or 0)
    counted = total - missing
    values = "non-null values" if missing else "values"
    unexpected = int(result.get("unexpected_count") or 0)
    share = unexpected / counted if counted else 0.0
    text = f"{unexpected} of {counted} {values} ({_format_percent(share)}) {what}"
    examples = _distinct(result.get("partial_unexpected_list") or [])
    if examples and expectation != "expect_column_values_to_not_be_null":
        text += f", e.g. {', '.join(_format_value(v) for v in examples[:EXAMPLE_COUNT])}"
    mostly = kwargs.get("mostly")
    if mostly is not None and mostly < 1:
        text += f" (at most {_format_percent(1 - mostly)} allowed)"
    return text


def _raised(item: dict[str, Any]) -> bool:
    info = item.get("exception_info") or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    # GX keys a failed metric computation by metric id, one entry per failed metric.
    return any(isinstance(entry, dict) and entry.get("raised_exception") for entry in info.values())


def _exception_message(item: dict[str, Any]) -> str:
    info = item.get("exception_info") or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = dict.fromkeys(str(e.get("exception_message")) for e in entries if isinstance(e, dict))
    return "; ".join(messages) or "unknown error"


def _range_words(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"between {_format_value(low)} and {_format_value(high)}"
    if low is not None:
        return f"at least {_format_value(low)}"
    return f"at most {_format_value(high)}"


def _distinct(values: list[Any]) -> list[Any]:
    """Values in first-seen order without repeats (the partial list repeats frequent ones)."""
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(repr(value), value)
    return list(seen.values())


def _format_value(value: Any) -> str:
    """Whole floats without the ``.0`` (``18`` not ``18.0``); strings quoted so blanks and case show."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _format_list(values: list[Any]) -> str:
    return "[" + ", ".join(_format_value(v) for v in values) + "]"


def _format_percent(share: float) -> str:
    percent = share * 100
    if percent == 0 or percent >= 0.1:
        return f"{percent:.1f}%".replace(".0%", "%")
    return "<0.1%"


def render_html(report: ValidationReport, title: str) -> str:
    """Render the report as one self-contained HTML page (inline CSS, no scripts or external assets).

    Args:
        report: the validation report.
        title: the page heading, e.g. ``churn snapshot 3f2a...``.

    Returns:
        The HTML document; every value from the data is escaped.
    """
    verdict = "passed" if report.success else "failed"
    stats = report.statistics
    rows = [
        ["passed" if o.success else "FAILED", o.column or TABLE_LABEL, o.expectation, o.detail] for o in report.outcomes
    ]
    summary = (
        f'<p class="{verdict}"><strong>{verdict.upper()}</strong>: {stats["unsuccessful"]} of {stats["evaluated"]} '
        f"expectations failed, {stats['successful']} passed.</p>"
    )
    table = html_report.table(
        ["result", "column", "expectation", "observed"],
        rows,
        ["passed" if o.success else "failed" for o in report.outcomes],
    )
    return html_report.page(f"Validation: {title}", summary + "\n" + table)
