"""The contracts between the DAGs and their helpers: branch task ids and the payloads of asset events.

Each is written once here and imported by the DAG that wires it and by the helper that decides or reads it. This
module imports nothing of the project, so anything may import it.
"""

from __future__ import annotations

from typing import Any, TypedDict

# ml_retrain: the task listing the candidate families, one mapped train task each
CANDIDATES_TASK = "candidates"
# ml_retrain: the gate's branches
PROMOTE_TASK = "promote"
REJECT_TASK = "reject"
# ml_drift_monitor: the decision's branches
ALERT_TASK = "alert"
QUIET_TASK = "quiet"
# ml_deploy: the approval gate's branches
APPROVAL_TASK = "approval"
DEPLOY_TASK = "deploy"
# every DAG: the last task, which writes summary.json whatever happened before it
SUMMARY_TASK = "summary"


class DriftAlertExtra(TypedDict):
    """The ``extra`` of a ``drift_alert`` asset event: what drifted, where the report is, which model version."""

    report_uri: str
    report_html_uri: str
    drifted_features: list[str]
    model_name: str
    model_version: int
    window_end: str


def drift_alert_extra(drift_result: dict[str, Any]) -> DriftAlertExtra:
    """The alert's payload, from the drift step's ``result.json`` of the window that decided it."""
    return DriftAlertExtra(
        report_uri=drift_result["report_uri"],
        report_html_uri=drift_result["report_html_uri"],
        drifted_features=list(drift_result["drifted_features"]),
        model_name=drift_result["model_name"],
        model_version=drift_result["model_version"],
        window_end=drift_result["window"]["end"],
    )
