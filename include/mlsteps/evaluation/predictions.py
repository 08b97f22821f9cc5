"""The predict contract every model package keeps, checked where predictions are used (evaluate, score).

A model's ``predict`` takes raw feature rows and returns one row per input row with the columns of
``tasks.output_columns(task, classes)``: binary ``probability`` (positive class) and ``prediction`` (the label);
multiclass ``probability_<class>`` per class and ``prediction``; regression ``prediction`` (a number).
``mlsteps.model`` is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.errors import StepError
from mlsteps.evaluation.tasks import PREDICTION, is_classification, output_columns, probability_columns

# ONNX models compute in float32: a row of class probabilities sums to 1 only up to its rounding.
PROBABILITY_SUM_TOLERANCE = 1e-4


def _problems(output: pd.DataFrame, task: str, classes: Sequence[Any]) -> list[str]:
    """What breaks the contract in an output that has the right columns and rows (empty when nothing)."""
    if not is_classification(task):
        prediction = pd.to_numeric(output[PREDICTION], errors="coerce").to_numpy(dtype=float)
        bad = int((~np.isfinite(prediction)).sum())
        return [f"{bad} prediction(s) that are not finite numbers"] if bad else []
    columns = probability_columns(task, classes)
    probabilities = output[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    problems = []
    invalid = (~np.isfinite(probabilities) | (probabilities < 0) | (probabilities > 1)).any(axis=1)
    if invalid.any():
        problems.append(f"{int(invalid.sum())} row(s) with a probability that is NaN or outside [0, 1]")
    if task == "multiclass":
        off = np.abs(probabilities.sum(axis=1) - 1.0) > PROBABILITY_SUM_TOLERANCE
        if off.any():
            problems.append(
                f"{int(off.sum())} row(s) whose probabilities do not sum to 1 (within {PROBABILITY_SUM_TOLERANCE})"
            )
    return problems


def check_predictions(output: Any, rows: int, model_uri: str, task: str, classes: Sequence[Any] | None) -> pd.DataFrame:
    """The model's output for ``rows`` input rows, checked against the predict contract of its task.

    Args:
        output: what the model's ``predict`` returned.
        rows: how many feature rows it was given.
        model_uri: named in the message.
        task: the model's task (binary, multiclass, regression).
        classes: ``target.classes`` (classification; None for regression).

    Returns:
        The output with a fresh 0..rows-1 index.

    Raises:
        StepError: the output is not a DataFrame with the task's columns for every row, a probability is NaN or
            outside [0, 1], a multiclass row does not sum to 1, or a regression prediction is not finite.
    """
    expected = output_columns(task, classes or [])
    columns = list(output.columns) if isinstance(output, pd.DataFrame) else None
    if columns is None or not set(expected) <= set(columns):
        raise StepError(
            f"model {model_uri} returned {type(output).__name__} (columns {columns}): the predict of a {task} model "
            f"must return a DataFrame with columns {expected}; re-train with the current model package, or check "
            "that dataset.target (task, classes) is the one the model was trained for"
        )
    problems = [] if len(output) == rows else [f"{len(output)} rows for {rows} input rows"]
    problems += _problems(output, task, classes or [])
    if problems:
        raise StepError(f"model {model_uri} returned {'; '.join(problems)}: fix the model's predict")
    return output.reset_index(drop=True)
