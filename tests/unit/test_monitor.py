"""The monitor's decision: hysteresis over consecutive windows, cooldown, skipped and data-quality windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlsteps import results
from mlsteps.config import MonitoringConfig
from mlsteps.data import storage
from orchestration.monitor import decide, record_decision

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
        "report_uri": f"s3://ml/runs/ml_drift_monitor/{hour}/drift/report.json",
    }


def _run(results_in_order: list[dict], monitoring: MonitoringConfig = MONITORING) -> list[str]:
    state: dict[str, Any] = {}
    actions = []
    for result in results_in_order:
        decision, state = decide(result, state, monitoring)
        actions.append(decision.action)
    return actions


def test_retraining_starts_only_after_consecutive_drifted_windows() -> None:
    assert _run([_result(0, drift=False), _result(1), _result(2)]) == ["no_drift", "drift_pending", "alert"]
    assert _run([_result(0), _result(1, drift=False), _result(2)]) == ["drift_pending", "no_drift", "drift_pending"]
    assert _run([_result(0)], MonitoringConfig(consecutive_windows=1, cooldown_hours=0)) == ["alert"]


def test_skipped_windows_neither_count_nor_break_the_run() -> None:
    actions = _run([_result(0), _result(1, status="skipped"), _result(2)])
    assert actions == ["drift_pending", "skipped", "alert"]


def test_a_data_quality_failure_is_reported_and_never_triggers() -> None:
    actions = _run([_result(0), _result(1, status="data_quality_failed"), _result(2)])
    assert actions == ["drift_pending", "data_quality", "drift_pending"]


def test_cooldown_after_training_and_after_the_last_alert() -> None:
    fresh_model = [_result(0, trained_hours_before=2), _result(1, trained_hours_before=2)]
    assert _run(fresh_model) == ["drift_pending", "cooldown"]
    assert _run([_result(hour) for hour in range(4)]) == ["drift_pending", "alert", "cooldown", "cooldown"]
    assert _run([*(_result(hour) for hour in range(2)), _result(30)])[-1] == "alert", "cooldown of 24 h is over"
    no_cooldown = MonitoringConfig(consecutive_windows=2, cooldown_hours=0)
    assert _run([_result(0, trained_hours_before=-3), _result(1, trained_hours_before=-3)], no_cooldown)[-1] == "alert"


def test_a_new_champion_starts_its_own_count() -> None:
    assert _run([_result(0, version=3), _result(1, version=4)]) == ["drift_pending", "drift_pending"]


def test_the_same_window_checked_twice_counts_once() -> None:
    assert _run([_result(0), _result(0)]) == ["drift_pending", "drift_pending"]


def test_the_alert_carries_the_report_and_the_reason() -> None:
    state: dict[str, Any] = {}
    for hour in range(2):
        decision, state = decide(_result(hour), state, MONITORING)
    assert decision.alert and decision.report_uri.endswith("/1/drift/report.json")
    assert decision.drifted_features == ["age", "plan"]
    assert decision.reason == "drift in 2 consecutive window(s) of v3 (age, plan) >= 2: retrain"
    assert state["last_alert"]["window_end"] == decision.window_end


def test_record_decision_keeps_the_state_between_runs(tmp_path: Path) -> None:
    state_uri = results.monitor_state(str(tmp_path), "churn-classifier")
    actions = []
    for hour in range(2):
        run_root = str(tmp_path / "runs" / str(hour))
        results.write_result(run_root, "drift", _result(hour))
        actions.append(record_decision(run_root, state_uri, MONITORING).action)
    assert actions == ["drift_pending", "alert"]
    assert [window["window_end"] for window in storage.read_json(state_uri)["windows"]] == [
        _result(0)["window"]["end"],
        _result(1)["window"]["end"],
    ]
