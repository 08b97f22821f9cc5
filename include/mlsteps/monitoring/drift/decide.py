"""Drift decisions: each feature against its reference, the dataset as a whole, and the model's prediction signals.

Per feature the method follows the feature's type and the sample size (``auto``: a p-value test while the smaller
sample is below ``large_sample_size``, a distance from then on), unless the config names one globally or for the
feature. A p-value test (KS, chi-square) counts as drift only when its Benjamini-Hochberg-adjusted p-value is
below alpha *and* its effect size (the KS statistic, Cohen's w) reaches ``min_effect_size``: on a large window
every tiny difference is significant, so the p-value alone would raise alarms from sample size alone. The
adjustment runs across the features tested with p-values.

The prediction signals (``mlsteps.monitoring.drift.profile.prediction_signals``: a class probability, the predicted
class or the predicted value) are judged like features of their type, with the ``drift.score`` settings, as their own
family: their p-values are adjusted among themselves, and they never count towards the dataset decision.

Bad input never raises: a feature missing from the window, holding text where numbers belong, all null, or only
categories the reference never saw is a data-quality problem (``data_quality_failed``) and never counts as drift;
too few values, or a constant reference under the normalised Wasserstein distance, leave a feature unjudged. Each
feature's ``status`` and ``message`` say which and why.

``detect_drift`` judges a window held in one DataFrame; ``WindowDrift`` the same window added batch by batch, with
memory that does not grow with the window and the same report (see its docstring for the one bounded exception).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.config import DriftConfig, FeatureDriftConfig
from mlsteps.errors import ConfigError, DataError
from mlsteps.monitoring.drift import stats
from mlsteps.monitoring.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    category_counts,
    not_numbers_error,
    numbers_of,
)

logger = logging.getLogger(__name__)

OK = "ok"
DATA_QUALITY_STATUSES = ("missing", "wrong_type", "all_null", "unseen_only")
METHODS = {"numeric": ("ks", "wasserstein", "psi"), "categorical": ("chisquare", "jensenshannon", "psi")}
P_VALUE_METHODS = ("ks", "chisquare")
EFFECT_SIZE_NAMES = {"ks": "KS statistic", "chisquare": "Cohen's w"}
# Categories beyond this many are summed into one bar of the report's chart.
MAX_PLOTTED_CATEGORIES = 30
OTHER_CATEGORIES = "(other)"


@dataclass
class FeatureDrift:
    """The verdict on one feature (or prediction signal), with the numbers behind it."""

    name: str
    kind: str  # numeric | categorical
    status: str  # ok, or why the feature was not judged (see the module docstring)
    message: str = ""
    method: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None  # Benjamini-Hochberg across the features tested with p-values
    effect_size: float | None = None  # p-value tests only: KS statistic or Cohen's w
    threshold: float | None = None  # alpha for p-value tests, else the distance threshold
    min_effect_size: float | None = None
    drifted: bool = False
    reference_count: int = 0  # values compared (the profile's sample for numeric columns)
    current_count: int = 0  # non-null current values
    current_null_share: float | None = None
    unseen_share: float | None = None  # categorical: share of current values in categories the reference lacks
    histogram: dict[str, list[Any]] | None = None  # labels with reference and current shares, for the chart

    @property
    def data_quality_problem(self) -> bool:
        """Whether the status is a data-quality problem of the window rather than a drift verdict."""
        return self.status in DATA_QUALITY_STATUSES


@dataclass(frozen=True)
class DatasetDrift:
    """The dataset-level decision from the share of drifted features."""

    drift_detected: bool
    drifted_features: int
    judged_features: int
    drifted_share: float | None
    threshold: float
    status: str  # ok | insufficient_data (no feature could be judged)
    message: str


@dataclass(frozen=True)
class DriftReport:
    """Everything ``detect_drift`` found; ``to_dict`` gives the JSON report."""

    features: list[FeatureDrift]
    prediction: list[FeatureDrift]  # one verdict per prediction signal of the profile
    dataset: DatasetDrift
    data_quality_failed: bool
    data_quality_problems: list[str]
    reference_rows: int
    current_rows: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class _Settings:
    method: str
    threshold: float
    min_effect_size: float | None
    min_samples: int


def _resolve(kind: str, override: FeatureDriftConfig, smaller_sample: int, config: DriftConfig) -> _Settings:
    """The method and thresholds of one feature: its override, else the global setting, else auto by size."""
    chosen = config.numeric_method if kind == "numeric" else config.categorical_method
    method = override.method or chosen
    if method == "auto":
        small = smaller_sample < config.large_sample_size
        method = {"numeric": ("ks", "wasserstein"), "categorical": ("chisquare", "jensenshannon")}[kind][not small]
    threshold = override.threshold if override.threshold is not None else getattr(config.thresholds, method)
    min_effect = None
    if method in P_VALUE_METHODS:
        min_effect = getattr(config.min_effect_size, method)
        min_effect = override.min_effect_size if override.min_effect_size is not None else min_effect
    return _Settings(method, threshold, min_effect, override.min_samples or config.min_samples)


def _apply(feature: FeatureDrift, settings: _Settings) -> None:
    feature.method = settings.method
    feature.threshold = settings.threshold
    feature.min_effect_size = settings.min_effect_size


def _too_few(feature: FeatureDrift, min_samples: int) -> bool:
    """Mark the feature insufficient_data when either side has fewer than ``min_samples`` values."""
    if min(feature.reference_count, feature.current_count) >= min_samples:
        return False
    feature.status = "insufficient_data"
    feature.message = (
        f"{feature.current_count} current and {feature.reference_count} reference values, fewer than min_samples "
        f"{min_samples}: not judged (widen the window or lower drift.min_samples)"
    )
    return True


def _share_histogram(labels: list[str], reference: np.ndarray, current: np.ndarray) -> dict[str, list[Any]]:
    return {
        "labels": labels,
        "reference": [float(v) for v in reference / max(reference.sum(), 1)],
        "current": [float(v) for v in current / max(current.sum(), 1)],
    }


def _bin_labels(edges: np.ndarray) -> list[str]:
    if edges.size == 0:
        return ["all values"]
    inner = [f"{low:.4g} to {high:.4g}" for low, high in zip(edges[:-1], edges[1:], strict=True)]
    return [f"< {edges[0]:.4g}", *inner, f">= {edges[-1]:.4g}"]


class _NumericWindow:
    """What drift detection needs of one numeric column of the window, added up batch by batch.

    Exact over any number of batches: the counts (rows, missing, finite values, values per reference bin) and the
    KS statistic (``stats.EcdfCounts``). The values themselves are kept while there are at most ``keep_values``
    (None: no limit): the KS p-value's exact distribution (up to ``stats.KS_EXACT_MAX_SIZE`` values a side) and the
    Wasserstein distance then come from them, exactly as from the whole window. Beyond that they are dropped and the
    Wasserstein distance comes from counts and sums between the reference sample's values, exact but for the
    intervals where the two CDFs cross, within a bound the feature's message states (``EcdfCounts.wasserstein``).
    """

    def __init__(self, reference: NumericProfile, keep_values: int | None, rows_before: int = 0) -> None:
        self.reference = reference
        self.keep_values = keep_values
        self.size = self.null_count = rows_before
        self.bins = np.zeros(reference.bin_edges.size + 1, dtype=np.int64)
        self.ecdf = stats.EcdfCounts(reference.sample)
        self.not_numbers = 0
        self.not_number_example: tuple[Any, Any] | None = None  # (value, dtype of its column)
        self.values: list[np.ndarray] | None = []  # None once there are more than keep_values

    @property
    def count(self) -> int:
        return self.ecdf.count

    def add_nulls(self, rows: int) -> None:
        self.size += rows
        self.null_count += rows

    def add(self, series: pd.Series) -> None:
        """Count a batch of the column."""
        values, not_numbers = numbers_of(series)
        self.size += int(values.size)
        if not_numbers.any():
            if self.not_number_example is None:
                self.not_number_example = (series[not_numbers].iloc[0], series.dtype)
            self.not_numbers += int(not_numbers.sum())
        if self.not_numbers:
            return  # the column is reported as wrong_type; only the counts of its message go on
        current = values[np.isfinite(values)]
        self.null_count += int(values.size - current.size)
        self.bins += np.bincount(
            np.searchsorted(self.reference.bin_edges, current, side="right"), minlength=self.bins.size
        )
        self.ecdf.add(current)
        if self.values is not None:
            self.values.append(current)
            if self.keep_values is not None and self.count > self.keep_values:
                self.values = None

    def current(self) -> np.ndarray | None:
        """Every finite value of the window, sorted; None once there were too many to keep."""
        return None if self.values is None else np.sort(np.concatenate([np.empty(0), *self.values]))

    def _wasserstein(self, feature: FeatureDrift) -> None:
        reference = self.reference
        assert reference.std
        current = self.current()
        if current is not None:
            feature.statistic = stats.wasserstein_distance(reference.sample, current) / reference.std
            return
        distance, bound = self.ecdf.wasserstein()
        feature.statistic = distance / reference.std
        accuracy = f"within {bound / reference.std:.2g} of the exact distance" if bound else "exact"
        feature.message = (
            f"the window's {self.count} values are more than processing.batch_rows keeps: distance from their counts "
            f"and sums between the reference's {self.ecdf.points.size} distinct values, {accuracy}"
        )

    def measure(self, feature: FeatureDrift, override: FeatureDriftConfig, config: DriftConfig) -> None:
        """Fill in the feature's statistic, or the status that says why it is not judged.

        Raises:
            DataError: the column holds values that are not numbers.
        """
        if self.not_number_example is not None:
            example, dtype = self.not_number_example
            raise not_numbers_error(feature.name, self.not_numbers, self.size, example, dtype)
        reference = self.reference
        feature.current_count = self.count
        feature.current_null_share = self.null_count / self.size
        feature.reference_count = int(reference.sample.size)
        if self.count == 0:
            feature.status = "all_null"
            feature.message = f"all {self.size} values of the window are missing or not finite: check the logging"
            return
        settings = _resolve("numeric", override, min(self.count, reference.sample.size), config)
        if _too_few(feature, settings.min_samples):
            return
        _apply(feature, settings)
        feature.histogram = _share_histogram(_bin_labels(reference.bin_edges), reference.bin_counts, self.bins)
        if settings.method == "ks":
            feature.statistic = self.ecdf.statistic()
            exact = max(reference.sample.size, self.count) <= stats.KS_EXACT_MAX_SIZE
            feature.p_value = stats.ks_p_value(
                feature.statistic, reference.sample, self.current() if exact else None, self.count
            )
            feature.effect_size = feature.statistic
        elif settings.method == "wasserstein":
            if not reference.std:
                feature.status = "constant_reference"
                feature.message = (
                    f"every reference value is {reference.sample[0]:.6g} (std 0), so the Wasserstein distance cannot "
                    "be normalised: not judged (set this feature's method to ks or psi in the drift config)"
                )
                return
            self._wasserstein(feature)
        else:
            feature.statistic = stats.psi(reference.bin_counts, self.bins, config.psi_epsilon)


def _aligned_counts(
    reference: CategoricalProfile, current_by_category: Mapping[str, int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Reference and current counts over the union of categories (the reference's first, then new ones sorted)."""
    known = set(reference.categories)
    new = sorted(c for c in current_by_category if c not in known)
    union = [*reference.categories, *new]
    reference_counts = np.concatenate([reference.counts, np.zeros(len(new), dtype=np.int64)])
    current_counts = np.array([current_by_category.get(c, 0) for c in union], dtype=np.int64)
    return union, reference_counts, current_counts


