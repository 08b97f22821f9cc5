"""The reference profile: what drift detection needs of the training snapshot, computed once at training time.

Two kinds of columns are profiled: the features, and the model's prediction signals on the same rows
(``prediction_signals``: binary the positive-class probability; multiclass each class's probability and the
predicted class; regression the predicted value). A signal is profiled like a feature of its type.

Numeric columns (features and numeric signals) keep a sorted sample of their finite values, their mean and standard
deviation, and the reference-quantile bin edges with the share of values in each bin. Above
``reference_sample_size`` values the sample is thinned deterministically to evenly spaced order statistics: the
same data always gives the same profile, and the sample's empirical CDF stays within 1/size of the full column's
(a random subsample would be off by about 1/sqrt(size)). Mean, std, bins and counts always use the full column.
Categorical columns (and the predicted class) keep the count of every category.

``build_profile_from_batches`` profiles data read in batches (``batches.iter_frames``) in memory bounded by the
batch and ``reference_sample_size``, not by the rows; ``build_profile`` is its one-batch case. Counts, null counts,
category counts, min and max add up exactly batch by batch. A numeric column's values are held as they come while
at most 2 x ``reference_sample_size`` are held; the profile is then exactly the whole column's (same bytes). Past
that, before the next batch is added, the held values are compacted: sorted and cut into ``reference_sample_size``
runs of consecutive ranks, each kept as its middle value weighted by its length. A compaction of W values moves the
count of values below any point by less than one run, ceil(W / size) values, so after ``c`` compactions the
sample's empirical CDF, the ranks of the bin edges and the bin counts are within about (1 + c) / size of the full
column's (c ~ rows / (size + batch rows): 3 compactions, 4e-5, for 800k rows in 100k batches at the default 100k
size), mean and std are exact up to rounding (merged per batch), and the sample still starts at the minimum and ends
at the maximum. The same rows in another order or other batches can then give a profile that differs within that
bound.

The profile is one ``.npz`` file (``numpy.savez_compressed``): arrays stay bit-exact and load without pickle in
milliseconds, and 25 columns of 100k values take a few MB where JSON would take several times that and parse
slowly. A JSON document inside it (``meta``) holds names, counts and moments, so the file describes itself.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlsteps.config import ColumnSpec, DriftConfig
from mlsteps.data import storage
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import PREDICTION, is_classification, probability_columns
from mlsteps.monitoring.drift.stats import bin_counts

# 2: named prediction signals (``predictions``) in place of version 1's single ``score``.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class NumericProfile:
    """Reference of one numeric column (a feature or a numeric prediction signal)."""

    name: str
    count: int  # finite values in the full column
    null_count: int  # missing or non-finite values
    mean: float | None
    std: float | None  # population std (ddof=0), the Wasserstein normaliser
    sample: np.ndarray  # sorted finite values, at most reference_sample_size of them
    bin_edges: np.ndarray  # inner edges of the reference-quantile bins (duplicates removed)
    bin_counts: np.ndarray  # full-column count per bin, len(bin_edges) + 1 bins

    kind: ClassVar[str] = "numeric"


@dataclass(frozen=True)
class CategoricalProfile:
    """Reference of one categorical column (a feature or the predicted class)."""

    name: str
    count: int  # non-null values
    null_count: int
    categories: list[str]
    counts: np.ndarray  # count per category, same order

    kind: ClassVar[str] = "categorical"


ColumnProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class ReferenceProfile:
    """Everything drift detection compares a window with, for every feature and every prediction signal."""

    rows: int
    features: dict[str, ColumnProfile]
    predictions: dict[str, ColumnProfile]  # the model's prediction signals on the reference rows; may be empty
    psi_bins: int
    sample_size: int


def numeric_values(series: pd.Series) -> tuple[np.ndarray, int]:
    """The finite values of a numeric column and how many are missing or non-finite.

    A text column is converted when every non-null value reads as a number (logs often carry numbers as text).

    Raises:
        DataError: some values are not numbers; the message shows one and how many.
    """
    values, not_numbers = numbers_of(series)
    if not_numbers.any():
        raise not_numbers_error(
            series.name, int(not_numbers.sum()), len(series), series[not_numbers].iloc[0], series.dtype
        )
    finite = values[np.isfinite(values)]
    return finite, int(values.size - finite.size)


def numbers_of(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column as float64 (NaN where missing or not a number) and which values are not numbers (text)."""
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(series), dtype=bool)
    converted = pd.to_numeric(series, errors="coerce")
    not_numbers = (converted.isna() & series.notna()).to_numpy(dtype=bool)
    return converted.to_numpy(dtype=np.float64, na_value=np.nan), not_numbers


