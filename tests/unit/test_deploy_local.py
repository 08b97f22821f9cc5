"""LocalTarget against a real ``python -m mlsteps.serve`` process loading real bundles from MLflow on SQLite: start,
reload to another version under concurrent load without one failed request, refuse a broken version while the old
one keeps serving, roll back, stop; and the deploy step's CLI through the same target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_models import GOOD, MODEL_NAME, WORSE, register_with_bundle
from ports import free_port

from mlsteps import registry, results, tracking
from mlsteps.config import DEFAULT_CONFIG_PATH, load_pipeline_config
from mlsteps.data.datasets import generate_churn
from mlsteps.deploy import DeployFailed
from mlsteps.deploy.local import LocalTarget
from mlsteps.serving_bundle import json_rows

LOAD_THREADS = 4


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """One registry for the module (MLflow on SQLite): v1 (GOOD), v2 (WORSE), and v3 whose bundle's smoke
    expectations do not match its model (``fake_models.break_bundle``)."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ARTIFACT_LOCATION", (folder / "mlartifacts").as_uri())
        mlflow.set_tracking_uri(uri)
        try:
            yield {
                "good": register_with_bundle(GOOD),
                "worse": register_with_bundle(WORSE),
                "broken": register_with_bundle(GOOD, broken=True),
            }
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture
def target(tmp_path: Path, versions: dict[str, int]) -> Iterator[LocalTarget]:
    local = LocalTarget(MODEL_NAME, tmp_path / "serving", port=free_port(), prediction_log=str(tmp_path / "preds"))
    yield local
    local.stop()


def _customers(rows: int) -> list[dict[str, Any]]:
    dataset = load_pipeline_config().dataset
    frame = generate_churn(rows, seed=5)[[*dataset.numeric_features, *dataset.categorical_features]]
    return json_rows(frame)


CUSTOMERS = _customers(3)


def _infer(target: LocalTarget) -> tuple[int, str | None]:
    """One MLflow-format request; the status and the version that answered."""
    body = {"dataframe_records": CUSTOMERS}
    request = urllib.request.Request(
        f"{target.endpoint()}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("x-model-version")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-model-version")


class _Load:
    """Threads that send requests until stopped; every status and answering version is counted."""

    def __init__(self, target: LocalTarget) -> None:
        self.target = target
        self.outcomes: Counter[tuple[int | str, str | None]] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                outcome: tuple[int | str, str | None] = _infer(self.target)
            except OSError as exc:  # refused or reset: a dropped request
                outcome = (type(exc).__name__, None)
            with self._lock:
                self.outcomes[outcome] += 1

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _server_pid(target: LocalTarget) -> int:
    return json.loads(target.state_file.read_text())["pid"]


def test_start_reload_under_load_refuse_a_broken_version_and_roll_back(
    target: LocalTarget, versions: dict[str, int]
) -> None:
    good, worse, broken = versions["good"], versions["worse"], versions["broken"]
    assert target.current_version() is None, "nothing serves before the first roll-out"

    target.roll_out(good)
    assert target.current_version() == good
    pid = _server_pid(target)
    assert _infer(target) == (200, str(good))
    target.roll_out(good)
    assert _server_pid(target) == pid, "rolling out what serves changes nothing"

    with pytest.raises(DeployFailed, match=rf"refused {MODEL_NAME} v{broken}: HTTP \d+: .*smoke"):
        target.roll_out(broken)
    assert target.current_version() == good, "a refused version never serves"

    with _Load(target) as load:
        while sum(load.outcomes.values()) < 20:  # traffic flows before the switch
            pass
        target.roll_out(worse)
        answered = sum(load.outcomes.values())
        while sum(load.outcomes.values()) < answered + 20:  # and after it
            pass
    failed = {outcome: n for outcome, n in load.outcomes.items() if outcome[0] != 200}
    assert failed == {}, f"requests failed during the reload: {failed}"
    assert {version for _, version in load.outcomes} == {str(good), str(worse)}
    assert target.current_version() == worse
    assert _server_pid(target) == pid, "a reload switches the model in the running server"

    target.roll_back(good)
    assert target.current_version() == good
    assert _infer(target) == (200, str(good))

    target.roll_back(None)
    assert target.current_version() is None
    assert not target.state_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_cannot_start_fails_with_its_log_and_leaves_nothing_running(target: LocalTarget) -> None:
    with pytest.raises(
        DeployFailed, match=r"(?s)v99 exited with code 2; last lines of \S+server\.log:\n.*has no version 99"
    ):
        target.roll_out(99)
    assert not target.state_file.exists()
    assert target.current_version() is None


def _config(folder: Path, port: int) -> Path:
    """The bundled pipeline config with the local server on ``port`` and a short smoke test."""
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["dataset"] = str(DEFAULT_CONFIG_PATH.parent / raw["dataset"])
    raw["serving"]["local"]["port"] = port
    raw["serving"]["smoke"]["requests"] = 5
    path = folder / f"pipeline-{port}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _deploy(run_root: Path, state_dir: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    config = _config(run_root.parent, port)
    command = [sys.executable, "-m", "mlsteps", "deploy", "--run-root", str(run_root), "--config", str(config)]
    command += ["--target", "local", "--state-dir", str(state_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})


def test_deploy_step_deploys_reports_unchanged_and_rolls_back_a_broken_champion(
    tmp_path: Path, versions: dict[str, int]
) -> None:
    port = free_port()
    state_dir = tmp_path / "serving"
    client = tracking.client()
    good, broken = versions["good"], versions["broken"]
    try:
        done = _deploy(tmp_path / "d1", state_dir, port, "--model", str(good))
        assert done.returncode == 0, done.stdout + done.stderr
        result = results.read_result(str(tmp_path / "d1"), "deploy")
        assert (result["outcome"], result["version"], result["previous_version"]) == ("deployed", good, None)
        assert result["smoke"]["passed"] is True

        again = _deploy(tmp_path / "d1", state_dir, port, "--model", str(good))
        assert again.returncode == 0, again.stdout + again.stderr
        assert results.read_result(str(tmp_path / "d1"), "deploy")["outcome"] == "unchanged"

        registry.move_alias(client, MODEL_NAME, registry.CHAMPION, broken, actor="test", reason="made champion")
        failed = _deploy(tmp_path / "d2", state_dir, port)
        assert failed.returncode == 2, failed.stdout + failed.stderr
        assert f"v{broken} was rolled back on local, v{good} serves again" in failed.stderr
        result = results.read_result(str(tmp_path / "d2"), "deploy")
        assert (result["outcome"], result["version"], result["previous_version"]) == ("rolled_back", broken, good)
        assert registry.alias_version_number(client, MODEL_NAME, registry.CHAMPION) == good
        last = registry.alias_history(client, MODEL_NAME, registry.CHAMPION)[-1]
        assert (last.from_version, last.to_version, last.actor) == (broken, good, "cli")
        assert last.reason.startswith("rollback: ")
    finally:
        LocalTarget(MODEL_NAME, state_dir, port=port).stop()


def test_deploy_step_names_what_is_missing(tmp_path: Path, versions: dict[str, int]) -> None:
    done = _deploy(tmp_path / "d1", tmp_path / "serving", free_port(), "--model", "17")
    assert done.returncode == 2
    assert f"model {MODEL_NAME} has no version 17" in done.stderr
    no_state = subprocess.run(
        [sys.executable, "-m", "mlsteps", "deploy", "--run-root", str(tmp_path / "d2"), "--target", "local"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert no_state.returncode == 2
    assert "--target local needs --state-dir" in no_state.stderr