def _plotted(labels: list[str], reference: np.ndarray, current: np.ndarray) -> dict[str, list[Any]]:
    """The chart's bars: the most common categories on either side, the rest summed into one bar."""
    if len(labels) <= MAX_PLOTTED_CATEGORIES:
        return _share_histogram(labels, reference, current)
    weight = reference / max(reference.sum(), 1) + current / max(current.sum(), 1)
    top = np.sort(np.argsort(-weight, kind="stable")[: MAX_PLOTTED_CATEGORIES - 1])
    rest = np.setdiff1d(np.arange(len(labels)), top)
    return _share_histogram(
        [*(labels[i] for i in top), OTHER_CATEGORIES],
        np.append(reference[top], reference[rest].sum()),
        np.append(current[top], current[rest].sum()),
    )


class _CategoricalWindow:
    """The count of every category of one categorical column of the window, added up batch by batch (exact)."""

    def __init__(self, reference: CategoricalProfile, rows_before: int = 0) -> None:
        self.reference = reference
        self.size = self.null_count = rows_before
        self.counts: dict[str, int] = {}

    def add_nulls(self, rows: int) -> None:
        self.size += rows
        self.null_count += rows

    def add(self, series: pd.Series) -> None:
        """Count a batch of the column."""
        categories, counts, null_count = category_counts(series)
        for category, count in zip(categories, counts.tolist(), strict=True):
            self.counts[category] = self.counts.get(category, 0) + count
        self.size += int(series.size)
        self.null_count += null_count

    def measure(self, feature: FeatureDrift, override: FeatureDriftConfig, config: DriftConfig) -> None:
        """Fill in the feature's statistic, or the status that says why it is not judged."""
        reference = self.reference
        union, reference_counts, current_counts = _aligned_counts(reference, self.counts)
        current_total = int(current_counts.sum())
        feature.current_count = current_total
        feature.current_null_share = self.null_count / self.size
        feature.reference_count = reference.count
        if current_total == 0:
            feature.status = "all_null"
            feature.message = f"all {self.size} values of the window are missing: check the logging"
            return
        new = union[len(reference.categories) :]
        unseen = int(current_counts[len(reference.categories) :].sum())
        feature.unseen_share = unseen / current_total
        if unseen == current_total:
            feature.status = "unseen_only"
            feature.message = (
                f"every current value is a category the reference lacks ({new[:5]}; reference has "
                f"{reference.categories[:5]}): labels renamed or re-encoded? check the logging"
            )
            return
        settings = _resolve("categorical", override, min(current_total, reference.count), config)
        if _too_few(feature, settings.min_samples):
            return
        _apply(feature, settings)
        feature.histogram = _plotted(union, reference_counts, current_counts)
        if settings.method == "chisquare":
            feature.statistic, feature.p_value, feature.effect_size = stats.chi_square_test(
                reference_counts, current_counts
            )
        elif settings.method == "jensenshannon":
            feature.statistic = stats.jensen_shannon_distance(reference_counts, current_counts)
        else:
            feature.statistic = stats.psi(reference_counts, current_counts, config.psi_epsilon)
        if unseen:
            feature.message = (
                f"{feature.unseen_share:.2%} of current values are categories the reference lacks: {new[:5]}"
            )


