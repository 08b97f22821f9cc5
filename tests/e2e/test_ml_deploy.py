"""A model's deploy DAG end to end on the embedded default, as `python -m orchestration.embedded run --purpose deploy`
runs it.

One state folder and one registry: v1 is deployed (a local server starts), then v2 (the server switches), then a
deliberately broken v3 is made champion: its deploy fails, v2 keeps serving, champion points at v2 again with the
rollback in the alias history, the task fails with the reason, and the run's summary says `rolled_back`. The local
server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_models import GOOD, MODEL_NAME, WORSE, register_with_bundle
from ports import free_port

from mlsteps import registry, results, tracking
from mlsteps.config import DEFAULT_CONFIG_PATH
from mlsteps.data import storage
from mlsteps.deploy.local import LocalTarget

pytestmark = pytest.mark.e2e

DAG_ID = f"{MODEL_NAME}.deploy"


class Deployment:
    """The embedded default's state, registry and local server port shared by the runs of this module."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        overrides = {
            "extends": str(DEFAULT_CONFIG_PATH.parent / "models" / "churn.yaml"),
            "dataset": str(DEFAULT_CONFIG_PATH.parent / "datasets" / "churn.yaml"),
            "registry": {"model_name": MODEL_NAME},
            "serving": {"local": {"port": port}, "smoke": {"requests": 10}},
        }
        (state_dir / "models").mkdir()
        self.config = state_dir / "models" / "churn.yaml"
        self.config.write_text(yaml.safe_dump(overrides))
        self.tracking_uri = f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def server(self) -> LocalTarget:
        return LocalTarget(MODEL_NAME, self.state_dir / "serving" / MODEL_NAME, port=self.port)

    def make_champion(self, version: int) -> None:
        client = tracking.client()
        registry.move_alias(client, MODEL_NAME, registry.CHAMPION, version, actor="test", reason="promoted by the test")

    def run(self) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """One deploy run with the params' defaults (model champion, rolling, no approval)."""
        done = subprocess.run(
            [sys.executable, "-m", "orchestration.embedded", "run", "--purpose", "deploy", "--rows", "500"],
            env={**os.environ, "ML_STATE_DIR": str(self.state_dir), "ML_MODELS_DIR": str(self.config.parent)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        outcomes = sorted((self.state_dir / "logs").glob(f"{DAG_ID}-*.json"))
        assert outcomes, done.stdout + done.stderr
        return done, json.loads(outcomes[-1].read_text())

    def result(self, run_id: str) -> dict[str, Any]:
        return results.read_result(self._run_root(run_id), "deploy")

    def summary(self, run_id: str) -> dict[str, Any]:
        return storage.read_json(storage.join(self._run_root(run_id), "summary.json"))

    def _run_root(self, run_id: str) -> str:
        return results.run_root(str(self.state_dir / "artifacts"), DAG_ID, run_id)

    def served_version(self) -> str:
        with urllib.request.urlopen(f"{self.server.endpoint()}/v2/models/{MODEL_NAME}", timeout=10) as response:
            (version,) = json.loads(response.read())["versions"]
            return version


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    import mlflow

    state = Deployment(tmp_path_factory.mktemp("embedded"), free_port())
    (state.state_dir / "mlflow").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", state.tracking_uri)
        patch.setenv("MLFLOW_ARTIFACT_LOCATION", (state.state_dir / "mlflow" / "artifacts").as_uri())
        mlflow.set_tracking_uri(state.tracking_uri)
        try:
            yield state
        finally:
            state.server.stop()
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def first(deployment: Deployment) -> tuple[int, subprocess.CompletedProcess[str], dict[str, Any]]:
    version = register_with_bundle(GOOD)
    deployment.make_champion(version)
    return version, *deployment.run()


@pytest.fixture(scope="module")
def second(deployment: Deployment, first: Any) -> tuple[int, subprocess.CompletedProcess[str], dict[str, Any]]:
    version = register_with_bundle(WORSE)
    deployment.make_champion(version)
    return version, *deployment.run()


def test_first_deploy_starts_the_local_server_without_asking_for_approval(deployment: Deployment, first) -> None:
    version, done, outcome = first
    assert outcome["state"] == "success", done.stdout[-3000:] + done.stderr[-3000:]
    assert outcome["tasks"]["approval_gate"]["state"] == "success"
    assert outcome["tasks"]["approval"]["state"] == "skipped", "require_approval is off by default"
    assert outcome["tasks"]["deploy"]["state"] == "success"
    result = deployment.result(outcome["run_id"])
    assert (result["outcome"], result["version"], result["previous_version"]) == ("deployed", version, None)
    assert (result["target"], result["strategy"]) == ("local", "rolling")
    assert result["smoke"]["passed"] is True
    assert deployment.server.state_file.exists()
    assert deployment.summary(outcome["run_id"])["outcome"] == "deployed"
    assert "outcome       DEPLOYED" in done.stdout
    assert f"{MODEL_NAME} v{version} serves on local: smoke test passed" in done.stdout


def test_second_deploy_switches_the_server_to_the_new_champion(deployment: Deployment, first, second) -> None:
    version, done, outcome = second
    assert outcome["state"] == "success", done.stdout[-3000:] + done.stderr[-3000:]
    result = deployment.result(outcome["run_id"])
    assert (result["outcome"], result["version"], result["previous_version"]) == ("deployed", version, first[0])
    assert deployment.served_version() == str(version)


def test_a_broken_champion_is_rolled_back_and_the_task_fails_with_the_reason(deployment: Deployment, second) -> None:
    good = second[0]
    broken = register_with_bundle(GOOD, broken=True)
    deployment.make_champion(broken)

    done, outcome = deployment.run()

    assert done.returncode != 0
    assert outcome["state"] == "failed"
    assert outcome["tasks"]["deploy"]["state"] == "failed"
    assert f"{MODEL_NAME} v{broken} was rolled back on local, v{good} serves again" in done.stdout
    assert deployment.served_version() == str(good)
    client = tracking.client()
    assert registry.alias_version_number(client, MODEL_NAME, registry.CHAMPION) == good
    rollback = registry.alias_history(client, MODEL_NAME, registry.CHAMPION)[-1]
    assert (rollback.from_version, rollback.to_version) == (broken, good)
    assert rollback.reason.startswith("rollback: ") and rollback.actor == outcome["run_id"]
    result = deployment.result(outcome["run_id"])
    assert (result["outcome"], result["version"], result["previous_version"]) == ("rolled_back", broken, good)
    summary = deployment.summary(outcome["run_id"])
    assert (summary["outcome"], summary["failed_task"]) == ("rolled_back", "deploy")
    assert f"v{good} serves again" in summary["message"]
    assert outcome["tasks"]["summary"]["state"] == "failed", "the run is failed, and its summary says why"
