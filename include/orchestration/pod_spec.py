"""Everything Kubernetes-specific about a step's pod, decided in one place from the pipeline config.

``pod_task`` calls ``pod_operator_kwargs`` for runtime ``kubernetes`` only, so the kubernetes client is imported
when a DAG really builds pods. Rules every step pod follows:

- resources: requests and limits of CPU, memory and ephemeral storage from ``runtime.steps.<step>.resources``;
  ``OMP_NUM_THREADS`` follows the CPU limit, because PyTorch and NumPy otherwise start one thread per node core;
- GPUs (``gpus > 0``): ``nvidia.com/gpu`` limits, a toleration of the GPU taint, node affinity on the GPU product
  label, a memory-backed ``/dev/shm`` (data loaders die with "Bus error" on the container default of 64 MiB), the
  Kueue queue label when configured, and one process per GPU (torchrun through ``mlsteps.distributed``) when there
  are several;
- several nodes (``nodes > 1``, training only): the same pod, ``nodes`` times, as an Indexed Job
  (``job_operator_kwargs``); each pod runs a torchrun agent that meets the others at the first pod, found by its
  stable name behind the model's headless Service (``make render`` writes it);
- security: fixed non-root UID/GID, read-only root filesystem with ``emptyDir`` ``/tmp`` (also ``HOME`` and caches),
  no privilege escalation, all capabilities dropped, seccomp ``RuntimeDefault``, no ServiceAccount token unless the
  step needs the Kubernetes API;
- identity and secrets: a ServiceAccount per step class, and the deploy step (the one that talks to the Kubernetes
  API) its model's own, whose Role names only that model's serving objects; credentials only from Secrets
  (``envFrom``);
- priority: the model's ``runtime.kubernetes.priority_class_name``, when set;
- lookup: labels for step, model, team/cost center (the provider adds dag, task, run and try), annotations with
  the full run id and the run's artifact folder;
- lifecycle: succeeded pods are deleted, failed ones kept for debugging; a killed task deletes its pod; a restarted
  worker reattaches to the running pod (the provider's default); separate timeouts for scheduling and start-up,
  and ``activeDeadlineSeconds`` so a pod never outlives its task even when Airflow is gone.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import models as k8s

from mlsteps.errors import EXIT_USER_ERROR
from mlsteps.registry import IMAGE_ENV_VAR
from orchestration.settings import KubernetesSettings, Settings, StepSettings, parse_quantity
from orchestration.templates import JOB_NAME_LABEL, KUEUE_QUEUE_LABEL, RUN_ROOT_TEMPLATE

CONFIG_MOUNT = "/etc/mlsteps"  # the ConfigMap's keys: one resolved config per model, <model name>.yaml
PART_OF = "continuous-training"
LABEL_PREFIX = "continuous-training"
DELETE_SUCCEEDED_KEEP_FAILED = "delete_succeeded_pod"
# The policy scan (checkov, tests/k8s) flags every pod that mounts an API token; the deploy step's pod needs one, and
# says why on the pod itself, so the check still guards every other pod.
API_TOKEN_JUSTIFICATION = {
    "checkov.io/skip1": "CKV_K8S_38=the deploy step rolls the model server out through the Kubernetes API"
}
MEBIBYTE = Decimal(1024**2)
# Several nodes: the c10d rendezvous (torchrun's default port) on the Job's first pod, which each pod finds through
# the Job's name, read from the label the Job controller puts on its pods and expanded by Kubernetes in the command.
RENDEZVOUS_PORT = 29400
JOB_NAME_ENV_VAR = "TRAIN_JOB_NAME"
TRAIN_SERVICE_PREFIX = "ml-train-"
# A finished Job and the failed pods it keeps for kubectl logs go after a week (succeeded pods at once).
JOB_TTL_SECONDS = 7 * 24 * 3600


def torchrun_command(gpus: int) -> list[str]:
    """The training entrypoint with one DDP process per GPU of the pod (one node).

    ``mlsteps.distributed`` takes torchrun's arguments and keeps a rank's exit code 2 (bad input, no retry), which
    torchrun itself turns into 1.
    """
    launcher = ["python", "-m", "mlsteps.distributed", "--standalone", "--nnodes=1", f"--nproc-per-node={gpus}"]
    return [*launcher, "-m", "mlsteps", "train"]


def multi_node_command(nodes: int, gpus: int, service: str, wait_seconds: int) -> list[str]:
    """The training entrypoint of each pod of a multi-node run: a torchrun agent with one process per GPU (one on
    CPU), all agents meeting at a c10d rendezvous on the Job's first pod.

    Kubernetes expands ``$(TRAIN_JOB_NAME)``, the Job's name, so every pod names the first pod by its stable DNS name
    ``<job>-0.<service>`` and the Job as the rendezvous id, unique per attempt; ``mlsteps.distributed`` makes the pod
    of index 0 host the store. The agents wait for each other (``join_timeout``) and for the store (``read_timeout``)
    as long as Airflow waits for the pods to be scheduled and started.
    """
    endpoint = f"$({JOB_NAME_ENV_VAR})-0.{service}:{RENDEZVOUS_PORT}"
    launcher = [
        *("python", "-m", "mlsteps.distributed", f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}"),
        *("--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id=$({JOB_NAME_ENV_VAR})"),
        f"--rdzv-conf=join_timeout={wait_seconds},read_timeout={wait_seconds}",
    ]
    return [*launcher, "-m", "mlsteps", "train"]


def train_service_name(model_name: str) -> str:
    """The headless Service of a model's multi-node training pods: the pods' subdomain, so that each pod has the
    DNS name ``<job>-<index>.<service>`` (``make render`` writes it from ``include/k8s/train-multinode.yaml``)."""
    return f"{TRAIN_SERVICE_PREFIX}{model_name}"


def _multi_node(step: StepSettings, settings: Settings) -> dict[str, Any]:
    """What each pod of a multi-node run adds: the agent's command, the subdomain, the Job's name in the env."""
    kube = settings.runtime.kubernetes
    service = train_service_name(settings.pipeline.registry.model_name)
    job_name = k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.labels['{JOB_NAME_LABEL}']")
    )
    return {
        "cmds": multi_node_command(
            step.nodes, step.gpus, service, kube.schedule_timeout_seconds + kube.startup_timeout_seconds
        ),
        "subdomain": service,
        "pod_runtime_info_envs": [k8s.V1EnvVar(name=JOB_NAME_ENV_VAR, value_from=job_name)],
    }


def _command(step_name: str, step: StepSettings, settings: Settings, common: dict[str, Any]) -> dict[str, Any]:
    """Training in a pod: one process per GPU (on each of several pods), and checkpoints on the data volume when
    there is one."""
    if step_name != "train":
        return {}
    if step.nodes > 1:
        command = _multi_node(step, settings)
    else:
        command = {"cmds": torchrun_command(step.gpus)} if step.gpus > 1 else {}
    volume = settings.runtime.kubernetes.data_volume
    if volume:
        folder = f"{volume.checkpoints_path}/{{{{ dag.dag_id }}}}/{{{{ run_id }}}}"
        command["arguments"] = [*common["arguments"], "--checkpoint-dir", folder]
    return command


def service_account(step: StepSettings, model_name: str) -> str:
    """The ServiceAccount of a step's pods: the step's ``service_account``, suffixed ``-<model>`` for a step that talks
    to the Kubernetes API, so that each model's deploy step can change only its own model server (``make render``
    writes that account and its Role from ``include/k8s/rbac-ml-deploy.yaml``)."""
    return f"{step.service_account}-{model_name}" if step.needs_kubernetes_api else step.service_account


def pod_config_path(model_name: str) -> str:
    """Where a model's resolved config is mounted in its pods (a key of the ConfigMap ``make render`` writes)."""
    return f"{CONFIG_MOUNT}/{model_name}.yaml"