_ColumnWindow = _NumericWindow | _CategoricalWindow


def _window_of(reference: ColumnProfile, keep_values: int | None, rows_before: int) -> _ColumnWindow:
    if isinstance(reference, NumericProfile):
        return _NumericWindow(reference, keep_values, rows_before)
    return _CategoricalWindow(reference, rows_before)


def _measure(
    reference: ColumnProfile, window: _ColumnWindow | None, rows: int, override: FeatureDriftConfig, config: DriftConfig
) -> FeatureDrift:
    """Compute the feature's statistic, or the status that says why it cannot be judged.

    ``window`` is None when no batch had the column: with no rows at all that is too little data, else the column
    is missing.
    """
    feature = FeatureDrift(name=reference.name, kind=reference.kind, status=OK)
    if window is None and rows:
        feature.status = "missing"
        feature.message = f"the window has no column {reference.name!r}: check the prediction logging"
        return feature
    if window is None or window.size == 0:
        feature.status = "insufficient_data"
        feature.message = "the window has no rows: nothing to judge"
        return feature
    try:
        window.measure(feature, override, config)
    except DataError as exc:
        feature.status = "wrong_type"
        feature.message = str(exc)
    return feature


def _verdict(feature: FeatureDrift) -> str:
    """Decide ``drifted`` for a judged feature and say why, with both numbers of every comparison."""
    assert feature.statistic is not None and feature.threshold is not None
    if feature.method in P_VALUE_METHODS:
        assert feature.adjusted_p_value is not None and feature.effect_size is not None
        significant = feature.adjusted_p_value < feature.threshold
        large_enough = feature.effect_size >= (feature.min_effect_size or 0.0)
        feature.drifted = significant and large_enough
        reason = (
            f"{feature.method}: p={feature.p_value:.3g}, BH-adjusted p={feature.adjusted_p_value:.3g} "
            f"{'<' if significant else '>='} alpha {feature.threshold:g}; {EFFECT_SIZE_NAMES[feature.method]} "
            f"{feature.effect_size:.4f} {'>=' if large_enough else '<'} min effect size {feature.min_effect_size:g}"
        )
        if significant and not large_enough:
            reason += " (significant through the sample size only)"
    else:
        feature.drifted = feature.statistic >= feature.threshold
        reason = (
            f"{feature.method} {feature.statistic:.4f} {'>=' if feature.drifted else '<'} "
            f"threshold {feature.threshold:g}"
        )
    return f"{reason}: {'drift' if feature.drifted else 'no drift'}"


