"""The Kubernetes serving target: a model's own server Deployment, rolled out by version, with an optional canary.

Each model has its own Deployment (``model-server-<model>`` unless ``serving.kubernetes`` names it), which
``make render`` writes from include/k8s/model-server.yaml, and the deploy step of a model may change only that one
and its canary (its ServiceAccount's Role, from include/k8s/rbac-ml-deploy.yaml).

The Deployment's server container gets ``MODEL_VERSION=<version>`` (the server then loads that version, not
whatever ``champion`` points at when a pod happens to restart), and the pod template an annotation with the version
and the deploy time. Rollouts are followed by polling the Deployment's status (the deploy pod may get, not watch),
the way ``kubectl rollout status`` judges them. A rollback puts back the exact pod template that served before, so
Kubernetes scales the previous ReplicaSet up again.

A canary is a second Deployment made from the main one's pod template with ``track=canary`` and the new version;
the main one's pods carry ``track=stable`` (include/k8s/model-server.yaml), so the two never select each other's
pods while the Service selects both. The canary's pods are judged by their own ``/metrics``: the share of inference
requests answered 5xx and the p99 latency, once they have served enough requests to judge.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from mlsteps.config import ServingConfig
from mlsteps.deploy import DeployFailed
from mlsteps.errors import StepError

TRACK_LABEL = "track"
STABLE = "stable"
CANARY = "canary"
MODEL_VERSION_ENV = "MODEL_VERSION"
MODEL_NAME_ENV = "MODEL_NAME"
VERSION_ANNOTATION = "continuous-training/model-version"
DEPLOYED_AT_ANNOTATION = "continuous-training/deployed-at"
HTTP_PORT_NAME = "http"
DEFAULT_HTTP_PORT = 8080
# What the model server exports (mlsteps.serve): requests by endpoint and status code, and a latency histogram.
REQUESTS_METRIC = "mlsteps_serve_requests_total"
LATENCY_METRIC = "mlsteps_serve_request_duration_seconds"
INFER_ENDPOINTS = frozenset({"infer", "invocations"})
SCRAPE_TIMEOUT_SECONDS = 5
_MAX_PODS_DESCRIBED = 3
_MESSAGE_EXCERPT_CHARS = 300

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _load_cluster_config() -> None:
    """In-cluster credentials in a pod (the ServiceAccount token), else the kubeconfig."""
    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()


def _http_get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
        return response.read().decode("utf-8")


def rollout_status(deployment: dict[str, Any]) -> tuple[str, str]:
    """Where a Deployment's rollout stands, judged as ``kubectl rollout status`` does.

    Returns:
        ``("done" | "waiting" | "failed", what it waits for or why it failed)``.
    """
    metadata, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    if metadata.get("generation", 0) > status.get("observedGeneration", 0):
        return "waiting", "the controller has not observed the new pod template yet"
    for condition in status.get("conditions") or []:
        stalled = condition.get("status") == "False" or condition.get("reason") == "ProgressDeadlineExceeded"
        if condition.get("type") == "Progressing" and stalled:
            return "failed", f"{condition.get('reason')}: {condition.get('message')}"
    wanted = spec.get("replicas", 1)
    updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < wanted:
        return "waiting", f"{updated} of {wanted} replicas updated"
    if total > updated:
        return "waiting", f"{total - updated} old replicas pending termination"
    if available < updated:
        return "waiting", f"{available} of {updated} updated replicas available"
    return "done", f"{updated} of {wanted} replicas updated and available"


def parse_metrics(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition: ``(name, labels, value)`` (enough for counters and histograms)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None:  # comments (HELP, TYPE) and blank lines
            continue
        # Escapes stay as they are: the labels read here (endpoint, code, le) have none.
        samples.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), float(match["value"])))
    return samples


def inference_totals(samples: list[Sample]) -> dict[str, Any]:
    """Inference requests, 5xx answers and the cumulative latency buckets (seconds) of one scrape."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for name, labels, value in samples:
        if labels.get("endpoint") not in INFER_ENDPOINTS:
            continue
        if name == REQUESTS_METRIC:
            requests += value
            errors += value if labels.get("code", "").startswith("5") else 0.0
        elif name == f"{LATENCY_METRIC}_bucket":
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return {"requests": requests, "errors": errors, "buckets": buckets}


