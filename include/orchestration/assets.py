"""The Assets that link the DAGs of the loop; all of them are defined here."""

from pathlib import Path

from airflow.sdk import Asset

from mlsteps.data.storage import is_s3
from orchestration.new_data import training_data_asset
from orchestration.settings import get_settings


def _artifact_uri(*parts: str) -> str:
    root = get_settings().artifact_root.rstrip("/")
    uri = "/".join([root, *parts])
    return uri if is_s3(uri) else Path(uri).as_uri()


# The registry's champion alias moved to a new version: serving follows it.
MODEL_PROMOTED = Asset(
    name="model_promoted", uri=_artifact_uri("models", get_settings().pipeline.registry.model_name, "champion")
)

# The model monitor decided that the champion no longer fits production (input drift, a realized or an estimated
# performance drop); extra: contracts.MonitorAlertExtra. ml_retrain runs on it (besides its cron and new data).
MONITOR_ALERT = Asset(
    name="monitor_alert", uri=_artifact_uri("monitor", get_settings().pipeline.registry.model_name, "monitor_alert")
)

# New training data for ml_retrain: updated by a producer (an upstream DAG's outlet, POST /api/v2/assets/events)
# or, with runtime.new_data.queue_url, by the triggerer's watcher of the object store's notifications
# (orchestration.new_data).
TRAINING_DATA = training_data_asset(get_settings())
