"""MLflow set-up shared by the steps that track or register models.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` (a server in production, SQLite in the embedded default).
With a file-based store, ``MLFLOW_ARTIFACT_LOCATION`` says where new experiments keep their artifacts, so
they never land in the current working directory.
"""

from __future__ import annotations

import os
from typing import Any

from mlsteps.errors import ConfigError

ARTIFACT_LOCATION_ENV_VAR = "MLFLOW_ARTIFACT_LOCATION"


def _require_tracking_uri() -> None:
    """Refuse to fall back silently to a ``./mlruns`` store in the working directory."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "MLFLOW_TRACKING_URI is not set: point it at the MLflow server or sqlite:///path/mlflow.db "
            "that holds the runs and the model registry"
        )


def start_experiment(experiment_name: str) -> str:
    """Point MLflow at the configured tracking server and make sure the experiment exists.

    Returns:
        The experiment id.

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` is not set.
    """
    import mlflow

    _require_tracking_uri()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            experiment_name, artifact_location=os.environ.get(ARTIFACT_LOCATION_ENV_VAR) or None
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client() -> Any:
    """An MLflow client for the configured tracking and registry URIs.

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` is not set.
    """
    from mlflow import MlflowClient

    _require_tracking_uri()
    return MlflowClient()
