"""Write every pod spec of every DAG task and every manifest as YAML, for review and ``kubectl apply``.

    ML_RUNTIME=kubernetes ML_ARTIFACT_ROOT=s3://... ML_DATASET_URI=s3://... MLFLOW_TRACKING_URI=http://... \\
        python -m orchestration.render --out build/k8s

Pods come from the real ``KubernetesPodOperator.build_pod_request_obj`` after rendering each task's templates for
an example run, so what is written is what the provider would submit. The manifests are ``include/k8s`` (the
resources its ``kustomization.yaml`` lists, in the configured namespace) plus the ConfigMap that carries the
pipeline config into the pods. Output: ``<out>/pods/<dag_id>/<task_id>.yaml`` and ``<out>/manifests/*.yaml``.
Nothing is written unless everything renders: a bad config or DAG exits with code 2 and one message.
"""

from __future__ import annotations

import argparse
import os
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
    """The pod of every KubernetesPodOperator task, as Kubernetes JSON objects by DAG id and task id.

    A mapped task (the train step, one pod per candidate family) is rendered once, without the arguments each
    mapped instance adds (``--model <family>``): every instance's pod is that pod with them.

    Raises:
        ConfigError: a DAG file does not import (the message names the file).
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from kubernetes.client import ApiClient

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


def load_manifests(
    settings: Settings, models: list[Settings], folder: Path = MANIFESTS_FOLDER
) -> dict[str, list[dict]]:
    """The documents of every resource file ``kustomization.yaml`` lists, moved to the configured namespace."""
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
    manifests["configmap-mlsteps-config.yaml"] = [config_map(settings, models)]
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