def _pod_env(step: StepSettings, image: str, model_name: str) -> dict[str, str]:
    """What a pod's environment adds to the one both runtimes share: the model's config in the mount, thread count,
    writable home, and the image, which register records on the model version."""
    cpu_limit = parse_quantity(step.resources.limits.cpu)
    processes = max(step.gpus, 1)
    return {
        IMAGE_ENV_VAR: image,
        "MLSTEPS_CONFIG": pod_config_path(model_name),
        "OMP_NUM_THREADS": str(max(1, math.floor(cpu_limit / processes))),
        "HOME": "/tmp",
        "XDG_CACHE_HOME": "/tmp/.cache",
    }


def _labels(step_name: str, step: StepSettings, settings: Settings) -> dict[str, str]:
    kube = settings.runtime.kubernetes
    labels = {
        "app.kubernetes.io/name": "mlsteps",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": "step",
        f"{LABEL_PREFIX}/step": step_name,
        f"{LABEL_PREFIX}/model": make_safe_label_value(settings.pipeline.registry.model_name),
        **kube.labels,
    }
    if step.gpus and kube.kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = kube.kueue_queue
    return labels


def _resources(step: StepSettings, kube: KubernetesSettings) -> k8s.V1ResourceRequirements:
    requests = step.resources.requests.as_kubernetes()
    limits = step.resources.limits.as_kubernetes()
    if step.gpus:
        requests[kube.gpu.resource] = limits[kube.gpu.resource] = str(step.gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _gpu_scheduling(kube: KubernetesSettings) -> dict[str, Any]:
    gpu = kube.gpu
    scheduling: dict[str, Any] = {
        "tolerations": [k8s.V1Toleration(key=gpu.taint_key, operator="Exists", effect="NoSchedule")]
    }
    if gpu.products:
        term = k8s.V1NodeSelectorTerm(
            match_expressions=[
                k8s.V1NodeSelectorRequirement(key=gpu.product_label, operator="In", values=list(gpu.products))
            ]
        )
        scheduling["affinity"] = k8s.V1Affinity(
            node_affinity=k8s.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(node_selector_terms=[term])
            )
        )
    return scheduling


