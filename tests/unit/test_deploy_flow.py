"""run_deploy and the smoke test against the real model server app, with the registry on MLflow SQLite.

The target is a small double: the server app of mlsteps.serve runs on a local port in this process (uvicorn in a
thread), and rolling out swaps the version's bundle into it, as a reload does. Its knobs make it fail the ways a
real target does: the rollout itself fails, it reports done but keeps serving the old version, or the
infrastructure errors. The canary flow runs KubernetesTarget on the in-memory cluster of test_deploy_kube, with the
same local server standing in for every pod.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_models import GOOD, MODEL_NAME, WORSE, break_bundle, register_with_bundle
from ports import free_port
from test_deploy_kube import CANARY, MAIN, FakeClock, FakeCluster, main_deployment

from mlsteps import registry, tracking
from mlsteps.config import ServingConfig, load_pipeline_config
from mlsteps.deploy import DeployFailed, run_deploy
from mlsteps.deploy.kube import MODEL_VERSION_ENV, KubernetesTarget
from mlsteps.deploy.smoke import smoke_test
from mlsteps.errors import ConfigError
from mlsteps.serve.app import create_app
from mlsteps.serve.model import ModelHandle, load_model, registry_loader
from mlsteps.serving_bundle import BundleError, read_bundle

ACTOR = "manual__2025-06-02T10:00:00+00:00"


def _settings(**smoke: Any) -> ServingConfig:
    """Serving settings with a short smoke test; the latency budget is generous unless a test sets it (shared CPUs)."""
    smoke = {"requests": 5, "latency_budget_ms": 10_000, **smoke}
    return load_pipeline_config(overrides={"serving": {"smoke": smoke}}).serving


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ModelHandle]]:
    """The real server app on a free local port, with an empty model handle; yields (base URL, handle)."""
    import uvicorn

    handle = ModelHandle()
    port = free_port()
    config = uvicorn.Config(create_app(handle), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", handle
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


class InProcessTarget:
    """A serving target whose server is the app above: roll_out loads the version from the registry and swaps it in."""

    name = "in-process"

    def __init__(self, url: str, handle: ModelHandle, client: Any) -> None:
        self.url, self.handle = url, handle
        self.load = registry_loader(MODEL_NAME, client=client)
        self.rollouts: list[int] = []
        self.rollbacks: list[int | None] = []
        self.stale = False  # roll_out reports success but the old version keeps serving
        self.rollout_error: Exception | None = None  # roll_out raises this instead
        self.rollback_error: Exception | None = None

    def current_version(self) -> int | None:
        return None if self.handle.current is None else int(self.handle.current.version)

    def roll_out(self, version: int) -> None:
        self.rollouts.append(version)
        if self.rollout_error is not None:
            raise self.rollout_error
        if self.stale:
            return
        try:
            self.handle.swap(self.load(str(version)))
        except BundleError as exc:  # the server refuses the version: the rollout failed
            raise DeployFailed(f"v{version} did not load: {exc}") from None

    def roll_back(self, version: int | None) -> None:
        self.rollbacks.append(version)
        if self.rollback_error is not None:
            raise self.rollback_error
        if version is None:
            self.handle.current = None
        else:
            self.handle.swap(self.load(str(version)))

    def endpoint(self) -> str:
        return self.url


@pytest.fixture
def target(server: tuple[str, ModelHandle], mlflow_tracking: str) -> InProcessTarget:
    url, handle = server
    handle.current = None
    return InProcessTarget(url, handle, tracking.client())


def _deploy(target: InProcessTarget, version: int, settings: ServingConfig | None = None, **options: Any) -> dict:
    client = tracking.client()
    options = {
        "strategy": "rolling",
        "canary_share": 0.1,
        "settings": settings or _settings(),
        "actor": ACTOR,
    } | options
    return run_deploy(target, client, MODEL_NAME, version, **options)


def _champion() -> int | None:
    return registry.alias_version_number(tracking.client(), MODEL_NAME, registry.CHAMPION)


def _make_champion(version: int) -> None:
    registry.move_alias(tracking.client(), MODEL_NAME, registry.CHAMPION, version, actor="test", reason="promote")


def test_first_deploy_serves_the_version_and_reports_the_smoke_test(target: InProcessTarget) -> None:
    version = register_with_bundle(GOOD)

    result = _deploy(target, version)

    assert target.current_version() == version
    assert {key: result[key] for key in ("model_name", "version", "previous_version", "target", "strategy")} == {
        "model_name": MODEL_NAME,
        "version": version,
        "previous_version": None,
        "target": "in-process",
        "strategy": "rolling",
    }
    assert result["outcome"] == "deployed"
    smoke = result["smoke"]
    assert smoke["passed"] and smoke["failures"] == []
    assert smoke["requests"] == 5 and smoke["served_versions"] == {str(version): 5}
    assert smoke["max_difference"] <= 1e-4 and smoke["p99_ms"] <= smoke["latency_budget_ms"]
    assert (smoke["compared"], smoke["difference"]) == ("probability", "absolute probability difference")
    assert result["reason"].startswith(f"{MODEL_NAME} v{version} serves on in-process: smoke test passed")

    again = _deploy(target, version)

    assert (
        again["outcome"] == "unchanged" and again["reason"] == f"{MODEL_NAME} v{version} already serves on in-process"
    )
    assert target.rollouts == [version]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("stale", r"answers came from another version \(x-model-version \{'1': 5\}, expected '2'\)"),
        ("slow", r"p99 latency [\d.]+ ms over 5 requests exceeds the budget 0 ms"),
        ("broken", r"v2 did not load: .* fails its smoke check"),
    ],
)
def test_a_failed_version_is_rolled_back_and_champion_moves_back(
    target: InProcessTarget, failure: str, reason: str
) -> None:
    first = register_with_bundle(GOOD)
    _deploy(target, first)
    failed = register_with_bundle(WORSE, broken=failure == "broken")
    _make_champion(first)
    _make_champion(failed)
    target.stale = failure == "stale"
    settings = _settings(latency_budget_ms=1e-6) if failure == "slow" else _settings()

    with pytest.raises(
        DeployFailed, match=rf"v{failed} was rolled back on in-process, v{first} serves again: .*{reason}"
    ):
        _deploy(target, failed, settings)

    assert target.current_version() == first and target.rollbacks == [first]
    assert _champion() == first
    last = registry.alias_history(tracking.client(), MODEL_NAME, registry.CHAMPION)[-1]
    assert (last.from_version, last.to_version, last.actor) == (failed, first, ACTOR)
    assert last.reason.startswith("rollback: ")


def test_the_rolled_back_result_says_what_failed(target: InProcessTarget) -> None:
    first, second = register_with_bundle(GOOD), register_with_bundle(WORSE)
    _deploy(target, first)
    target.stale = True

    with pytest.raises(DeployFailed) as raised:
        _deploy(target, second)

    result = raised.value.details
    assert result["outcome"] == "rolled_back" and result["previous_version"] == first
    assert result["champion_moved"] is None  # champion never pointed at the failed version
    assert result["smoke"]["passed"] is False
    # The old model answered: wrong version and wrong probabilities are both reported.
    assert [failure.split(" ")[0] for failure in result["smoke"]["failures"]] == ["5", "probability"]
    assert result["reason"] in str(raised.value)


def test_a_failed_first_deploy_stops_serving_and_removes_champion(target: InProcessTarget) -> None:
    version = register_with_bundle(GOOD)
    _make_champion(version)
    target.stale = True  # nothing loads, so nothing answers

    with pytest.raises(DeployFailed, match=r"rolled back on in-process, nothing serves again: smoke test .* HTTP 503"):
        _deploy(target, version)

    assert target.rollbacks == [None] and target.current_version() is None
    assert _champion() is None
    last = registry.alias_history(tracking.client(), MODEL_NAME, registry.CHAMPION)[-1]
    assert (last.from_version, last.to_version) == (version, None)


def test_an_infrastructure_error_rolls_back_but_leaves_champion_for_the_retry(target: InProcessTarget) -> None:
    version = register_with_bundle(GOOD)
    _make_champion(version)
    target.rollout_error = ConnectionResetError("API server went away")

    with pytest.raises(ConnectionResetError):
        _deploy(target, version)

    assert target.rollbacks == [None]
    assert _champion() == version


def test_a_failed_rollback_says_so(target: InProcessTarget) -> None:
    version = register_with_bundle(GOOD)
    target.stale = True
    target.rollback_error = TimeoutError("rollout did not complete")

    with pytest.raises(
        DeployFailed, match=r"and the rollback to nothing failed too \(rollout did not complete\)"
    ) as raised:
        _deploy(target, version)

    assert raised.value.details["outcome"] == "rollback_failed"


def test_canary_needs_a_target_that_can_run_one(target: InProcessTarget) -> None:
    with pytest.raises(ConfigError, match="strategy canary needs a target that can run a canary .* 'in-process'"):
        _deploy(target, 1, strategy="canary")
    with pytest.raises(ConfigError, match="unknown deploy strategy 'blue-green'"):
        _deploy(target, 1, strategy="blue-green")
    assert target.rollouts == []


def test_smoke_test_of_a_server_that_does_not_answer_names_the_url(serving_bundle_dir: Path) -> None:
    bundle = read_bundle(serving_bundle_dir)
    port = free_port()

    with pytest.raises(DeployFailed, match=rf"127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer: request 1 of 5 failed"):
        smoke_test(f"http://127.0.0.1:{port}", MODEL_NAME, bundle, _settings().smoke)


def test_smoke_test_catches_wrong_probabilities(
    server: tuple[str, ModelHandle], serving_bundle_dir: Path, tmp_path: Path
) -> None:
    url, handle = server
    handle.current = load_model(read_bundle(serving_bundle_dir))
    expected_wrong = read_bundle(break_bundle(shutil.copytree(serving_bundle_dir, tmp_path / "broken")))

    with pytest.raises(DeployFailed, match=r"probability of smoke row \d+ is [\d.]+, expected [\d.]+") as raised:
        smoke_test(url, MODEL_NAME, expected_wrong, _settings().smoke)

    assert raised.value.details["requests"] == 5 and raised.value.details["max_difference"] > 1e-4


@pytest.mark.parametrize(
    ("task", "compared", "wrong"),
    [
        ("multiclass", "probabilities", r"probabilities of smoke row \d+ is \[[\d., ]+\], expected \[[\d., ]+\]"),
        ("regression", "prediction", r"prediction of smoke row \d+ is [\d.]+, expected [\d.]+ \(relative prediction"),
    ],
)
def test_smoke_test_compares_the_outputs_of_each_task(
    server: tuple[str, ModelHandle],
    task_bundle_dirs: dict[str, Path],
    tmp_path: Path,
    task: str,
    compared: str,
    wrong: str,
) -> None:
    url, handle = server
    bundle = read_bundle(task_bundle_dirs[task])
    handle.current = load_model(bundle)
    expected_wrong = read_bundle(break_bundle(shutil.copytree(bundle.folder, tmp_path / "broken")))

    report = smoke_test(url, MODEL_NAME, bundle, _settings().smoke)
    with pytest.raises(DeployFailed, match=wrong):
        smoke_test(url, MODEL_NAME, expected_wrong, _settings().smoke)

    assert report["passed"] and (report["compared"], report["rows"]) == (compared, len(bundle.smoke_inputs))
    assert report["max_difference"] <= 1e-6


def _kubernetes_on_the_local_server(url: str, handle: ModelHandle) -> tuple[KubernetesTarget, FakeCluster]:
    """KubernetesTarget on the in-memory cluster whose pods are all the local server.

    The server serves the canary's version while there is a canary, else the main Deployment's; a version that
    does not load makes that Deployment's pods crash-loop, as they would in a cluster.
    """
    port = int(url.rsplit(":", 1)[1])
    main = main_deployment(replicas=4)
    main["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = port
    cluster, clock = FakeCluster(main), FakeClock()
    cluster.pod_address = "127.0.0.1"
    load = registry_loader(MODEL_NAME, client=tracking.client())

    def serve_what_runs(cluster: FakeCluster) -> None:
        name = CANARY if CANARY in cluster.deployments else MAIN
        [container] = cluster.deployments[name]["spec"]["template"]["spec"]["containers"]
        version = next(item["value"] for item in container["env"] if item["name"] == MODEL_VERSION_ENV)
        try:
            handle.swap(load(version))
        except BundleError:
            cluster.behaviour[name] = "stuck"

    cluster.on_change = serve_what_runs
    settings = _kubernetes_settings(url)
    target = KubernetesTarget(
        MODEL_NAME, settings, apps=cluster, core=cluster, clock=lambda: clock.now, sleep=clock.sleep
    )
    return target, cluster


def _kubernetes_settings(url: str) -> ServingConfig:
    overrides = {
        "smoke": {"requests": 5},
        "rollout_timeout_seconds": 30,
        "kubernetes": {"service_url": url},
        "canary": {"observation_seconds": 10},
    }
    return load_pipeline_config(overrides={"serving": overrides}).serving


def test_a_canary_is_smoke_tested_on_its_own_pods_watched_and_promoted(
    server: tuple[str, ModelHandle], mlflow_tracking: str
) -> None:
    url, handle = server
    target, cluster = _kubernetes_on_the_local_server(url, handle)
    first, second = register_with_bundle(GOOD), register_with_bundle(WORSE)
    _deploy(target, first, _kubernetes_settings(url))

    result = _deploy(target, second, _kubernetes_settings(url), strategy="canary", canary_share=0.25)

    assert result["outcome"] == "deployed" and result["strategy"] == "canary" and result["previous_version"] == first
    canary_smoke = result["canary_smoke_0"]
    assert canary_smoke["url"] == f"{url}/v2/models/{MODEL_NAME}/infer" and canary_smoke["served_versions"] == {"2": 5}
    # The smoke requests came before the observation window, and nothing else reached the canary.
    assert result["canary"]["judged"] is False and result["canary"]["requests"] == 0
    assert "judged by the smoke test alone" in result["canary"]["note"]
    assert result["smoke"]["passed"] and target.current_version() == second
    assert CANARY not in cluster.deployments and int(handle.current.version) == second


def test_a_canary_that_never_becomes_ready_is_removed_and_champion_moves_back(
    server: tuple[str, ModelHandle], mlflow_tracking: str
) -> None:
    url, handle = server
    target, cluster = _kubernetes_on_the_local_server(url, handle)
    first = register_with_bundle(GOOD)
    _deploy(target, first, _kubernetes_settings(url))
    broken = register_with_bundle(WORSE, broken=True)
    _make_champion(broken)

    with pytest.raises(
        DeployFailed,
        match=rf"rollout of Deployment ml/{CANARY} did not complete within 30 s.*CrashLoopBackOff",
    ):
        _deploy(target, broken, _kubernetes_settings(url), strategy="canary")

    assert CANARY not in cluster.deployments and target.current_version() == first
    assert int(handle.current.version) == first
    assert _champion() == first
