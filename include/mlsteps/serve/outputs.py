"""What the server answers for each task: the v2 output tensors, the MLflow-format columns and the logged columns.

Every value comes from the ONNX model's raw output (``mlsteps.model.predict_raw``) and follows the predict contract
of ``mlsteps.evaluation.tasks`` (the model package's and batch scoring's), with numpy only so that a one-row request
costs microseconds:

- binary: ``probability`` (FP64, the positive class) and ``prediction`` (the label, positive from
  ``DECISION_THRESHOLD``);
- multiclass: ``probabilities`` (FP64, rows x classes in ``classes`` order) and ``prediction`` (the most probable
  label); the MLflow format and the prediction log carry one ``probability_<class>`` column per class instead;
- regression: ``prediction`` (FP64).

A ``prediction`` label is INT64 when every class label is an integer, else BYTES (the label as text).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsteps.evaluation.tasks import (
    PREDICTION,
    PROBABILITIES,
    PROBABILITY,
    integer_labels,
    label_array,
    predicted_positions,
    probability_columns,
)

# Little-endian layouts of the fixed-size output datatypes in the binary tensor data extension.
_LAYOUTS = {"FP64": "<f8", "INT64": "<i8"}


@dataclass(frozen=True)
class OutputTensor:
    """One v2 output: its name, datatype and values per row (None: shape [rows]; k: shape [rows, k])."""

    name: str
    datatype: str
    width: int | None = None

    def shape(self, rows: int) -> list[int]:
        """The tensor's shape for ``rows`` rows (-1 for any number of rows, as metadata writes it)."""
        return [rows] if self.width is None else [rows, self.width]

    def metadata(self) -> dict[str, Any]:
        """The tensor as ``GET /v2/models/{name}`` lists it."""
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape(-1)}

    def as_json(self, values: np.ndarray) -> list[Any]:
        """The values as the JSON ``data`` of the tensor (flat, row-major, as Triton answers)."""
        return values.reshape(-1).tolist()

    def as_bytes(self, values: np.ndarray) -> bytes:
        """The values in the binary tensor data extension (BYTES: a 4-byte little-endian length before each)."""
        if self.datatype == "BYTES":
            encoded = [str(value).encode() for value in values.reshape(-1).tolist()]
            return b"".join(struct.pack("<I", len(value)) + value for value in encoded)
        return values.astype(_LAYOUTS[self.datatype], copy=False).tobytes()


class TaskOutputs:
    """The outputs of one loaded model, from its task and class labels; built once per model."""

    def __init__(self, task: str, classes: Sequence[Any]) -> None:
        """Decide the tensors and the label type.

        Args:
            task: binary, multiclass or regression.
            classes: the class labels in the order of the model's probability columns (classification).
        """
        self.task = task
        self.classes = list(classes)
        label_type = "INT64" if integer_labels(self.classes) else "BYTES"
        self.labels = label_array(self.classes)
        if task == "binary":
            tensors = (OutputTensor(PROBABILITY, "FP64"), OutputTensor(PREDICTION, label_type))
        elif task == "multiclass":
            tensors = (OutputTensor(PROBABILITIES, "FP64", len(self.classes)), OutputTensor(PREDICTION, label_type))
        else:
            tensors = (OutputTensor(PREDICTION, "FP64"),)
        self.tensors: dict[str, OutputTensor] = {tensor.name: tensor for tensor in tensors}
        self.names = tuple(self.tensors)
        self._probability_columns = probability_columns(task, self.classes)

    @property
    def scored(self) -> str:
        """The output that carries the model's numbers: named when they are not finite, compared by smoke tests."""
        return self.names[0]

    def tensor_values(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The v2 outputs' values from the raw output (probabilities rows x classes, or predictions rows)."""
        if self.task == "binary":
            return {PROBABILITY: raw[:, 1], PREDICTION: self.labels[predicted_positions(self.task, raw)]}
        if self.task == "multiclass":
            return {PROBABILITIES: raw, PREDICTION: self.labels[predicted_positions(self.task, raw)]}
        return {PREDICTION: raw}

    def column_values(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The predict contract's columns (``tasks.output_columns`` order), for the MLflow format and the log."""
        values = self.tensor_values(raw)
        if self.task != "multiclass":
            return values
        probabilities = values.pop(PROBABILITIES)
        return {**dict(zip(self._probability_columns, probabilities.T, strict=True)), PREDICTION: values[PREDICTION]}

    def non_finite_rows(self, raw: np.ndarray) -> np.ndarray:
        """The positions of rows with an output that is not a finite number."""
        return np.flatnonzero(~np.isfinite(raw.reshape(len(raw), -1)).all(axis=1))

    def metadata(self) -> list[dict[str, Any]]:
        """The outputs as ``GET /v2/models/{name}`` lists them."""
        return [tensor.metadata() for tensor in self.tensors.values()]

    def parameters(self) -> dict[str, Any]:
        """The task and the class labels, for the model metadata's ``parameters``."""
        return {"task": self.task, "classes": self.classes}