def _mebibytes(quantity: Decimal) -> str:
    return f"{max(1, int(quantity / MEBIBYTE))}Mi"


def _volumes(step_name: str, step: StepSettings, kube: KubernetesSettings) -> tuple[list, list]:
    ephemeral_limit = parse_quantity(step.resources.limits.ephemeral_storage)
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=_mebibytes(ephemeral_limit))),
        k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=kube.config_map)),
    ]
    mounts = [
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="config", mount_path=CONFIG_MOUNT, read_only=True),
    ]
    if step.gpus:
        # Shared memory counts against the memory limit; half the request leaves the rest for the process.
        shm_size = _mebibytes(parse_quantity(step.resources.requests.memory) / 2)
        shm = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=shm_size)
        volumes.append(k8s.V1Volume(name="shm", empty_dir=shm))
        mounts.append(k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"))
    data = kube.data_volume
    if data:
        writes_checkpoints = step_name == "train"
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=data.claim_name, read_only=not writes_checkpoints)
        volumes.append(k8s.V1Volume(name="data", persistent_volume_claim=claim))
        mounts.append(
            k8s.V1VolumeMount(name="data", mount_path=data.datasets_path, sub_path="datasets", read_only=True)
        )
        if writes_checkpoints:
            mounts.append(k8s.V1VolumeMount(name="data", mount_path=data.checkpoints_path, sub_path="checkpoints"))
    return volumes, mounts


def _security(kube: KubernetesSettings) -> dict[str, Any]:
    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
    return {
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=kube.run_as_user,
            run_as_group=kube.run_as_group,
            fs_group=kube.run_as_group,
            seccomp_profile=seccomp,
        ),
        "container_security_context": k8s.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=kube.run_as_user,
            run_as_group=kube.run_as_group,
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=seccomp,
        ),
    }


