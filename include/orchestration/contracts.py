"""The contracts between the DAGs and their helpers: branch task ids and the payloads of asset events.

Each is written once here and imported by the DAG that wires it and by the helper that decides or reads it. This
module imports nothing of the project, so anything may import it.
"""

from __future__ import annotations

from typing import Any, TypedDict

# ml_retrain: after the snapshot, whether the data is new (a run for the champion's own data stops there)
DATA_CHECK_TASK = "data_check"
# ml_retrain: the task listing the candidate families, one mapped train task each
CANDIDATES_TASK = "candidates"
# ml_retrain: the gate's branches
PROMOTE_TASK = "promote"
REJECT_TASK = "reject"
# ml_model_monitor: the decision's branches
ALERT_TASK = "alert"
QUIET_TASK = "quiet"
# ml_deploy: the approval gate's branches
APPROVAL_TASK = "approval"
DEPLOY_TASK = "deploy"
# every DAG: the last task, which writes summary.json whatever happened before it
SUMMARY_TASK = "summary"


class MonitorAlertExtra(TypedDict):
    """The ``extra`` of a ``monitor_alert`` asset event: which signal fired, with its figures, for which version."""

    signal: str  # the signal that explains the alert best: realized_performance, drift or estimated_performance
    signals: list[str]  # every signal that fired
    reason: str
    figures: dict[str, dict[str, Any]]  # per fired signal: the numbers behind it
    drifted_features: list[str]
    report_uri: str  # the monitor's report (JSON); report_html_uri its page
    report_html_uri: str
    model_name: str
    model_version: int
    window_end: str


def monitor_alert_extra(decision: dict[str, Any], model_name: str) -> MonitorAlertExtra:
    """The alert's payload, from the monitor decision (``decision.json``) that raised it."""
    return MonitorAlertExtra(
        signal=decision["signals"][0],
        signals=list(decision["signals"]),
        reason=decision["reason"],
        figures=decision["figures"],
        drifted_features=list(decision["drifted_features"]),
        report_uri=decision["report_uri"],
        report_html_uri=decision["report_html_uri"],
        model_name=model_name,
        model_version=decision["model_version"],
        window_end=decision["window_end"],
    )
