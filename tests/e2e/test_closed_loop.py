"""The closed loop through the real Airflow services (`make loop`): a champion from the scheduled run, a steady
stream that triggers nothing, a drifted stream that the monitor alerts on after two windows, and the scheduler
starting ml_retrain from the asset event, which records why on the new model version; its promotion starts
ml_deploy, which switches the local model server to the retrained champion. Then concept drift, which input drift
cannot see, retrains through realized performance on labels; and new data retrains through its asset event, while a
duplicate event for the champion's own data stops early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from mlsteps.data import storage

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("loop")
    out = state / "outcome.json"
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.loop", "--rows", "5000", "--stream-rows", "1000", "--epochs", "3"]
        + ["--json", str(out)],
        env={**os.environ, "ML_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.exists(), done.stdout[-5000:] + done.stderr[-5000:]
    result = json.loads(out.read_text())
    result["stdout"] = done.stdout
    return result


def test_the_scheduled_run_trains_the_first_champion(outcome: dict[str, Any]) -> None:
    assert outcome["champion_run"]["state"] == "success"
    assert outcome["champion_run"]["run_id"].startswith("scheduled__")
    assert outcome["model_version_tags"]["1"]["trigger"] == "scheduled"


def test_a_steady_stream_triggers_nothing_and_drift_alerts_only_after_two_windows(outcome: dict[str, Any]) -> None:
    steady, first_drift, second_drift = outcome["checks"]
    assert steady["action"] == "quiet" and first_drift["action"] == "pending"
    assert steady["drift_detected"] is False and steady["alerted"] is False
    assert first_drift["drift_detected"] is True and first_drift["alerted"] is False, "one window is not enough"
    assert second_drift["drift_detected"] is True and second_drift["alerted"] is True
    assert second_drift["signals"][-1] == "drift"
    assert all(check["state"] == "success" for check in outcome["checks"])


def test_the_asset_event_carries_the_report_and_starts_ml_retrain(outcome: dict[str, Any]) -> None:
    event = outcome["monitor_alerts"][0]
    assert event["source_run_id"] == outcome["checks"][-1]["run_id"]
    assert storage.exists(event["extra"]["report_uri"]) and storage.exists(event["extra"]["report_html_uri"])
    assert len(event["extra"]["drifted_features"]) >= 3
    assert event["extra"]["figures"]["drift"]["windows"] == 2
    assert outcome["retrain_run"]["type"] == "asset_triggered"
    assert outcome["retrain_run"]["state"] == "success"


def test_the_new_model_version_says_why_it_was_trained_and_serves(outcome: dict[str, Any]) -> None:
    event = outcome["monitor_alerts"][0]
    retrained = outcome["model_version_tags"]["2"]
    assert retrained["trigger"] == event["extra"]["signal"]
    assert retrained["trigger_reason"] == event["extra"]["reason"]
    assert retrained["monitor_report"] == event["extra"]["report_html_uri"]
    assert retrained["drifted_features"] == ",".join(event["extra"]["drifted_features"])
    summary = outcome["retrain_summary"]
    assert summary["gate"]["passed"] is True, summary["gate"]["reasons"]
    assert outcome["redeploy"]["served_version"] == 2, "the retrained model on the new data became the champion"


def test_the_promotion_redeploys_the_retrained_champion_by_itself(outcome: dict[str, Any]) -> None:
    redeploy = outcome["redeploy"]
    assert redeploy["state"] == "success", outcome["stdout"][-3000:]
    assert redeploy["result"]["outcome"] == "deployed"
    assert (redeploy["result"]["previous_version"], redeploy["result"]["version"]) == (1, 2)
    assert redeploy["served_version"] == 2


def test_concept_drift_retrains_through_realized_performance_while_input_drift_stays_quiet(
    outcome: dict[str, Any],
) -> None:
    (check,) = outcome["concept_checks"]
    assert check["drift_detected"] is False, "the inputs did not move"
    realized = check["realized"]
    assert realized["status"] == "ok" and realized["drop"] is True
    assert realized["value"] < realized["lower"]
    assert check["alerted"] is True and check["signals"] == ["realized_performance"]
    assert storage.exists(check["report_html_uri"])
    assert outcome["concept_retrain_run"]["state"] == "success"
    assert outcome["model_version_tags"]["3"]["trigger"] == "realized_performance"
    redeploy = outcome["concept_redeploy"]
    assert redeploy["state"] == "success" and redeploy["served_version"] == 3


def test_new_data_retrains_from_its_event_and_a_duplicate_event_stops_early(outcome: dict[str, Any]) -> None:
    duplicate = outcome["duplicate_data_run"]
    assert duplicate["state"] == "success" and duplicate["outcome"] == "unchanged"
    assert "is what champion v3 was trained on" in duplicate["message"]
    assert duplicate["registered_version"] is None, "nothing registered"
    fresh = outcome["new_data_run"]
    assert fresh["state"] == "success" and fresh["outcome"] in ("promoted", "rejected")
    assert fresh["registered_version"] == 4
    assert outcome["model_version_tags"]["4"]["trigger"] == "new_data"
    newest = outcome["model_version_tags"][str(3 + (fresh["outcome"] == "promoted"))]
    assert "champion" in newest["aliases"].split(",")


def test_one_models_alerts_retrain_that_model_only(outcome: dict[str, Any]) -> None:
    # The tier model runs beside churn with its own DAGs: its retraining ran on its cron only.
    assert outcome["tier_retrain_runs"] == ["scheduled"]