def _counter_delta(before: float, after: float) -> float:
    """Growth of a counter; a smaller value means the process restarted and counted from zero."""
    return after - before if after >= before else after


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """A quantile from cumulative buckets, interpolated within its bucket as Prometheus' histogram_quantile does."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _env_value(container: dict[str, Any], name: str) -> str | None:
    return next((item.get("value") for item in container.get("env") or [] if item["name"] == name), None)


def _matching(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


class KubernetesTarget:
    """A model's server Deployment in a cluster as a serving target (rolling and canary).

    Args:
        model_name: the registered model the Deployment serves (checked against its ``MODEL_NAME``); unset names of
            ``serving.kubernetes`` derive from it.
        settings: the ``serving:`` config (names, timeouts, canary limits).
        apps: an ``AppsV1Api``; default: one on the in-cluster config or the kubeconfig.
        core: a ``CoreV1Api``; default: as ``apps``.
        scrape: reads a URL's text (a canary pod's ``/metrics``); default: urllib.
        clock: monotonic seconds; with ``sleep``, replaceable so tests do not wait.
        sleep: waits a number of seconds.
    """

    name = "kubernetes"

    def __init__(
        self,
        model_name: str,
        settings: ServingConfig,
        *,
        apps: Any = None,
        core: Any = None,
        scrape: Callable[[str], str] = _http_get_text,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes import client

        if apps is None or core is None:
            _load_cluster_config()
        self._apps = apps or client.AppsV1Api()
        self._core = core or client.CoreV1Api()
        self._serializer = client.ApiClient()
        self._model_name = model_name
        self._settings = settings
        self._names = settings.kubernetes.for_model(model_name)
        self._scrape, self._clock, self._sleep = scrape, clock, sleep
        # The pod template that served before this target changed anything: what roll_back restores.
        self._template_before: dict[str, Any] | None = None

    # -- reading -------------------------------------------------------------------------------------------------

    def _where(self, name: str) -> str:
        return f"Deployment {self._names.namespace}/{name}"

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Turn the API's answers that a retry cannot fix into a StepError that says what to do."""
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as exc:
            if exc.status in (401, 403):
                raise StepError(
                    f"{what}: the Kubernetes API refused it (HTTP {exc.status} {exc.reason}): run the deploy pod as "
                    f"model {self._model_name}'s own ServiceAccount (by default ml-deploy-{self._model_name}) and "
                    f"apply its Role, which make render writes to rbac-ml-deploy-{self._model_name}.yaml"
                ) from None
            if exc.status == 404:
                raise StepError(
                    f"{what}: not found in namespace {self._names.namespace}: apply the manifests make render writes "
                    f"(kubectl apply -f build/k8s/manifests/, model-server-{self._model_name}.yaml among them) or fix "
                    "serving.kubernetes in the model's config"
                ) from None
            if exc.status == 422:
                body = (exc.body or "")[:_MESSAGE_EXCERPT_CHARS]
                raise StepError(f"{what}: the API server rejected it as invalid: {body}") from None
            raise

    def _plain(self, api_object: Any) -> Any:
        """An API object as the JSON the API server speaks (camelCase keys, unset fields left out)."""
        return self._serializer.sanitize_for_serialization(api_object)

    def _read(self, name: str) -> dict[str, Any]:
        with self._api(f"reading {self._where(name)}"):
            return self._plain(self._apps.read_namespaced_deployment(name, self._names.namespace))

    def _pods(self, selector: dict[str, str]) -> list[dict[str, Any]]:
        with self._api(f"listing pods {_matching(selector)}"):
            found = self._core.list_namespaced_pod(self._names.namespace, label_selector=_matching(selector))
        return self._plain(found).get("items") or []

    def _server_container(self, template: dict[str, Any], name: str) -> dict[str, Any]:
        """The server container of a pod template, after checking that it serves this target's model.

        Raises:
            StepError: the template has no such container, or it serves another model (``MODEL_NAME``).
        """
        containers = template["spec"]["containers"]
        container = next((item for item in containers if item["name"] == self._names.container), None)
        if container is None:
            raise StepError(
                f"{self._where(name)} has no container {self._names.container!r} (it has "
                f"{[item['name'] for item in containers]}): fix serving.kubernetes.container"
            )
        served = _env_value(container, MODEL_NAME_ENV)
        if served is not None and served != self._model_name:
            raise StepError(
                f"{self._where(name)} serves model {served!r} ({MODEL_NAME_ENV}), not {self._model_name!r}: "
                "fix registry.model_name or serving.kubernetes.deployment"
            )
        return container

    def current_version(self) -> int | None:
        """The ``MODEL_VERSION`` the Deployment's server container is set to; None when unset (serving by alias).

        A deploy starts by asking this, so the pod template read here is also what ``roll_back`` restores.
        """
        name = self._names.deployment
        template = self._read(name)["spec"]["template"]
        value = _env_value(self._server_container(template, name), MODEL_VERSION_ENV)
        self._template_before = template
        if value is None:
            return None
        if not str(value).isdigit():
            raise StepError(
                f"{self._where(name)} sets {MODEL_VERSION_ENV}={value!r}, not a version number: "
                "deploy a version to replace it"
            )
        return int(value)

    def endpoint(self) -> str:
        """The Service's URL: it reaches every serving pod."""
        return self._names.service_url

    # -- rolling out ---------------------------------------------------------------------------------------------

    def _versioned_template(self, template: dict[str, Any], version: int, name: str) -> dict[str, Any]:
        """A copy of a pod template that serves ``version``."""
        updated = copy.deepcopy(template)
        container = self._server_container(updated, name)
        env = [item for item in container.get("env") or [] if item["name"] != MODEL_VERSION_ENV]
        container["env"] = [*env, {"name": MODEL_VERSION_ENV, "value": str(version)}]
        metadata = updated.setdefault("metadata", {})
        metadata["annotations"] = {
            **(metadata.get("annotations") or {}),
            VERSION_ANNOTATION: str(version),
            DEPLOYED_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return updated

    def _replace_template(self, name: str, template: dict[str, Any]) -> None:
        # A JSON patch replaces the whole template, so a rollback also removes what the failed version added.
        patch = [{"op": "replace", "path": "/spec/template", "value": template}]
        with self._api(f"patching {self._where(name)}"):
            self._apps.patch_namespaced_deployment(name, self._names.namespace, patch)

    def _pod_problems(self, selector: dict[str, str]) -> str:
        """Why pods are not ready (waiting reasons, last exit and its message), for failure messages."""
        problems = []
        for pod in self._pods(selector):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if status.get("ready"):
                    continue
                waiting = (status.get("state") or {}).get("waiting") or {}
                terminated = (status.get("lastState") or {}).get("terminated") or {}
                parts = [waiting.get("reason") or "not ready"]
                if terminated:
                    message = (terminated.get("message") or "").strip()[-_MESSAGE_EXCERPT_CHARS:]
                    parts.append(f"last exit {terminated.get('exitCode')}" + (f": {message}" if message else ""))
                problems.append(f"{pod['metadata']['name']}: {', '.join(parts)}")
        if not problems:
            return ""
        more = f" (and {len(problems) - _MAX_PODS_DESCRIBED} more)" if len(problems) > _MAX_PODS_DESCRIBED else ""
        return "; pods: " + "; ".join(problems[:_MAX_PODS_DESCRIBED]) + more

    def _wait_for_rollout(self, name: str) -> None:
        """Poll until the Deployment's rollout is complete.

        Raises:
            DeployFailed: the rollout stalled (ProgressDeadlineExceeded) or did not finish within
                ``serving.rollout_timeout_seconds``; the message says why pods are not ready.
        """
        timeout = self._settings.rollout_timeout_seconds
        deadline = self._clock() + timeout
        last_state = None
        while True:
            deployment = self._read(name)
            outcome, state = rollout_status(deployment)
            if outcome == "done":
                log.info("%s rolled out: %s", self._where(name), state)
                return
            selector = deployment["spec"]["selector"].get("matchLabels") or {}
            if outcome == "failed":
                raise DeployFailed(f"rollout of {self._where(name)} failed: {state}{self._pod_problems(selector)}")
            if self._clock() >= deadline:
                raise DeployFailed(
                    f"rollout of {self._where(name)} did not complete within {timeout:.0f} s "
                    f"(serving.rollout_timeout_seconds): {state}{self._pod_problems(selector)}"
                )
            if state != last_state:
                log.info("waiting for %s: %s", self._where(name), state)
                last_state = state
            self._sleep(self._settings.poll_seconds)

    def roll_out(self, version: int) -> None:
        """Point the Deployment's pods at ``version`` and wait until every replica serves it.

        Raises:
            DeployFailed: the rollout stalled or timed out.
            StepError: the Deployment or its container is missing, or the API refused the change.
        """
        name = self._names.deployment
        template = self._read(name)["spec"]["template"]
        if self._template_before is None:  # roll_out without current_version first
            self._template_before = template
        log.info("rolling %s out to v%s", self._where(name), version)
        self._replace_template(name, self._versioned_template(template, version, name))
        self._wait_for_rollout(name)

    def roll_back(self, version: int | None) -> None:
        """Remove the canary and put back the pod template that served ``version`` before.

        That is the template ``current_version`` (or the first ``roll_out``) read, when it served ``version``;
        otherwise (another process rolled out) ``version`` is rolled out, and None leaves the Deployment as it is,
        since the Service must keep serving something.
        """
        self._remove_canary()
        name = self._names.deployment
        saved = self._template_before
        saved_version = None if saved is None else _env_value(self._server_container(saved, name), MODEL_VERSION_ENV)
        if saved is not None and saved_version == (None if version is None else str(version)):
            log.info("rolling %s back to the pod template that served %s", self._where(name), version)
            self._replace_template(name, saved)
            self._wait_for_rollout(name)
        elif version is not None and self.current_version() != version:
            self.roll_out(version)

    # -- canary --------------------------------------------------------------------------------------------------

    def _canary_manifest(self, main: dict[str, Any], version: int, replicas: int) -> dict[str, Any]:
        selector = {**(main["spec"]["selector"].get("matchLabels") or {}), TRACK_LABEL: CANARY}
        template = self._versioned_template(main["spec"]["template"], version, self._names.deployment)
        template["metadata"]["labels"] = {**(template["metadata"].get("labels") or {}), TRACK_LABEL: CANARY}
        spec = {"replicas": replicas, "selector": {"matchLabels": selector}, "template": template}
        spec |= {key: main["spec"][key] for key in ("strategy", "progressDeadlineSeconds") if key in main["spec"]}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self._names.canary_deployment,
                "namespace": self._names.namespace,
                "labels": {**(main["metadata"].get("labels") or {}), TRACK_LABEL: CANARY},
                "annotations": {VERSION_ANNOTATION: str(version)},
            },
            "spec": {**spec, "revisionHistoryLimit": 1},
        }

    def start_canary(self, version: int, share: float) -> None:
        """Create (or replace) the canary Deployment with ``max(1, round(share * stable replicas))`` pods; wait.

        Raises:
            StepError: the main Deployment does not select ``track=stable`` (its pods would overlap the canary's).
            DeployFailed: the canary's rollout stalled or timed out.
        """
        from kubernetes.client.exceptions import ApiException

        main_name, name = self._names.deployment, self._names.canary_deployment
        main = self._read(main_name)
        selector = main["spec"]["selector"].get("matchLabels") or {}
        if selector.get(TRACK_LABEL) != STABLE:
            raise StepError(
                f"{self._where(main_name)} selects {selector}, without {TRACK_LABEL}={STABLE}: its pods and the "
                f"canary's would overlap. Apply model-server-{self._model_name}.yaml of make render (the selector is "
                "immutable: delete the Deployment first) or deploy with --strategy rolling"
            )
        replicas = max(1, round(share * main["spec"].get("replicas", 1)))
        manifest = self._canary_manifest(main, version, replicas)
        log.info("starting canary %s: v%s on %d replica(s), share %.2f", self._where(name), version, replicas, share)
        with self._api(f"creating {self._where(name)}"):
            try:
                self._apps.create_namespaced_deployment(self._names.namespace, manifest)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Left over from an interrupted deploy: take it over.
                self._apps.replace_namespaced_deployment(name, self._names.namespace, manifest)
        self._wait_for_rollout(name)

    def _canary_selector(self) -> dict[str, str]:
        return self._read(self._names.canary_deployment)["spec"]["selector"]["matchLabels"]

    def _canary_port(self) -> int:
        template = self._read(self._names.canary_deployment)["spec"]["template"]
        ports = self._server_container(template, self._names.canary_deployment).get("ports") or []
        named = [port["containerPort"] for port in ports if port.get("name") == HTTP_PORT_NAME]
        return (named or [port["containerPort"] for port in ports] or [DEFAULT_HTTP_PORT])[0]

    def _ready_canary_pods(self) -> list[dict[str, Any]]:
        def ready(pod: dict[str, Any]) -> bool:
            conditions = (pod.get("status") or {}).get("conditions") or []
            return any(item.get("type") == "Ready" and item.get("status") == "True" for item in conditions)

        pods = [pod for pod in self._pods(self._canary_selector()) if ready(pod) and pod["status"].get("podIP")]
        if not pods:
            raise DeployFailed(f"{self._where(self._names.canary_deployment)} has no ready pod with an IP")
        return pods

    def canary_endpoints(self) -> list[str]:
        """``http://<pod IP>:<port>`` of every ready canary pod."""
        port = self._canary_port()
        return [f"http://{pod['status']['podIP']}:{port}" for pod in self._ready_canary_pods()]

    def _scrape_canary(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """Inference totals and container restarts of each ready canary pod, by pod name."""
        port = self._canary_port()
        totals, restarts = {}, {}
        for pod in self._ready_canary_pods():
            name, url = pod["metadata"]["name"], f"http://{pod['status']['podIP']}:{port}/metrics"
            try:
                totals[name] = inference_totals(parse_metrics(self._scrape(url)))
            except (OSError, ValueError) as exc:
                raise DeployFailed(f"could not read the metrics of canary pod {name} at {url}: {exc}") from None
            statuses = pod["status"].get("containerStatuses") or []
            restarts[name] = sum(status.get("restartCount", 0) for status in statuses)
        return totals, restarts

    def observe_canary(self) -> dict[str, Any]:
        """Watch the canary pods for ``serving.canary.observation_seconds`` and judge their errors and latency.

        Returns:
            The report: requests, errors, error_rate, p99_ms, the limits, judged (False: too few requests, so the
            smoke test alone decided), and a note.

        Raises:
            DeployFailed: a canary pod restarted, or the error rate or p99 broke its limit (``details``: the report).
        """
        limits = self._settings.canary
        before, restarts_before = self._scrape_canary()
        deadline = self._clock() + limits.observation_seconds
        while (remaining := deadline - self._clock()) > 0:
            self._sleep(min(self._settings.poll_seconds, remaining))
        after, restarts_after = self._scrape_canary()
        restarted = {pod: count - restarts_before.get(pod, 0) for pod, count in restarts_after.items()}
        restarted = {pod: count for pod, count in restarted.items() if count > 0}
        requests = errors = 0.0
        buckets: dict[float, float] = {}
        for pod, now in after.items():
            then = before.get(pod, {"requests": 0.0, "errors": 0.0, "buckets": {}})
            requests += _counter_delta(then["requests"], now["requests"])
            errors += _counter_delta(then["errors"], now["errors"])
            for bound, count in now["buckets"].items():
                buckets[bound] = buckets.get(bound, 0.0) + _counter_delta(then["buckets"].get(bound, 0.0), count)
        p99_seconds = histogram_quantile(0.99, buckets)
        report: dict[str, Any] = {
            "pods": sorted(after),
            "observation_seconds": limits.observation_seconds,
            "requests": int(requests),
            "errors": int(errors),
            "error_rate": errors / requests if requests else None,
            "p99_ms": None if p99_seconds is None else round(p99_seconds * 1000, 3),
            "max_error_rate": limits.max_error_rate,
            "max_p99_ms": limits.max_p99_ms,
            "min_requests": limits.min_requests,
            "restarts": restarted,
            "judged": requests >= limits.min_requests and requests > 0,
        }
        failures = [f"canary pod {pod} restarted {count} time(s)" for pod, count in sorted(restarted.items())]
        if not report["judged"]:
            report["note"] = (
                f"{int(requests)} inference requests reached the canary in {limits.observation_seconds:.0f} s, fewer "
                f"than serving.canary.min_requests {limits.min_requests}: judged by the smoke test alone"
            )
            log.warning(report["note"])
        else:
            if report["error_rate"] > limits.max_error_rate:
                failures.append(
                    f"error rate {report['error_rate']:.4f} ({int(errors)} of {int(requests)} requests answered 5xx) "
                    f"> max_error_rate {limits.max_error_rate}"
                )
            if report["p99_ms"] is not None and report["p99_ms"] > limits.max_p99_ms:
                failures.append(f"p99 latency {report['p99_ms']:.1f} ms > max_p99_ms {limits.max_p99_ms:.0f} ms")
            if not failures:
                log.info(
                    "canary passed: error rate %.4f <= %s, p99 %s ms <= %.0f ms over %d requests",
                    report["error_rate"],
                    limits.max_error_rate,
                    report["p99_ms"],
                    limits.max_p99_ms,
                    int(requests),
                )
        if failures:
            raise DeployFailed(f"canary {self._where(self._names.canary_deployment)}: {'; '.join(failures)}", report)
        return report

    def promote_canary(self, version: int) -> None:
        """Roll the main Deployment out to ``version``, then remove the canary (capacity never drops)."""
        self.roll_out(version)
        self._remove_canary()

    def _remove_canary(self) -> None:
        from kubernetes.client.exceptions import ApiException

        name = self._names.canary_deployment
        with self._api(f"deleting {self._where(name)}"):
            try:
                self._apps.delete_namespaced_deployment(name, self._names.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return
        log.info("removed canary %s", self._where(name))
