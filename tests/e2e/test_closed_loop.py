"""The closed loop through the real Airflow services (`make loop`): a champion from the scheduled run, a steady
stream that triggers nothing, a drifted stream that the monitor alerts on after two windows, and the scheduler
starting ml_retrain from the asset event, which records the drift report on the new model version; its promotion
starts ml_deploy, which switches the local model server to the retrained champion."""

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
    assert steady["drift_detected"] is False and steady["alerted"] is False
    assert first_drift["drift_detected"] is True and first_drift["alerted"] is False, "one window is not enough"
    assert second_drift["drift_detected"] is True and second_drift["alerted"] is True
    assert all(check["state"] == "success" for check in outcome["checks"])


def test_the_asset_event_carries_the_report_and_starts_ml_retrain(outcome: dict[str, Any]) -> None:
    (event,) = outcome["drift_alerts"]
    assert event["source_run_id"] == outcome["checks"][-1]["run_id"]
    assert storage.exists(event["extra"]["report_uri"]) and storage.exists(event["extra"]["report_html_uri"])
    assert len(event["extra"]["drifted_features"]) >= 3
    assert outcome["retrain_run"]["type"] == "asset_triggered"
    assert outcome["retrain_run"]["state"] == "success"


def test_the_new_model_version_says_why_it_was_trained_and_serves(outcome: dict[str, Any]) -> None:
    (event,) = outcome["drift_alerts"]
    retrained = outcome["model_version_tags"]["2"]
    assert retrained["trigger"] == "drift_alert"
    assert retrained["drift_report"] == event["extra"]["report_uri"]
    assert retrained["drifted_features"] == ",".join(event["extra"]["drifted_features"])
    summary = outcome["retrain_summary"]
    assert summary["gate"]["passed"] is True, summary["gate"]["reasons"]
    assert "champion" in retrained["aliases"].split(","), "the retrained model on the new data is the champion"


def test_the_promotion_redeploys_the_retrained_champion_by_itself(outcome: dict[str, Any]) -> None:
    redeploy = outcome["redeploy"]
    assert redeploy["state"] == "success", outcome["stdout"][-3000:]
    assert redeploy["result"]["outcome"] == "deployed"
    assert (redeploy["result"]["previous_version"], redeploy["result"]["version"]) == (1, 2)
    assert redeploy["served_version"] == 2
