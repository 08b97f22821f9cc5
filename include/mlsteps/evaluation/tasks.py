"""The three tasks a model can have, and what a task decides: how the target is encoded, what the model outputs,
which metrics judge it (with their direction) and the gate's default metric.

A model's task (binary, multiclass, regression) comes from the dataset config's ``target.task``; its family (mlp,
gbdt, your own trainer) decides only how it is trained. Light on purpose: the config (which DAG files load, so they
must parse without pandas) imports the definitions; numpy and pandas are imported by the functions that use them.
The model package, the model server and the steps all read the task from here.

The model's raw output, the same for every family because every family ends in the same ONNX contract
(``ONNX_INPUTS`` in, ``onnx_output(task)`` out):

- classification: ``probabilities``, float (rows x classes), class order as in ``target.classes``;
- regression: ``prediction``, float (rows), in the target's units.

``output_frame`` turns that into the predict contract of the model package and of batch scoring:

- binary: ``probability`` (the positive class, the second of ``target.classes``) and ``prediction`` (the label,
  positive when the probability reaches ``DECISION_THRESHOLD``);
- multiclass: ``probability_<class>`` per class and ``prediction`` (the label of the most probable class);
- regression: ``prediction``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from mlsteps.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = get_args(Task)
DECISION_THRESHOLD = 0.5
# The ONNX model's inputs: standardised numeric columns (float32) and category indices (int64), from
# ``mlsteps.data.features.TabularPreprocessor.transform``.
ONNX_INPUTS = ("numeric", "categories")
PROBABILITIES = "probabilities"
PROBABILITY = "probability"
PREDICTION = "prediction"


@dataclass(frozen=True)
class Metric:
    """One holdout metric: whether more is better, and its range when it has one (so a gate threshold is checked)."""

    name: str
    higher_is_better: bool
    description: str
    bounds: tuple[float, float] | None = None


def _metrics(*metrics: Metric) -> dict[str, Metric]:
    return {metric.name: metric for metric in metrics}


_UNIT = (0.0, 1.0)
METRICS: dict[str, dict[str, Metric]] = {
    "binary": _metrics(
        Metric("roc_auc", True, "area under the ROC curve", _UNIT),
        Metric("pr_auc", True, "area under the precision-recall curve (average precision)", _UNIT),
        Metric("log_loss", False, "mean negative log-likelihood of the true class"),
        Metric("brier", False, "mean squared error of the positive-class probability", _UNIT),
        Metric("ece", False, "expected calibration error over equal-width bins", _UNIT),
        Metric("accuracy", True, f"share of rows labelled right at threshold {DECISION_THRESHOLD}", _UNIT),
        Metric("f1", True, f"F1 score of the positive class at threshold {DECISION_THRESHOLD}", _UNIT),
    ),
    "multiclass": _metrics(
        Metric("roc_auc", True, "macro average of the one-vs-rest ROC AUCs", _UNIT),
        Metric("log_loss", False, "mean negative log-likelihood of the true class"),
        Metric("accuracy", True, "share of rows whose most probable class is right", _UNIT),
        Metric("macro_f1", True, "unweighted mean of the per-class F1 scores", _UNIT),
        Metric("ece", False, "top-label expected calibration error over equal-width bins", _UNIT),
    ),
    "regression": _metrics(
        Metric("rmse", False, "root mean squared error, in the target's units"),
        Metric("mae", False, "mean absolute error, in the target's units"),
        Metric("r2", True, "coefficient of determination (1 is perfect, 0 predicts the mean)", (-math.inf, 1.0)),
    ),
}
DEFAULT_PRIMARY_METRIC: dict[str, str] = {"binary": "roc_auc", "multiclass": "roc_auc", "regression": "rmse"}
# The metrics that confidence-based performance estimation (``mlsteps.monitoring.performance.estimate``) can
# estimate from calibrated probabilities without labels; regression has none.
ESTIMABLE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "accuracy", "f1"),
    "multiclass": ("roc_auc", "accuracy", "macro_f1"),
}


def is_classification(task: str) -> bool:
    """Whether the task predicts classes (binary or multiclass)."""
    return task != "regression"


def metric(task: str, name: str) -> Metric:
    """The metric ``name`` of ``task``.

    Raises:
        ValueError: the task has no such metric (the message lists those it has).
    """
    known = METRICS[task]
    if name not in known:
        raise ValueError(f"{name!r} is not a {task} metric; choose one of {sorted(known)}")
    return known[name]


def onnx_output(task: str) -> str:
    """The name of the ONNX model's output for the task."""
    return PROBABILITIES if is_classification(task) else PREDICTION


