"""Every pod of every DAG task, rendered by the real provider code through ``python -m orchestration.render``, is one
a cluster accepts (strict schemas of the oldest and newest supported Kubernetes) and follows the GPU, security,
secret and label rules. Variants of the pipeline config show CPU-only training, several GPUs, several nodes (an
Indexed Job and its headless Service), a data volume and Kueue, and a model config's own images, resources, labels,
priority and model server reaching that model's pods only; bad configs render nothing."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsteps.config import PipelineConfig
from mlsteps.steps import STEPS
from orchestration.models import load_models
from orchestration.pod_spec import JOB_NAME_ENV_VAR, RENDEZVOUS_PORT, service_account
from orchestration.settings import GPU_POOL, ModelServerSettings, Settings, load_settings, parse_quantity

from .policy import (
    K8S_VERSIONS,
    RUN_AS_ID,
    allowed_ports,
    load_documents,
    pod_security_violations,
    run_checkov,
    selects,
    validate_schema,
    write_documents,
)
from .rendering import CLUSTER_ENV, REPO, add_model, render, rendered_pods, variant_config

CREDENTIAL_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")


@pytest.fixture(scope="module")
def pods(rendered: Path) -> dict[str, dict[str, Any]]:
    return rendered_pods(rendered)


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CLUSTER_ENV.items():
            patch.setenv(name, value)
        yield load_settings()


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return container


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in _container(pod).get("env", [])}


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}


def _mounts(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["mountPath"]: mount for mount in _container(pod).get("volumeMounts", [])}


def test_every_pod_task_of_every_dag_is_rendered(pods: dict[str, dict[str, Any]]) -> None:
    retrain = ("snapshot", "validate", "preprocess", "train", "evaluate", "register", "promote")
    expected = set()
    for model in ("churn-classifier", "tier-classifier"):
        expected |= {f"{model}.retrain.{step}" for step in retrain}
        expected |= {f"{model}.monitor.drift", f"{model}.monitor.performance", f"{model}.deploy.deploy"}
    assert set(pods) == expected


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pods_and_manifests_pass_the_strict_schemas(rendered: Path, version: str) -> None:
    documents = [doc for path in sorted(rendered.rglob("*.yaml")) for doc in load_documents(path)]
    assert len(documents) > len(STEPS)
    for document in documents:
        validate_schema(document, version)


def test_each_step_gets_its_configured_resources_image_and_identity(
    pods: dict[str, dict[str, Any]], settings: Settings
) -> None:
    kube = settings.runtime.kubernetes
    for name, pod in pods.items():
        step = settings.step(pod["metadata"]["labels"]["continuous-training/step"])
        container = _container(pod)
        expected_requests = step.resources.requests.as_kubernetes()
        expected_limits = step.resources.limits.as_kubernetes()
        if step.gpus:
            expected_requests[kube.gpu.resource] = expected_limits[kube.gpu.resource] = str(step.gpus)
        assert container["resources"] == {"requests": expected_requests, "limits": expected_limits}, name
        assert container["image"] == _env(pod)["STEP_IMAGE"] == kube.images[step.image], name
        assert container["imagePullPolicy"] == kube.image_pull_policy
        assert pod["spec"]["serviceAccountName"] == service_account(step, name.split(".")[0]), name
        assert "priorityClassName" not in pod["spec"], (
            "no runtime.kubernetes.priority_class_name: the cluster's default"
        )
        # Only the deploy step talks to the Kubernetes API (it rolls the model server out).
        assert pod["spec"]["automountServiceAccountToken"] is step.needs_kubernetes_api, name
        assert pod["metadata"]["namespace"] == kube.namespace
        cpu_limit = parse_quantity(step.resources.limits.cpu)
        assert _env(pod)["OMP_NUM_THREADS"] == str(max(1, int(cpu_limit // max(step.gpus, 1)))), name
    assert (
        _container(pods["churn-classifier.retrain.train"])["image"]
        != _container(pods["churn-classifier.retrain.validate"])["image"]
    )
    with_token = [name for name, pod in pods.items() if pod["spec"]["automountServiceAccountToken"]]
    assert with_token == ["churn-classifier.deploy.deploy", "tier-classifier.deploy.deploy"]
    # Each model's deploy step runs as its own account, whose Role names only that model's Deployments.
    assert pods["churn-classifier.deploy.deploy"]["spec"]["serviceAccountName"] == "ml-deploy-churn-classifier"
    assert pods["tier-classifier.deploy.deploy"]["spec"]["serviceAccountName"] == "ml-deploy-tier-classifier"
    deploy_args = _container(pods["churn-classifier.deploy.deploy"])["args"]
    assert deploy_args[deploy_args.index("--target") + 1] == "kubernetes" and "--state-dir" not in deploy_args
    assert deploy_args[deploy_args.index("--model") + 1] == "champion", "the param's default, rendered"


def test_every_container_runs_locked_down(pods: dict[str, dict[str, Any]]) -> None:
    for name, pod in pods.items():
        pod_context = pod["spec"]["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert (pod_context["runAsUser"], pod_context["runAsGroup"], pod_context["fsGroup"]) == (RUN_AS_ID,) * 3
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        context = _container(pod)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        assert context["runAsNonRoot"] is True and context["runAsUser"] == RUN_AS_ID
        # A read-only root needs a writable /tmp, which is also HOME and the cache folder.
        assert _volumes(pod)["tmp"]["emptyDir"]["sizeLimit"]
        assert _mounts(pod)["/tmp"]["name"] == "tmp"
        assert _env(pod)["HOME"] == "/tmp" and _env(pod)["XDG_CACHE_HOME"].startswith("/tmp/")


def test_a_failed_step_leaves_its_last_lines_in_its_container_status(pods: dict[str, dict[str, Any]]) -> None:
    # StepPodOperator reads the exit code and this message from state.terminated: no extra log call, no log parsing.
    for name, pod in pods.items():
        assert _container(pod)["terminationMessagePolicy"] == "FallbackToLogsOnError", name


def test_credentials_come_from_secrets_only(pods: dict[str, dict[str, Any]], settings: Settings) -> None:
    for name, pod in pods.items():
        container = _container(pod)
        assert [source["secretRef"]["name"] for source in container["envFrom"]] == list(
            settings.runtime.kubernetes.secrets
        ), name
        literal = [var for var in _env(pod) if any(word in var.upper() for word in CREDENTIAL_WORDS)]
        assert literal == [], f"{name} sets credentials as literal values: {literal}"


def test_pods_carry_labels_and_annotations_for_cost_and_lookup(
    pods: dict[str, dict[str, Any]], settings: Settings
) -> None:
    for name, pod in pods.items():
        dag_id, task_id = name.rsplit(".", 1)
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["dag_id"] == dag_id and labels["task_id"] == task_id and labels["run_id"]
        assert labels["continuous-training/step"] == task_id
        assert labels["continuous-training/model"] == dag_id.split(".")[0], "each pod names its model"
        assert labels["app.kubernetes.io/part-of"] == "continuous-training"
        assert labels["app.kubernetes.io/component"] == "step"
        assert settings.runtime.kubernetes.labels.items() <= labels.items()
        assert annotations["continuous-training/dag-run-id"].startswith("scheduled__")
        assert annotations["continuous-training/run-root"].startswith(settings.artifact_root + "/runs/" + dag_id)


def test_training_pod_gets_a_gpu_its_toleration_and_shared_memory(
    pods: dict[str, dict[str, Any]], settings: Settings
) -> None:
    train = pods["churn-classifier.retrain.train"]
    assert _container(train)["command"] == ["python", "-m", "mlsteps", "train"], "one GPU: one process"
    assert train["spec"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    shm = _volumes(train)["shm"]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert parse_quantity(shm["sizeLimit"]) == parse_quantity(settings.step("train").resources.requests.memory) / 2
    assert _mounts(train)["/dev/shm"]["name"] == "shm"
    assert "kueue.x-k8s.io/queue-name" not in train["metadata"]["labels"], "no Kueue queue configured"
    for name, pod in pods.items():
        if not name.endswith(".retrain.train"):
            assert "nvidia.com/gpu" not in _container(pod)["resources"]["limits"], name
            assert not pod["spec"].get("tolerations") and "shm" not in _volumes(pod), name


def test_pods_use_the_mounted_config_which_equals_the_airflow_side(rendered: Path, pods, settings: Settings) -> None:
    (config_map,) = load_documents(rendered / "manifests" / "configmap-mlsteps-config.yaml")
    assert config_map["metadata"]["name"] == settings.runtime.kubernetes.config_map
    models = {entry.name: entry.settings.pipeline for entry in load_models()}
    assert sorted(config_map["data"]) == [f"{name}.yaml" for name in sorted(models)]
    for name, pipeline in models.items():
        assert PipelineConfig.model_validate(yaml.safe_load(config_map["data"][f"{name}.yaml"])) == pipeline
    for name, pod in pods.items():
        assert _volumes(pod)["config"]["configMap"]["name"] == config_map["metadata"]["name"], name
        mount = _mounts(pod)["/etc/mlsteps"]
        model = name.split(".")[0]
        assert mount["readOnly"] is True and _env(pod)["MLSTEPS_CONFIG"] == f"/etc/mlsteps/{model}.yaml", name


def test_every_referenced_service_account_and_namespace_is_in_the_manifests(rendered: Path, pods) -> None:
    documents = [doc for path in sorted((rendered / "manifests").glob("*.yaml")) for doc in load_documents(path)]
    accounts = {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]) for doc in documents if doc["kind"] == "ServiceAccount"
    }
    namespaces = {doc["metadata"]["name"] for doc in documents if doc["kind"] == "Namespace"}
    for name, pod in pods.items():
        assert (pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]) in accounts, name
        assert pod["metadata"]["namespace"] in namespaces


def test_cluster_variant_several_gpus_kueue_product_affinity_and_data_volume(tmp_path: Path) -> None:
    config = variant_config(
        tmp_path,
        {
            "dataset_uri": "/mnt/datasets/churn/churn.parquet",
            "steps": {"train": {"gpus": 4, "image": "train", "service_account": "ml-train"}},
            "kubernetes": {
                "gpu": {"products": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"], "per_node": 8},
                "kueue_queue": "team-a-gpu",
                "data_volume": {"claim_name": "ml-data"},
            },
        },
    )
    done = render(tmp_path / "k8s", tmp_path, config, without=("ML_DATASET_URI",))
    assert done.returncode == 0, done.stderr
    pods = rendered_pods(tmp_path / "k8s")
    train = pods["churn-classifier.retrain.train"]
    launcher = ["python", "-m", "mlsteps.distributed", "--standalone", "--nnodes=1", "--nproc-per-node=4"]
    assert _container(train)["command"] == [*launcher, "-m", "mlsteps", "train"]
    assert _container(train)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    (term,) = train["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"],
        }
    ]
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpu"
    args = _container(train)["args"]
    assert args[args.index("--checkpoint-dir") + 1].startswith("/mnt/checkpoints/churn-classifier.retrain/scheduled__")
    assert _mounts(train)["/mnt/checkpoints"] == {
        "mountPath": "/mnt/checkpoints",
        "name": "data",
        "subPath": "checkpoints",
    }
    snapshot = pods["churn-classifier.retrain.snapshot"]
    assert _mounts(snapshot)["/mnt/datasets"]["readOnly"] is True
    assert "/mnt/checkpoints" not in _mounts(snapshot), "only training writes to the volume"
    assert _volumes(snapshot)["data"]["persistentVolumeClaim"] == {"claimName": "ml-data", "readOnly": True}
    assert "kueue.x-k8s.io/queue-name" not in snapshot["metadata"]["labels"], "CPU steps are not queued for GPUs"
    for pod in pods.values():
        for version in K8S_VERSIONS:
            validate_schema(pod, version)


def _without_multi_node(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod's spec without what a multi-node run adds: the agent's command, the Job's name, the subdomain."""
    spec = copy.deepcopy(pod["spec"])
    spec.pop("subdomain", None)
    (container,) = spec["containers"]
    container.pop("command")
    container["env"] = [item for item in container["env"] if item["name"] != JOB_NAME_ENV_VAR]
    return spec


