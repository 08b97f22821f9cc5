"""Write every pod spec of every DAG task and every manifest as YAML, for review and ``kubectl apply``.

    ML_RUNTIME=kubernetes ML_ARTIFACT_ROOT=s3://... ML_DATASET_URI=s3://... MLFLOW_TRACKING_URI=http://... \\
        python -m orchestration.render --out build/k8s

Pods come from the real ``KubernetesPodOperator.build_pod_request_obj`` after rendering each task's templates for
an example run, so what is written is what the provider would submit; a step on several nodes is the Job that
``KubernetesJobOperator.build_job_request_obj`` would submit. The manifests are ``include/k8s`` (the resources its
``kustomization.yaml`` lists, in the configured namespace), each model's own objects made from the templates
``MODEL_TEMPLATES`` of that folder (its model server, its deploy step's identity and, when it trains on several nodes,
its training pods' headless Service and network policy; named after the model), and the ConfigMap that carries every
model's config into the pods. Output: ``<out>/pods/<dag_id>/<task_id>.yaml`` and ``<out>/manifests/*.yaml``
(``model-server-<model>.yaml``, ``rbac-ml-deploy-<model>.yaml``, ``train-multinode-<model>.yaml``). Nothing is
written unless everything renders: a bad config or DAG, or two models naming one object, exits with code 2 and one
message.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from mlsteps.errors import EXIT_USER_ERROR, ConfigError
from orchestration.settings import PROJECT_ROOT, Settings, load_settings

DAGS_FOLDER = PROJECT_ROOT / "dags"
MANIFESTS_FOLDER = PROJECT_ROOT / "include" / "k8s"
# The files of MANIFESTS_FOLDER that its kustomization leaves out: templates of each model's own objects.
MODEL_SERVER_TEMPLATE = "model-server.yaml"
DEPLOY_RBAC_TEMPLATE = "rbac-ml-deploy.yaml"
TRAIN_MULTINODE_TEMPLATE = "train-multinode.yaml"
MODEL_TEMPLATES = (MODEL_SERVER_TEMPLATE, DEPLOY_RBAC_TEMPLATE, TRAIN_MULTINODE_TEMPLATE)
# A template's placeholder: a whole string value such as ``<model>`` (Kubernetes names and labels have no '<').
PLACEHOLDER = re.compile(r"^<[a-z-]+>$")
EXAMPLE_RUN_AFTER = datetime(2026, 1, 5, 3, tzinfo=UTC)
EXAMPLE_RUN_ID = f"scheduled__{EXAMPLE_RUN_AFTER.isoformat()}"
# Kinds that live outside namespaces: moving manifests to the configured namespace leaves them alone.
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PersistentVolume",
        "PriorityClass",
        "RuntimeClass",
        "StorageClass",
        "ValidatingWebhookConfiguration",
    }
)


def _example_context(dag: Any, task: Any) -> dict[str, Any]:
    """What the templates of a task see in a scheduled run, with the params' defaults."""
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, run_id=EXAMPLE_RUN_ID, try_number=1, map_index=-1)
    dag_run = SimpleNamespace(run_id=EXAMPLE_RUN_ID, run_type="scheduled", run_after=EXAMPLE_RUN_AFTER)
    return {
        "dag": dag,
        "task": task,
        "ti": ti,
        "dag_run": dag_run,
        "run_id": EXAMPLE_RUN_ID,
        "params": dag.params.dump(),
        "triggering_asset_events": {},
    }


