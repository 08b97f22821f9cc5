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
    numeric_values,
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


def _measure_numeric(
    feature: FeatureDrift,
    reference: NumericProfile,
    series: pd.Series,
    override: FeatureDriftConfig,
    config: DriftConfig,
) -> None:
    values, null_count = numeric_values(series)
    feature.current_count = int(values.size)
    feature.current_null_share = null_count / series.size
    feature.reference_count = int(reference.sample.size)
    if values.size == 0:
        feature.status = "all_null"
        feature.message = f"all {series.size} values of the window are missing or not finite: check the logging"
        return
    settings = _resolve("numeric", override, min(values.size, reference.sample.size), config)
    if _too_few(feature, settings.min_samples):
        return
    _apply(feature, settings)
    current = np.sort(values)
    current_bins = stats.bin_counts(current, reference.bin_edges)
    feature.histogram = _share_histogram(_bin_labels(reference.bin_edges), reference.bin_counts, current_bins)
    if settings.method == "ks":
        feature.statistic, feature.p_value = stats.ks_test(reference.sample, current)
        feature.effect_size = feature.statistic
    elif settings.method == "wasserstein":
        if not reference.std:
            feature.status = "constant_reference"
            feature.message = (
                f"every reference value is {reference.sample[0]:.6g} (std 0), so the Wasserstein distance cannot be "
                "normalised: not judged (set this feature's method to ks or psi in the drift config)"
            )
            return
        feature.statistic = stats.wasserstein_distance(reference.sample, current) / reference.std
    else:
        feature.statistic = stats.psi(reference.bin_counts, current_bins, config.psi_epsilon)


def _aligned_counts(reference: CategoricalProfile, series: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Reference and current counts over the union of categories (the reference's first), and the null count."""
    categories, counts, null_count = category_counts(series)
    current_by_category = dict(zip(categories, counts.tolist(), strict=True))
    known = set(reference.categories)
    new = sorted(c for c in categories if c not in known)
    union = [*reference.categories, *new]
    reference_counts = np.concatenate([reference.counts, np.zeros(len(new), dtype=np.int64)])
    current_counts = np.array([current_by_category.get(c, 0) for c in union], dtype=np.int64)
    return union, reference_counts, current_counts, null_count


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


def _measure_categorical(
    feature: FeatureDrift,
    reference: CategoricalProfile,
    series: pd.Series,
    override: FeatureDriftConfig,
    config: DriftConfig,
) -> None:
    union, reference_counts, current_counts, null_count = _aligned_counts(reference, series)
    current_total = int(current_counts.sum())
    feature.current_count = current_total
    feature.current_null_share = null_count / series.size
    feature.reference_count = reference.count
    if current_total == 0:
        feature.status = "all_null"
        feature.message = f"all {series.size} values of the window are missing: check the logging"
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
        feature.message = f"{feature.unseen_share:.2%} of current values are categories the reference lacks: {new[:5]}"


def _window_column(current: pd.DataFrame, name: str) -> pd.Series | None:
    """The window's column, an empty one when the window has no rows at all, or None when it lacks the column."""
    if name in current.columns:
        return current[name]
    return pd.Series([], dtype="float64", name=name) if len(current) == 0 else None


def _measure(
    reference: ColumnProfile, series: pd.Series | None, override: FeatureDriftConfig, config: DriftConfig
) -> FeatureDrift:
    """Compute the feature's statistic, or the status that says why it cannot be judged."""
    feature = FeatureDrift(name=reference.name, kind=reference.kind, status=OK)
    if series is None:
        feature.status = "missing"
        feature.message = f"the window has no column {reference.name!r}: check the prediction logging"
        return feature
    if series.size == 0:
        feature.status = "insufficient_data"
        feature.message = "the window has no rows: nothing to judge"
        return feature
    try:
        if isinstance(reference, NumericProfile):
            _measure_numeric(feature, reference, series, override, config)
        else:
            _measure_categorical(feature, reference, series, override, config)
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


def _prediction_drift(
    profile: ReferenceProfile, predictions: Mapping[str, Any], config: DriftConfig
) -> list[FeatureDrift]:
    """Judge every prediction signal of the profile; one the window's predictions lack is reported missing."""
    signals = []
    for name, reference in profile.predictions.items():
        if name in predictions:
            signals.append(
                _measure(reference, pd.Series(np.asarray(predictions[name]), name=name), config.score, config)
            )
        else:
            message = (
                f"the profile has a reference of prediction signal {name!r} but the window's predictions lack it "
                f"(they have {sorted(predictions)}): pass prediction_signals of the window's model outputs"
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
    config = config or DriftConfig()
    _check_overrides(profile, config)
    no_override = FeatureDriftConfig()
    features = [
        _measure(reference, _window_column(current, name), config.features.get(name, no_override), config)
        for name, reference in profile.features.items()
    ]
    _decide(features)
    prediction = _prediction_drift(profile, predictions or {}, config)
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
        reference_rows=profile.rows,
        current_rows=len(current),
        counts=counts,
    )