def test_cluster_variant_training_on_several_nodes_is_an_indexed_job_beside_its_headless_service(
    tmp_path: Path,
) -> None:
    train = {"gpus": 4, "image": "train", "service_account": "ml-train"}
    renders = {}
    for nodes in (1, 2):
        folder = tmp_path / f"nodes-{nodes}"
        folder.mkdir()
        runtime = {"steps": {"train": {**train, "nodes": nodes}}, "kubernetes": {"kueue_queue": "team-a-gpu"}}
        done = render(folder / "k8s", folder, variant_config(folder, runtime))
        assert done.returncode == 0, done.stderr
        renders[nodes] = folder / "k8s"
    single = rendered_pods(renders[1])["churn-classifier.retrain.train"]
    job = rendered_pods(renders[2])["churn-classifier.retrain.train"]
    multinode = load_documents(renders[2] / "manifests" / "train-multinode-churn-classifier.yaml")
    service, policy, role, binding = multinode

    assert job["kind"] == "Job" and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpu"
    spec, pod = job["spec"], job["spec"]["template"]
    # Two pods at once; one failure fails the Job, exit code 2 by its pod failure policy too, never retried there.
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        2,
        2,
        0,
    )
    exit_2 = {"containerName": "base", "operator": "In", "values": [2]}
    assert spec["podFailurePolicy"] == {"rules": [{"action": "FailJob", "onExitCodes": exit_2}]}
    # Each node's pod is the one-node pod (GPUs, scheduling, resources, security, volumes, identity, labels) ...
    assert _without_multi_node(pod) == _without_multi_node(single)
    assert pod["metadata"]["labels"] == single["metadata"]["labels"]
    # ... started as a torchrun agent that finds the first pod by its name behind the headless Service.
    (container,) = pod["spec"]["containers"]
    endpoint = f"$({JOB_NAME_ENV_VAR})-0.{service['metadata']['name']}:{RENDEZVOUS_PORT}"
    assert container["command"] == [
        *("python", "-m", "mlsteps.distributed", "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d"),
        *(f"--rdzv-endpoint={endpoint}", f"--rdzv-id=$({JOB_NAME_ENV_VAR})"),
        "--rdzv-conf=join_timeout=1500,read_timeout=1500",  # schedule + startup timeouts: Airflow waits as long
        *("-m", "mlsteps", "train"),
    ]
    [job_name] = [item for item in container["env"] if item["name"] == JOB_NAME_ENV_VAR]
    assert job_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == "ml-train-churn-classifier"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["port"] == RENDEZVOUS_PORT
    labels = pod["metadata"]["labels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    # The model's training pods reach each other on any TCP port, in both directions, and no other pod.
    manifests = [doc for path in sorted((renders[2] / "manifests").glob("*.yaml")) for doc in load_documents(path)]
    policies = [doc for doc in manifests if doc["kind"] == "NetworkPolicy"]
    assert allowed_ports(policies, labels, "Ingress") == {("TCP", 1)}
    assert ("TCP", 1) in allowed_ports(policies, labels, "Egress")
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 1, "endPort": 65535}]
    other_model = {**labels, "continuous-training/model": "tier-classifier"}
    for peer in [*policy["spec"]["ingress"][0]["from"], *policy["spec"]["egress"][0]["to"]]:
        assert selects(peer["podSelector"], labels) and not selects(peer["podSelector"], other_model)
    # Airflow's workers may run the Job: create, follow and delete it, nothing more.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
    ]
    assert not (renders[1] / "manifests" / "train-multinode-churn-classifier.yaml").exists(), "one node: no Service"
    for document in [job, *multinode]:
        assert pod_security_violations(document) == []
        for version in K8S_VERSIONS:
            validate_schema(document, version)
    rendered = [doc for path in sorted(renders[2].rglob("*.yaml")) for doc in load_documents(path)]
    write_documents(rendered, tmp_path / "checkov")
    assert [str(failed) for failed in run_checkov(tmp_path / "checkov").failed] == []