def _decide(features: list[FeatureDrift]) -> None:
    """BH-adjust the p-values of one family of tests, then judge every feature that has a statistic."""
    from scipy import stats as scipy_stats

    tested = [f for f in features if f.status == OK and f.p_value is not None]
    if tested:
        adjusted = scipy_stats.false_discovery_control([f.p_value for f in tested], method="bh")
        for feature, value in zip(tested, adjusted, strict=True):
            feature.adjusted_p_value = float(value)
    for feature in features:
        if feature.status == OK:
            verdict = _verdict(feature)
            feature.message = f"{verdict}; {feature.message}" if feature.message else verdict
        logger.info("drift of %s: %s: %s", feature.name, feature.status, feature.message)


def _dataset_decision(features: list[FeatureDrift], drift_share: float) -> DatasetDrift:
    judged = [f for f in features if f.status == OK]
    drifted = sum(f.drifted for f in judged)
    if not judged:
        message = f"none of the {len(features)} features could be judged: no dataset decision"
        logger.info("dataset drift: %s", message)
        return DatasetDrift(False, 0, 0, None, drift_share, "insufficient_data", message)
    share = drifted / len(judged)
    detected = share >= drift_share
    message = (
        f"{drifted} of {len(judged)} judged features drifted: share {share:.3f} "
        f"{'>=' if detected else '<'} drift_share {drift_share:g}: "
        f"{'dataset drift' if detected else 'no dataset drift'}"
    )
    logger.info("dataset drift: %s", message)
    return DatasetDrift(detected, drifted, len(judged), share, drift_share, OK, message)