def probability_columns(task: str, classes: Sequence[Any]) -> list[str]:
    """The probability columns of the predict contract: ``probability`` (binary), ``probability_<class>``
    (multiclass), none (regression)."""
    if task == "binary":
        return [PROBABILITY]
    if task == "multiclass":
        return [f"{PROBABILITY}_{label}" for label in classes]
    return []


def output_columns(task: str, classes: Sequence[Any]) -> list[str]:
    """Every column of the predict contract, in order."""
    return [*probability_columns(task, classes), PREDICTION]


def integer_labels(classes: Sequence[Any]) -> bool:
    """Whether every class label is an integer (a bool is not): predictions are then int64, else text, wherever a
    prediction is written (the package's output, the server's answers, the prediction log)."""
    return all(isinstance(label, numbers.Integral) and not isinstance(label, bool) for label in classes)


def label_array(classes: Sequence[Any]) -> np.ndarray:
    """The class labels as predictions carry them (``integer_labels``): int64, or text, in class order."""
    import numpy as np

    if integer_labels(classes):
        return np.array(list(classes), dtype=np.int64)
    return np.array([str(label) for label in classes], dtype=object)


def predicted_positions(task: str, probabilities: np.ndarray) -> np.ndarray:
    """Which class each row predicts (classification): the positive one when its probability reaches
    ``DECISION_THRESHOLD`` (binary), the most probable one (multiclass)."""
    if task == "binary":
        return (probabilities[:, 1] >= DECISION_THRESHOLD).astype("int64")
    return probabilities.argmax(axis=1)


def output_frame(task: str, classes: Sequence[Any], raw: np.ndarray, index: Any = None) -> pd.DataFrame:
    """The model's raw output (``onnx_output(task)``) as the predict contract's DataFrame.

    Args:
        task: the model's task.
        classes: ``target.classes`` (classification), in the order of the probability columns.
        raw: classification: probabilities (rows x classes); regression: predictions (rows, or rows x 1).
        index: the index of the input rows, kept on the output.
    """
    import numpy as np
    import pandas as pd

    values = np.asarray(raw, dtype=np.float64)
    if not is_classification(task):
        return pd.DataFrame({PREDICTION: values.reshape(-1)}, index=index)
    if task == "binary":
        columns: dict[str, Any] = {PROBABILITY: values[:, 1]}
    else:
        columns = {name: values[:, position] for position, name in enumerate(probability_columns(task, classes))}
    columns[PREDICTION] = label_array(classes)[predicted_positions(task, values)]
    return pd.DataFrame(columns, index=index)


def probabilities_of(task: str, classes: Sequence[Any], frame: pd.DataFrame) -> np.ndarray:
    """The class probabilities (rows x classes) back from a predict-contract DataFrame (classification only)."""
    import numpy as np

    if task == "binary":
        positive = frame[PROBABILITY].to_numpy(dtype=np.float64)
        return np.column_stack([1.0 - positive, positive])
    return frame[probability_columns(task, classes)].to_numpy(dtype=np.float64)