def test_a_model_that_trains_gbdt_on_several_nodes_renders_nothing(tmp_path: Path) -> None:
    config = variant_config(tmp_path, {})
    add_model(config, "tiers.yaml", {"runtime": {"steps": {"train": {"nodes": 2}}}})  # candidates: [mlp, gbdt]
    done = render(tmp_path / "k8s", tmp_path, config)
    assert done.returncode == 2
    assert re.search(r"tiers\.yaml: runtime\.steps\.train\.nodes=2 .* include \['gbdt'\]", done.stderr), done.stderr
    assert not (tmp_path / "k8s").exists()


def test_cpu_only_training_has_no_gpu_scheduling(tmp_path: Path) -> None:
    done = render(tmp_path / "k8s", tmp_path, variant_config(tmp_path, {"steps": {"train": {"gpus": 0}}}))
    assert done.returncode == 0, done.stderr
    train = rendered_pods(tmp_path / "k8s")["churn-classifier.retrain.train"]
    assert "nvidia.com/gpu" not in _container(train)["resources"]["limits"]
    assert not train["spec"].get("tolerations") and "shm" not in _volumes(train)
    assert _container(train)["command"] == ["python", "-m", "mlsteps", "train"]


def _manifests(out: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted((out / "manifests").glob("*.yaml")) for doc in load_documents(path)]


