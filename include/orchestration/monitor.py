"""Whether a monitor check starts retraining: three signals, each with its own hysteresis, and a shared cooldown.

The ``drift`` and ``performance`` steps only measure. Retraining on every bad window would retrain on noise and,
while a retraining is under way, again and again. So the monitor remembers recent windows in a small state file
(``<artifact root>/monitor/<model>/state.json``) and judges three signals of the champion:

- ``drift``: input drift (the drift step's dataset decision) in ``monitoring.consecutive_windows`` windows in a row;
- ``realized_performance``: the labelled predictions' metric beyond the holdout's band (the ``performance`` step) in
  ``monitoring.performance.consecutive_windows`` judged windows in a row: confirmed by labels, it retrains;
- ``estimated_performance``: the estimated metric below the band in ``performance.estimated.consecutive_windows``
  windows in a row; ``performance.estimated.action`` says whether that retrains (``trigger``), only alerts
  (``alert``: the decision ``alert_only``, no retraining) or is not judged (``off``).

A window where a signal was not judged (too few rows or labels, no labels source) neither counts for that signal nor
breaks its streak; a data-quality problem in the logs breaks the drift streak and never counts as drift. A retraining
signal alerts only when at least ``monitoring.cooldown_hours`` passed since the champion was trained and since the
last alert (0: no cooldown); a window that already started a retraining never starts another.
Times are the windows' ends, not the wall clock, so a re-run or a backfill decides the same way.

Every decision also writes the monitor's report (``monitor/report.json`` and ``report.html`` in the run folder):
drift, realized and estimated performance over the recent windows, as plots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlsteps.config import MonitoringConfig
from mlsteps.data import storage
from mlsteps.results import optional_result, read_result, step_dir
from orchestration.failures import failure_summary, outcome_lines, unexplained_failure

Action = Literal["alert", "alert_only", "pending", "cooldown", "quiet", "skipped", "data_quality"]
SIGNALS = ("realized_performance", "drift", "estimated_performance")  # the order in which they explain an alert
KEPT_WINDOWS = 200
REPORTED_WINDOWS = 48
DECISION_FILE = "decision.json"  # in the monitor run's folder, for its summary and the alert's payload
REPORT_STEP = "monitor"  # the monitor's own report: <run root>/monitor/report.json and report.html


@dataclass(frozen=True)
class MonitorDecision:
    """What the monitor does about one check, and why (logged and returned by the decide task)."""

    action: Action
    reason: str
    model_version: int | None = None
    window_end: str | None = None
    signals: list[str] = field(default_factory=list)  # the signals that fired, most trusted first
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # per fired signal: the numbers behind it
    drifted_features: list[str] = field(default_factory=list)
    drift_report_uri: str | None = None
    report_uri: str | None = None
    report_html_uri: str | None = None

    @property
    def alert(self) -> bool:
        """Whether retraining should start."""
        return self.action == "alert"


def _hours_since(earlier: str | None, now: datetime) -> float:
    return float("inf") if earlier is None else (now - datetime.fromisoformat(earlier)).total_seconds() / 3600


def _performance_entry(verdict: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the state keeps of one performance verdict; None where it was not measured at all."""
    if verdict is None:
        return None
    keep = ("metric", "status", "value", "expected", "sampling_error", "lower", "upper", "rows", "message", "window")
    entry = {key: verdict.get(key) for key in keep}
    return {**entry, "judged": verdict["status"] == "ok", "fired": bool(verdict.get("drop"))}


def window_entry(drift: dict[str, Any], performance: dict[str, Any] | None) -> dict[str, Any]:
    """One check's figures as the state keeps them: each signal judged or not, fired or not."""
    performance = performance or {}
    judged = drift["status"] != "skipped"  # a data-quality failure is judged: it breaks a drift streak, never fires
    return {
        "window_end": drift["window"]["end"],
        "model_version": drift.get("model_version") or performance.get("model_version"),
        "drift": {
            "status": drift["status"],
            "judged": judged,
            "fired": drift["status"] == "ok" and bool(drift["drift_detected"]),
            "drifted_share": drift.get("drifted_share"),
            "drifted_features": drift.get("drifted_features", []),
            "report_uri": drift.get("report_uri"),
            "report_html_uri": drift.get("report_html_uri"),
            "message": drift.get("message"),
        },
        "realized_performance": _performance_entry(performance.get("realized")),
        "estimated_performance": _performance_entry(performance.get("estimated")),
    }


