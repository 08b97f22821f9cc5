"""KubernetesTarget against an in-memory cluster: rollouts, rollbacks, stalls and canaries, with no cluster here.

The fake answers the AppsV1Api/CoreV1Api calls the target makes, keeps Deployments as the API's JSON, applies the
target's JSON patches with the jsonpatch library, and moves a changed Deployment's status forward on each read as
the Deployment controller would. Every Deployment the target creates or patches is validated against the strict
Kubernetes schemas (tests/k8s). Canary pods expose the model server's own metrics (mlsteps.serve.metrics).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest
from k8s.policy import K8S_VERSIONS, validate_schema
from kubernetes.client.exceptions import ApiException

from mlsteps.config import MAX_MODEL_NAME_LENGTH, KubernetesServingConfig, ServingConfig, load_pipeline_config
from mlsteps.deploy import DeployFailed
from mlsteps.deploy.kube import (
    DEPLOYED_AT_ANNOTATION,
    VERSION_ANNOTATION,
    KubernetesTarget,
    histogram_quantile,
    inference_totals,
    parse_metrics,
)
from mlsteps.errors import ConfigError, StepError
from mlsteps.serve.metrics import ServerMetrics
from orchestration.models import DEFAULT_MODELS_DIR
from orchestration.render import model_server_manifests
from orchestration.settings import load_settings

MODEL_NAME = "churn-classifier"
MAIN, CANARY = "model-server-churn-classifier", "model-server-churn-classifier-canary"
CRASH_MESSAGE = "serve failed: model.onnx of churn-classifier v7 fails its smoke check"


def main_deployment(replicas: int, model_config: str = "churn.yaml") -> dict[str, Any]:
    """The Deployment ``make render`` writes for a model, as the API returns it once the HPA set its replicas and it
    has rolled out."""
    model = load_settings(str(DEFAULT_MODELS_DIR / model_config))
    [deployment] = [doc for doc in model_server_manifests(model) if doc["kind"] == "Deployment"]
    deployment["metadata"]["generation"] = 1
    deployment["spec"]["replicas"] = replicas
    return deployment


def _selected(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(key) == value for key, value in (pair.split("=") for pair in selector.split(",")))


class FakeCluster:
    """The AppsV1Api and CoreV1Api methods KubernetesTarget calls, on one namespace.

    A Deployment whose pod template changed rolls out over the next reads: first unobserved, then new pods coming
    up beside the old, then done. ``behaviour[name]`` makes it stall instead (``stuck``: new pods crash-loop) or
    exceed its progress deadline (``deadline``).
    """

    def __init__(self, main: dict[str, Any]) -> None:
        self.deployments = {main["metadata"]["name"]: main}
        self.reads_since_change = {main["metadata"]["name"]: 99}
        self.behaviour: dict[str, str] = {}
        self.written: list[dict[str, Any]] = []  # every Deployment as created or patched
        self.deleted: list[str] = []
        self.refuse_with: int | None = None  # answer every call with this HTTP status
        self.canary_restarts = 0
        self.pod_metrics: dict[str, ServerMetrics] = {}  # by pod IP
        self.pod_address: str | None = None  # every pod's IP (a real server on this machine); default: 10.0.x.y
        self.on_change: Callable[[FakeCluster], None] = lambda cluster: None  # after every create/patch/delete

    def _check(self, name: str | None = None) -> None:
        if self.refuse_with is not None:
            raise ApiException(status=self.refuse_with, reason="Forbidden")
        if name is not None and name not in self.deployments:
            raise ApiException(status=404, reason="Not Found")

    def _changed(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        deployment["metadata"]["generation"] = deployment["metadata"].get("generation", 0) + 1
        self.deployments[name] = deployment
        self.reads_since_change[name] = 0
        self.written.append(copy.deepcopy(deployment))
        self.on_change(self)

    def _status(self, deployment: dict[str, Any], reads: int) -> dict[str, Any]:
        name, generation = deployment["metadata"]["name"], deployment["metadata"]["generation"]
        replicas = deployment["spec"]["replicas"]
        behaviour = self.behaviour.get(name, "healthy")
        if reads == 1:
            return {"observedGeneration": generation - 1, "replicas": replicas, "updatedReplicas": replicas}
        if behaviour == "healthy" and reads >= 3:
            every = {"replicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}
            return {"observedGeneration": generation, **every}
        status = {"observedGeneration": generation, "replicas": replicas + 1, "updatedReplicas": 1}
        if behaviour == "deadline" and reads >= 3:
            status["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{name}-7f9c" has timed out progressing.',
                }
            ]
        return status

    # AppsV1Api

    def read_namespaced_deployment(self, name: str, namespace: str) -> dict[str, Any]:
        self._check(name)
        self.reads_since_change[name] += 1
        deployment = copy.deepcopy(self.deployments[name])
        deployment["status"] = self._status(deployment, self.reads_since_change[name])
        return deployment

    def patch_namespaced_deployment(self, name: str, namespace: str, body: list[dict[str, Any]]) -> dict[str, Any]:
        self._check(name)
        self._changed(jsonpatch.apply_patch(self.deployments[name], body))
        return self.deployments[name]

    def create_namespaced_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if body["metadata"]["name"] in self.deployments:
            raise ApiException(status=409, reason="AlreadyExists")
        self._changed(copy.deepcopy(body))
        return body

    def replace_namespaced_deployment(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check(name)
        self._changed({**copy.deepcopy(body), "metadata": {**self.deployments[name]["metadata"], **body["metadata"]}})
        return body

    def delete_namespaced_deployment(self, name: str, namespace: str) -> None:
        self._check(name)
        del self.deployments[name]
        self.deleted.append(name)
        self.on_change(self)

    # CoreV1Api

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> dict[str, Any]:
        self._check()
        pods = []
        for number, (name, deployment) in enumerate(self.deployments.items()):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            if not _selected(labels, label_selector):
                continue
            crashing = self.behaviour.get(name) == "stuck"
            restarts = self.canary_restarts if name == CANARY else 0
            for index in range(deployment["spec"]["replicas"]):
                container = {"name": "model-server", "ready": not crashing, "restartCount": restarts}
                if crashing:
                    container["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
                    container["lastState"] = {
                        "terminated": {"exitCode": 2, "message": f"INFO loading\n{CRASH_MESSAGE}"}
                    }
                ready = {"type": "Ready", "status": "False" if crashing else "True"}
                pods.append(
                    {
                        "metadata": {"name": f"{name}-{index}", "labels": labels},
                        "status": {
                            "podIP": self.pod_address or f"10.0.{number}.{index + 1}",
                            "conditions": [ready],
                            "containerStatuses": [container],
                        },
                    }
                )
        return {"items": pods}

    def scrape(self, url: str) -> str:
        """GET http://<pod IP>:<port>/metrics of a pod: its server metrics' exposition."""
        address = url.split("//")[1].split(":")[0]
        return self.pod_metrics.setdefault(address, ServerMetrics()).render().decode()