def not_numbers_error(name: Any, count: int, total: int, example: Any, dtype: Any) -> DataError:
    """The error of a numeric column holding ``count`` values (of ``total``) that are not numbers."""
    return DataError(
        f"column {name!r} should be numeric but {count} of {total} values are not numbers (e.g. {example!r}, dtype "
        f"{dtype}): fix the data or declare it categorical"
    )


def category_counts(series: pd.Series) -> tuple[list[str], np.ndarray, int]:
    """The categories of a column (as text), their counts, and the number of missing values."""
    present = series.dropna()
    counts = present.astype("str").value_counts(sort=False)
    counts = counts[counts > 0]
    return [str(c) for c in counts.index], counts.to_numpy(dtype=np.int64), int(series.size - present.size)


def _evenly_spaced(sorted_values: np.ndarray, size: int) -> np.ndarray:
    """At most ``size`` order statistics spread evenly from the smallest value to the largest."""
    if sorted_values.size <= size:
        return sorted_values
    return sorted_values[np.round(np.linspace(0, sorted_values.size - 1, size)).astype(np.int64)]


def _sorted_profile(name: str, values: np.ndarray, null_count: int, config: DriftConfig) -> NumericProfile:
    """The exact profile of a numeric column's finite values, sorted."""
    if values.size:
        quantiles = np.quantile(values, np.linspace(0, 1, config.psi_bins + 1)[1:-1])
        edges = np.unique(quantiles)
        mean, std = float(values.mean()), float(values.std())
    else:
        edges, mean, std = np.empty(0), None, None
    return NumericProfile(
        name=name,
        count=int(values.size),
        null_count=null_count,
        mean=mean,
        std=std,
        sample=_evenly_spaced(values, config.reference_sample_size),
        bin_edges=edges,
        bin_counts=bin_counts(values, edges),
    )


