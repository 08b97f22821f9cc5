"""Every pod of every DAG task, rendered by the real provider code through ``python -m orchestration.render``, is one
a cluster accepts (strict schemas of the oldest and newest supported Kubernetes) and follows the GPU, security,
secret and label rules. Variants of the pipeline config show CPU-only training, several GPUs, a data volume and
Kueue; bad configs render nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsteps.config import PipelineConfig
from mlsteps.steps import STEPS
from orchestration.models import load_models
from orchestration.settings import GPU_POOL, Settings, load_settings, parse_quantity

from .policy import K8S_VERSIONS, RUN_AS_ID, load_documents, validate_schema
from .rendering import CLUSTER_ENV, REPO, render, rendered_pods, variant_config

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
        assert pod["spec"]["serviceAccountName"] == step.service_account, name
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
    assert pods["churn-classifier.deploy.deploy"]["spec"]["serviceAccountName"] == "ml-deploy"
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


def test_cpu_only_training_has_no_gpu_scheduling(tmp_path: Path) -> None:
    done = render(tmp_path / "k8s", tmp_path, variant_config(tmp_path, {"steps": {"train": {"gpus": 0}}}))
    assert done.returncode == 0, done.stderr
    train = rendered_pods(tmp_path / "k8s")["churn-classifier.retrain.train"]
    assert "nvidia.com/gpu" not in _container(train)["resources"]["limits"]
    assert not train["spec"].get("tolerations") and "shm" not in _volumes(train)
    assert _container(train)["command"] == ["python", "-m", "mlsteps", "train"]


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
