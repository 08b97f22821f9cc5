"""The gbdt family: gradient-boosted trees with XGBoost, for binary, multiclass and regression targets.

Trees take the preprocessor's matrices as one float matrix (``TrainingData.features``: numeric columns, then the
category indices), grow with the ``hist`` method on the device the train step chose (``cuda`` on a GPU node), and
stop early on the validation split. Only the best rounds are kept, so ``predict``, the saved booster and the ONNX
export (onnxmltools) are the same model.

The splits reach XGBoost through an ``xgboost.DataIter`` that reads ``context.batch_rows`` rows at a time (from the
train step's memory-mapped files, see ``mlsteps.training.streaming``) into a ``QuantileDMatrix``: XGBoost sketches
the feature quantiles batch by batch and keeps only the rows' histogram bins (about one byte per value), never a
float copy of the whole split. The validation matrix takes the train matrix's bins (``ref=``), as one built from a
whole table would. With several batches the merged sketch may put a few bin edges slightly elsewhere than one built
from the whole table at once; the trees are otherwise grown as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import xgboost

from mlsteps.errors import DataError
from mlsteps.training.api import TrainerContext, TrainingData
from mlsteps.training.streaming import read_rows

# Validation loss per task: what early stopping watches and what fit() reports as val_<metric>.
EVAL_METRIC = {"binary": "logloss", "multiclass": "mlogloss", "regression": "rmse"}
OBJECTIVE = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}
# onnxmltools' XGBoost converter writes at most this ai.onnx opset.
ONNX_OPSET = 15
NATIVE_MODEL_FILE = "xgboost_model.json"


class SplitBatches(xgboost.DataIter):
    """A split's rows for XGBoost, ``batch_rows`` at a time, as ``TrainingData.features`` lays them out."""

    def __init__(self, data: TrainingData, batch_rows: int) -> None:
        super().__init__()
        self.data, self.batch_rows, self.start = data, batch_rows, 0

    def next(self, input_data: Any) -> bool:
        """Hand XGBoost the next batch; False when the split is done."""
        if self.start >= len(self.data):
            return False
        stop = self.start + self.batch_rows
        input_data(
            data=_features(
                read_rows(self.data.numeric, self.start, stop), read_rows(self.data.categories, self.start, stop)
            ),
            label=np.asarray(read_rows(self.data.target, self.start, stop)),
        )
        self.start = stop
        return True

    def reset(self) -> None:
        """Start again from the first row (XGBoost passes over the data more than once)."""
        self.start = 0


class GbdtTrainer:
    """XGBoost (``mlsteps.training.api.TabularTrainer``), trained with ``xgboost.train`` on ``QuantileDMatrix``es
    streamed from the splits and kept as the scikit-learn estimator that ``predict`` and the ONNX converter take.

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
        settings: dict[str, Any] = dict(self.context.params)
        # save_best drops the rounds after the best one, so the booster, predict and the export agree.
        rounds = settings.pop("early_stopping_rounds", None)
        callbacks = [xgboost.callback.EarlyStopping(rounds=rounds, save_best=True)] if rounds else []
        metric = EVAL_METRIC[task]
        params = {
            **settings,
            "objective": OBJECTIVE[task],
            "eval_metric": metric,
            "tree_method": "hist",
            "device": self.context.device,
            "seed": self.context.seed,
            **({"num_class": self.context.num_classes} if task == "multiclass" else {}),
        }
        rounds_at_most = params.pop("n_estimators")
        dtrain = xgboost.QuantileDMatrix(SplitBatches(train, self.context.batch_rows))
        dvalidation = xgboost.QuantileDMatrix(SplitBatches(validation, self.context.batch_rows), ref=dtrain)
        evals_result: dict[str, dict[str, list[float]]] = {}
        booster = xgboost.train(
            params,
            dtrain,
            num_boost_round=rounds_at_most,
            evals=[(dvalidation, "validation_0")],
            evals_result=evals_result,
            callbacks=callbacks,
            verbose_eval=False,
        )
        estimator = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        self.model = estimator(
            **settings, objective=OBJECTIVE[task], tree_method="hist", random_state=self.context.seed
        )
        self.model.load_model(booster.save_raw("json"))
        # predict takes rows on the host: predicting there spares XGBoost's host-to-device fallback (and its warning).
        self.model.set_params(device="cpu")
        history = evals_result["validation_0"][metric]
        for round_, loss in enumerate(history):
            self.context.log_metrics({f"val_{metric}": loss}, step=round_)
        best = booster.best_iteration if rounds else len(history) - 1
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
        absent = sorted(set(range(len(classes))) - set(np.unique(read_rows(train.target, 0, len(train))).tolist()))
        if absent:
            raise DataError(
                f"the train split has no rows of class(es) {[classes[position] for position in absent]} of "
                f"dataset.target.classes {classes}; gbdt (XGBoost) learns only classes it sees in training. Add rows "
                "of those classes, or remove them from target.classes."
            )


def _features(numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The rows as the trees saw them in training: ``TrainingData.features``' layout, the one definition of it."""
    return TrainingData(numeric, categories, target=np.empty(0)).features