def job_operator_kwargs(step_name: str, settings: Settings) -> dict[str, Any]:
    """The KubernetesJobOperator arguments of a step that runs on several nodes, on top of its pod's
    (``pod_operator_kwargs``): an Indexed Job of ``nodes`` pods that all run at once and fails as a whole.

    ``backoff_limit`` 0: one pod's failure fails the Job, and the Job controller stops the other pods (they would
    wait in a collective for the lost rank until its timeout); Airflow's retry starts a new Job. The pod failure
    policy fails the Job on exit code 2 as well, so the Job's own status (reason ``PodFailurePolicy``) says that a
    step stopped on bad input even when that pod is gone; ``StepJobOperator`` then fails the task without retry.
    The provider's operator (cncf-kubernetes 10.25) has no argument for the policy: it goes in ``full_job_spec``,
    which the operator merges under the Job it builds from its arguments.

    Args:
        step_name: the step (``train``; the settings allow no other on several nodes).
        settings: the deployment's settings (runtime ``kubernetes``).

    Returns:
        Keyword arguments for ``KubernetesJobOperator``.
    """
    nodes = settings.step(step_name).nodes
    bad_input = k8s.V1PodFailurePolicyRule(
        action="FailJob",
        on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
            container_name=KubernetesPodOperator.BASE_CONTAINER_NAME, operator="In", values=[EXIT_USER_ERROR]
        ),
    )
    policy = k8s.V1JobSpec(
        template=k8s.V1PodTemplateSpec(), pod_failure_policy=k8s.V1PodFailurePolicy(rules=[bad_input])
    )
    return {
        "completion_mode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoff_limit": 0,
        "full_job_spec": k8s.V1Job(spec=policy),
        "wait_until_job_complete": True,
        "ttl_seconds_after_finished": JOB_TTL_SECONDS,
    }


def pod_operator_kwargs(step_name: str, settings: Settings, common: dict[str, Any]) -> dict[str, Any]:
    """The KubernetesPodOperator arguments of one step's pod, on top of what both runtimes share.

    Args:
        step_name: the step (``python -m mlsteps <step>``).
        settings: the deployment's settings (runtime ``kubernetes``).
        common: the arguments both runtimes get (``cmds``, ``arguments``, ``env_vars``, Airflow limits).

    Returns:
        Keyword arguments for ``KubernetesPodOperator`` that replace or extend ``common``.
    """
    step = settings.step(step_name)
    kube = settings.runtime.kubernetes
    volumes, mounts = _volumes(step_name, step, kube)
    return {
        **_command(step_name, step, settings, common),
        "env_vars": {
            **common["env_vars"],
            **_pod_env(step, kube.images[step.image], settings.pipeline.registry.model_name),
        },
        "namespace": kube.namespace,
        "image": kube.images[step.image],
        "image_pull_policy": kube.image_pull_policy,
        "image_pull_secrets": [k8s.V1LocalObjectReference(name=name) for name in kube.image_pull_secrets] or None,
        "name": step_name,
        "kubernetes_conn_id": kube.connection_id,
        "labels": _labels(step_name, step, settings),
        "annotations": {
            f"{LABEL_PREFIX}/dag-run-id": "{{ run_id }}",
            f"{LABEL_PREFIX}/run-root": RUN_ROOT_TEMPLATE,
            **(API_TOKEN_JUSTIFICATION if step.needs_kubernetes_api else {}),
        },
        "container_resources": _resources(step, kube),
        "secrets": [Secret("env", None, name) for name in kube.secrets],
        "volumes": volumes,
        "volume_mounts": mounts,
        "service_account_name": service_account(step, settings.pipeline.registry.model_name),
        "automount_service_account_token": step.needs_kubernetes_api,
        **_security(kube),
        **(_gpu_scheduling(kube) if step.gpus else {}),
        "priority_class_name": kube.priority_class_name,
        "get_logs": True,
        # A failed step's last lines become its container's termination message, read back by StepPodOperator.
        "termination_message_policy": "FallbackToLogsOnError",
        "log_events_on_failure": True,
        "on_finish_action": DELETE_SUCCEEDED_KEEP_FAILED,
        "on_kill_action": "delete_pod",
        "schedule_timeout_seconds": kube.schedule_timeout_seconds,
        "startup_timeout_seconds": kube.startup_timeout_seconds,
        # Counted from the kubelet's start of the pod (after scheduling), so start-up time is its only slack.
        "active_deadline_seconds": step.timeout_minutes * 60 + kube.startup_timeout_seconds,
        "deferrable": kube.deferrable,
        "do_xcom_push": False,
    }