def _check_overrides(profile: ReferenceProfile, config: DriftConfig) -> None:
    """Refuse overrides that name no profiled feature, or a method that does not fit the type of the feature or of
    a prediction signal it applies to (all at once)."""
    problems = []
    unknown = sorted(set(config.features) - set(profile.features))
    if unknown:
        problems.append(
            f"drift.features names {unknown}, which the reference profile lacks (it has {sorted(profile.features)}): "
            "fix the names"
        )
    # (where in the config, the column kind it meets, the override, which columns of that kind it applies to)
    overrides = [
        (f"features.{name}", profile.features[name].kind, override, "")
        for name, override in config.features.items()
        if name in profile.features
    ]
    for kind in METHODS:
        signals = [name for name, signal in profile.predictions.items() if signal.kind == kind]
        if signals:
            overrides.append(("score", kind, config.score, f" (prediction signal(s) {signals})"))
    for where, kind, override, columns in overrides:
        if override.method not in (None, *METHODS[kind]):
            problems.append(
                f"drift.{where}.method {override.method!r} does not apply to a {kind} column{columns}: "
                f"use one of {METHODS[kind]}"
            )
    if problems:
        raise ConfigError("drift config does not fit the reference profile:\n- " + "\n- ".join(problems))


class WindowDrift:
    """``detect_drift`` over a window read in batches: ``add`` each batch, then ``report`` once.

    Memory does not grow with the window: per numeric column the reference bins, four numbers per distinct value of
    the profile's sample, and its values only while there are at most ``keep_values``; per categorical column one
    count per category. Every count, PSI, chi-square, Jensen-Shannon and KS statistic (and its p-value) is what the
    whole window gives. So is the Wasserstein distance while the column has at most ``keep_values`` values; beyond,
    it is exact but for a bound the feature's message states (``stats.EcdfCounts.wasserstein``).

    Batches need not share columns: a column a batch lacks counts as missing values in it, as when the window's
    files are read as one table.
    """

    def __init__(
        self, profile: ReferenceProfile, config: DriftConfig | None = None, keep_values: int | None = None
    ) -> None:
        """Start a window.

        Args:
            profile: the training snapshot's profile (``build_profile`` / ``load_profile``).
            config: methods, thresholds and the dataset rule; default ``DriftConfig()``.
            keep_values: most values of a numeric column kept (at least ``stats.KS_EXACT_MAX_SIZE``, so the exact
                KS p-value always has its values); None keeps all.

        Raises:
            ConfigError: a per-feature override names an unknown feature or a method that does not fit its type.
        """
        self.profile = profile
        self.config = config or DriftConfig()
        _check_overrides(profile, self.config)
        self.keep_values = None if keep_values is None else max(keep_values, stats.KS_EXACT_MAX_SIZE)
        self.rows = 0
        self.features: dict[str, _ColumnWindow] = {}
        self.predictions: dict[str, _ColumnWindow] = {}
        self._signal_names: set[str] = set()

    def add(self, current: pd.DataFrame, predictions: Mapping[str, Any] | None = None) -> None:
        """Count one batch of the window.

        Args:
            current: the batch's rows, one column per feature; extra columns are ignored.
            predictions: the model's prediction signals on these rows, name -> values (``prediction_signals``).
        """
        rows = len(current)
        columns = {name: current[name] for name in self.profile.features if name in current.columns}
        self._add(self.features, self.profile.features, columns, rows)
        signals = {
            name: pd.Series(np.asarray(values), name=name)
            for name, values in (predictions or {}).items()
            if name in self.profile.predictions
        }
        self._add(self.predictions, self.profile.predictions, signals, rows)
        self._signal_names.update(predictions or {})
        self.rows += rows

    def _add(
        self,
        windows: dict[str, _ColumnWindow],
        references: Mapping[str, ColumnProfile],
        columns: Mapping[str, pd.Series],
        rows: int,
    ) -> None:
        for name, series in columns.items():
            if name not in windows:
                windows[name] = _window_of(references[name], self.keep_values, self.rows)
            windows[name].add(series)
        for name, window in windows.items():
            if name not in columns:
                window.add_nulls(rows)

    def report(self) -> DriftReport:
        """The per-feature verdicts, the dataset decision, prediction drift and data-quality problems."""
        config, no_override = self.config, FeatureDriftConfig()
        features = [
            _measure(reference, self.features.get(name), self.rows, config.features.get(name, no_override), config)
            for name, reference in self.profile.features.items()
        ]
        _decide(features)
        prediction = self._prediction_drift()
        every = [*features, *prediction]
        problems = [f"{f.name}: {f.status}: {f.message}" for f in every if f.data_quality_problem]
        counts = {"features": len(features), "drifted": sum(f.drifted for f in features)}
        for feature in features:
            counts[feature.status] = counts.get(feature.status, 0) + 1
        return DriftReport(
            features=features,
            prediction=prediction,
            dataset=_dataset_decision(features, config.drift_share),
            data_quality_failed=bool(problems),
            data_quality_problems=problems,
            reference_rows=self.profile.rows,
            current_rows=self.rows,
            counts=counts,
        )

    def _prediction_drift(self) -> list[FeatureDrift]:
        """Judge every prediction signal of the profile; one the window's predictions lack is reported missing."""
        signals = []
        for name, reference in self.profile.predictions.items():
            if name in self.predictions:
                signals.append(_measure(reference, self.predictions[name], self.rows, self.config.score, self.config))
            else:
                message = (
                    f"the profile has a reference of prediction signal {name!r} but the window's predictions lack it "
                    f"(they have {sorted(self._signal_names)}): pass prediction_signals of the window's model outputs"
                )
                signals.append(FeatureDrift(name=name, kind=reference.kind, status="missing", message=message))
        _decide(signals)
        return signals


def detect_drift(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    predictions: Mapping[str, Any] | None = None,
    config: DriftConfig | None = None,
) -> DriftReport:
    """Compare a window of data (and the model's prediction signals on it) with the reference profile.

    The whole window is one batch of ``WindowDrift`` keeping every value, so every statistic is exact.

    Args:
        profile: the training snapshot's profile (``build_profile`` / ``load_profile``).
        current: the window, one column per feature; extra columns are ignored, missing ones reported.
        predictions: the model's prediction signals on the window, name -> values (``prediction_signals`` of the
            window's outputs); a signal of the profile that is absent here is reported missing. None: the window
            has no predictions (every signal of the profile is missing).
        config: methods, thresholds and the dataset rule; default ``DriftConfig()``.

    Returns:
        The per-feature verdicts, the dataset decision, prediction drift and data-quality problems.

    Raises:
        ConfigError: a per-feature override names an unknown feature or a method that does not fit its type.
    """
    window = WindowDrift(profile, config)
    window.add(current, predictions)
    return window.report()