def _streak(windows: list[dict[str, Any]], signal: str, version: int | None) -> int:
    """Judged windows of this model version in a row, newest first, in which the signal fired."""
    streak = 0
    for window in reversed([w for w in windows if w["model_version"] == version]):
        entry = window.get(signal)
        if not entry or not entry["judged"]:
            continue
        if not entry["fired"]:
            break
        streak += 1
    return streak


def _needed(signal: str, monitoring: MonitoringConfig) -> int:
    performance = monitoring.performance
    return {
        "drift": monitoring.consecutive_windows,
        "realized_performance": performance.consecutive_windows,
        "estimated_performance": performance.estimated.consecutive_windows,
    }[signal]


def _figures(signal: str, entry: dict[str, Any], streak: int) -> dict[str, Any]:
    if signal == "drift":
        keep = ("drifted_share", "drifted_features", "report_uri")
    else:
        keep = ("metric", "value", "expected", "lower", "upper", "rows", "window")
    return {"windows": streak, **{key: entry.get(key) for key in keep}}


def _explain(signal: str, entry: dict[str, Any], streak: int, version: int | None) -> str:
    if signal == "drift":
        features = ", ".join(entry["drifted_features"])
        return f"input drift in {streak} consecutive window(s) of v{version} ({features})"
    kind = "realized" if signal == "realized_performance" else "estimated"
    return (
        f"{kind} {entry['metric']} {entry['value']:.4g} outside the holdout's band [{entry['lower']:.4g}, "
        f"{entry['upper']:.4g}] in {streak} consecutive window(s) of v{version} ({entry['rows']} rows)"
    )


def decide(
    drift: dict[str, Any], performance: dict[str, Any] | None, state: dict[str, Any], monitoring: MonitoringConfig
) -> tuple[MonitorDecision, dict[str, Any]]:
    """Decide on one check's results and return the decision with the new state (the inputs are not changed).

    Args:
        drift: the drift step's ``result.json``.
        performance: the performance step's ``result.json``; None when it did not run.
        state: the monitor state (``{}`` before the first window).
        monitoring: the pipeline config's ``monitoring`` section.

    Returns:
        The decision and the state to store.
    """
    entry = window_entry(drift, performance)
    if monitoring.performance.estimated.action == "off":
        entry["estimated_performance"] = None
    version, window_end = entry["model_version"], entry["window_end"]
    common = {"model_version": version, "window_end": window_end, "drift_report_uri": drift.get("report_uri")}
    judged = [s for s in SIGNALS if entry[s] and entry[s]["judged"]]
    if drift["status"] == "skipped" and not judged:
        return MonitorDecision("skipped", drift["message"], **common), state
    windows = [w for w in state.get("windows", []) if w["window_end"] != window_end]
    windows = sorted([*windows, entry], key=lambda w: datetime.fromisoformat(w["window_end"]))[-KEPT_WINDOWS:]
    new_state = {**state, "windows": windows}
    estimated_action = monitoring.performance.estimated.action
    streaks = {s: _streak(windows, s, version) for s in SIGNALS}
    fired = [s for s in SIGNALS if entry[s] and entry[s]["judged"] and entry[s]["fired"]]
    confirmed = [s for s in fired if streaks[s] >= _needed(s, monitoring)]
    retraining = [s for s in confirmed if s != "estimated_performance" or estimated_action == "trigger"]
    details = {
        **common,
        "signals": confirmed,
        "figures": {s: _figures(s, entry[s], streaks[s]) for s in confirmed},
        "drifted_features": entry["drift"]["drifted_features"] if entry["drift"]["fired"] else [],
    }
    explained = "; ".join(_explain(s, entry[s], streaks[s], version) for s in confirmed)
    if retraining:
        now = datetime.fromisoformat(window_end)
        previous_alert = state.get("last_alert") or {}
        last_alert = previous_alert.get("window_end")
        if last_alert == window_end and previous_alert.get("model_version") == version:
            # the same window decided again (a cleared task, a rerun): one window starts one retraining, cooldown or not
            reason = f"{explained}, but this window of v{version} already started a retraining"
            return MonitorDecision("cooldown", reason, **details), new_state
        since = min(_hours_since(drift.get("model_trained_at"), now), _hours_since(last_alert, now))
        if monitoring.cooldown_hours and since < monitoring.cooldown_hours:
            reason = (
                f"{explained}, but only {since:.1f} h since the champion was trained or the last trigger "
                f"< cooldown {monitoring.cooldown_hours:g} h"
            )
            return MonitorDecision("cooldown", reason, **details), new_state
        decision = MonitorDecision("alert", f"{explained}: retrain", **details)
        return decision, {**new_state, "last_alert": asdict(decision)}
    if confirmed:  # only the estimate, and it only alerts
        reason = f"{explained}: alert only (monitoring.performance.estimated.action is {estimated_action!r})"
        return MonitorDecision("alert_only", reason, **details), new_state
    if fired:
        pending = "; ".join(
            f"{_explain(s, entry[s], streaks[s], version)}: retraining after {_needed(s, monitoring)}" for s in fired
        )
        return MonitorDecision("pending", pending, **details), new_state
    if drift["status"] == "data_quality_failed":
        reason = f"data-quality problem, not drift: {drift['message']}"
        return MonitorDecision("data_quality", reason, **details), new_state
    quiet = "; ".join(entry[s]["message"] or s for s in SIGNALS if entry[s]) or "no signal could be judged"
    return MonitorDecision("quiet", quiet, **details), new_state


