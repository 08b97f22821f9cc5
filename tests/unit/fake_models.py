"""Tiny MLflow models with known behaviour, for the registry, evaluation and scoring tests."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from mlsteps import tracking
from mlsteps.config import load_pipeline_config

MODEL_NAME = load_pipeline_config().registry.model_name
GOOD = {
    "tenure_months": -0.035,
    "support_calls_90d": 0.22,
    "days_since_last_login": 0.025,
    "late_payments_12m": 0.25,
    "contract_type=monthly": 1.1,
    "contract_type=two_year": -0.9,
}
WORSE = {"tenure_months": -0.035, "contract_type=monthly": 1.1, "contract_type=two_year": -0.9}
WEAK = {"age": 0.01}


class RiskScoreModel(mlflow.pyfunc.PythonModel):
    """sigmoid(bias + sum of weight * term); a term is a numeric column or ``column=value`` (an indicator)."""

    def __init__(self, weights: dict[str, float], bias: float = -1.5) -> None:
        self.weights = weights
        self.bias = bias

    def _term(self, frame: pd.DataFrame, key: str) -> np.ndarray:
        column, _, value = key.partition("=")
        if value:
            return (frame[column] == value).to_numpy(dtype=float)
        return frame[column].fillna(0).to_numpy(dtype=float)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        logit = self.bias + sum(weight * self._term(model_input, key) for key, weight in self.weights.items())
        probability = 1 / (1 + np.exp(-logit))
        return pd.DataFrame({"probability": probability, "prediction": (probability >= 0.5).astype(int)})


def log_model(weights: dict[str, float]) -> tuple[str, str]:
    """Log a RiskScoreModel in a training run; returns (run id, model URI)."""
    tracking.start_experiment(load_pipeline_config().registry.experiment_name)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=RiskScoreModel(weights), pip_requirements=[])
    return run.info.run_id, info.model_uri
