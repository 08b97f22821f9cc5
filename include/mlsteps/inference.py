"""Running the exported model: its task, an ONNX Runtime session, and raw rows in, the task's outputs out.

Light on purpose (numpy, pandas, onnxruntime; no MLflow): the model package (``mlsteps.model``), the model server,
the serving bundle and the train step's export check all run the ONNX model through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.data.features import TabularPreprocessor
from mlsteps.evaluation.tasks import ONNX_INPUTS, is_classification, onnx_output, output_frame


@dataclass(frozen=True)
class TaskInfo:
    """What the model predicts and how it was made: read by evaluation, the server and monitoring."""

    task: str
    classes: list[Any]
    target: str
    family: str
    export_check: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TaskInfo:
        """Restore what ``asdict`` wrote."""
        return cls(**payload)


def onnx_session(model: str | Path | bytes, intra_op_threads: int = 0) -> Any:
    """An ONNX Runtime session on CPU; ``intra_op_threads`` 0 lets ONNX Runtime choose."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict_raw(session: Any, numeric: np.ndarray, categories: np.ndarray, task: str) -> np.ndarray:
    """The ONNX model's output as float64: probabilities (rows x classes) or predictions (rows)."""
    (raw,) = session.run([onnx_output(task)], dict(zip(ONNX_INPUTS, (numeric, categories), strict=True)))
    values = np.asarray(raw, dtype=np.float64)
    return values if is_classification(task) else values.reshape(-1)


def predict_frame(preprocessor: TabularPreprocessor, session: Any, info: TaskInfo, frame: pd.DataFrame) -> pd.DataFrame:
    """Raw feature rows in, the task's predict contract out (one row per input row, same index)."""
    numeric, categories = preprocessor.transform(frame)
    return output_frame(info.task, info.classes, predict_raw(session, numeric, categories, info.task), frame.index)