def record_decision(run_root: str, state_uri: str, monitoring: MonitoringConfig, title: str) -> MonitorDecision:
    """Decide on this run's drift and performance results, store the monitor state and write the monitor report.

    Args:
        run_root: the monitor run's folder (the steps' results are read from it).
        state_uri: the monitor state file.
        monitoring: the pipeline config's ``monitoring`` section.
        title: the report's title (the model's name).

    Returns:
        The decision, also written to ``decision.json`` in the run folder.
    """
    from mlsteps.monitoring.report import render_monitor_html

    state = storage.read_json(state_uri) if storage.exists(state_uri) else {}
    decision, new_state = decide(
        read_result(run_root, "drift"), optional_result(run_root, "performance"), state, monitoring
    )
    if new_state is not state:
        storage.write_json(state_uri, new_state)
    folder = step_dir(run_root, REPORT_STEP)
    report_uri, report_html_uri = storage.join(folder, "report.json"), storage.join(folder, "report.html")
    decision = MonitorDecision(**{**asdict(decision), "report_uri": report_uri, "report_html_uri": report_html_uri})
    windows = new_state.get("windows", [])[-REPORTED_WINDOWS:]
    report = {"title": title, "decision": asdict(decision), "windows": windows}
    storage.write_json(report_uri, report)
    storage.write_text(report_html_uri, render_monitor_html(report))
    storage.write_json(storage.join(run_root, DECISION_FILE), asdict(decision))
    return decision


def read_decision(run_root: str) -> dict[str, Any] | None:
    """The decision a monitor run recorded, or None before ``decide`` ran."""
    uri = storage.join(run_root, DECISION_FILE)
    return storage.read_json(uri) if storage.exists(uri) else None


def summarize(run_root: str, run_id: str) -> dict[str, Any]:
    """The outcome of one monitor run: the decision's action (``alert``, ``quiet``, ...) or ``failed``."""
    decision = read_decision(run_root)
    drift = optional_result(run_root, "drift") or {}
    failure = failure_summary(run_root) or (None if decision else unexplained_failure("decide"))
    outcome = failure or {"outcome": decision["action"], "message": decision["reason"]}
    return {
        "run_id": run_id,
        "run_root": run_root,
        **outcome,
        "signals": (decision or {}).get("signals", []),
        "model_version": drift.get("model_version"),
        "window": drift.get("window"),
        "drifted_features": drift.get("drifted_features", []),
        "report_html_uri": (decision or {}).get("report_html_uri") or drift.get("report_html_uri"),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of one monitor run."""
    window = summary["window"] or {}
    lines = outcome_lines(summary)
    if summary.get("signals"):
        lines.append(f"signals       {', '.join(summary['signals'])}")
    if window:
        lines.append(f"window        {window.get('start')} .. {window.get('end')} of v{summary['model_version']}")
    if summary["report_html_uri"]:
        lines.append(f"report        {summary['report_html_uri']}")
    lines.append(f"run folder    {summary['run_root']}")
    return "\n".join(lines)
