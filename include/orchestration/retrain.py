"""Decisions and reporting of the ``ml_retrain`` DAG, kept out of the DAG file so they are unit-tested.

They read the steps' ``result.json`` files; they never touch data or models themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from mlsteps import results
from mlsteps.config import FAMILIES, TrainingConfig
from mlsteps.evaluation.tasks import METRICS
from orchestration.contracts import PROMOTE_TASK, REJECT_TASK, DriftAlertExtra
from orchestration.failures import failure_summary, outcome_lines, unexplained_failure

log = logging.getLogger(__name__)

REPORT_ORDER = ("validation_html", "evaluation_html", "evaluation_json")


def triggering_drift_alert(triggering_asset_events: Any) -> DriftAlertExtra | None:
    """The payload of the drift alert that started this run (the latest, when several did), or None."""
    from orchestration.assets import DRIFT_ALERT

    events = triggering_asset_events.get(DRIFT_ALERT) if triggering_asset_events else None
    return DriftAlertExtra(**events[-1].extra) if events and events[-1].extra else None


def run_trigger(dag_run: Any, triggering_asset_events: Any) -> str:
    """Why this run exists: ``drift_alert``, or the run type (``scheduled``, ``manual``, ``backfill``)."""
    if triggering_drift_alert(triggering_asset_events):
        return "drift_alert"
    run_type = getattr(dag_run, "run_type", "manual")
    return str(getattr(run_type, "value", run_type))


# Template macros of ml_retrain: its train step tags the MLflow run with what triggered it.
TRIGGER_MACROS = {"triggering_drift_alert": triggering_drift_alert, "run_trigger": run_trigger}
_ALERT = "(triggering_drift_alert(triggering_asset_events) or {})"
TRIGGER_TAG_ARGS = [
    "--tag",
    "trigger={{ run_trigger(dag_run, triggering_asset_events) }}",
    "--tag",
    f"drift_report={{{{ {_ALERT}.get('report_uri', '') }}}}",
    "--tag",
    f"drifted_features={{{{ {_ALERT}.get('drifted_features', []) | join(',') }}}}",
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
    """Collect the outcome of one run from the steps' results and its failure records.

    The outcome is ``promoted``, ``rejected`` (the gate kept the champion) or ``failed`` (with the failed task and
    its message); a failed run's summary holds what the steps before the failure found (its snapshot, its
    validation report).
    """
    snapshot = results.optional_result(run_root, "snapshot") or {}
    validate = results.optional_result(run_root, "validate")
    evaluate = results.optional_result(run_root, "evaluate")
    register = results.optional_result(run_root, "register") or {}
    promoted = results.optional_result(run_root, PROMOTE_TASK) is not None
    failure = failure_summary(run_root) or (None if evaluate else unexplained_failure("evaluate"))
    champion = (evaluate or {}).get("champion") or {}
    reports = {
        "validation_html": validate and validate["report_html_uri"],
        "evaluation_html": evaluate and evaluate["report_html_uri"],
        "evaluation_json": evaluate and evaluate["report_uri"],
    }
    return {
        "run_id": run_id,
        "run_root": run_root,
        **(failure or {"outcome": "promoted" if promoted else "rejected"}),
        "snapshot_id": snapshot.get("snapshot_id"),
        "rows": snapshot.get("rows"),
        "validation": validate and {"success": validate["success"], "statistics": validate["statistics"]},
        "challenger_metrics": evaluate and evaluate["challenger"]["metrics"],
        "candidates": evaluate and _candidate_lines(evaluate),
        "champion_version_at_evaluation": champion.get("version"),
        "champion_metrics": champion.get("metrics"),
        "gate": evaluate and evaluate["gate"],
        "model_name": register.get("model_name"),
        "registered_version": register.get("version"),
        "aliases": ["challenger", "champion"] if promoted else ["challenger"] if register else [],
        "promoted": promoted,
        "reports": {name: uri for name, uri in reports.items() if uri},
    }


def model_families(training: TrainingConfig) -> list[str]:
    """The families a run may choose: the built-in ones, and the configured own trainers."""
    return list(dict.fromkeys([*FAMILIES, training.model, *training.candidates]))


# Every task's metrics in one order, for the summary's metric lines.
_METRIC_NAMES = list(dict.fromkeys(name for metrics in METRICS.values() for name in metrics))


def _candidate_lines(evaluate: dict[str, Any]) -> list[str]:
    """Each candidate family's primary metric on the holdout, the challenger marked (one line each)."""
    metric, chosen = evaluate["gate"]["primary_metric"], evaluate["challenger"]["family"]
    return [
        f"{candidate['family']} {metric}={candidate['metrics'][metric]}"
        + (" (challenger)" if candidate["family"] == chosen else "")
        for candidate in evaluate["candidates"]
    ]


def _metric_line(name: str, metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return f"  {name:<11} none"
    parts = [f"{k}={metrics[k]:.4f}" for k in _METRIC_NAMES if isinstance(metrics.get(k), int | float)]
    return f"  {name:<11} " + "  ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of one run, failed or not: only what the run got to."""
    lines = outcome_lines(summary)
    if summary["snapshot_id"]:
        lines.append(f"snapshot      {summary['snapshot_id']} ({summary['rows']} rows)")
    validation = summary["validation"]
    if validation:
        stats = validation["statistics"]
        verdict = "passed" if validation["success"] else "FAILED"
        lines.append(f"validation    {verdict} ({stats['successful']}/{stats['evaluated']} expectations)")
    if summary["gate"]:
        champion = summary["champion_version_at_evaluation"]
        if len(summary["candidates"]) > 1:
            lines += ["candidates:", *(f"  {line}" for line in summary["candidates"])]
        lines += [
            "metrics (holdout):",
            _metric_line("challenger", summary["challenger_metrics"]),
            _metric_line(f"champion v{champion}" if champion else "champion", summary["champion_metrics"]),
            f"gate          {'PASSED' if summary['gate']['passed'] else 'REJECTED'}",
            *(f"  - {reason}" for reason in summary["gate"]["reasons"]),
        ]
    if summary["registered_version"]:
        lines.append(
            f"model         {summary['model_name']} version {summary['registered_version']} "
            f"aliases {', '.join(summary['aliases'])}"
        )
    lines += [
        "reports:",
        *(f"  {name:<16}{summary['reports'][name]}" for name in REPORT_ORDER if name in summary["reports"]),
        f"  {'run folder':<16}{summary['run_root']}",
    ]
    return "\n".join(lines)