def render_pods(dags_folder: Path = DAGS_FOLDER) -> dict[str, dict[str, dict]]:
    """The pod of every KubernetesPodOperator task (the Job of a step on several nodes), as Kubernetes JSON objects by
    DAG id and task id.

    A mapped task (the train step, one pod per candidate family) is rendered once, without the arguments each
    mapped instance adds (``--model <family>``): every instance's pod is that pod with them.

    Raises:
        ConfigError: a DAG file does not import (the message names the file).
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from kubernetes.client import ApiClient

    from orchestration.pod_operator import StepJobOperator

    dagbag = DagBag(str(dags_folder))
    if dagbag.import_errors:
        raise ConfigError("; ".join(f"{path}: {error.strip()}" for path, error in dagbag.import_errors.items()))
    serializer = ApiClient()
    pods: dict[str, dict[str, dict]] = {}
    for dag_id, dag in sorted(dagbag.dags.items()):
        for node in dag.tasks:
            mapped_pods = isinstance(node, MappedOperator) and issubclass(node.operator_class, KubernetesPodOperator)
            task = node.unmap({"extra_arguments": []}) if mapped_pods else node
            if isinstance(task, KubernetesPodOperator):
                context = _example_context(dag, task)
                task.render_template_fields(context)
                if isinstance(task, StepJobOperator):
                    pod = task.build_job_request_obj(context, dry_run=True)
                else:
                    pod = task.build_pod_request_obj(context, dry_run=True)
                pods.setdefault(dag_id, {})[task.task_id] = serializer.sanitize_for_serialization(pod)
    return pods


def config_map(settings: Settings, models: list[Settings]) -> dict[str, Any]:
    """The ConfigMap that carries each model's resolved config (defaults merged, dataset config inlined) to
    ``/etc/mlsteps/<model>.yaml`` in the pods."""
    from orchestration.pod_spec import pod_config_path

    kube = settings.runtime.kubernetes
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": kube.config_map,
            "namespace": kube.namespace,
            "labels": {"app.kubernetes.io/part-of": "continuous-training", "app.kubernetes.io/component": "config"},
        },
        "data": {
            Path(pod_config_path(model.pipeline.registry.model_name)).name: yaml.safe_dump(
                model.pipeline.model_dump(mode="json"), sort_keys=False
            )
            for model in models
        },
    }


def _filled(node: Any, values: dict[str, str]) -> Any:
    """A copy of a template's document with every placeholder value replaced by its value in ``values``."""
    if isinstance(node, dict):
        return {key: _filled(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_filled(item, values) for item in node]
    return values.get(node, node) if isinstance(node, str) else node


def _placeholders(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*map(_placeholders, node.values()))
    if isinstance(node, list):
        return set().union(*map(_placeholders, node))
    return {node} if isinstance(node, str) and PLACEHOLDER.match(node) else set()


def _instantiate(template: Path, values: dict[str, str]) -> list[dict[str, Any]]:
    """The documents of a template with its placeholders filled.

    Raises:
        ConfigError: the template has a placeholder that ``values`` does not fill.
    """
    documents = [_filled(doc, values) for doc in yaml.safe_load_all(template.read_text()) if doc]
    unknown = set().union(*map(_placeholders, documents))
    if unknown:
        raise ConfigError(f"{template}: unknown placeholders {sorted(unknown)}; known: {sorted(values)}")
    return documents


def _with_labels(labels: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """A template's labels plus the model's own (team, cost center); the template's keep their values."""
    return {**labels, **{key: value for key, value in extra.items() if key not in labels}}


def _server_pods(pod: dict[str, Any], model: Settings) -> None:
    """Set what the model config overrides on the model server's pod template."""
    kube = model.runtime.kubernetes
    server = kube.model_server
    pod["metadata"]["labels"] = _with_labels(pod["metadata"]["labels"], kube.labels)
    spec = pod["spec"]
    (container,) = spec["containers"]
    if server.image:
        container["image"] = server.image
    if server.resources:
        requests, limits = server.resources.requests, server.resources.limits
        container["resources"] = {"requests": requests.as_kubernetes(), "limits": limits.as_kubernetes()}
    container["envFrom"] = [{"secretRef": {"name": name}} for name in kube.secrets]
    if not kube.secrets:  # workload identity: no credentials to pass
        del container["envFrom"]
    if kube.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in kube.image_pull_secrets]
    priority = server.priority_class_name or kube.priority_class_name
    if priority:
        spec["priorityClassName"] = priority


def _replicas_problems(documents: list[dict[str, Any]]) -> list[str]:
    """Autoscaler bounds that contradict each other or the PodDisruptionBudget."""
    by_kind = {doc["kind"]: doc["spec"] for doc in documents}
    hpa, pdb = by_kind["HorizontalPodAutoscaler"], by_kind["PodDisruptionBudget"]
    low, high, kept = hpa["minReplicas"], hpa["maxReplicas"], pdb["minAvailable"]
    problems = []
    if low > high:
        problems.append(f"min_replicas {low} is above max_replicas {high}")
    if isinstance(kept, int) and low <= kept:
        problems.append(
            f"min_replicas {low} must be above the PodDisruptionBudget's minAvailable {kept}, or a node drain could "
            "never evict a server pod"
        )
    return problems


def model_server_manifests(model: Settings, folder: Path = MANIFESTS_FOLDER) -> list[dict[str, Any]]:
    """One model's Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget, from the template
    ``model-server.yaml``: named by ``serving.kubernetes`` (by default after the model), in the deployment's
    namespace, with the model's labels and its ``runtime.kubernetes.model_server`` settings.

    Raises:
        ConfigError: naming the model's config file: the names are not Kubernetes names, its serving namespace is
            not the deployment's, or its replica bounds contradict each other.
    """
    kube = model.runtime.kubernetes
    server = kube.model_server
    name = model.pipeline.registry.model_name
    try:
        names = model.pipeline.serving.kubernetes.for_model(name)
    except ConfigError as exc:
        raise ConfigError(f"{model.config_uri}: {exc}") from None
    if names.namespace != kube.namespace:
        raise ConfigError(
            f"{model.config_uri}: serving.kubernetes.namespace {names.namespace!r} is not runtime.kubernetes.namespace "
            f"{kube.namespace!r}, where make render puts the model server: set both to the same namespace"
        )
    values = {
        "<model>": name,
        "<namespace>": kube.namespace,
        "<deployment>": names.deployment,
        "<service>": names.service,
        "<container>": names.container,
        "<mlflow-tracking-uri>": model.mlflow_tracking_uri,
    }
    documents = _instantiate(folder / MODEL_SERVER_TEMPLATE, values)
    for doc in documents:
        doc["metadata"]["labels"] = _with_labels(doc["metadata"]["labels"], kube.labels)
        if doc["kind"] == "Deployment":
            _server_pods(doc["spec"]["template"], model)
        elif doc["kind"] == "HorizontalPodAutoscaler":
            doc["spec"]["minReplicas"] = server.min_replicas or doc["spec"]["minReplicas"]
            doc["spec"]["maxReplicas"] = server.max_replicas or doc["spec"]["maxReplicas"]
    problems = _replicas_problems(documents)
    if problems:
        raise ConfigError(f"{model.config_uri}: runtime.kubernetes.model_server: " + "; ".join(problems))
    return documents


def deploy_rbac_manifests(model: Settings, folder: Path = MANIFESTS_FOLDER) -> list[dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding of one model's deploy step, from the template ``rbac-ml-deploy.yaml``:
    one set for each account a step that talks to the Kubernetes API runs as (``pod_spec.service_account``), allowed
    to change only this model's Deployment and canary."""
    from orchestration.pod_spec import service_account

    kube = model.runtime.kubernetes
    name = model.pipeline.registry.model_name
    names = model.pipeline.serving.kubernetes.for_model(name)
    steps = model.runtime.steps.values()
    accounts = sorted({service_account(step, name) for step in steps if step.needs_kubernetes_api})
    documents = []
    for account in accounts:
        values = {
            "<model>": name,
            "<namespace>": kube.namespace,
            "<deploy-account>": account,
            "<deployment>": names.deployment,
            "<canary-deployment>": names.canary_deployment,
        }
        documents += _instantiate(folder / DEPLOY_RBAC_TEMPLATE, values)
    for doc in documents:
        doc["metadata"]["labels"] = _with_labels(doc["metadata"]["labels"], kube.labels)
    return documents


def train_multinode_manifests(model: Settings, folder: Path = MANIFESTS_FOLDER) -> list[dict[str, Any]]:
    """What a model that trains on several nodes needs around its Job, from the template ``train-multinode.yaml``:
    the headless Service that gives each training pod its DNS name, the network policy that lets those pods reach
    each other, and the Role that lets Airflow's workers run Jobs. Nothing for a model that trains on one node."""
    from orchestration.pod_spec import train_service_name

    if model.step("train").nodes == 1:
        return []
    kube = model.runtime.kubernetes
    name = model.pipeline.registry.model_name
    values = {
        "<model>": name,
        "<namespace>": kube.namespace,
        "<train-service>": train_service_name(name),
        "<worker-jobs-role>": f"airflow-worker-jobs-{name}",
    }
    documents = _instantiate(folder / TRAIN_MULTINODE_TEMPLATE, values)
    for doc in documents:
        doc["metadata"]["labels"] = _with_labels(doc["metadata"]["labels"], kube.labels)
    return documents


def _refuse_shared_objects(manifests: dict[str, list[dict]]) -> None:
    """Two files naming one object would overwrite each other on apply: refuse, naming both files."""
    owners: dict[tuple[str, str, str], str] = {}
    clashes = []
    for file, documents in manifests.items():
        for doc in documents:
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            if key in owners:
                clashes.append(f"{key[0]} {key[2]} in {owners[key]} and {file}")
            owners.setdefault(key, file)
    if clashes:
        raise ConfigError(
            "two manifests name one object: " + "; ".join(clashes) + ": give each model its own names "
            "(leave serving.kubernetes.deployment, canary_deployment and service unset in the shared defaults)"
        )


def load_manifests(
    settings: Settings, models: list[Settings], folder: Path = MANIFESTS_FOLDER
) -> dict[str, list[dict]]:
    """The documents of every resource file ``kustomization.yaml`` lists, moved to the configured namespace; each
    model's own objects (``model-server-<model>.yaml``, ``rbac-ml-deploy-<model>.yaml``, and
    ``train-multinode-<model>.yaml`` for a model that trains on several nodes); and the ConfigMap.

    Raises:
        ConfigError: a model's objects do not render, or two files name one object.
    """
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    namespace = settings.runtime.kubernetes.namespace
    manifests = {}
    for resource in kustomization["resources"]:
        documents = [doc for doc in yaml.safe_load_all((folder / resource).read_text()) if doc]
        for doc in documents:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = namespace
            elif doc["kind"] not in CLUSTER_SCOPED_KINDS:
                doc["metadata"]["namespace"] = namespace
        manifests[Path(resource).name] = documents
    for model in models:
        name = model.pipeline.registry.model_name
        manifests[f"{Path(MODEL_SERVER_TEMPLATE).stem}-{name}.yaml"] = model_server_manifests(model, folder)
        rbac = deploy_rbac_manifests(model, folder)
        if rbac:
            manifests[f"{Path(DEPLOY_RBAC_TEMPLATE).stem}-{name}.yaml"] = rbac
        multinode = train_multinode_manifests(model, folder)
        if multinode:
            manifests[f"{Path(TRAIN_MULTINODE_TEMPLATE).stem}-{name}.yaml"] = multinode
    manifests["configmap-mlsteps-config.yaml"] = [config_map(settings, models)]
    _refuse_shared_objects(manifests)
    return manifests


def _dump(path: Path, documents: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))


def render(out: Path, settings: Settings, dags_folder: Path = DAGS_FOLDER) -> list[Path]:
    """Render pods and manifests into ``out`` (replaced as a whole, only once everything rendered).

    Returns:
        The files written.
    """
    from orchestration.models import valid_models

    pods = render_pods(dags_folder)
    manifests = load_manifests(settings, valid_models())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for dag_id, tasks in pods.items():
        for task_id, pod in tasks.items():
            _dump(staging / "pods" / dag_id / f"{task_id}.yaml", [pod])
    for name, documents in manifests.items():
        _dump(staging / "manifests" / name, documents)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return sorted(path for path in out.rglob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    """Render for runtime ``kubernetes`` (``ML_RUNTIME`` is set to it for this process)."""
    parser = argparse.ArgumentParser(prog="python -m orchestration.render", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "k8s", help="output folder (replaced)")
    options = parser.parse_args(argv)
    os.environ["ML_RUNTIME"] = "kubernetes"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # the listing, not every pod's build log
    try:
        settings = load_settings()
        written = render(options.out, settings)
    except ConfigError as exc:
        print(f"render failed, nothing written: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in written:
        print(path)
    print(f"{len(written)} files in {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
