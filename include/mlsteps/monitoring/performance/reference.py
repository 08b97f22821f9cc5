"""The champion's holdout as the yardstick of its production performance: expected value and sampling error.

A production window's metric differs from the holdout's even when nothing changed, the more so the fewer rows it
has. The holdout's labels and raw outputs answer both questions a judge needs: what the metric should be (the
metric on the whole holdout) and how far a window of ``rows`` rows may stray by chance (the standard deviation of
the metric over bootstrap resamples of that size). Metrics are ``evaluation.metrics.metric_value``, the code that
evaluate's ``task_metrics`` uses, so the monitor and the gate measure alike. A resample is kept as how often it
drew each holdout row, and the estimable metrics (``tasks.ESTIMABLE_METRICS``) are computed from those counts for all
resamples at once, to rounding what ``metric_value`` gives on the rows drawn: the cost grows with the holdout, not the
window, beyond drawing the rows.

The sampling error of a metric at ``n`` rows scales as ``1 / sqrt(n)`` (the central limit theorem; NannyML's CBPE
scales its reference's chunk spread the same way): it is bootstrapped once at ``UNIT_ROWS`` rows and scaled to each
window's size. ``with_sampling_errors`` does that for every metric of the task when evaluate writes the reference,
so a monitor check never bootstraps.

Stored as one ``.npz`` file (arrays bit-exact, loaded without pickle); a JSON document inside (``meta``) holds the
task, the classes and the sampling errors at ``UNIT_ROWS`` rows.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsteps.data import storage
from mlsteps.errors import DataError
from mlsteps.evaluation.metrics import checked_output, metric_value
from mlsteps.evaluation.tasks import ESTIMABLE_METRICS, METRICS, predicted_positions
from mlsteps.evaluation.tasks import metric as metric_definition
from mlsteps.monitoring.performance.estimate import ranked_roc_area

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has no stored sampling errors: they are bootstrapped when asked for
MAX_ROWS = 50_000
UNIT_ROWS = 1_000  # the window size the sampling errors are bootstrapped at, then scaled by sqrt(UNIT_ROWS / rows)
DEFAULT_SAMPLES = 200


@dataclass(frozen=True, eq=False)
class PerformanceReference:
    """The labels and raw outputs of the champion's holdout (or a uniform subsample of it)."""

    task: str
    classes: list[Any]
    y_true: np.ndarray  # encoded: class positions (int64) or numbers (float64)
    output: np.ndarray  # raw model output: probabilities (rows x classes) or values (rows)
    # Sampling errors at UNIT_ROWS rows by metric, bootstrapped with this many resamples (seed 0) when written.
    unit_errors: dict[str, float | None] = field(default_factory=dict)
    unit_samples: int = DEFAULT_SAMPLES
    # sampling_error's results by (metric, rows, samples, seed): the bootstrap is the costly part of a check; the
    # resamples' draw counts of the last (rows, samples, seed), shared by the metrics of a window; expected's results.
    _sampling_errors: dict[tuple[str, int, int, int], float | None] = field(
        default_factory=dict, init=False, repr=False
    )
    _counts: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _expected: dict[str, float | None] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_holdout(
        cls, task: str, classes: Sequence[Any], y_true: Any, output: Any, max_rows: int = MAX_ROWS, seed: int = 0
    ) -> PerformanceReference:
        """The reference of a holdout; above ``max_rows`` rows a uniform subsample (seeded) of that many.

        Raises:
            ValueError: no rows, labels and output differ in length, or the output does not fit the task.
        """
        truth, values = checked_output(task, classes, y_true, output)
        if truth.size > max_rows:
            keep = np.sort(np.random.default_rng(seed).choice(truth.size, max_rows, replace=False))
            truth, values = truth[keep], values[keep]
        return cls(task, list(classes), truth, values)

    @property
    def rows(self) -> int:
        """Rows in the reference."""
        return int(self.y_true.size)

    def expected(self, metric: str) -> float | None:
        """The metric on the whole reference; None where it is undefined there (e.g. ROC AUC of one class).
        Remembered per metric.

        Raises:
            ValueError: ``metric`` is not a metric of the task.
        """
        if metric not in self._expected:
            self._expected[metric] = metric_value(self.task, self.classes, metric, self.y_true, self.output)
        return self._expected[metric]

    def sampling_error(self, metric: str, rows: int, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> float | None:
        """The standard deviation of the metric over windows of ``rows`` rows: its bootstrap spread at ``UNIT_ROWS``
        rows (``samples`` resamples), scaled by ``sqrt(UNIT_ROWS / rows)``. Stored when the reference was written
        with as many resamples and seed 0; else bootstrapped here once and remembered.

        Returns:
            The sampling error, or None when fewer than two resamples define the metric.

        Raises:
            ValueError: ``metric`` is not a metric of the task, or ``rows`` or ``samples`` is not positive.
        """
        if rows < 1 or samples < 1:
            raise ValueError(f"rows and samples must be positive, got rows={rows}, samples={samples}")
        metric_definition(self.task, metric)  # an unknown metric raises here, naming the task's metrics
        if metric in self.unit_errors and (samples, seed) == (self.unit_samples, 0):
            unit = self.unit_errors[metric]
        else:
            unit = self._bootstrapped_error(metric, samples, seed)
        return None if unit is None else unit * float(np.sqrt(UNIT_ROWS / rows))

    def with_sampling_errors(self, samples: int = DEFAULT_SAMPLES) -> PerformanceReference:
        """This reference with every metric's sampling error at ``UNIT_ROWS`` rows computed, to be stored by
        ``save``: evaluate pays the bootstrap once, no monitor check does."""
        errors = {name: self._bootstrapped_error(name, samples, 0) for name in METRICS[self.task]}
        return PerformanceReference(self.task, self.classes, self.y_true, self.output, errors, samples)

    def _bootstrapped_error(self, metric: str, samples: int, seed: int) -> float | None:
        """The metric's standard deviation over ``samples`` bootstrap resamples of ``UNIT_ROWS`` rows (with
        replacement; resamples where it is undefined, e.g. a missing class, are left out)."""
        key = (metric, UNIT_ROWS, samples, seed)
        if key not in self._sampling_errors:
            counts = self._draws(UNIT_ROWS, samples, seed)
            weighted = _weighted_metric(self.task, self.classes, metric, self.y_true, self.output)
            if weighted is None:
                rows_of = np.arange(self.rows)
                values = np.array(
                    [
                        metric_value(self.task, self.classes, metric, self.y_true[picks], self.output[picks])
                        for picks in (np.repeat(rows_of, drawn) for drawn in counts)
                    ],
                    dtype=np.float64,  # None (undefined) becomes NaN
                )
            else:
                values = weighted(counts)
            defined = values[np.isfinite(values)]
            self._sampling_errors[key] = float(np.std(defined, ddof=1)) if defined.size > 1 else None
        return self._sampling_errors[key]

    def _draws(self, rows: int, samples: int, seed: int) -> np.ndarray:
        """How often each resample draws each reference row (samples x reference rows): the resamples of ``rows``
        rows that a seeded generator draws one after the other. The last ones are kept, as each metric of a window
        is judged on the same resamples and drawing them is the costly part at large windows."""
        key = (rows, samples, seed)
        if key not in self._counts:
            rng = np.random.default_rng(seed)
            counts = np.empty((samples, self.rows), dtype=np.int32)  # a row is drawn fewer than 2**31 times
            for drawn in counts:
                drawn[:] = np.bincount(rng.integers(0, self.rows, rows), minlength=self.rows)
            self._counts.clear()
            self._counts[key] = counts
        return self._counts[key]

    def save(self, path: str | Path) -> None:
        """Write the reference as one compressed ``.npz`` file (local path or ``s3://`` URI)."""
        meta = {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": list(self.classes),
            "unit_rows": UNIT_ROWS,
            "unit_samples": self.unit_samples,
            "unit_errors": self.unit_errors,
        }
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), y_true=self.y_true, output=self.output)
        storage.write_bytes(str(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> PerformanceReference:
        """Read a reference written by ``save``.

        Raises:
            DataError: no file there, or it is not a reference of this format version.
        """
        uri = str(path)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise DataError(f"no performance reference at {uri}: evaluate writes it from the holdout") from None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                y_true, output = npz["y_true"], npz["output"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{uri} is not a performance reference (.npz written by save): {exc}") from None
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise DataError(
                f"{uri}: performance reference format_version {meta.get('format_version')!r}, this code reads "
                f"{list(READABLE_VERSIONS)}: evaluate the model again to rewrite it"
            )
        stored = meta.get("unit_errors", {}) if meta.get("unit_rows") == UNIT_ROWS else {}
        return cls(meta["task"], meta["classes"], y_true, output, stored, meta.get("unit_samples", DEFAULT_SAMPLES))


def _weighted_metric(
    task: str, classes: Sequence[Any], metric: str, y_true: np.ndarray, output: np.ndarray
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The metric of every resample at once, from how often each drew each reference row (resamples x reference
    rows), as ``metric_value`` computes it on the rows drawn (to rounding), NaN where it is undefined; in time linear
    in the reference's rows, not the resample's. None for a metric without that form here (its resamples are then
    computed row by row).

    Each of these metrics is a sum over rows, or over rows ranked by score: what does not depend on the draws (the
    predicted classes, the rankings) is computed here, once.
    """
    if metric not in ESTIMABLE_METRICS.get(task, ()):
        return None
    truth, values = checked_output(task, classes, y_true, output)
    if metric == "roc_auc":
        columns = [1] if task == "binary" else range(len(classes))
        orders = [(k, np.argsort(values[:, k])[::-1]) for k in columns]  # the order within a tie is free
        return functools.partial(
            _resampled_roc_auc, [(order, values[order, k], truth[order] == k) for k, order in orders]
        )
    predicted = predicted_positions(task, values)
    if metric == "accuracy":
        right = (predicted == truth).astype(np.float64)
        return lambda counts: counts @ right / counts.sum(axis=1)
    labelled, chosen = np.eye(len(classes))[truth], np.eye(len(classes))[predicted]
    return functools.partial(_resampled_f1, task, np.hstack([labelled, chosen, labelled * chosen]))


def _resampled_roc_auc(rankings: list[tuple[np.ndarray, np.ndarray, np.ndarray]], counts: np.ndarray) -> np.ndarray:
    """ROC AUC (binary; multiclass: the mean one-vs-rest) of each resample; NaN where it lacks a class.

    ``rankings``: per class scored, the rows by descending score, their scores and whether their label is the class.
    """
    areas = []
    for order, score, positive in rankings:
        drawn = counts[:, order]
        areas.append(ranked_roc_area(score, np.where(positive, drawn, 0), np.where(positive, 0, drawn)))
    return np.mean(areas, axis=0)


def _resampled_f1(task: str, classes_of_rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """F1 of the positive class (binary; NaN when no drawn row is positive or predicted so) or macro F1 of each
    resample: per class 2 · true positives / (rows labelled it + rows predicted it), averaged over the classes that
    occur as either, as scikit-learn's ``f1_score`` does.

    ``classes_of_rows``: one-hot label, one-hot prediction and one-hot true positive of each reference row.
    """
    labelled, chosen, true_positive = np.split(counts @ classes_of_rows, 3, axis=1)
    with np.errstate(invalid="ignore"):
        f1 = 2 * true_positive / (labelled + chosen)  # NaN for a class that no drawn row has or was predicted
    return f1[:, 1] if task == "binary" else np.nanmean(f1, axis=1)