def _compacted(values: np.ndarray, weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``values`` (each standing for ``weights`` values) as ``size`` runs of consecutive ranks, each the middle
    value of its run weighted by the run's length; the count below any point moves by less than one run."""
    total = int(weights.sum())
    bounds = np.round(np.linspace(0, total, size + 1)).astype(np.int64)
    middles = (bounds[:-1] + bounds[1:] - 1) // 2
    return values[np.searchsorted(np.cumsum(weights), middles, side="right")], np.diff(bounds)


class _NumericColumn:
    """A numeric column's profile built batch by batch; see the module docstring for what is exact and when."""

    def __init__(self, name: str, config: DriftConfig) -> None:
        self.name = name
        self.config = config
        self.values: list[np.ndarray] = []  # finite values held, each standing for the weight at the same place
        self.weights: list[np.ndarray] = []  # empty while every held value stands for itself
        self.held = 0
        self.compactions = 0
        self.rows = 0
        self.count = 0
        self.null_count = 0
        self.mean = 0.0
        self.squares = 0.0  # sum of squared deviations from the mean (merged per batch, Chan et al.)
        self.minimum = np.inf
        self.maximum = -np.inf
        self.not_numbers = 0
        self.example: Any = None
        self.dtype: Any = None

    def add(self, series: pd.Series) -> None:
        values, not_numbers = numbers_of(series)
        self.rows += len(series)
        if not_numbers.any():
            if not self.not_numbers:
                self.example, self.dtype = series[not_numbers].iloc[0], series.dtype
            self.not_numbers += int(not_numbers.sum())
        if self.not_numbers:
            return  # the column fails; only the count of text values still matters
        finite = values[np.isfinite(values)]
        self.null_count += int(values.size - finite.size)
        if not finite.size:
            return
        batch_mean = float(finite.mean())
        batch_squares = float(np.square(finite - batch_mean).sum())
        count = self.count + finite.size
        delta = batch_mean - self.mean
        self.mean += delta * finite.size / count
        self.squares += batch_squares + delta * delta * self.count * finite.size / count
        self.count = count
        self.minimum = min(self.minimum, float(finite.min()))
        self.maximum = max(self.maximum, float(finite.max()))
        if self.held > 2 * self.config.reference_sample_size:
            self._compact()
        self.values.append(finite)
        if self.compactions:
            self.weights.append(np.ones(finite.size, dtype=np.int64))
        self.held += finite.size

    def _held_sorted(self) -> tuple[np.ndarray, np.ndarray | None]:
        values = np.concatenate(self.values) if self.values else np.empty(0)
        if not self.compactions:
            return np.sort(values), None
        order = np.argsort(values, kind="stable")
        return values[order], np.concatenate(self.weights)[order]

    def _compact(self) -> None:
        values, weights = self._held_sorted()
        weights = np.ones(values.size, dtype=np.int64) if weights is None else weights
        values, weights = _compacted(values, weights, self.config.reference_sample_size)
        self.values, self.weights, self.held = [values], [weights], values.size
        self.compactions += 1

    def profile(self) -> NumericProfile:
        """The column's profile.

        Raises:
            DataError: some values are not numbers; the message shows one and how many of the column's.
        """
        if self.not_numbers:
            raise not_numbers_error(self.name, self.not_numbers, self.rows, self.example, self.dtype)
        values, weights = self._held_sorted()
        if weights is None:
            return _sorted_profile(self.name, values, self.null_count, self.config)
        ends = np.cumsum(weights)  # values at ranks [ends[i] - weights[i], ends[i]) stand for values[i]

        def at_ranks(ranks: np.ndarray) -> np.ndarray:
            return values[np.searchsorted(ends, ranks, side="right")]

        size = self.config.reference_sample_size
        sample = at_ranks(np.round(np.linspace(0, self.count - 1, size)).astype(np.int64))
        sample[0], sample[-1] = self.minimum, self.maximum
        # np.quantile's linear interpolation between the order statistics around each level's rank
        position = np.linspace(0, 1, self.config.psi_bins + 1)[1:-1] * (self.count - 1)
        below = np.floor(position).astype(np.int64)
        lower, upper = at_ranks(below), at_ranks(np.minimum(below + 1, self.count - 1))
        edges = np.unique(np.clip(lower + (position - below) * (upper - lower), self.minimum, self.maximum))
        below_edges = np.concatenate(([0], ends))[np.searchsorted(values, edges, side="left")]
        return NumericProfile(
            name=self.name,
            count=self.count,
            null_count=self.null_count,
            mean=self.mean,
            std=float(np.sqrt(self.squares / self.count)),
            sample=sample,
            bin_edges=edges,
            bin_counts=np.diff(np.concatenate(([0], below_edges, [self.count]))).astype(np.int64),
        )


class _CategoricalColumn:
    """A categorical column's counts added up batch by batch: only one batch is ever held as text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, int] = {}
        self.null_count = 0

    def add(self, series: pd.Series) -> None:
        categories, counts, null_count = category_counts(series)
        for category, count in zip(categories, counts.tolist(), strict=True):
            self.counts[category] = self.counts.get(category, 0) + count
        self.null_count += null_count

    def profile(self) -> CategoricalProfile:
        categories = list(self.counts)
        counts = np.array([self.counts[category] for category in categories], dtype=np.int64)
        order = np.argsort(categories, kind="stable")
        return CategoricalProfile(
            name=self.name,
            count=int(counts.sum()),
            null_count=self.null_count,
            categories=[categories[i] for i in order],
            counts=counts[order],
        )


def _column(name: str, kind: str, config: DriftConfig) -> _NumericColumn | _CategoricalColumn:
    return _NumericColumn(name, config) if kind == "numeric" else _CategoricalColumn(name)


def prediction_signals(task: str, classes: Sequence[Any], output: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model outputs whose drift is judged, from a frame with the task's predict contract (a model's
    ``predict`` output, or a window of the prediction log).

    - binary: ``probability``, the positive-class probability;
    - multiclass: ``probability_<class>`` for every class, and ``prediction``, the predicted class, whose shares
      are the class mix;
    - regression: ``prediction``, the predicted value.

    Probabilities and predicted values come as float64 (numeric signals), predicted classes as text (a categorical
    signal, labels written as ``str`` writes them, so 0 and "0" are one class).

    Raises:
        DataError: the frame lacks an output column of the task, or a numeric one holds text.
    """
    numeric = probability_columns(task, classes) if is_classification(task) else [PREDICTION]
    categorical = [PREDICTION] if task == "multiclass" else []
    missing = [name for name in [*numeric, *categorical] if name not in output.columns]
    if missing:
        raise DataError(
            f"the {task} model's outputs lack column(s) {missing} (they have {list(output.columns)}): score with the "
            "model whose task and classes these are, or read the prediction log of one model version"
        )
    try:
        signals = {name: output[name].to_numpy(dtype=np.float64, na_value=np.nan) for name in numeric}
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"the {task} model's output column(s) {numeric} hold values that are not numbers: {exc}"
        ) from None
    return signals | {name: output[name].astype("str").to_numpy(dtype=object) for name in categorical}