def class_positions(values: pd.Series, classes: Sequence[Any], *, match_text: bool = False) -> np.ndarray:
    """The position of each value's class in ``classes`` (int64), -1 where the value is none of them (or missing).

    Args:
        values: class labels as the data holds them.
        classes: ``target.classes``; position i is class i.
        match_text: also match a value whose text equals a class's (``"1"`` and ``1``). For labels from other
            systems: a CSV column holding one stray word is read as text, which must not make every label unknown.
    """
    import numpy as np

    codes = np.full(len(values), -1, dtype=np.int64)
    for position, label in enumerate(classes):
        codes[(values == label).to_numpy(dtype=bool, na_value=False)] = position
    if match_text:
        text, unmatched = values.astype("str"), codes < 0
        for position, label in enumerate(classes):
            codes[unmatched & (text == str(label)).to_numpy(dtype=bool, na_value=False)] = position
    return codes


def finite_numbers(values: pd.Series) -> np.ndarray:
    """A regression target as float64; what is not a finite number (missing, text, inf) becomes NaN."""
    import numpy as np
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(numbers), numbers, np.nan)


def encode_target(values: pd.Series, task: str, classes: Sequence[Any] | None, what: str) -> np.ndarray:
    """The target as the model learns it: class positions (int64) for classification, float64 for regression.

    Args:
        values: the raw target column.
        task: the model's task.
        classes: ``target.classes`` as they appear in the data (classification); position i is class i.
        what: what the data is (named in the message), e.g. ``"train split s3://.../train.parquet"``.

    Raises:
        DataError: a missing target, a class the config does not declare, or a regression target that is not a
            finite number; the message names the column, counts the rows, gives examples and the fix.
    """
    encoding = TargetEncoding(task, classes, what)
    encoded = encoding.encode(values)
    encoding.check()
    return encoded


class TargetEncoding:
    """``encode_target`` over a column read in batches: ``encode`` each batch, then ``check`` once at the end.

    The codes are those ``encode_target`` gives the whole column; ``check`` raises its error with the bad values of
    every batch counted and the first five distinct ones as examples, so reading in batches changes no message.
    """

    _EXAMPLES = 5

    def __init__(self, task: str, classes: Sequence[Any] | None, what: str) -> None:
        """Start an encoding.

        Args:
            task: the model's task.
            classes: ``target.classes`` (classification).
            what: what the data is (named in the message).
        """
        self.task, self.classes, self.what = task, list(classes or []), what
        self.name: Any = None
        self.bad = 0
        self.examples: list[Any] = []

    def encode(self, values: pd.Series) -> np.ndarray:
        """One batch's codes (-1 or NaN where a value is bad; ``check`` then raises)."""
        import numpy as np
        import pandas as pd

        self.name = values.name
        if is_classification(self.task):
            encoded = class_positions(values, self.classes)
            bad = encoded < 0
        else:
            encoded = finite_numbers(values)
            bad = np.isnan(encoded)
        if bad.any():
            self.bad += int(bad.sum())
            if len(self.examples) < self._EXAMPLES:
                seen = pd.concat([pd.Series(self.examples, dtype=object), values[bad].astype(object)])
                self.examples = seen.drop_duplicates().head(self._EXAMPLES).tolist()
        return encoded

    def check(self) -> None:
        """Raise what ``encode_target`` raises on all the batches encoded so far, if anything was bad.

        Raises:
            DataError: as ``encode_target``.
        """
        if not self.bad:
            return
        if not is_classification(self.task):
            raise DataError(
                f"{self.what}: regression target column {self.name!r} has {self.bad} value(s) that are not finite "
                f"numbers (missing, text or inf), e.g. {self.examples}. Drop or fix those rows, or declare the right "
                "target.task in the dataset config."
            )
        raise DataError(
            f"{self.what}: {self.task} target column {self.name!r} has {self.bad} value(s) outside the declared "
            f"classes {self.classes}, e.g. {self.examples}. Fix the data, or add the class to dataset.target.classes."
        )