class FakeClock:
    """Monotonic time that moves only when the target sleeps; each sleep lets ``traffic`` hit the canary pods."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.traffic: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.traffic()


def _settings(**canary: Any) -> ServingConfig:
    overrides = {"rollout_timeout_seconds": 30, "poll_seconds": 2, "canary": {"observation_seconds": 60, **canary}}
    return load_pipeline_config(overrides={"serving": overrides}).serving


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(main_deployment(replicas=4))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _target(cluster: FakeCluster, clock: FakeClock, settings: ServingConfig | None = None) -> KubernetesTarget:
    return KubernetesTarget(
        MODEL_NAME,
        settings or _settings(),
        apps=cluster,
        core=cluster,
        scrape=cluster.scrape,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )


def _server_env(deployment: dict[str, Any]) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"]}


def _assert_valid(deployments: list[dict[str, Any]]) -> None:
    assert deployments
    for deployment in deployments:
        for version in K8S_VERSIONS:
            validate_schema({key: value for key, value in deployment.items() if key != "status"}, version)


def test_roll_out_sets_the_version_and_waits_until_every_replica_serves_it(
    cluster: FakeCluster, clock: FakeClock
) -> None:
    target = _target(cluster, clock)
    assert target.current_version() is None  # the manifest serves the champion alias until the first deploy

    target.roll_out(7)

    assert target.current_version() == 7
    main = cluster.deployments[MAIN]
    assert _server_env(main) | {"MODEL_VERSION": "7"} == _server_env(main)
    assert _server_env(main)["MODEL_ALIAS"] == "champion"  # kept: the version wins, the alias stays the fallback
    annotations = main["spec"]["template"]["metadata"]["annotations"]
    assert annotations[VERSION_ANNOTATION] == "7" and annotations[DEPLOYED_AT_ANNOTATION].endswith("+00:00")
    assert main["spec"]["template"]["metadata"]["labels"]["track"] == "stable"
    # Unobserved, then pods coming up, then done: two polls.
    assert clock.sleeps == [2, 2]
    _assert_valid(cluster.written)


def test_roll_back_puts_back_the_exact_template_that_served_before(cluster: FakeCluster, clock: FakeClock) -> None:
    before = copy.deepcopy(cluster.deployments[MAIN]["spec"]["template"])
    target = _target(cluster, clock)
    target.roll_out(7)
    target.roll_out(8)

    target.roll_back(None)

    assert cluster.deployments[MAIN]["spec"]["template"] == before
    assert target.current_version() is None
    assert cluster.deleted == []  # no canary was there to remove


def test_each_deploy_rolls_back_to_what_served_when_it_started(cluster: FakeCluster, clock: FakeClock) -> None:
    target = _target(cluster, clock)
    for version in (7, 8):  # two deploys through one target, each starting as run_deploy does
        target.current_version()
        target.roll_out(version)

    target.roll_back(7)

    assert target.current_version() == 7
    assert cluster.deployments[MAIN]["spec"]["template"] == cluster.written[0]["spec"]["template"]


def test_roll_back_without_a_saved_template_rolls_the_version_out(cluster: FakeCluster, clock: FakeClock) -> None:
    _target(cluster, clock).roll_out(5)
    fresh = _target(cluster, clock)  # another process: nothing saved

    fresh.roll_back(4)

    assert fresh.current_version() == 4


def test_a_stuck_rollout_times_out_naming_why_the_pods_are_not_ready(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.behaviour[MAIN] = "stuck"
    target = _target(cluster, clock)

    with pytest.raises(DeployFailed) as raised:
        target.roll_out(7)

    message = str(raised.value)
    assert message.startswith(
        f"rollout of Deployment ml/{MAIN} did not complete within 30 s (serving.rollout_timeout_seconds): "
        f"1 of 4 replicas updated; pods: {MAIN}-0: CrashLoopBackOff, last exit 2: INFO loading\n" + CRASH_MESSAGE
    )
    assert message.endswith("(and 1 more)")
    assert clock.now == 30


def test_a_progress_deadline_fails_the_rollout_at_once(cluster: FakeCluster, clock: FakeClock) -> None:
    cluster.behaviour[MAIN] = "deadline"

    with pytest.raises(DeployFailed, match=rf"rollout of Deployment ml/{MAIN} failed: ProgressDeadlineExceeded: "):
        _target(cluster, clock).roll_out(7)

    assert clock.now == 4


def test_refusals_that_a_retry_cannot_fix_say_what_to_do(cluster: FakeCluster, clock: FakeClock) -> None:
    target = _target(cluster, clock)
    cluster.refuse_with = 403
    refused = rf"reading Deployment ml/{MAIN}: .*HTTP 403 .*ServiceAccount \(by default ml-deploy-{MODEL_NAME}\)"
    with pytest.raises(StepError, match=refused):
        target.roll_out(7)

    cluster.refuse_with = None
    cluster.deployments[MAIN]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "fraud-detector"
    with pytest.raises(StepError, match=r"serves model 'fraud-detector' \(MODEL_NAME\), not 'churn-classifier'"):
        target.current_version()

    del cluster.deployments[MAIN]
    with pytest.raises(StepError, match=rf"not found in namespace ml: .*kubectl apply .*{MAIN}\.yaml"):
        target.current_version()


def _serve_canary_traffic(cluster: FakeCluster, requests: int, *, errors: int = 0, seconds: float = 0.004) -> None:
    for address, metrics in cluster.pod_metrics.items():
        if address.startswith("10.0.1."):  # the canary, the second Deployment
            for number in range(requests):
                metrics.observe("infer", 500 if number < errors else 200, seconds)
            metrics.observe("metadata", 200, 5.0)  # not an inference: never judged


def test_a_healthy_canary_is_judged_by_its_metrics_then_promoted(cluster: FakeCluster, clock: FakeClock) -> None:
    target = _target(cluster, clock)

    target.start_canary(7, 0.25)

    canary = cluster.deployments[CANARY]
    assert canary["spec"]["replicas"] == 1  # round(0.25 * 4)
    assert canary["spec"]["selector"]["matchLabels"]["track"] == "canary"
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert _server_env(canary)["MODEL_VERSION"] == "7"
    assert target.current_version() is None  # the stable pods are untouched
    assert target.canary_endpoints() == ["http://10.0.1.1:8080"]

    clock.traffic = lambda: _serve_canary_traffic(cluster, 50, seconds=0.004)
    report = target.observe_canary()

    assert clock.now - 4 == 60  # observed for serving.canary.observation_seconds, after a 4 s rollout
    assert report["judged"] is True and report["requests"] == 1500 and report["errors"] == 0
    assert report["error_rate"] == 0.0 and 2.5 < report["p99_ms"] <= 5.0
    assert report["pods"] == [f"{CANARY}-0"] and report["restarts"] == {}

    target.promote_canary(7)

    assert target.current_version() == 7
    assert CANARY not in cluster.deployments and cluster.deleted == [CANARY]
    _assert_valid(cluster.written)
    assert [deployment["metadata"]["name"] for deployment in cluster.written] == [CANARY, MAIN]


@pytest.mark.parametrize(
    ("traffic", "failure"),
    [
        (
            {"requests": 100, "errors": 10},
            r"error rate 0.1000 \(300 of 3000 requests answered 5xx\) > max_error_rate 0.01",
        ),
        ({"requests": 100, "seconds": 0.8}, r"p99 latency \d+\.\d ms > max_p99_ms 250 ms"),
    ],
)
def test_a_canary_over_its_limits_fails_and_the_rollback_removes_it(
    cluster: FakeCluster, clock: FakeClock, traffic: dict[str, Any], failure: str
) -> None:
    before = copy.deepcopy(cluster.deployments[MAIN])
    target = _target(cluster, clock)
    target.start_canary(7, 0.1)
    clock.traffic = lambda: _serve_canary_traffic(cluster, **traffic)

    with pytest.raises(DeployFailed, match=rf"canary Deployment ml/{CANARY}: {failure}") as raised:
        target.observe_canary()
    target.roll_back(None)

    assert raised.value.details["judged"] is True
    assert cluster.deleted == [CANARY]
    assert cluster.deployments[MAIN]["spec"] == before["spec"]  # the stable pods were never touched


def test_a_quiet_canary_is_left_to_the_smoke_test_and_says_so(cluster: FakeCluster, clock: FakeClock) -> None:
    target = _target(cluster, clock, _settings(min_requests=500))
    target.start_canary(7, 0.1)
    clock.traffic = lambda: _serve_canary_traffic(cluster, 10, errors=10)

    report = target.observe_canary()

    assert report["judged"] is False and report["requests"] == 300
    assert report["note"] == (
        "300 inference requests reached the canary in 60 s, fewer than serving.canary.min_requests 500: "
        "judged by the smoke test alone"
    )


def test_a_restarting_canary_pod_fails(cluster: FakeCluster, clock: FakeClock) -> None:
    target = _target(cluster, clock)
    target.start_canary(7, 0.1)

    def crash() -> None:
        cluster.canary_restarts = 1

    clock.traffic = crash
    with pytest.raises(DeployFailed, match=rf"canary pod {CANARY}-0 restarted 1 time\(s\)"):
        target.observe_canary()


def test_a_canary_left_over_from_an_interrupted_deploy_is_taken_over(cluster: FakeCluster, clock: FakeClock) -> None:
    _target(cluster, clock).start_canary(6, 0.1)

    _target(cluster, clock).start_canary(7, 0.5)

    canary = cluster.deployments[CANARY]
    assert _server_env(canary)["MODEL_VERSION"] == "7" and canary["spec"]["replicas"] == 2
    _assert_valid(cluster.written)


def test_a_canary_needs_the_stable_track_on_the_main_deployment(cluster: FakeCluster, clock: FakeClock) -> None:
    del cluster.deployments[MAIN]["spec"]["selector"]["matchLabels"]["track"]

    with pytest.raises(StepError, match=r"without track=stable: its pods and the canary's would overlap"):
        _target(cluster, clock).start_canary(7, 0.1)

    assert CANARY not in cluster.deployments


def test_each_model_has_its_own_object_names_unless_its_config_sets_them() -> None:
    names = KubernetesServingConfig().for_model("tier-classifier")
    assert (names.deployment, names.canary_deployment, names.service, names.service_url) == (
        "model-server-tier-classifier",
        "model-server-tier-classifier-canary",
        "model-server-tier-classifier",
        "http://model-server-tier-classifier.ml.svc.cluster.local",
    )
    chosen = KubernetesServingConfig(deployment="tiers", service="tiers-http").for_model("tier-classifier")
    assert (chosen.deployment, chosen.canary_deployment, chosen.service_url) == (
        "tiers",
        "tiers-canary",
        "http://tiers-http.ml.svc.cluster.local",
    )
    # The longest model name models.py accepts still gives Kubernetes names (at most 63 characters).
    assert len(KubernetesServingConfig().for_model("a" * MAX_MODEL_NAME_LENGTH).canary_deployment) == 63
    too_long = "a" * (MAX_MODEL_NAME_LENGTH + 1)
    refused = rf"model '{too_long}' gives \{{'canary_deployment': .* at most {MAX_MODEL_NAME_LENGTH} such"
    with pytest.raises(ConfigError, match=refused):
        KubernetesServingConfig().for_model(too_long)
    with pytest.raises(ConfigError, match=r"'service': 'model-server-Model Server'\}, not Kubernetes names"):
        KubernetesServingConfig().for_model("Model Server")


def test_a_models_target_changes_only_that_models_deployments(clock: FakeClock) -> None:
    churn, tiers = main_deployment(replicas=4), main_deployment(replicas=4, model_config="tiers.yaml")
    cluster = FakeCluster(churn)
    tiers_name = tiers["metadata"]["name"]
    cluster.deployments[tiers_name], cluster.reads_since_change[tiers_name] = tiers, 99
    churn_before = copy.deepcopy(churn)
    target = KubernetesTarget(
        "tier-classifier",
        _settings(),
        apps=cluster,
        core=cluster,
        scrape=cluster.scrape,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )

    target.start_canary(7, 0.25)
    target.promote_canary(7)

    assert tiers_name == "model-server-tier-classifier"
    assert [deployment["metadata"]["name"] for deployment in cluster.written] == [f"{tiers_name}-canary", tiers_name]
    canary_selector = cluster.written[0]["spec"]["selector"]["matchLabels"]
    assert canary_selector["app.kubernetes.io/instance"] == "tier-classifier", "never selects another model's pods"
    assert _server_env(cluster.deployments[tiers_name])["MODEL_VERSION"] == "7"
    assert cluster.deployments[MAIN] == churn_before and cluster.deleted == [f"{tiers_name}-canary"]
    _assert_valid(cluster.written)


def test_metrics_parsing_and_the_p99_follow_prometheus() -> None:
    metrics = ServerMetrics()
    for number in range(100):
        metrics.observe("infer", 503 if number < 3 else 200, 0.003 if number < 90 else 0.02)
    metrics.observe("invocations", 200, 0.003)
    metrics.observe("load", 200, 3.0)

    totals = inference_totals(parse_metrics(metrics.render().decode()))

    assert (totals["requests"], totals["errors"]) == (101, 3)
    assert totals["buckets"][0.005] == 91 and totals["buckets"][float("inf")] == 101
    # 0.99 * 101 = 99.99 requests: in the (0.01, 0.025] bucket, which holds requests 92..101.
    assert histogram_quantile(0.99, totals["buckets"]) == pytest.approx(0.01 + 0.015 * (99.99 - 91) / 10)
    assert histogram_quantile(0.99, {}) is None
