"""The predict contract every model package keeps, checked where predictions are used (evaluate, score).

A model's ``predict`` takes raw feature rows and returns a DataFrame with ``probability`` (positive class, in
[0, 1]) and ``prediction`` (0/1), one row per input row; ``mlsteps.model.TabularClassifier`` is the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsteps.errors import StepError

PROBABILITY = "probability"
PREDICTION = "prediction"


def check_predictions(output: Any, rows: int, model_uri: str) -> pd.DataFrame:
    """The model's output for ``rows`` input rows, checked against the predict contract.

    Raises:
        StepError: the output is not a DataFrame with ``probability`` and ``prediction`` for every row, or a
            probability is NaN or outside [0, 1].
    """
    columns = list(output.columns) if isinstance(output, pd.DataFrame) else None
    if columns is None or not {PROBABILITY, PREDICTION} <= set(columns):
        raise StepError(
            f"model {model_uri} returned {type(output).__name__} (columns {columns}): its predict must return a "
            f"DataFrame with {PROBABILITY!r} and {PREDICTION!r} columns; re-train with the current model wrapper"
        )
    probability = output[PROBABILITY].to_numpy(dtype=float)
    invalid = ~np.isfinite(probability) | (probability < 0) | (probability > 1)
    if len(output) != rows or invalid.any():
        raise StepError(
            f"model {model_uri} returned {len(output)} rows for {rows} input rows, {int(invalid.sum())} of them "
            "with a probability that is NaN or outside [0, 1]: fix the model's predict"
        )
    return output.reset_index(drop=True)
