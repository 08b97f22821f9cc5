"""A worked example of your own trainer: scikit-learn's gradient boosting, for binary, multiclass and regression.

Select it in the pipeline config (the repository root must be on the Python path; the train image needs this
folder copied in, with scikit-learn and skl2onnx)::

    training:
      model: examples.trainers.sklearn_gbt:GradientBoostingTrainer
      params: {n_estimators: 300, learning_rate: 0.05, max_depth: 3}   # any GradientBoosting* parameter

A trainer is constructed with a ``TrainerContext`` (task, classes, seed, ``training.params``) and does three
things; the train step does everything else (preprocessing, MLflow, checking the export against ``predict`` on the
validation rows, registering):

- ``fit(train, validation)``: fit, here choosing the number of trees by the validation loss;
- ``predict(numeric, categories)``: class probabilities (rows x classes, in ``context.classes`` order) or values;
- ``to_onnx(numeric, categories)``: the same model as ONNX, here skl2onnx's export with one float input laid out
  as ``TrainingData.features`` (numeric columns, then category indices), which the train step adapts.

Why GradientBoosting and not the faster HistGradientBoosting: skl2onnx 1.20 cannot export HistGradientBoosting*
with onnx 1.23 (the tree attributes it builds mix booleans into an integer list, which onnx.helper refuses).
"""

from __future__ import annotations

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.metrics import log_loss, mean_squared_error

from mlsteps.training.api import TrainerContext, TrainingData

DEFAULTS = {"n_estimators": 200, "learning_rate": 0.1, "max_depth": 3}


class GradientBoostingTrainer:
    """Gradient-boosted trees whose number of trees is the one with the lowest validation loss."""

    def __init__(self, context: TrainerContext) -> None:
        self.context = context
        self.classification = context.task != "regression"
        self.params = {**DEFAULTS, **context.params, "random_state": context.seed}
        self.model: GradientBoostingClassifier | GradientBoostingRegressor | None = None

    def fit(self, train: TrainingData, validation: TrainingData) -> dict[str, float]:
        """Fit ``n_estimators`` trees, find the count with the lowest validation loss, refit with that many."""
        self.model = self._estimator(self.params["n_estimators"]).fit(train.features, train.target)
        # Staged predictions add one tree at a time: the validation loss after each tree.
        if self.classification:
            labels = list(range(self.context.num_classes))
            staged = self.model.staged_predict_proba(validation.features)
            losses = [log_loss(validation.target, probabilities, labels=labels) for probabilities in staged]
        else:
            staged = self.model.staged_predict(validation.features)
            losses = [mean_squared_error(validation.target, values) for values in staged]
        for tree, loss in enumerate(losses):
            self.context.log_metrics({"val_loss": loss}, step=tree)
        trees = int(np.argmin(losses)) + 1
        self.model = self._estimator(trees).fit(train.features, train.target)
        return {"trees": float(trees), "val_loss": float(losses[trees - 1])}

    def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Probabilities (rows x classes; binary has two columns) or regression values (rows)."""
        features = TrainingData(numeric, categories, target=np.empty(0)).features
        return self.model.predict_proba(features) if self.classification else self.model.predict(features)

    def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> onnx.ModelProto:
        """skl2onnx's export; ``zipmap=False`` makes the probabilities a rows x classes tensor, not a list of maps."""
        features = [("features", FloatTensorType([None, numeric.shape[1] + categories.shape[1]]))]
        options = {"zipmap": False} if self.classification else None
        return convert_sklearn(self.model, initial_types=features, options=options)

    def _estimator(self, trees: int) -> GradientBoostingClassifier | GradientBoostingRegressor:
        estimator = GradientBoostingClassifier if self.classification else GradientBoostingRegressor
        return estimator(**{**self.params, "n_estimators": trees})
