"""The Assets that link each model's DAGs; all of them are defined here, per model.

Names carry the model (``churn-classifier.monitor_alert``), so every model's loop is its own: an alert of one model
retrains that model only. The training data's asset is named after the dataset and keyed by its URI (Airflow allows
one active asset per URI): models that train on the same data all retrain when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airflow.sdk import Asset

from mlsteps.data.storage import is_s3
from orchestration.new_data import training_data_asset
from orchestration.settings import Settings


@dataclass(frozen=True)
class ModelAssets:
    """The assets of one model's loop."""

    # The registry's champion alias moved to a new version: serving follows it.
    promoted: Asset
    # The monitor decided that the champion no longer fits production (input drift, a realized or an estimated
    # performance drop); extra: contracts.MonitorAlertExtra. The model's retrain DAG runs on it.
    alert: Asset
    # New training data: updated by a producer (an upstream DAG's outlet, POST /api/v2/assets/events) or, with
    # runtime.new_data.queue_url, by the triggerer's watcher of the object store's notifications (new_data).
    training_data: Asset


def _artifact_uri(settings: Settings, *parts: str) -> str:
    uri = "/".join([settings.artifact_root.rstrip("/"), *parts])
    return uri if is_s3(uri) else Path(uri).as_uri()


def model_assets(settings: Settings) -> ModelAssets:
    """The assets of the model these settings describe."""
    model = settings.pipeline.registry.model_name
    return ModelAssets(
        promoted=Asset(name=f"{model}.model_promoted", uri=_artifact_uri(settings, "models", model, "champion")),
        alert=Asset(name=f"{model}.monitor_alert", uri=_artifact_uri(settings, "monitor", model, "monitor_alert")),
        training_data=training_data_asset(settings),
    )
