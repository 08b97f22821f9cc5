"""The Assets that link the DAGs of the loop; all of them are defined here."""

from pathlib import Path

from airflow.sdk import Asset

from mlsteps.data.storage import is_s3
from orchestration.settings import get_settings


def _artifact_uri(*parts: str) -> str:
    root = get_settings().artifact_root.rstrip("/")
    uri = "/".join([root, *parts])
    return uri if is_s3(uri) else Path(uri).as_uri()


# The registry's champion alias moved to a new version: serving follows it.
MODEL_PROMOTED = Asset(
    name="model_promoted", uri=_artifact_uri("models", get_settings().pipeline.registry.model_name, "champion")
)

# The drift monitor decided that the champion no longer fits production data; extra: report_uri, drifted_features,
# model_version, window_end, reason. ml_retrain runs on it (besides its cron).
DRIFT_ALERT = Asset(
    name="drift_alert", uri=_artifact_uri("monitor", get_settings().pipeline.registry.model_name, "drift_alert")
)
