"""The gbdt family: gradient-boosted trees with XGBoost, for binary, multiclass and regression targets.

Trees take the preprocessor's matrices as one float matrix (``TrainingData.features``: numeric columns, then the
category indices), grow with the ``hist`` method on the device the train step chose (``cuda`` on a GPU node), and
stop early on the validation split. Only the best rounds are kept, so ``predict``, the saved booster and the ONNX
export (onnxmltools) are the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import xgboost

from mlsteps.errors import DataError
from mlsteps.training.api import TrainerContext, TrainingData

# Validation loss per task: what early stopping watches and what fit() reports as val_<metric>.
EVAL_METRIC = {"binary": "logloss", "multiclass": "mlogloss", "regression": "rmse"}
OBJECTIVE = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}
# onnxmltools' XGBoost converter writes at most this ai.onnx opset.
ONNX_OPSET = 15
NATIVE_MODEL_FILE = "xgboost_model.json"


class GbdtTrainer:
    """XGBoost through its scikit-learn API (``mlsteps.training.api.TabularTrainer``).

    ``context.params`` holds the fields of ``training.gbdt``: n_estimators, learning_rate, max_depth,
    min_child_weight, subsample, colsample_bytree, reg_lambda and early_stopping_rounds.
    """

    def __init__(self, context: TrainerContext) -> None:
        self.context = context
        self.model: xgboost.XGBModel | None = None

    def fit(self, train: TrainingData, validation: TrainingData) -> dict[str, float]:
        """Boost on ``train`` until the validation loss has not improved for ``early_stopping_rounds`` rounds
        (all ``n_estimators`` rounds when that is not set).

        The validation loss of every round is logged (``val_<metric>``, step = round); the rounds after the best
        one are discarded.

        Returns:
            ``best_iteration`` (0-based round) and ``val_<metric>``, the validation loss there.

        Raises:
            DataError: a class of ``target.classes`` has no train rows (XGBoost learns only the classes it sees).
        """
        task = self.context.task
        self._check_classes(train)
        params: dict[str, Any] = dict(self.context.params)
        # save_best drops the rounds after the best one, so the booster, predict and the export agree.
        rounds = params.pop("early_stopping_rounds", None)
        callbacks = [xgboost.callback.EarlyStopping(rounds=rounds, save_best=True)] if rounds else []
        estimator = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        self.model = estimator(
            **params,
            objective=OBJECTIVE[task],
            eval_metric=EVAL_METRIC[task],
            tree_method="hist",
            device=self.context.device,
            random_state=self.context.seed,
            callbacks=callbacks,
        )
        self.model.fit(train.features, train.target, eval_set=[(validation.features, validation.target)], verbose=False)
        # predict takes rows on the host: predicting there spares XGBoost's host-to-device fallback (and its warning).
        self.model.set_params(device="cpu")
        metric = EVAL_METRIC[task]
        history = self.model.evals_result()["validation_0"][metric]
        for round_, loss in enumerate(history):
            self.context.log_metrics({f"val_{metric}": loss}, step=round_)
        best = self.model.best_iteration if rounds else len(history) - 1
        return {"best_iteration": float(best), f"val_{metric}": float(history[best])}

    def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Class probabilities (rows x classes; binary has two columns) or regression values (rows)."""
        model = self._fitted()
        features = _features(numeric, categories)
        if isinstance(model, xgboost.XGBClassifier):
            return model.predict_proba(features)
        return model.predict(features)

    def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> onnx.ModelProto:
        """The trees as ONNX with one float input (``TrainingData.features``); the train step adds the contract's
        inputs (``mlsteps.training.onnx_export.to_contract``)."""
        from onnxmltools.convert import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        width = numeric.shape[1] + categories.shape[1]
        return convert_xgboost(
            self._fitted(), initial_types=[("features", FloatTensorType([None, width]))], target_opset=ONNX_OPSET
        )

    def save(self, folder: str | Path) -> Path:
        """Write the booster as XGBoost's JSON model (the native model, logged beside the ONNX one)."""
        path = Path(folder) / NATIVE_MODEL_FILE
        self._fitted().save_model(path)
        return path

    def _fitted(self) -> xgboost.XGBModel:
        if self.model is None:
            raise RuntimeError("GbdtTrainer.fit must run before predict, to_onnx or save")
        return self.model

    def _check_classes(self, train: TrainingData) -> None:
        classes = list(self.context.classes)
        absent = sorted(set(range(len(classes))) - set(np.unique(train.target).tolist()))
        if absent:
            raise DataError(
                f"the train split has no rows of class(es) {[classes[position] for position in absent]} of "
                f"dataset.target.classes {classes}; gbdt (XGBoost) learns only classes it sees in training. Add rows "
                "of those classes, or remove them from target.classes."
            )


def _features(numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The rows as the trees saw them in training: ``TrainingData.features``' layout, the one definition of it."""
    return TrainingData(numeric, categories, target=np.empty(0)).features