def build_profile(
    frame: pd.DataFrame,
    features: list[ColumnSpec],
    predictions: Mapping[str, Any] | None = None,
    config: DriftConfig | None = None,
) -> ReferenceProfile:
    """Profile the training snapshot (and the model's prediction signals on it) for later drift checks.

    Args:
        frame: the reference data, one column per feature (other columns are ignored).
        features: the dataset config's feature specs; their ``type`` says how each column is profiled.
        predictions: the model's prediction signals on the reference rows, name -> values (``prediction_signals``):
            number arrays are profiled as numeric signals, anything else (class labels) as categorical; None for
            none.
        config: ``psi_bins`` and ``reference_sample_size`` are fixed in the profile; default ``DriftConfig()``.

    Returns:
        The profile; ``save_profile`` writes it.

    Raises:
        DataError: feature columns are missing from the frame or numeric ones hold text (all listed at once).
    """
    return build_profile_from_batches([frame], features, predictions, config)


def build_profile_from_batches(
    batches: Iterable[pd.DataFrame],
    features: list[ColumnSpec],
    predictions: Mapping[str, Any] | None = None,
    config: DriftConfig | None = None,
) -> ReferenceProfile:
    """``build_profile`` of the rows of ``batches`` (e.g. ``batches.iter_frames`` of a Parquet split), one batch in
    memory at a time: exactly the whole table's profile while a numeric column has at most 2 x
    ``reference_sample_size`` finite values, within the bound of the module docstring past that.

    Raises:
        DataError: feature columns are missing from a batch or numeric ones hold text (all listed at once).
    """
    config = config or DriftConfig()
    columns = {spec.name: _column(spec.name, spec.type, config) for spec in features}
    missing: set[str] = set()
    rows = 0
    for batch in batches:
        rows += len(batch)
        for name, column in columns.items():
            if name in batch.columns:
                column.add(batch[name])
            else:
                missing.add(name)
    problems = []
    if missing:
        problems.append(
            f"reference data lacks feature columns {[spec.name for spec in features if spec.name in missing]}: "
            "profile the snapshot the model was trained on"
        )
    profiles: dict[str, ColumnProfile] = {}
    for name, column in columns.items():
        if name in missing:
            continue
        try:
            profiles[name] = column.profile()
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("cannot build the reference profile:\n- " + "\n- ".join(problems))
    return ReferenceProfile(
        rows=rows,
        features=profiles,
        predictions={name: _signal_profile(name, values, config) for name, values in (predictions or {}).items()},
        psi_bins=config.psi_bins,
        sample_size=config.reference_sample_size,
    )