def test_a_models_deploy_pod_runs_as_its_own_account_bound_to_its_own_deployments(rendered: Path, pods) -> None:
    documents = _manifests(rendered)
    bindings = [doc for doc in documents if doc["kind"] == "RoleBinding"]
    roles = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Role"}
    for model in ("churn-classifier", "tier-classifier"):
        account = pods[f"{model}.deploy.deploy"]["spec"]["serviceAccountName"]
        subject = {"kind": "ServiceAccount", "name": account, "namespace": "ml"}
        [binding] = [binding for binding in bindings if subject in binding["subjects"]]
        named = {name for rule in roles[binding["roleRef"]["name"]]["rules"] for name in rule.get("resourceNames", [])}
        assert named == {f"model-server-{model}", f"model-server-{model}-canary"}


# A second model beside churn with its own images, training resources, labels, priority and model server.
TIERS_KUBERNETES = {
    "images": {"steps": "registry.example.com/tiers/steps:2.0", "train": "registry.example.com/tiers/train:2.0"},
    "labels": {"team": "loyalty", "cost-center": "loyalty-ml"},
    "priority_class_name": "ml-batch",
    "model_server": {
        "image": "registry.example.com/tiers/serve:2.0",
        "resources": {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"cpu": "3", "memory": "3Gi"}},
        "min_replicas": 3,
        "max_replicas": 6,
        "priority_class_name": "ml-serving",
    },
}
TIERS_TRAIN = {"cpu": "6", "memory": "24Gi", "ephemeral_storage": "30Gi"}
TIERS_OWN = {
    "runtime": {
        "steps": {"train": {"resources": {"requests": TIERS_TRAIN, "limits": TIERS_TRAIN}}},
        "kubernetes": TIERS_KUBERNETES,
    }
}


