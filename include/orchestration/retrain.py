"""Decisions and reporting of each model's retrain DAG, kept out of the DAG file so they are unit-tested.

They read the steps' ``result.json`` files; they never touch data or models themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mlsteps import results
from mlsteps.config import DISTRIBUTED_FAMILIES, FAMILIES, TrainingConfig
from mlsteps.evaluation.tasks import METRICS
from orchestration.assets import ModelAssets
from orchestration.contracts import DATA_CHECK_TASK as DATA_CHECK
from orchestration.contracts import PROMOTE_TASK, REJECT_TASK, MonitorAlertExtra
from orchestration.failures import failure_summary, outcome_lines, unexplained_failure

log = logging.getLogger(__name__)

REPORT_ORDER = ("validation_html", "evaluation_html", "evaluation_json")
NEW_DATA = "new_data"  # the trigger of a run started by training_data asset events


@dataclass(frozen=True)
class RetrainTriggers:
    """What started one model's retraining run, read from the run's triggering asset events.

    Its methods are the retrain DAG's template macros (``macros``): the train step tags the MLflow run with the
    trigger, and register copies the tags onto the model version (``registry.TRIGGER_TAGS``).
    """

    assets: ModelAssets
    dataset_uri: str

    def monitor_alert(self, triggering_asset_events: Any) -> MonitorAlertExtra | None:
        """The payload of the monitor alert that started this run (the latest, when several did), or None."""
        events = triggering_asset_events.get(self.assets.alert) if triggering_asset_events else None
        return MonitorAlertExtra(**events[-1].extra) if events and events[-1].extra else None

    def data_events(self, triggering_asset_events: Any) -> list[dict[str, Any]]:
        """The ``extra`` of each training-data asset event that started this run (a producer's, or the watcher's
        queue message); empty when none did."""
        events = triggering_asset_events.get(self.assets.training_data) if triggering_asset_events else None
        return [dict(event.extra or {}) for event in events or []]

    def run_trigger(self, dag_run: Any, triggering_asset_events: Any) -> str:
        """Why this run exists: the monitor signal that fired (``realized_performance``, ``drift``,
        ``estimated_performance``), ``new_data``, or the run type (``scheduled``, ``manual``, ``backfill``)."""
        if alert := self.monitor_alert(triggering_asset_events):
            return alert["signal"]
        if self.data_events(triggering_asset_events):
            return NEW_DATA
        run_type = getattr(dag_run, "run_type", "manual")
        return str(getattr(run_type, "value", run_type))

    def reason(self, dag_run: Any, triggering_asset_events: Any) -> str:
        """The trigger in one sentence, with its figures: the monitor's reason, the new data's events, or the run
        type with the person who started it (``manual by <user>``) when Airflow knows them."""
        if alert := self.monitor_alert(triggering_asset_events):
            return alert["reason"]
        if events := self.data_events(triggering_asset_events):
            return "training_data: " + "; ".join(describe_data_event(extra, self.dataset_uri)[1] for extra in events)
        user = getattr(dag_run, "triggering_user_name", None)
        trigger = self.run_trigger(dag_run, triggering_asset_events)
        return f"{trigger} by {user}" if user else trigger

    def macros(self) -> dict[str, Any]:
        """The template macros ``TRIGGER_TAG_ARGS`` use."""
        return {
            "triggering_monitor_alert": self.monitor_alert,
            "run_trigger": self.run_trigger,
            "trigger_reason": self.reason,
        }


_ALERT = "(triggering_monitor_alert(triggering_asset_events) or {})"
TRIGGER_TAG_ARGS = [
    "--tag",
    "trigger={{ run_trigger(dag_run, triggering_asset_events) }}",
    "--tag",
    "trigger_reason={{ trigger_reason(dag_run, triggering_asset_events) | truncate(4000) }}",
    "--tag",
    f"monitor_report={{{{ {_ALERT}.get('report_html_uri', '') }}}}",
    "--tag",
    f"drifted_features={{{{ {_ALERT}.get('drifted_features', []) | join(',') }}}}",
]


def describe_data_event(extra: dict[str, Any], dataset_uri: str) -> tuple[bool, str]:
    """Whether one ``training_data`` event is new data for the dataset, and what it says.

    The watcher's events (``from_trigger``) carry queue messages, judged by ``new_data.new_data_event``; a producer's
    event (an outlet, ``POST /api/v2/assets/events``) says the data is new by itself.
    """
    from orchestration.new_data import new_data_event

    if not extra.get("from_trigger"):
        return True, f"a producer's event {extra}" if extra else "a producer's event"
    event, reason = new_data_event(extra, dataset_uri)
    return event is not None, reason


def data_check(run_root: str, trigger: str, data_events: list[dict[str, Any]], dataset_uri: str) -> str | None:
    """Why this run should stop after its snapshot, or None to go on (recorded as the ``data_check`` result).

    - A run started by ``training_data`` events only, none of which is new data for this dataset (a queue message
      that is not an object-store event, or an event for another key): nothing to retrain on.
    - A run that is not manual, whose content-addressed snapshot is the one the champion was trained on (the
      snapshot step's ``champion_trained_on_snapshot``): retraining would reproduce the champion, so nothing is
      retrained or registered (duplicate notifications are harmless). Manual runs always train: a person may
      change the params.
    """
    stop = None
    if trigger == NEW_DATA:
        verdicts = [describe_data_event(extra, dataset_uri) for extra in data_events]
        if not any(new for new, _ in verdicts):
            stop = "no new data for this dataset: " + "; ".join(reason for _, reason in verdicts)
    snapshot = results.read_result(run_root, "snapshot")
    if stop is None and trigger != "manual" and snapshot.get("champion_trained_on_snapshot"):
        stop = (
            f"the training data {snapshot['source_uri']} (snapshot {snapshot['snapshot_id'][:12]}) is what "
            f"champion v{snapshot['champion_version']} was trained on: nothing retrained, nothing registered"
        )
    results.write_result(run_root, DATA_CHECK, {"proceed": stop is None, "trigger": trigger, "message": stop})
    return stop


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

    The outcome is ``promoted``, ``rejected`` (the gate kept the champion), ``unchanged`` (``data_check`` stopped the
    run: the data is not new) or ``failed`` (with the failed task and
    its message); a failed run's summary holds what the steps before the failure found (its snapshot, its
    validation report).
    """
    snapshot = results.optional_result(run_root, "snapshot") or {}
    validate = results.optional_result(run_root, "validate")
    evaluate = results.optional_result(run_root, "evaluate")
    register = results.optional_result(run_root, "register") or {}
    promoted = results.optional_result(run_root, PROMOTE_TASK) is not None
    check = results.optional_result(run_root, DATA_CHECK) or {}
    stopped = check.get("proceed") is False
    failure = failure_summary(run_root) or (None if evaluate or stopped else unexplained_failure("evaluate"))
    champion = (evaluate or {}).get("champion") or {}
    reports = {
        "validation_html": validate and validate["report_html_uri"],
        "evaluation_html": evaluate and evaluate["report_html_uri"],
        "evaluation_json": evaluate and evaluate["report_uri"],
    }
    return {
        "run_id": run_id,
        "run_root": run_root,
        **(
            failure
            or ({"outcome": "unchanged", "message": check["message"]} if stopped else None)
            or {"outcome": "promoted" if promoted else "rejected"}
        ),
        "trigger": check.get("trigger"),
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


def model_families(training: TrainingConfig, nodes: int = 1) -> list[str]:
    """The families a run may choose: the built-in ones, and the configured own trainers; only those that train
    data-parallel when training spans several nodes (``runtime.steps.train.nodes``)."""
    families = list(dict.fromkeys([*FAMILIES, training.model, *training.candidates]))
    return families if nodes == 1 else [family for family in families if family in DISTRIBUTED_FAMILIES]


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
