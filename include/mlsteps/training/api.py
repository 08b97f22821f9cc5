"""The trainer interface: what a model family implements, built-in (mlp, gbdt) or your own (``module:Class``).

The train step prepares everything around a trainer: it fits the preprocessor, encodes the target for the task,
tracks the run in MLflow, exports and checks the ONNX model and logs the package. A trainer only fits a model on
ready matrices, predicts with it, and exports it to ONNX:

    class MyTrainer:
        def __init__(self, context: TrainerContext) -> None: ...
        def fit(self, train: TrainingData, validation: TrainingData) -> dict[str, float]: ...
        def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray: ...
        def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> onnx.ModelProto: ...

A trainer may also have ``save(folder)``: it writes its native model (the network file, the booster's JSON) into
that existing empty folder, which the train step logs to the MLflow run as ``native_model/``.

``predict`` returns what the task's model outputs (``mlsteps.evaluation.tasks``): class probabilities (rows x
classes, in ``context.classes`` order) or regression values (rows). ``to_onnx`` returns a model that computes the
same from either the two inputs ``numeric`` (float32) and ``categories`` (int64), or one float input (rows x
``numeric + categories`` columns, as ``TrainingData.features`` lays them out, which is what converters such as
skl2onnx and onnxmltools make). Its first output of the right kind is taken (``probabilities`` or the first
rank-2 float output for classification, the first float output for regression) and renamed to the contract's name;
the train step then checks it against ``predict`` on the validation rows and refuses it when they differ.

The train step hands over its splits as memory-mapped arrays (``numpy.memmap`` of ``.npy`` files it encoded batch
by batch, ``mlsteps.training.streaming``): they behave as ``numpy.ndarray`` does, and a trainer that reads them in
slices of ``context.batch_rows`` rows keeps its memory bounded whatever the size of the split, as the built-in
families do; ``TrainingData.features`` and ``np.asarray`` read a split whole into memory.

No torch, MLflow or Airflow here: a custom trainer imports only what it needs. ``examples/trainers/`` has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import onnx

REQUIRED_METHODS = ("fit", "predict", "to_onnx")


@dataclass(frozen=True)
class TrainingData:
    """One split as a trainer sees it: the preprocessor's matrices and the encoded target.

    Attributes:
        numeric: standardised numeric columns with nulls imputed, float32 (rows x numeric columns).
        categories: category indices, int64 (rows x categorical columns); 0 is missing or unseen, 1.. the
            training categories of each column (``TrainerContext.cardinalities``).
        target: class positions 0..classes-1 (int64) for classification; the value (float64) for regression.
    """

    numeric: np.ndarray
    categories: np.ndarray
    target: np.ndarray

    @property
    def features(self) -> np.ndarray:
        """Numeric columns, then category indices, as one float32 matrix (what tree models and converters take)."""
        return np.hstack([self.numeric, self.categories.astype(np.float32)]).astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class TrainerContext:
    """What a trainer knows of the run besides the data.

    Attributes:
        task: binary, multiclass or regression.
        classes: the target's classes (classification), in the order of the probability columns; [] for regression.
        numeric_columns: names of the columns of ``TrainingData.numeric``.
        categorical_columns: names of the columns of ``TrainingData.categories``.
        cardinalities: training categories per categorical column (indices run 0..cardinality).
        seed: the run's seed; the same seed and data should give the same model.
        device: ``cuda`` or ``cpu``, what the train step chose from ``training.device``.
        params: the family's settings: ``training.gbdt`` for gbdt, ``training.params`` for your own trainer.
        work_dir: a local folder for the trainer's scratch files, removed after the step.
        log_metrics: records metrics on the MLflow run, e.g. per round: ``log_metrics({"val_loss": 0.3}, step=5)``.
        checkpoint_dir: a folder (path or URI) kept across retries of this run, for a family that resumes from
            checkpoints (mlp does).
        resume_key: what identifies this run's inputs (``run_root``, ``snapshot_id``, ``preprocessor``): a resumed
            checkpoint must carry the same, or two different models would mix.
        batch_rows: rows to hold in memory at a time (``processing.batch_rows``), for a trainer that reads its
            splits in blocks rather than whole.
    """

    task: str
    classes: Sequence[Any]
    numeric_columns: Sequence[str]
    categorical_columns: Sequence[str]
    cardinalities: Sequence[int]
    seed: int
    device: str
    params: dict[str, Any] = field(default_factory=dict)
    work_dir: str = ""
    log_metrics: Callable[..., None] = lambda metrics, step=None: None
    checkpoint_dir: str = ""
    resume_key: dict[str, Any] = field(default_factory=dict)
    batch_rows: int = 100_000

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.classes)


@runtime_checkable
class TabularTrainer(Protocol):
    """A model family. Constructed with a ``TrainerContext``; the methods are called in order fit, predict,
    to_onnx, each once per run."""

    def fit(self, train: TrainingData, validation: TrainingData) -> dict[str, float]:
        """Fit on ``train``, early-stopping or tuning on ``validation``; return validation metrics to record."""
        ...

    def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Class probabilities (rows x classes) or regression values (rows) of the fitted model."""
        ...

    def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> onnx.ModelProto:
        """The fitted model as ONNX; ``numeric`` and ``categories`` are example rows (e.g. for tracing)."""
        ...
