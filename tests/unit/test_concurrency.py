"""Concurrent promotes and deploys of one model: the champion lock makes check-and-move atomic (local flock and S3
conditional writes), and deploys to one target take turns."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fake_models import MODEL_NAME, PIPELINE

from mlsteps import locks, registry, results, tracking
from mlsteps.data import storage
from mlsteps.errors import RegistryConflict
from mlsteps.evaluation.metrics import gate_decision
from mlsteps.steps import promote

METRICS = {PIPELINE.primary_metric: 0.8}


def _champion() -> int | None:
    return registry.alias_version_number(tracking.client(), MODEL_NAME, registry.CHAMPION)


@pytest.fixture
def contenders(tmp_path: Path, mlflow_tracking: str) -> list[str]:
    """v1 is champion; v2 and v3 are two runs' versions, both evaluated against v1 with a passing gate."""
    client = tracking.client()
    client.create_registered_model(MODEL_NAME)
    versions = [int(client.create_model_version(MODEL_NAME, f"file:///models/{n}").version) for n in range(3)]
    registry.move_alias(client, MODEL_NAME, registry.CHAMPION, versions[0], actor="test", reason="first champion")
    gate = gate_decision(METRICS, METRICS, PIPELINE.evaluation, PIPELINE.primary_metric, "binary")
    run_roots = []
    for version in versions[1:]:
        run_root = str(tmp_path / "runs" / f"r{version}")
        evaluation = {
            "model_name": MODEL_NAME,
            "task": "binary",
            "challenger": {"metrics": METRICS},
            "champion": {"version": versions[0], "metrics": METRICS},
            "gate": gate.to_dict(),
        }
        results.write_result(run_root, "evaluate", evaluation)
        results.write_result(run_root, "register", {"model_name": MODEL_NAME, "version": version})
        run_roots.append(run_root)
    return run_roots


def _assert_one_promotion(outcomes: dict[int, str]) -> None:
    """Exactly one of v2 and v3 became champion, the other was refused naming both, and history has one new move."""
    winner = _champion()
    loser = ({2, 3} - {winner}).pop()
    assert outcomes[winner] == "promoted"
    assert f"cannot promote v{loser}" in outcomes[loser]
    assert f"champion of {MODEL_NAME} moved from v1 to v{winner} since evaluation" in outcomes[loser]
    history = registry.alias_history(tracking.client(), MODEL_NAME, registry.CHAMPION)
    assert [(event.from_version, event.to_version) for event in history] == [(None, 1), (1, winner)]


def test_two_promote_processes_move_champion_once(contenders: list[str]) -> None:
    command = [sys.executable, "-m", "mlsteps", "promote", "--run-root"]
    processes = {
        version: subprocess.Popen([*command, root], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for version, root in zip((2, 3), contenders, strict=True)
    }
    outputs = {version: process.communicate(timeout=120)[0] for version, process in processes.items()}
    codes = sorted(process.returncode for process in processes.values())
    assert codes == [0, 2], outputs
    _assert_one_promotion(
        {version: "promoted" if processes[version].returncode == 0 else out for version, out in outputs.items()}
    )


def _promote_in_threads(run_roots: list[str]) -> dict[int, str]:
    """Promote every run root at once, each in its own thread; ``promoted`` or the conflict's message per version."""
    outcomes: dict[int, str] = {}
    start = threading.Barrier(len(run_roots))

    def attempt(version: int, run_root: str) -> None:
        start.wait()
        try:
            promote.run(run_root, PIPELINE)
            outcomes[version] = "promoted"
        except RegistryConflict as conflict:
            outcomes[version] = str(conflict)

    threads = [threading.Thread(target=attempt, args=(v, root)) for v, root in zip((2, 3), run_roots, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_two_promotes_with_locks_on_s3(contenders: list[str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(locks.LOCK_ROOT_ENV_VAR, f"{s3_bucket}/locks")
    _assert_one_promotion(_promote_in_threads(contenders))
    assert storage.list_files(f"{s3_bucket}/locks") == []  # released


@pytest.fixture(params=["local", "s3"])
def lock_at(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A lock URI on local disk or on the moto S3 server."""
    root = request.getfixturevalue("s3_bucket") if request.param == "s3" else str(tmp_path / "locks")
    return locks.lock_uri(root, MODEL_NAME, registry.CHAMPION)


def test_a_held_lock_excludes_and_names_its_holder(lock_at: str) -> None:
    with (
        locks.held(lock_at, "run-a", wait_s=5, lease_s=600) as holder,
        pytest.raises(locks.LockTimeout) as waited,
        locks.held(lock_at, "run-b", wait_s=0, lease_s=600),
    ):
        pass
    message = str(waited.value)
    assert f"held by run-a (pid {holder.pid} on {holder.host}), held for " in message
    assert f"since {holder.acquired_at}" in message
    assert ("aws s3 rm" if storage.is_s3(lock_at) else f"kill {holder.pid}") in message
    with locks.held(lock_at, "run-b", wait_s=0, lease_s=600):  # released: free again at once
        pass


def test_an_expired_s3_lock_is_taken_over(s3_bucket: str) -> None:
    uri = locks.lock_uri(s3_bucket, MODEL_NAME, registry.CHAMPION)
    crashed = locks.Holder.me("crashed-run")
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    storage.write_json(uri, {**crashed.__dict__, "acquired_at": an_hour_ago})
    with locks.held(uri, "run-b", wait_s=0, lease_s=600) as holder:
        assert storage.read_json(uri)["token"] == holder.token
    assert not storage.exists(uri)


def test_a_deploy_waits_for_the_one_before_and_resolves_its_version_only_then(
    tmp_path: Path, mlflow_tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second deploy of a model to a target takes the deploy lock before it even reads the registry, so it serves
    what ``--model`` names once the deploy before it has finished. (Waiting itself is the lock's: above.)"""
    from mlsteps.errors import StepError
    from mlsteps.steps import deploy

    run_root = str(tmp_path / "runs" / "d2")
    lock = locks.lock_uri(locks.lock_root(run_root), MODEL_NAME, "deploy-local")
    monkeypatch.setattr(deploy, "DEPLOY_LOCK_WAIT_S", 0.2)

    def second_deploy() -> None:
        deploy.run(run_root, PIPELINE, target="local", model="champion", state_dir=tmp_path / "serving")

    with locks.held(lock, "deploy-run-1", wait_s=0, lease_s=600), pytest.raises(locks.LockTimeout) as waited:
        second_deploy()  # an empty registry: had it read it, it would have failed on the missing model instead
    assert "held by deploy-run-1" in str(waited.value)
    with pytest.raises(StepError, match=MODEL_NAME):  # the first let go: it goes on and reads the registry
        second_deploy()
    assert not storage.exists(results.result_uri(run_root, "deploy"))
