"""Decisions and reporting of the ``ml_retrain`` DAG, kept out of the DAG file so they are unit-tested.

They read the steps' ``result.json`` files; they never touch data or models themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from mlsteps import results, storage

log = logging.getLogger(__name__)

PROMOTE_TASK = "promote"
REJECT_TASK = "reject"
REPORT_ORDER = ("validation_html", "evaluation_html", "evaluation_json")


def drift_alert_extra(triggering_asset_events: Any) -> dict[str, Any]:
    """The extra of the drift alert that started this run (report, drifted features), or ``{}`` without one."""
    from orchestration.assets import DRIFT_ALERT

    events = triggering_asset_events.get(DRIFT_ALERT) if triggering_asset_events else None
    return dict(events[-1].extra or {}) if events else {}


def run_trigger(dag_run: Any, triggering_asset_events: Any) -> str:
    """Why this run exists: ``drift_alert``, or the run type (``scheduled``, ``manual``, ``backfill``)."""
    if drift_alert_extra(triggering_asset_events):
        return "drift_alert"
    run_type = getattr(dag_run, "run_type", "manual")
    return str(getattr(run_type, "value", run_type))


# Template macros of ml_retrain: its train step tags the MLflow run with what triggered it.
TRIGGER_MACROS = {"drift_alert_extra": drift_alert_extra, "run_trigger": run_trigger}
TRIGGER_TAG_ARGS = [
    "--tag",
    "trigger={{ run_trigger(dag_run, triggering_asset_events) }}",
    "--tag",
    "drift_report={{ drift_alert_extra(triggering_asset_events).get('report_uri', '') }}",
    "--tag",
    "drifted_features={{ drift_alert_extra(triggering_asset_events).get('drifted_features', []) | join(',') }}",
]


def promotion_branch(run_root: str, force: bool) -> str:
    """The task to follow the gate: ``promote`` when the gate passed (or promotion is forced), else ``reject``."""
    gate = results.read_result(run_root, "evaluate")["gate"]
    for reason in gate["reasons"]:
        log.info("gate: %s", reason)
    if gate["passed"]:
        log.info("gate passed -> %s", PROMOTE_TASK)
        return PROMOTE_TASK
    if force:
        log.warning("gate failed but force_promotion is set -> %s (recorded on the model version)", PROMOTE_TASK)
        return PROMOTE_TASK
    log.info("gate failed -> %s; the champion stays as it is", REJECT_TASK)
    return REJECT_TASK


def summarize(run_root: str, run_id: str) -> dict[str, Any]:
    """Collect the outcome of one run from the steps' results and write ``summary.json`` into the run folder."""
    snapshot = results.read_result(run_root, "snapshot")
    validate = results.read_result(run_root, "validate")
    evaluate = results.read_result(run_root, "evaluate")
    register = results.read_result(run_root, "register")
    promote = results.optional_result(run_root, "promote")
    champion = evaluate.get("champion") or {}
    summary = {
        "run_id": run_id,
        "run_root": run_root,
        "snapshot_id": snapshot["snapshot_id"],
        "rows": snapshot["rows"],
        "validation": {"success": validate["success"], "statistics": validate["statistics"]},
        "challenger_metrics": evaluate["challenger"]["metrics"],
        "champion_version_at_evaluation": champion.get("version"),
        "champion_metrics": champion.get("metrics"),
        "gate": evaluate["gate"],
        "model_name": register["model_name"],
        "registered_version": register["version"],
        "aliases": ["challenger", "champion"] if promote else ["challenger"],
        "promoted": promote is not None,
        "reports": {
            "validation_html": validate["report_html_uri"],
            "evaluation_html": evaluate["report_html_uri"],
            "evaluation_json": evaluate["report_uri"],
        },
    }
    storage.write_json(storage.join(run_root, "summary.json"), summary)
    return summary


def _metric_line(name: str, metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return f"  {name:<11} none"
    keys = ("roc_auc", "log_loss", "accuracy", "brier", "ece")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float)]
    return f"  {name:<11} " + "  ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of one run."""
    validation = summary["validation"]
    stats = validation["statistics"]
    champion = summary["champion_version_at_evaluation"]
    lines = [
        f"run           {summary['run_id']}",
        f"snapshot      {summary['snapshot_id']} ({summary['rows']} rows)",
        f"validation    {'passed' if validation['success'] else 'FAILED'} "
        f"({stats['successful']}/{stats['evaluated']} expectations)",
        "metrics (holdout):",
        _metric_line("challenger", summary["challenger_metrics"]),
        _metric_line(f"champion v{champion}" if champion else "champion", summary["champion_metrics"]),
        f"gate          {'PASSED' if summary['gate']['passed'] else 'REJECTED'}",
        *(f"  - {reason}" for reason in summary["gate"]["reasons"]),
        f"model         {summary['model_name']} version {summary['registered_version']} "
        f"aliases {', '.join(summary['aliases'])}",
        "reports:",
        *(f"  {name:<16}{summary['reports'][name]}" for name in REPORT_ORDER),
        f"  {'run folder':<16}{summary['run_root']}",
    ]
    return "\n".join(lines)