def _server(manifests: list[dict[str, Any]], model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A model's server Deployment, its container and its HorizontalPodAutoscaler's spec."""
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests}
    deployment = by_name[("Deployment", f"model-server-{model}")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container, by_name[("HorizontalPodAutoscaler", f"model-server-{model}")]["spec"]


def test_a_models_own_cluster_settings_reach_its_pods_and_server_only(tmp_path: Path) -> None:
    config = variant_config(tmp_path, {})
    add_model(config, "tiers.yaml", TIERS_OWN)
    out = tmp_path / "k8s"
    done = render(out, tmp_path, config)
    assert done.returncode == 0, done.stderr
    pods, manifests = rendered_pods(out), _manifests(out)
    shared = load_settings(str(config))
    for name, pod in pods.items():
        model, step = name.split(".")[0], pod["metadata"]["labels"]["continuous-training/step"]
        kube = TIERS_KUBERNETES if model == "tier-classifier" else shared.runtime.kubernetes.model_dump()
        image = kube["images"]["train" if step == "train" else "steps"]
        assert _container(pod)["image"] == _env(pod)["STEP_IMAGE"] == image, name
        assert pod["spec"].get("priorityClassName") == kube["priority_class_name"], name
        assert kube["labels"].items() <= pod["metadata"]["labels"].items(), name
    tiers_train = _container(pods["tier-classifier.retrain.train"])["resources"]
    assert tiers_train["limits"] == {"cpu": "6", "memory": "24Gi", "ephemeral-storage": "30Gi", "nvidia.com/gpu": "1"}
    churn_train = _container(pods["churn-classifier.retrain.train"])["resources"]
    assert churn_train["limits"] == {**shared.step("train").resources.limits.as_kubernetes(), "nvidia.com/gpu": "1"}

    tiers, tiers_server, tiers_hpa = _server(manifests, "tier-classifier")
    assert tiers_server["image"] == "registry.example.com/tiers/serve:2.0"
    assert tiers_server["resources"]["limits"] == {"cpu": "3", "memory": "3Gi", "ephemeral-storage": "2Gi"}
    assert tiers["spec"]["template"]["spec"]["priorityClassName"] == "ml-serving", "the server's own, not ml-batch"
    assert {"team": "loyalty", "cost-center": "loyalty-ml"}.items() <= tiers["spec"]["template"]["metadata"][
        "labels"
    ].items()
    assert (tiers_hpa["minReplicas"], tiers_hpa["maxReplicas"]) == (3, 6)
    # The other model keeps the template's server (image, resources, replicas), no priority class and its own team.
    churn, churn_server, churn_hpa = _server(manifests, "churn-classifier")
    assert churn_server["image"] == "ghcr.io/example/mlsteps-serve:0.1.0"
    assert churn_server["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"}
    assert "priorityClassName" not in churn["spec"]["template"]["spec"]
    assert churn["metadata"]["labels"]["team"] == "ml-platform"
    assert (churn_hpa["minReplicas"], churn_hpa["maxReplicas"]) == (2, 10)
    for document in [*pods.values(), *manifests]:
        assert pod_security_violations(document) == []
        for version in K8S_VERSIONS:
            validate_schema(document, version)


def test_shared_priority_pull_secrets_and_workload_identity_reach_step_and_server_pods(tmp_path: Path) -> None:
    kubernetes = {"priority_class_name": "ml-pipeline", "image_pull_secrets": ["registry"], "secrets": []}
    done = render(tmp_path / "k8s", tmp_path, variant_config(tmp_path, {"kubernetes": kubernetes}))
    assert done.returncode == 0, done.stderr
    [server] = [doc for doc in _manifests(tmp_path / "k8s") if doc["kind"] == "Deployment"]
    server_pod = server["spec"]["template"]
    for name, pod in [*rendered_pods(tmp_path / "k8s").items(), ("server", server_pod)]:
        assert pod["spec"]["priorityClassName"] == "ml-pipeline", name
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}], name
        assert not _container(pod).get("envFrom"), f"{name}: workload identity, no Secrets"


def test_model_server_replica_bounds_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ValueError, match="min_replicas=5 is above max_replicas=3"):
        ModelServerSettings(min_replicas=5, max_replicas=3)
    with pytest.raises(ValueError, match="must be pinned"):
        ModelServerSettings(image="ghcr.io/example/mlsteps-serve:latest")


@pytest.mark.parametrize(
    ("model_file", "overrides", "message"),
    [
        (
            "tiers.yaml",
            {"runtime": {"kubernetes": {"model_server": {"min_replicas": 1}}}},
            r"tiers\.yaml: runtime\.kubernetes\.model_server: min_replicas 1 must be above the PodDisruptionBudget's "
            r"minAvailable 1",
        ),
        (
            "tiers.yaml",
            {"serving": {"kubernetes": {"deployment": "model-server-churn-classifier"}}},
            r"two manifests name one object: Deployment model-server-churn-classifier in "
            r"model-server-churn-classifier\.yaml and model-server-tier-classifier\.yaml",
        ),
        (
            "tiers.yaml",
            {"serving": {"kubernetes": {"namespace": "serving"}}},
            r"tiers\.yaml: serving\.kubernetes\.namespace 'serving' is not runtime\.kubernetes\.namespace 'ml'",
        ),
    ],
)
def test_bad_model_serving_config_renders_nothing(
    tmp_path: Path, model_file: str, overrides: dict[str, Any], message: str
) -> None:
    config = variant_config(tmp_path, {})
    add_model(config, model_file, overrides)
    out = tmp_path / "k8s"
    done = render(out, tmp_path, config)
    assert done.returncode == 2
    assert re.search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"steps": {"tune": {"timeout_minutes": 5}}}, r"unknown steps \['tune'\]"),
        (
            {"steps": {"train": {"resources": {"requests": {"memory": "-4Gi"}}}}},
            r"steps\.train\.resources\.requests\.memory",
        ),
        ({"steps": {"train": {"gpus": 9}}}, r"\{'train': 9\} ask for more GPUs than a node has"),
        (
            {"kubernetes": {"images": {"steps": "ghcr.io/example/mlsteps", "train": "x:1"}}},
            r"kubernetes\.images.*pinned",
        ),
    ],
)
def test_bad_cluster_config_renders_nothing(tmp_path: Path, runtime: dict[str, Any], message: str) -> None:
    out = tmp_path / "k8s"
    done = render(out, tmp_path, variant_config(tmp_path, runtime))
    assert done.returncode == 2
    assert "render failed, nothing written" in done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_pod_operators_delete_succeeded_pods_keep_failed_ones_and_reattach(settings: Settings) -> None:
    from orchestration.pod_task import pod_task

    for step in STEPS:
        task = pod_task(step, settings=settings)
        assert task.on_finish_action.value == "delete_succeeded_pod"
        assert task.on_kill_action.value == "delete_pod", "a killed or cleared task deletes its pod"
        assert task.reattach_on_restart is True, "a restarted worker reattaches to the running pod"
        assert task.get_logs and task.log_events_on_failure and not task.do_xcom_push
        kube = settings.runtime.kubernetes
        assert (task.schedule_timeout_seconds, task.startup_timeout_seconds) == (
            kube.schedule_timeout_seconds,
            kube.startup_timeout_seconds,
        )
        # The kubelet ends the pod even when no Airflow worker is left to do it.
        assert task.active_deadline_seconds > settings.step(step).timeout_minutes * 60
        assert task.pool == (GPU_POOL if settings.step(step).gpus else "default_pool")


def test_the_gpu_pool_exists_in_airflow_settings() -> None:
    pools = yaml.safe_load((REPO / "airflow_settings.yaml").read_text())["airflow"]["pools"]
    assert GPU_POOL in {pool["pool_name"] for pool in pools}
