"""The calibration of a classifier's probabilities, fitted at training time on the validation split.

Performance estimation (``estimate``) reads a calibrated probability as the chance that the row belongs to the
class, so the model's own probabilities must first be mapped to observed rates. The map is isotonic regression
(monotone, so it keeps the model's ranking), as NannyML's CBPE fits it: binary, one map of the positive-class
probability; multiclass, one one-vs-rest map per class, after which each row is renormalised to sum to 1.

Fitting needs scikit-learn; applying needs only numpy (``np.interp``'s values between the stored breakpoints, found
through a lookup table in time linear in the rows), so the calibrator travels in the model package as a small JSON
document (``Calibrator.to_dict``) and runs anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import is_classification

FORMAT_VERSION = 1
# Most breakpoints kept per map. Isotonic regression has one step per block of equal outcomes, up to one per
# validation row; evenly thinned steps change a calibrated probability by far less than its sampling noise and
# keep the JSON small (1000 points: about 40 kB per map).
MAX_POINTS = 1000
# Cells of the lookup table over [0, 1] that applies a map: np.interp bisects the breakpoints for each value (40 ms
# per million rows), a cell gives the linear piece at once (about 8 ms); 2**13 cells keep a map's table (3 x 64 kB)
# in cache and leave 1-3% of the rows in cells that a breakpoint splits (the benchmark's models).
CELLS = 2**13
CHUNK = 2**14  # rows calibrated at a time


@dataclass(frozen=True)
class IsotonicMap:
    """A monotone map from a predicted probability to the observed rate: linear between breakpoints ``x`` (sorted)
    and their rates ``y``, flat beyond the first and last (isotonic regression's ``out_of_bounds="clip"``)."""

    x: list[float]
    y: list[float]

    def __call__(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The calibrated values: ``np.interp(values, x, y)`` to rounding (bit for bit on x86-64). Each value's cell
        gives its linear piece, computed as np.interp computes it (``slope * (value - anchor) + base``); values in a
        cell that a breakpoint splits (their piece's slope is NaN there), and NaN values, go to np.interp itself.
        ``out``: where to write them (a float64 array of the values' shape), as numpy's ``out``."""
        values = np.asarray(values, dtype=np.float64)
        anchor, slope, base = self._cells
        buffer = values * CELLS  # reused below
        np.clip(buffer, 0, CELLS - 1, out=buffer)
        # A NaN value gets any cell (take clips the index) and gives NaN; an infinite one lands in an end cell, flat
        # (infinity times a slope of 0 is NaN) or split: np.interp computes all these.
        with np.errstate(invalid="ignore"):
            cell = buffer.astype(np.intp)
            calibrated = np.subtract(values, np.take(anchor, cell, out=buffer, mode="clip"), out=out)
            calibrated *= np.take(slope, cell, out=buffer, mode="clip")
            calibrated += np.take(base, cell, out=buffer, mode="clip")
        split = np.flatnonzero(np.isnan(calibrated))
        calibrated[split] = np.interp(values[split], self.x, self.y)
        return calibrated

    @functools.cached_property
    def _cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The linear piece of each cell: anchor, slope and base, NaN slope where a breakpoint splits the cell. The
        first and last cells reach to -inf and +inf (the flat ends), as ``__call__`` clips values into them."""
        x, y = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
        edges = np.arange(CELLS + 1) / CELLS
        edges[0], edges[-1] = -np.inf, np.inf
        # Piece p lies between breakpoints p - 1 and p: 0 is the flat start, len(x) the flat end.
        piece = np.searchsorted(x, edges[:-1], side="right")
        with np.errstate(divide="ignore", invalid="ignore"):  # a repeated breakpoint: its piece is never looked up
            slopes = np.concatenate([[0.0], np.diff(y) / np.diff(x), [0.0]])
        slope = slopes[piece]
        slope[piece != np.searchsorted(x, edges[1:], side="left")] = np.nan
        return np.concatenate([x[:1], x])[piece], slope, np.concatenate([y[:1], y])[piece]


@dataclass(frozen=True)
class Calibrator:
    """A classifier's probability calibration: one map (binary, of the positive class) or one per class."""

    task: str
    classes: list[Any]
    maps: list[IsotonicMap]

    def apply(self, probabilities: Any) -> np.ndarray:
        """Calibrated probabilities (rows x classes) from the model's (rows x classes; binary [negative, positive]).

        Multiclass rows are renormalised after the per-class maps; a row that every map sends to 0 keeps the
        model's probabilities (nothing else says how to share it).

        Raises:
            ValueError: the probabilities are not rows x one column per class.
        """
        values = np.asarray(probabilities, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.classes):
            raise ValueError(
                f"a {self.task} calibrator of classes {self.classes} needs probabilities of rows x "
                f"{len(self.classes)}; got {values.shape}"
            )
        # Column by column (Fortran order): each class's values are contiguous, and so are the sums over rows. In
        # chunks of rows: a chunk's temporaries stay in cache, where those of a million rows would cost memory
        # traffic and page faults (a third of the time).
        calibrated = np.empty(values.shape, order="F")
        for start in range(0, values.shape[0], CHUNK):
            self._apply(values[start : start + CHUNK], calibrated[start : start + CHUNK])
        return calibrated

    def _apply(self, values: np.ndarray, calibrated: np.ndarray) -> None:
        """``apply`` on some rows, into ``calibrated``."""
        if self.task == "binary":
            self.maps[0](values[:, 1], out=calibrated[:, 1])
            np.subtract(1.0, calibrated[:, 1], out=calibrated[:, 0])
            return
        for k, calibrate in enumerate(self.maps):
            calibrate(values[:, k], out=calibrated[:, k])
        total = calibrated.sum(axis=1)
        unmapped = np.flatnonzero(total <= 0)
        total[unmapped] = 1.0
        calibrated /= total[:, None]
        calibrated[unmapped] = values[unmapped] / values[unmapped].sum(axis=1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        """The calibrator as JSON-ready data (``from_dict`` reads it back)."""
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": list(self.classes),
            "maps": [{"x": list(m.x), "y": list(m.y)} for m in self.maps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """The calibrator that ``to_dict`` wrote.

        Raises:
            DataError: the document is not a calibrator of this format (the message says what is wrong).
        """
        try:
            task, classes, maps = data["task"], list(data["classes"]), data["maps"]
            version = data.get("format_version")
            calibrator = cls(task, classes, [IsotonicMap([*map(float, m["x"])], [*map(float, m["y"])]) for m in maps])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a calibrator (Calibrator.to_dict): {exc!r}; retrain the model to refit it") from None
        problems = []
        if version != FORMAT_VERSION:
            problems.append(f"format_version {version!r}, this code reads {FORMAT_VERSION}")
        if task not in ("binary", "multiclass"):
            problems.append(f"task {task!r} has no calibrator")
        elif len(maps) != (expected := 1 if task == "binary" else len(classes)):
            problems.append(f"{len(maps)} map(s) where a {task} calibrator has {expected}")
        problems += [
            f"map {k} has {len(m.x)} x and {len(m.y)} y values, or its x are not sorted"
            for k, m in enumerate(calibrator.maps)
            if not m.x or len(m.x) != len(m.y) or np.any(np.diff(m.x) < 0)
        ]
        if problems:
            raise DataError(f"calibrator: {'; '.join(problems)}; retrain the model to refit it")
        return calibrator


def _fit_map(score: np.ndarray, outcome: np.ndarray, max_points: int) -> IsotonicMap:
    """Isotonic regression of the outcome (0/1) on the score, its breakpoints thinned evenly to ``max_points``."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score, outcome.astype(np.float64))
    # The fitted breakpoints: sklearn keeps only the ends of each constant block, so interpolating them is the fit.
    x, y = model.X_thresholds_, model.y_thresholds_
    if x.size > max_points:
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return IsotonicMap([float(v) for v in x], [float(v) for v in y])


def fit_calibrator(
    task: str, classes: Sequence[Any], y_true: Any, probabilities: Any, max_points: int = MAX_POINTS
) -> Calibrator:
    """Fit the calibration of a classifier's probabilities on labelled rows it did not train on (validation).

    Args:
        task: binary or multiclass.
        classes: ``target.classes``, in the order of the probability columns.
        y_true: class positions (``tasks.encode_target``), int64.
        probabilities: the model's output, rows x classes (binary [negative, positive]), as the ONNX model gives it.
        max_points: most breakpoints kept per map.

    Returns:
        The calibrator; ``to_dict`` gives the JSON stored in the model package.

    Raises:
        ValueError: a regression task (it has no probabilities), or labels and probabilities that do not fit.
    """
    from mlsteps.evaluation.metrics import checked_output

    if not is_classification(task):
        raise ValueError(f"a {task} model has no probabilities to calibrate: fit a calibrator for classification only")
    truth, values = checked_output(task, classes, y_true, probabilities)
    columns = [1] if task == "binary" else range(len(classes))
    return Calibrator(task, list(classes), [_fit_map(values[:, k], truth == k, max_points) for k in columns])
