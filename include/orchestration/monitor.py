"""Whether a drift check starts retraining: hysteresis over consecutive windows, and a cooldown.

The drift step only measures one window. Retraining on every drifted window would retrain on noise and, while a
retraining is under way, again and again. So the monitor remembers recent windows in a small state file
(``<artifact root>/monitor/<model>/state.json``) and alerts only when

- the champion's last ``monitoring.consecutive_windows`` judged windows all drifted (skipped windows, with too few
  rows, neither count nor break the run; a data-quality failure breaks it and never counts as drift), and
- at least ``monitoring.cooldown_hours`` passed since the champion was trained and since the last alert (0: no
  cooldown).

Times are the windows' ends, not the wall clock, so a re-run or a backfill decides the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlsteps.config import MonitoringConfig
from mlsteps.data import storage
from mlsteps.results import optional_result, read_result
from orchestration.failures import failure_summary, outcome_lines, unexplained_failure

Action = Literal["alert", "no_drift", "drift_pending", "cooldown", "skipped", "data_quality"]
KEPT_WINDOWS = 100
DECISION_FILE = "decision.json"  # in the monitor run's folder, for its summary


@dataclass(frozen=True)
class MonitorDecision:
    """What the monitor does about one window, and why (logged and returned by the decide task)."""

    action: Action
    reason: str
    model_version: int | None = None
    window_end: str | None = None
    report_uri: str | None = None
    drifted_features: list[str] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        """Whether retraining should start."""
        return self.action == "alert"


def _hours_since(earlier: str | None, now: datetime) -> float:
    return float("inf") if earlier is None else (now - datetime.fromisoformat(earlier)).total_seconds() / 3600


def decide(
    result: dict[str, Any], state: dict[str, Any], monitoring: MonitoringConfig
) -> tuple[MonitorDecision, dict[str, Any]]:
    """Decide on one drift result and return the decision with the new state (the inputs are not changed).

    Args:
        result: the drift step's ``result.json``.
        state: the monitor state (``{}`` before the first window).
        monitoring: the pipeline config's ``monitoring`` section.

    Returns:
        The decision and the state to store.
    """
    window_end = result["window"]["end"]
    common = {"model_version": result.get("model_version"), "window_end": window_end}
    if result["status"] == "skipped":
        return MonitorDecision("skipped", result["message"], **common), state
    windows = [window for window in state.get("windows", []) if window["window_end"] != window_end]
    windows.append(
        {
            "window_end": window_end,
            "model_version": result["model_version"],
            "status": result["status"],
            "drift_detected": result["drift_detected"],
            "report_uri": result.get("report_uri"),
        }
    )
    windows = sorted(windows, key=lambda window: datetime.fromisoformat(window["window_end"]))[-KEPT_WINDOWS:]
    new_state = {**state, "windows": windows}
    details = {**common, "report_uri": result.get("report_uri"), "drifted_features": result["drifted_features"]}
    if result["status"] == "data_quality_failed":
        reason = f"data-quality problem, not drift: {result['message']}"
        return MonitorDecision("data_quality", reason, **details), new_state
    if not result["drift_detected"]:
        return MonitorDecision("no_drift", result["message"], **details), new_state

    streak = 0
    for window in reversed([w for w in windows if w["model_version"] == result["model_version"]]):
        if not window["drift_detected"]:
            break
        streak += 1
    needed = monitoring.consecutive_windows
    features = ", ".join(details["drifted_features"])
    drifted = f"drift in {streak} consecutive window(s) of v{result['model_version']} ({features})"
    if streak < needed:
        return MonitorDecision("drift_pending", f"{drifted}; retraining after {needed}", **details), new_state

    now = datetime.fromisoformat(window_end)
    last_alert = (state.get("last_alert") or {}).get("window_end")
    since = min(_hours_since(result.get("model_trained_at"), now), _hours_since(last_alert, now))
    if monitoring.cooldown_hours and since < monitoring.cooldown_hours:
        reason = (
            f"{drifted}, but only {since:.1f} h since the champion was trained or the last trigger "
            f"< cooldown {monitoring.cooldown_hours:g} h"
        )
        return MonitorDecision("cooldown", reason, **details), new_state
    decision = MonitorDecision("alert", f"{drifted} >= {needed}: retrain", **details)
    return decision, {**new_state, "last_alert": asdict(decision)}


def record_decision(run_root: str, state_uri: str, monitoring: MonitoringConfig) -> MonitorDecision:
    """Decide on the drift step's result of this run and store the monitor state.

    Args:
        run_root: the monitor run's folder (the drift step's result is read from it).
        state_uri: the monitor state file.
        monitoring: the pipeline config's ``monitoring`` section.

    Returns:
        The decision, also written to ``decision.json`` in the run folder.
    """
    state = storage.read_json(state_uri) if storage.exists(state_uri) else {}
    decision, new_state = decide(read_result(run_root, "drift"), state, monitoring)
    if new_state is not state:
        storage.write_json(state_uri, new_state)
    storage.write_json(storage.join(run_root, DECISION_FILE), asdict(decision))
    return decision


def summarize(run_root: str, run_id: str) -> dict[str, Any]:
    """The outcome of one monitor run: the decision's action (``alert``, ``no_drift``, ...) or ``failed``."""
    decision_uri = storage.join(run_root, DECISION_FILE)
    decision = storage.read_json(decision_uri) if storage.exists(decision_uri) else None
    drift = optional_result(run_root, "drift") or {}
    failure = failure_summary(run_root) or (None if decision else unexplained_failure("decide"))
    outcome = failure or {"outcome": decision["action"], "message": decision["reason"]}
    return {
        "run_id": run_id,
        "run_root": run_root,
        **outcome,
        "model_version": drift.get("model_version"),
        "window": drift.get("window"),
        "drifted_features": drift.get("drifted_features", []),
        "report_html_uri": drift.get("report_html_uri"),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of one monitor run."""
    window = summary["window"] or {}
    lines = outcome_lines(summary)
    if window:
        lines.append(f"window        {window.get('start')} .. {window.get('end')} of v{summary['model_version']}")
    if summary["report_html_uri"]:
        lines.append(f"report        {summary['report_html_uri']}")
    lines.append(f"run folder    {summary['run_root']}")
    return "\n".join(lines)