def _signal_profile(name: str, values: Any, config: DriftConfig) -> ColumnProfile:
    """A prediction signal profiled by the type of its values: numbers as numeric, anything else as categorical."""
    array = np.asarray(values)
    numeric = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.bool_)
    column = _column(name, "numeric" if numeric else "categorical", config)
    column.add(pd.Series(array, name=name))
    return column.profile()


def _numeric_meta(profile: NumericProfile, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    arrays[f"{key}.sample"] = profile.sample
    arrays[f"{key}.bin_edges"] = profile.bin_edges
    arrays[f"{key}.bin_counts"] = profile.bin_counts
    return {
        "kind": "numeric",
        "name": profile.name,
        "key": key,
        "count": profile.count,
        "null_count": profile.null_count,
        "mean": profile.mean,
        "std": profile.std,
    }


def _column_meta(profile: ColumnProfile, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if isinstance(profile, NumericProfile):
        return _numeric_meta(profile, key, arrays)
    arrays[f"{key}.categories"] = np.array(profile.categories, dtype=np.str_)
    arrays[f"{key}.counts"] = profile.counts
    return {
        "kind": "categorical",
        "name": profile.name,
        "key": key,
        "count": profile.count,
        "null_count": profile.null_count,
    }


def save_profile(profile: ReferenceProfile, uri: str) -> None:
    """Write the profile as one compressed ``.npz`` file (local path or ``s3://`` URI)."""
    arrays: dict[str, np.ndarray] = {}
    columns = [_column_meta(column, f"feature{i}", arrays) for i, column in enumerate(profile.features.values())]
    meta = {
        "format_version": FORMAT_VERSION,
        "rows": profile.rows,
        "psi_bins": profile.psi_bins,
        "sample_size": profile.sample_size,
        "features": columns,
        "predictions": [
            _column_meta(signal, f"prediction{i}", arrays) for i, signal in enumerate(profile.predictions.values())
        ],
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    storage.write_bytes(uri, buffer.getvalue())


def _column_from(meta: dict[str, Any], arrays: Any) -> ColumnProfile:
    key = meta["key"]
    if meta["kind"] == "numeric":
        return NumericProfile(
            name=meta["name"],
            count=meta["count"],
            null_count=meta["null_count"],
            mean=meta["mean"],
            std=meta["std"],
            sample=arrays[f"{key}.sample"],
            bin_edges=arrays[f"{key}.bin_edges"],
            bin_counts=arrays[f"{key}.bin_counts"],
        )
    return CategoricalProfile(
        name=meta["name"],
        count=meta["count"],
        null_count=meta["null_count"],
        categories=[str(c) for c in arrays[f"{key}.categories"]],
        counts=arrays[f"{key}.counts"],
    )


def load_profile(uri: str) -> ReferenceProfile:
    """Read a profile written by ``save_profile``.

    Raises:
        DataError: no file at the URI, or it is not a profile of this format version.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise DataError(f"no reference profile at {uri}: build it from the training snapshot first") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{uri}: profile format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION} "
                "(named prediction signals per task): retrain the model to rebuild its profile"
            )
        return ReferenceProfile(
            rows=meta["rows"],
            features={column["name"]: _column_from(column, arrays) for column in meta["features"]},
            predictions={signal["name"]: _column_from(signal, arrays) for signal in meta["predictions"]},
            psi_bins=meta["psi_bins"],
            sample_size=meta["sample_size"],
        )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise DataError(f"{uri} is not a reference profile (.npz written by save_profile): {exc}") from None
