"""Judge a window's metric against the champion's holdout: a drop is a value beyond the band of sampling noise.

The band is ``expected ± band_sigmas · sampling_error`` (``reference``), at the window's number of rows and clipped
to the metric's range (``tasks.METRICS``). A bare threshold would fire on every small window by chance and miss a
real drop on a large one; the band widens and narrows with the window. Only the bad side counts: below the band
for a metric where higher is better, above it for one where lower is better (log loss, RMSE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mlsteps.evaluation.tasks import ESTIMABLE_METRICS
from mlsteps.evaluation.tasks import metric as metric_definition
from mlsteps.monitoring.performance.reference import PerformanceReference

Kind = Literal["realized", "estimated"]
Status = Literal["ok", "insufficient_labels", "not_estimable", "undefined"]
KINDS = ("realized", "estimated")


@dataclass(frozen=True)
class PerformanceVerdict:
    """One metric of one window judged: its value, the band it was held to, whether it dropped, and why."""

    kind: Kind
    metric: str
    status: Status
    value: float | None
    expected: float | None
    sampling_error: float | None
    lower: float | None
    upper: float | None
    rows: int
    drop: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data."""
        return asdict(self)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _band(expected: float, error: float, band_sigmas: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    low, high = expected - band_sigmas * error, expected + band_sigmas * error
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


def judge(
    kind: Kind,
    metric: str,
    value: float | None,
    rows: int,
    reference: PerformanceReference,
    task: str,
    *,
    band_sigmas: float,
    samples: int,
    min_rows: int = 1,
) -> PerformanceVerdict:
    """Judge a window's metric (realized on labels, or estimated) against the reference's band.

    Args:
        kind: ``realized`` (labelled predictions) or ``estimated`` (``estimate.estimate_metrics``).
        metric: a metric of the task (``tasks.METRICS``; estimated: ``tasks.ESTIMABLE_METRICS``).
        value: the window's metric; None where it is undefined on the window.
        rows: labelled predictions (realized) or predictions (estimated) the value is computed on.
        reference: the champion's holdout.
        task: the model's task.
        band_sigmas: the band's half-width in sampling errors.
        samples: bootstrap resamples of the sampling error.
        min_rows: fewer rows are not judged (``insufficient_labels``).

    Returns:
        The verdict: ``ok`` (judged; ``drop`` says whether the value is beyond the band's bad side),
        ``insufficient_labels`` (too few rows), ``not_estimable`` (estimated, for a metric that cannot be) or
        ``undefined`` (the value, or the reference's expectation or sampling error, is undefined). Only ``ok`` can
        be a drop.

    Raises:
        ValueError: an unknown kind, or a metric that the task does not have.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    definition = metric_definition(task, metric)
    unjudged = {"value": value, "expected": None, "sampling_error": None, "lower": None, "upper": None}
    named = f"{kind} {metric}"
    if kind == "estimated" and metric not in ESTIMABLE_METRICS.get(task, ()):
        estimable = list(ESTIMABLE_METRICS.get(task, ()))
        message = f"{named} cannot be estimated without labels for a {task} model (estimable: {estimable})"
        return PerformanceVerdict(kind, metric, "not_estimable", **unjudged, rows=rows, drop=False, message=message)
    what = "labelled predictions" if kind == "realized" else "predictions"
    if rows < min_rows:
        message = f"{named} not judged: {rows} {what}, fewer than the {min_rows} needed"
        return PerformanceVerdict(
            kind, metric, "insufficient_labels", **unjudged, rows=rows, drop=False, message=message
        )
    expected = reference.expected(metric)
    error = reference.sampling_error(metric, rows, samples) if expected is not None else None
    if value is None or not math.isfinite(value) or expected is None or error is None:
        reason = (
            f"undefined on these {rows} {what} (e.g. a class that never occurs)"
            if value is None or not math.isfinite(value)
            else f"the holdout's expectation or sampling error is undefined (expected {expected}, error {error})"
        )
        message = f"{named} not judged: {reason}"
        unjudged |= {"expected": expected, "sampling_error": error}
        return PerformanceVerdict(kind, metric, "undefined", **unjudged, rows=rows, drop=False, message=message)
    lower, upper = _band(expected, error, band_sigmas, definition.bounds)
    drop = value < lower if definition.higher_is_better else value > upper
    side, edge = ("below", lower) if definition.higher_is_better else ("above", upper)
    if drop:
        verdict = f"{side} the band's bad edge {_number(edge)}: a drop"
    else:
        verdict = f"not {side} the band's bad edge {_number(edge)}: no drop"
    message = (
        f"{named}={_number(value)} on {rows} {what} vs the holdout's {_number(expected)} ± {band_sigmas:g} × "
        f"sampling error {_number(error)} = [{_number(lower)}, {_number(upper)}] "
        f"({'higher' if definition.higher_is_better else 'lower'} is better): {verdict}"
    )
    return PerformanceVerdict(kind, metric, "ok", value, expected, error, lower, upper, rows, drop, message)
