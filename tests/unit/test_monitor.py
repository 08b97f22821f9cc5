"""The monitor's decision: three signals with their own hysteresis, the shared cooldown, skipped and data-quality
windows, and the monitor's report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlsteps import results
from mlsteps.config import MonitoringConfig
from mlsteps.data import storage
from orchestration.monitor import MonitorDecision, decide, record_decision

START = datetime(2026, 11, 20, 10, tzinfo=UTC)
MONITORING = MonitoringConfig(consecutive_windows=2, cooldown_hours=24)


def _result(
    hour: int, status: str = "ok", drift: bool = True, version: int = 3, trained_hours_before: int = 48
) -> dict:
    end = START + timedelta(hours=hour)
    return {
        "status": status,
        "message": f"window {hour}",
        "window": {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()},
        "model_version": version,
        "model_trained_at": (START - timedelta(hours=trained_hours_before)).isoformat(),
        "drift_detected": drift and status == "ok",
        "drifted_features": ["age", "plan"] if drift and status == "ok" else [],
        "drifted_share": 0.5 if drift and status == "ok" else 0.0,
        "report_uri": f"s3://ml/runs/ml_model_monitor/{hour}/drift/report.json",
    }


def _run(results_in_order: list[dict], monitoring: MonitoringConfig = MONITORING) -> list[str]:
    state: dict[str, Any] = {}
    actions = []
    for result in results_in_order:
        decision, state = decide(result, None, state, monitoring)
        actions.append(decision.action)
    return actions


def test_retraining_starts_only_after_consecutive_drifted_windows() -> None:
    assert _run([_result(0, drift=False), _result(1), _result(2)]) == ["quiet", "pending", "alert"]
    assert _run([_result(0), _result(1, drift=False), _result(2)]) == ["pending", "quiet", "pending"]
    assert _run([_result(0)], MonitoringConfig(consecutive_windows=1, cooldown_hours=0)) == ["alert"]


def test_skipped_windows_neither_count_nor_break_the_run() -> None:
    actions = _run([_result(0), _result(1, status="skipped"), _result(2)])
    assert actions == ["pending", "skipped", "alert"]


def test_a_data_quality_failure_is_reported_and_never_triggers() -> None:
    actions = _run([_result(0), _result(1, status="data_quality_failed"), _result(2)])
    assert actions == ["pending", "data_quality", "pending"]


def test_cooldown_after_training_and_after_the_last_alert() -> None:
    fresh_model = [_result(0, trained_hours_before=2), _result(1, trained_hours_before=2)]
    assert _run(fresh_model) == ["pending", "cooldown"]
    assert _run([_result(hour) for hour in range(4)]) == ["pending", "alert", "cooldown", "cooldown"]
    assert _run([*(_result(hour) for hour in range(2)), _result(30)])[-1] == "alert", "cooldown of 24 h is over"
    no_cooldown = MonitoringConfig(consecutive_windows=2, cooldown_hours=0)
    assert _run([_result(0, trained_hours_before=-3), _result(1, trained_hours_before=-3)], no_cooldown)[-1] == "alert"


def test_a_new_champion_starts_its_own_count() -> None:
    assert _run([_result(0, version=3), _result(1, version=4)]) == ["pending", "pending"]


def test_the_same_window_checked_twice_counts_once() -> None:
    assert _run([_result(0), _result(0)]) == ["pending", "pending"]


def test_the_alert_carries_the_report_and_the_reason() -> None:
    state: dict[str, Any] = {}
    for hour in range(2):
        decision, state = decide(_result(hour), None, state, MONITORING)
    assert decision.alert and decision.drift_report_uri.endswith("/1/drift/report.json")
    assert decision.drifted_features == ["age", "plan"] and decision.signals == ["drift"]
    assert decision.reason == "input drift in 2 consecutive window(s) of v3 (age, plan): retrain"
    assert decision.figures["drift"]["windows"] == 2
    assert state["last_alert"]["window_end"] == decision.window_end


def test_record_decision_keeps_the_state_between_runs(tmp_path: Path) -> None:
    state_uri = results.monitor_state(str(tmp_path), "churn-classifier")
    actions = []
    for hour in range(2):
        run_root = str(tmp_path / "runs" / str(hour))
        results.write_result(run_root, "drift", _result(hour))
        actions.append(record_decision(run_root, state_uri, MONITORING, "churn").action)
    assert actions == ["pending", "alert"]
    assert [window["window_end"] for window in storage.read_json(state_uri)["windows"]] == [
        _result(0)["window"]["end"],
        _result(1)["window"]["end"],
    ]


def _performance(hour: int, kind: str, value: float | None, status: str = "ok", version: int = 3) -> dict:
    """A performance step result with one verdict; the holdout expects 0.80 with a band of [0.76, 0.84]."""
    verdict = {
        "kind": kind,
        "metric": "roc_auc",
        "status": status,
        "value": value,
        "expected": 0.80,
        "sampling_error": 0.0133,
        "lower": 0.76,
        "upper": 0.84,
        "rows": 400,
        "drop": status == "ok" and value is not None and value < 0.76,
        "message": f"{kind} roc_auc {value}",
    }
    end = (START + timedelta(hours=hour)).isoformat()
    if kind == "realized":
        verdict["window"] = {"start": (START + timedelta(hours=hour - 1)).isoformat(), "end": end}
    other = "estimated" if kind == "realized" else "realized"
    return {"status": "ok", "model_version": version, kind: verdict, other: None}


def _decisions(checks: list[tuple[dict, dict | None]], monitoring: MonitoringConfig) -> list[MonitorDecision]:
    state: dict[str, Any] = {}
    decisions = []
    for drift, performance in checks:
        decision, state = decide(drift, performance, state, monitoring)
        decisions.append(decision)
    return decisions


def test_a_realized_performance_drop_retrains_without_any_drift() -> None:
    # Concept drift: inputs unchanged, labels show the model fails. One judged window confirms (the default).
    checks = [
        (_result(0, drift=False), _performance(0, "realized", 0.81)),
        (_result(1, drift=False), _performance(1, "realized", 0.62)),
    ]
    quiet, alert = _decisions(checks, MONITORING)
    assert quiet.action == "quiet"
    assert alert.action == "alert" and alert.signals == ["realized_performance"]
    assert alert.figures["realized_performance"]["value"] == 0.62
    assert alert.figures["realized_performance"]["lower"] == 0.76
    assert "realized roc_auc 0.62 outside the holdout's band [0.76, 0.84]" in alert.reason


def test_windows_without_enough_labels_neither_count_nor_break_the_realized_streak() -> None:
    monitoring = MonitoringConfig(cooldown_hours=0, performance={"consecutive_windows": 2})
    checks = [
        (_result(0, drift=False), _performance(0, "realized", 0.6)),
        (_result(1, drift=False), _performance(1, "realized", None, status="insufficient_labels")),
        (_result(2, drift=False), _performance(2, "realized", 0.61)),
    ]
    assert [d.action for d in _decisions(checks, monitoring)] == ["pending", "quiet", "alert"]


def test_an_estimated_drop_only_alerts_unless_configured_to_trigger() -> None:
    checks = [(_result(h, drift=False), _performance(h, "estimated", 0.6)) for h in range(2)]
    alert_only = _decisions(checks, MonitoringConfig(cooldown_hours=0))
    assert [d.action for d in alert_only] == ["pending", "alert_only"]
    assert not alert_only[-1].alert and alert_only[-1].signals == ["estimated_performance"]
    trigger = MonitoringConfig(cooldown_hours=0, performance={"estimated": {"action": "trigger"}})
    assert [d.action for d in _decisions(checks, trigger)] == ["pending", "alert"]
    off = MonitoringConfig(cooldown_hours=0, performance={"estimated": {"action": "off"}})
    assert [d.action for d in _decisions(checks, off)] == ["quiet", "quiet"]


def test_signals_that_fire_together_are_all_named_most_trusted_first() -> None:
    monitoring = MonitoringConfig(consecutive_windows=1, cooldown_hours=0)
    (decision,) = _decisions([(_result(0), _performance(0, "realized", 0.5))], monitoring)
    assert decision.signals == ["realized_performance", "drift"]
    assert set(decision.figures) == {"realized_performance", "drift"}


def test_the_cooldown_is_shared_by_the_signals() -> None:
    monitoring = MonitoringConfig(consecutive_windows=1, cooldown_hours=24)
    checks = [(_result(0), None), (_result(1, drift=False), _performance(1, "realized", 0.5))]
    assert [d.action for d in _decisions(checks, monitoring)] == ["alert", "cooldown"]


def test_record_decision_writes_the_monitor_report_with_every_signal(tmp_path: Path) -> None:
    state_uri = results.monitor_state(str(tmp_path), "churn-classifier")
    for hour in range(3):
        run_root = str(tmp_path / "runs" / str(hour))
        results.write_result(run_root, "drift", _result(hour, drift=hour > 0))
        results.write_result(run_root, "performance", _performance(hour, "realized", 0.8 - 0.1 * hour))
        decision = record_decision(run_root, state_uri, MONITORING, "Monitor of churn-classifier")
    report = storage.read_json(decision.report_uri)
    assert [w["realized_performance"]["value"] for w in report["windows"]] == pytest.approx([0.8, 0.7, 0.6])
    page = Path(decision.report_html_uri).read_text()
    assert "Input drift: share of drifted features" in page and "Performance: roc_auc" in page
    assert page.count("<svg") == 2 and "0.6 in [0.76, 0.84] DROP" in page
