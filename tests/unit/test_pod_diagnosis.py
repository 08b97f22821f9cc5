"""Why a step pod did not start or its step failed: diagnoses from real-shaped pods and events, and the operator that
reports them the way the local runtime does; the same for a step on several nodes, an Indexed Job of such pods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import PodLaunchFailedException
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s
from kubernetes.client.rest import ApiException

from orchestration import pod_operator
from orchestration.failures import StepExitError, StepUserError
from orchestration.local_step import LocalStepOperator
from orchestration.pod_diagnosis import (
    ContainerExit,
    PodDiagnosis,
    StartFailure,
    container_exit,
    diagnose_job,
    diagnose_pod,
)
from orchestration.pod_operator import StepJobOperator, StepPodOperator

NOW = datetime(2026, 3, 2, 3, 4, 5, tzinfo=UTC)
NAMESPACE = "ml"
POD_NAME = "train-x7k2p9qa"
POD_UID = "5b0c7f1e-3c1d-4f7a-9a51-0c2b8e6d4a10"
TRAIN_IMAGE = "ghcr.io/example/mlsteps-train:0.1.9"
GPU_TAINT_CLAUSE = "2 node(s) had untolerated taint {nvidia.com/gpu: present}"
PREEMPTION = "preemption: 0/5 nodes are available: 2 Preemption is not helpful for scheduling, 3 No preemption victims"
GPU_SHORTAGE = f"0/5 nodes are available: 3 Insufficient nvidia.com/gpu, {GPU_TAINT_CLAUSE}. {PREEMPTION}."
CPU_SHORTAGE = (
    "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)
PULL_NOT_FOUND = (
    f'Failed to pull image "{TRAIN_IMAGE}": rpc error: code = NotFound desc = failed to pull and unpack image '
    f'"{TRAIN_IMAGE}": failed to resolve reference "{TRAIN_IMAGE}": {TRAIN_IMAGE}: not found'
)


def make_pod(
    *,
    phase: str = "Pending",
    conditions: list[k8s.V1PodCondition] | None = None,
    waiting: k8s.V1ContainerStateWaiting | None = None,
    running: bool = False,
    terminated: k8s.V1ContainerStateTerminated | None = None,
    node_name: str | None = None,
    gpus: int = 1,
    image: str = TRAIN_IMAGE,
    affinity_products: list[str] | None = None,
    claim: str | None = None,
    gates: list[str] | None = None,
    labels: dict[str, str] | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> k8s.V1Pod:
    """A step pod as the API server returns it: the factory's spec, and the status under test."""
    resources = {"cpu": "4", "memory": "16Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    affinity = None
    if affinity_products:
        requirement = k8s.V1NodeSelectorRequirement(
            key="nvidia.com/gpu.product", operator="In", values=affinity_products
        )
        affinity = k8s.V1Affinity(
            node_affinity=k8s.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                    node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=[requirement])]
                )
            )
        )
    volumes = [k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name="mlsteps-config"))]
    if claim:
        volumes.append(
            k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim))
        )
    container_statuses = None
    if waiting or running or terminated:
        state = k8s.V1ContainerState(
            waiting=waiting,
            running=k8s.V1ContainerStateRunning(started_at=NOW) if running else None,
            terminated=terminated,
        )
        container_statuses = [
            k8s.V1ContainerStatus(
                name="base",
                image=image,
                image_id="",
                ready=running,
                restart_count=0,
                started=running,
                state=state,
            )
        ]
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=POD_NAME,
            namespace=NAMESPACE,
            uid=POD_UID,
            creation_timestamp=NOW - timedelta(minutes=15),
            labels={
                "dag_id": "ml_retrain",
                "task_id": "train",
                "try_number": "1",
                "kubernetes_pod_operator": "True",
                **(labels or {}),
            },
        ),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    image=image,
                    resources=k8s.V1ResourceRequirements(requests=resources, limits=resources),
                )
            ],
            affinity=affinity,
            volumes=volumes,
            node_name=node_name,
            scheduling_gates=[k8s.V1PodSchedulingGate(name=gate) for gate in gates] if gates else None,
            tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        ),
        status=k8s.V1PodStatus(
            phase=phase,
            conditions=conditions,
            container_statuses=container_statuses,
            qos_class="Guaranteed",
            reason=reason,
            message=message,
        ),
    )


def scheduled(status: str = "True", reason: str | None = None, message: str | None = None) -> k8s.V1PodCondition:
    return k8s.V1PodCondition(
        type="PodScheduled", status=status, reason=reason, message=message, last_transition_time=NOW
    )


def unschedulable(message: str) -> k8s.V1PodCondition:
    return scheduled("False", "Unschedulable", message)


def kubelet_event(reason: str, message: str, *, minutes_ago: float = 0, kind: str = "Pod") -> k8s.CoreV1Event:
    """An event as the kubelet (and the other core/v1 reporters) records it: first/last timestamp and a count."""
    when = NOW - timedelta(minutes=minutes_ago)
    return k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(
            name=f"{POD_NAME}.18a2b{int(minutes_ago * 60):05x}", namespace=NAMESPACE, creation_timestamp=when
        ),
        involved_object=k8s.V1ObjectReference(
            kind=kind,
            name=POD_NAME,
            namespace=NAMESPACE,
            uid=POD_UID,
            api_version="v1",
            field_path="spec.containers{base}",
        ),
        reason=reason,
        message=message,
        type="Warning",
        source=k8s.V1EventSource(component="kubelet", host="gpu-node-a100-1"),
        first_timestamp=when - timedelta(minutes=5),
        last_timestamp=when,
        count=4,
    )


def scheduler_event(message: str, *, minutes_ago: float = 0) -> k8s.CoreV1Event:
    """A FailedScheduling event as the scheduler records it (events.k8s.io): event_time and series, no timestamps."""
    when = NOW - timedelta(minutes=minutes_ago)
    return k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name=f"{POD_NAME}.18a2c0f3", namespace=NAMESPACE, creation_timestamp=when),
        involved_object=k8s.V1ObjectReference(kind="Pod", name=POD_NAME, namespace=NAMESPACE, uid=POD_UID),
        reason="FailedScheduling",
        message=message,
        type="Warning",
        action="Scheduling",
        reporting_component="default-scheduler",
        reporting_instance="default-scheduler-control-plane",
        event_time=when - timedelta(minutes=10),
        series=k8s.CoreV1EventSeries(count=7, last_observed_time=when),
    )


# ---- one diagnosis per cause ----------------------------------------------------------------------------------------

CAUSES = [
    pytest.param(
        make_pod(conditions=[unschedulable(GPU_SHORTAGE)]),
        [scheduler_event(GPU_SHORTAGE)],
        StartFailure.INSUFFICIENT_GPU,
        ["3 Insufficient nvidia.com/gpu (the pod requests nvidia.com/gpu=1)", "0/5 nodes"],
        id="insufficient-gpu",
    ),
    pytest.param(
        make_pod(gpus=0, conditions=[unschedulable(CPU_SHORTAGE)]),
        [scheduler_event(CPU_SHORTAGE)],
        StartFailure.INSUFFICIENT_CPU,
        ["3 Insufficient cpu (the pod requests cpu=4)", "lower the step's CPU request"],
        id="insufficient-cpu",
    ),
    pytest.param(
        make_pod(gpus=0),
        [
            scheduler_event(
                "0/4 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
                "3 Insufficient memory. preemption: 0/4 nodes are available: 1 Preemption is not helpful for "
                "scheduling, 3 No preemption victims found for incoming pod."
            )
        ],
        StartFailure.INSUFFICIENT_MEMORY,
        ["3 Insufficient memory (the pod requests memory=16Gi)", "lower the step's memory request"],
        id="insufficient-memory",
    ),
    pytest.param(
        make_pod(),
        [
            scheduler_event(
                "0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpuGroup}. preemption: 0/2 "
                "nodes are available: 2 Preemption is not helpful for scheduling."
            )
        ],
        StartFailure.UNTOLERATED_TAINT,
        ["toleration for taint {dedicated: gpuGroup}"],
        id="untolerated-taint",
    ),
    pytest.param(
        make_pod(affinity_products=["NVIDIA-H100-80GB-HBM3"]),
        [
            scheduler_event(
                "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes "
                "are available: 3 Preemption is not helpful for scheduling."
            )
        ],
        StartFailure.NODE_SELECTOR_MISMATCH,
        ["the pod selects nvidia.com/gpu.product In ['NVIDIA-H100-80GB-HBM3']", "label nodes to match"],
        id="node-affinity",
    ),
    pytest.param(
        make_pod(
            node_name="gpu-node-a100-1",
            conditions=[scheduled()],
            waiting=k8s.V1ContainerStateWaiting(
                reason="ImagePullBackOff", message=f'Back-off pulling image "{TRAIN_IMAGE}"'
            ),
        ),
        [kubelet_event("Failed", PULL_NOT_FOUND, minutes_ago=1)],
        StartFailure.IMAGE_PULL_ERROR,
        [f'cannot pull image "{TRAIN_IMAGE}": not found', "imagePullSecrets"],
        id="image-not-found",
    ),
    pytest.param(
        make_pod(
            node_name="gpu-node-a100-1",
            conditions=[scheduled()],
            image="ghcr.io/Example/mlsteps:0.1",
            waiting=k8s.V1ContainerStateWaiting(
                reason="InvalidImageName",
                message='Failed to apply default image tag "ghcr.io/Example/mlsteps:0.1": couldn\'t parse image '
                'reference "ghcr.io/Example/mlsteps:0.1": invalid reference format: repository name must be lowercase',
            ),
        ),
        [],
        StartFailure.IMAGE_PULL_ERROR,
        ['image "ghcr.io/Example/mlsteps:0.1": repository name must be lowercase'],
        id="invalid-image-name",
    ),
    pytest.param(
        make_pod(claim="ml-data"),
        [
            scheduler_event(
                "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes "
                "are available: 3 Preemption is not helpful for scheduling."
            )
        ],
        StartFailure.PVC_UNAVAILABLE,
        ["unbound immediate PersistentVolumeClaims (claims: ml-data)", "kubectl describe pvc -n ml"],
        id="unbound-pvc",
    ),
    pytest.param(
        make_pod(claim="ml-data"),
        [
            scheduler_event(
                '0/3 nodes are available: persistentvolumeclaim "ml-data" not found. preemption: 0/3 nodes are '
                "available: 3 Preemption is not helpful for scheduling."
            )
        ],
        StartFailure.PVC_UNAVAILABLE,
        ['create PersistentVolumeClaim "ml-data" in namespace ml'],
        id="missing-pvc",
    ),
    pytest.param(
        make_pod(),
        [
            kubelet_event(
                "FailedCreate",
                'Error creating: pods "train-x7k2p9qa" is forbidden: exceeded quota: gpu-quota, requested: '
                "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4",
                kind="Job",
            )
        ],
        StartFailure.QUOTA_EXCEEDED,
        [
            'ResourceQuota "gpu-quota" in namespace ml: it requests requests.nvidia.com/gpu=1 with '
            "requests.nvidia.com/gpu=4 already used of requests.nvidia.com/gpu=4"
        ],
        id="quota-exceeded",
    ),
    pytest.param(
        make_pod(
            node_name="cpu-node-1",
            conditions=[scheduled()],
            waiting=k8s.V1ContainerStateWaiting(
                reason="CreateContainerConfigError", message='secret "ml-mlflow" not found'
            ),
        ),
        [kubelet_event("Failed", 'Error: secret "ml-mlflow" not found')],
        StartFailure.MISSING_SECRET_OR_CONFIG,
        ['Secret "ml-mlflow" does not exist in namespace ml', "kubectl get secret -n ml"],
        id="missing-secret",
    ),
    pytest.param(
        make_pod(node_name="cpu-node-1", conditions=[scheduled()]),
        [
            kubelet_event(
                "FailedMount", 'MountVolume.SetUp failed for volume "config" : configmap "mlsteps-config" not found'
            )
        ],
        StartFailure.MISSING_SECRET_OR_CONFIG,
        ['ConfigMap "mlsteps-config" does not exist in namespace ml'],
        id="missing-configmap",
    ),
    pytest.param(
        make_pod(
            node_name="cpu-node-1",
            conditions=[scheduled()],
            waiting=k8s.V1ContainerStateWaiting(
                reason="CreateContainerConfigError", message="couldn't find key password in Secret ml/ml-mlflow"
            ),
        ),
        [],
        StartFailure.MISSING_SECRET_OR_CONFIG,
        ['Secret "ml-mlflow" in namespace ml has no key "password"'],
        id="missing-secret-key",
    ),
    pytest.param(
        make_pod(
            gates=["kueue.x-k8s.io/admission"],
            labels={"kueue.x-k8s.io/queue-name": "team-a-gpu"},
            conditions=[
                scheduled("False", "SchedulingGated", "Scheduling is blocked due to non-empty scheduling gates")
            ],
        ),
        [],
        StartFailure.AWAITING_ADMISSION,
        ["scheduling gate(s) kueue.x-k8s.io/admission", "until queue team-a-gpu admits it", "kubectl get workloads"],
        id="kueue-gated",
    ),
    pytest.param(
        make_pod(
            phase="Failed",
            node_name="gpu-node-a100-1",
            reason="OutOfnvidia.com/gpu",
            message="Pod was rejected: Node didn't have enough resource: nvidia.com/gpu, requested: 1, used: 1, "
            "capacity: 1",
        ),
        [],
        StartFailure.INSUFFICIENT_GPU,
        ["rejected by node gpu-node-a100-1", "requests nvidia.com/gpu=1 while 1 of 1 are in use"],
        id="node-rejected-gpu",
    ),
]


@pytest.mark.parametrize(("pod", "events", "cause", "fragments"), CAUSES)
def test_each_cause_is_recognised_from_kubernetes_own_text(
    pod: k8s.V1Pod, events: list[k8s.CoreV1Event], cause: StartFailure, fragments: list[str]
) -> None:
    diagnosis = diagnose_pod(pod, events)

    assert diagnosis is not None
    assert diagnosis.cause == cause
    assert diagnosis.message.startswith(f"Pod {NAMESPACE}/{POD_NAME} ")
    for fragment in fragments:
        assert fragment in diagnosis.message
    assert "To fix:" in diagnosis.message


def test_the_evidence_is_the_text_the_diagnosis_came_from() -> None:
    diagnosis = diagnose_pod(make_pod(), [scheduler_event(GPU_SHORTAGE)])

    assert diagnosis == PodDiagnosis(
        StartFailure.INSUFFICIENT_GPU, diagnosis.message, f"FailedScheduling: {GPU_SHORTAGE}"
    )


def test_a_multi_reason_message_lists_every_reason_and_its_fix() -> None:
    message = (
        "0/6 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "2 Insufficient memory, 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/6 nodes are "
        "available: 6 Preemption is not helpful for scheduling."
    )
    diagnosis = diagnose_pod(make_pod(affinity_products=["NVIDIA-A100-SXM4-80GB"]), [scheduler_event(message)])

    assert diagnosis.cause == StartFailure.NODE_SELECTOR_MISMATCH  # 3 nodes, the most
    assert "1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }" in diagnosis.message
    assert "2 Insufficient memory (the pod requests memory=16Gi)" in diagnosis.message
    assert "3 node(s) didn't match Pod's node affinity/selector" in diagnosis.message
    fixes = diagnosis.message.split("To fix: ", 1)[1]
    assert fixes.index("label nodes to match") < fixes.index("memory request") < fixes.index("control-plane")
    assert "preemption" not in diagnosis.message


def test_gpu_and_taint_in_one_message_report_both_with_gpu_as_the_cause() -> None:
    diagnosis = diagnose_pod(make_pod(), [scheduler_event(GPU_SHORTAGE)])

    assert diagnosis.cause == StartFailure.INSUFFICIENT_GPU
    assert GPU_TAINT_CLAUSE in diagnosis.message
    assert "toleration for taint {nvidia.com/gpu: present}" in diagnosis.message


def test_older_taint_wording_is_recognised() -> None:
    message = "0/3 nodes are available: 3 node(s) had taint {gpu: true}, that the pod didn't tolerate."

    diagnosis = diagnose_pod(make_pod(), [scheduler_event(message)])

    assert diagnosis.cause == StartFailure.UNTOLERATED_TAINT
    assert "toleration for taint {gpu: true}" in diagnosis.message


def test_the_newest_event_wins_whatever_the_list_order() -> None:
    older_cpu = kubelet_event("FailedScheduling", CPU_SHORTAGE, minutes_ago=12)
    newer_gpu = scheduler_event(GPU_SHORTAGE, minutes_ago=1)

    assert diagnose_pod(make_pod(), [newer_gpu, older_cpu]).cause == StartFailure.INSUFFICIENT_GPU
    assert diagnose_pod(make_pod(), [older_cpu, newer_gpu]).cause == StartFailure.INSUFFICIENT_GPU
    newest_cpu = kubelet_event("FailedScheduling", CPU_SHORTAGE, minutes_ago=0.5)
    assert diagnose_pod(make_pod(), [newest_cpu, newer_gpu]).cause == StartFailure.INSUFFICIENT_CPU


def test_events_win_over_the_pod_status_and_the_status_is_the_fallback() -> None:
    pod = make_pod(conditions=[unschedulable(CPU_SHORTAGE)])

    assert diagnose_pod(pod, [scheduler_event(GPU_SHORTAGE)]).cause == StartFailure.INSUFFICIENT_GPU
    fallback = diagnose_pod(pod, [])
    assert fallback.cause == StartFailure.INSUFFICIENT_CPU
    assert fallback.evidence == f"PodScheduled=False Unschedulable: {CPU_SHORTAGE}"


def test_the_registry_reason_survives_the_kubelets_echo_events() -> None:
    pod = make_pod(
        node_name="gpu-node-a100-1",
        conditions=[scheduled()],
        waiting=k8s.V1ContainerStateWaiting(
            reason="ImagePullBackOff", message=f'Back-off pulling image "{TRAIN_IMAGE}"'
        ),
    )
    events = [
        kubelet_event("Failed", PULL_NOT_FOUND, minutes_ago=3),
        kubelet_event("Failed", "Error: ErrImagePull", minutes_ago=2.9),
        kubelet_event("BackOff", f'Back-off pulling image "{TRAIN_IMAGE}"', minutes_ago=1),
        kubelet_event("Failed", "Error: ImagePullBackOff", minutes_ago=1),
    ]

    diagnosis = diagnose_pod(pod, events)

    assert diagnosis.cause == StartFailure.IMAGE_PULL_ERROR
    assert f'cannot pull image "{TRAIN_IMAGE}": not found.' in diagnosis.message
    assert diagnosis.evidence == f"Failed: {PULL_NOT_FOUND}"


def test_a_running_pod_needs_no_diagnosis_even_with_old_warnings() -> None:
    pod = make_pod(phase="Running", node_name="gpu-node-a100-1", conditions=[scheduled()], running=True)

    assert diagnose_pod(pod, [scheduler_event(GPU_SHORTAGE, minutes_ago=20)]) is None


def test_a_pod_that_got_a_node_is_not_blamed_on_its_earlier_failed_scheduling() -> None:
    # Scheduled after the GPU pool scaled up; now pulling a large image, which is slow but not a failure.
    pod = make_pod(
        node_name="gpu-node-a100-1",
        conditions=[scheduled()],
        waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"),
    )

    assert diagnose_pod(pod, [scheduler_event(GPU_SHORTAGE, minutes_ago=2)]) is None


def test_nothing_known_gives_none() -> None:
    unknown = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."

    assert diagnose_pod(make_pod(conditions=[unschedulable(unknown)]), [scheduler_event(unknown)]) is None
    assert diagnose_pod(make_pod(), []) is None


# ---- the operator ---------------------------------------------------------------------------------------------------


class FakePodManager:
    """Stands in for the provider's PodManager: there is no cluster here. The pod never leaves Pending."""

    def __init__(self, pod: k8s.V1Pod, events: list[k8s.CoreV1Event], launch_error: Exception | None = None) -> None:
        self.pod = pod
        self.events = events
        self.launch_error = launch_error
        self.read_error: Exception | None = None

    async def watch_pod_events(self, pod: k8s.V1Pod, check_interval: float) -> None:
        return None

    async def await_pod_start(self, pod: k8s.V1Pod, **timeouts: Any) -> None:
        raise self.launch_error

    def read_pod(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        if self.read_error:
            raise self.read_error
        return self.pod

    def read_pod_events(self, pod: k8s.V1Pod, resource_version: str | None = None) -> k8s.CoreV1EventList:
        return k8s.CoreV1EventList(items=self.events, metadata=k8s.V1ListMeta(resource_version="48213"))

    def await_pod_completion(self, pod: k8s.V1Pod, *args: Any) -> k8s.V1Pod:
        return self.pod


class FakeCoreV1Api:
    """The few CoreV1Api calls the provider makes around a pod that never started."""

    def __init__(self, pod: k8s.V1Pod) -> None:
        self.pod = pod
        self.patched_labels: list[dict] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> k8s.V1PodList:
        return k8s.V1PodList(items=[self.pod])

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict) -> None:
        self.patched_labels.append(body["metadata"]["labels"])

    def read_namespaced_pod_log(self, **kwargs: Any) -> list[bytes]:
        return []


def make_operator(pod_manager: FakePodManager, **kwargs: Any) -> StepPodOperator:
    operator = StepPodOperator(
        task_id="train",
        step="train",
        name="train",
        namespace=NAMESPACE,
        image=TRAIN_IMAGE,
        cmds=["python", "-m", "mlsteps", "train"],
        log_events_on_failure=True,
        on_finish_action="delete_succeeded_pod",
        schedule_timeout_seconds=600,
        do_xcom_push=False,
        **kwargs,
    )
    operator.pod_manager = pod_manager
    operator.client = FakeCoreV1Api(pod_manager.pod)
    operator.hook = SimpleNamespace(is_in_cluster=False, get_pod=lambda name, namespace: pod_manager.pod)
    return operator


def schedule_timeout() -> PodLaunchTimeoutException:
    return PodLaunchTimeoutException(
        "Pod took too long to be scheduled on the cluster, giving up. More than 600s. "
        "Check the pod events in kubernetes."
    )


def test_a_launch_timeout_becomes_the_diagnosis(capsys: pytest.CaptureFixture[str]) -> None:
    timeout = schedule_timeout()
    operator = make_operator(FakePodManager(make_pod(), [scheduler_event(GPU_SHORTAGE)], timeout))

    with pytest.raises(AirflowException, match=r"^insufficient_gpu: Pod ml/train-x7k2p9qa cannot be sch") as raised:
        operator.await_pod_start(make_pod())

    assert "3 Insufficient nvidia.com/gpu" in str(raised.value)
    assert f"Evidence: FailedScheduling: {GPU_SHORTAGE}" in str(raised.value)
    assert raised.value.__cause__ is timeout
    task_log = capsys.readouterr().out.splitlines()
    assert any("error" in line and "3 Insufficient nvidia.com/gpu" in line for line in task_log)


def test_a_launch_failure_becomes_the_diagnosis() -> None:
    pod = make_pod(
        node_name="gpu-node-a100-1",
        conditions=[scheduled()],
        waiting=k8s.V1ContainerStateWaiting(reason="ErrImagePull", message=PULL_NOT_FOUND),
    )
    failure = PodLaunchFailedException(f"Image cannot be pulled, unable to start: ErrImagePull\n{PULL_NOT_FOUND}")
    operator = make_operator(FakePodManager(pod, [], failure))

    with pytest.raises(AirflowException, match=f'^image_pull_error: .*cannot pull image "{TRAIN_IMAGE}": not found'):
        operator.await_pod_start(pod)


def test_the_launch_error_stays_when_nothing_explains_it() -> None:
    timeout = schedule_timeout()
    operator = make_operator(FakePodManager(make_pod(), [], timeout))

    with pytest.raises(PodLaunchTimeoutException) as raised:
        operator.await_pod_start(make_pod())

    assert raised.value is timeout


def test_the_launch_error_stays_unchanged_when_the_pod_cannot_be_read() -> None:
    timeout = schedule_timeout()
    pod_manager = FakePodManager(make_pod(), [scheduler_event(GPU_SHORTAGE)], timeout)
    pod_manager.read_error = ApiException(status=403, reason="Forbidden")
    operator = make_operator(pod_manager)

    with pytest.raises(PodLaunchTimeoutException) as raised:
        operator.await_pod_start(make_pod())

    assert raised.value is timeout
    assert raised.value.__cause__ is None


def task_context() -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="ml_retrain", task_id="train", map_index=-1, try_number=1, start_date=NOW)
    ti.xcom_push = lambda key, value: None
    return {"ti": ti, "run_id": "scheduled__2026-03-02T03:00:00+00:00", "dag": SimpleNamespace(dag_id="ml_retrain")}


def test_the_task_fails_with_the_diagnosis_not_the_providers_cleanup_message() -> None:
    # Without the operator's cleanup guard, the provider's "Pod ... returned a failure" would replace the diagnosis.
    pod_manager = FakePodManager(make_pod(), [scheduler_event(GPU_SHORTAGE)], schedule_timeout())
    operator = make_operator(pod_manager)

    with pytest.raises(AirflowException, match="^insufficient_gpu: ") as raised:
        operator.execute(task_context())

    assert isinstance(raised.value.__cause__, PodLaunchTimeoutException)
    assert operator.client.patched_labels == [{"already_checked": "True"}]  # the provider's cleanup still ran


def test_a_failed_pod_that_ran_still_fails_with_the_providers_message() -> None:
    ran = make_pod(phase="Failed", node_name="cpu-node-1", conditions=[scheduled()])
    operator = make_operator(FakePodManager(ran, []))

    with pytest.raises(AirflowException, match="returned a failure"):
        operator.cleanup(ran, ran)


def test_a_deferred_start_timeout_becomes_the_diagnosis() -> None:
    pod = make_pod(conditions=[unschedulable(GPU_SHORTAGE)])
    operator = make_operator(FakePodManager(pod, [scheduler_event(GPU_SHORTAGE)]), deferrable=True)
    event = {
        "status": "timeout",
        "name": POD_NAME,
        "namespace": NAMESPACE,
        "message": "Pod took too long to be scheduled on the cluster, giving up. More than 600s.",
    }

    with pytest.raises(
        AirflowException, match="^insufficient_gpu: Pod ml/train-x7k2p9qa cannot be scheduled"
    ) as raised:
        operator.trigger_reentry(task_context(), event)

    assert "More than 600s" in str(raised.value.__cause__)


def test_a_deferred_pod_that_ran_keeps_the_providers_error() -> None:
    # The provider's own failure for a pod that ran: its cleanup's message, not a start diagnosis.
    ran = make_pod(phase="Running", node_name="cpu-node-1", conditions=[scheduled()], running=True)
    operator = make_operator(FakePodManager(ran, []), deferrable=True)
    event = {
        "status": "timeout",
        "name": POD_NAME,
        "namespace": NAMESPACE,
        "message": "Pod ml/train-x7k2p9qa reached the task's execution_timeout deadline.",
    }

    with pytest.raises(AirflowException, match=f"^Pod {POD_NAME} returned a failure"):
        operator.trigger_reentry(task_context(), event)


# ---- a step that ran and failed: its exit code, read from the container status -----------------------------------

STEP_TAIL = (
    "reading the preprocessed splits: 2400 train, 600 validation rows\n"
    "train failed: the validation split has one class only (churned = 0):\n"
    "- add rows of the other class or use a time split with a longer window"
)


def terminated(exit_code: int, reason: str = "Error", message: str = STEP_TAIL) -> k8s.V1ContainerStateTerminated:
    """The step container's end as the kubelet reports it (the message: its log tail, FallbackToLogsOnError)."""
    return k8s.V1ContainerStateTerminated(
        exit_code=exit_code, reason=reason, message=message, started_at=NOW, finished_at=NOW + timedelta(minutes=2)
    )


def ended_pod(exit_code: int, reason: str = "Error", message: str = STEP_TAIL) -> k8s.V1Pod:
    return make_pod(
        phase="Succeeded" if exit_code == 0 else "Failed",
        node_name="cpu-node-1",
        conditions=[scheduled()],
        terminated=terminated(exit_code, reason, message),
    )


def test_container_exit_reads_the_step_containers_terminated_state() -> None:
    assert container_exit(ended_pod(2), "base") == ContainerExit(2, "Error", STEP_TAIL, NOW + timedelta(minutes=2))
    assert container_exit(ended_pod(2), "istio-proxy") is None
    assert container_exit(make_pod(phase="Running", running=True), "base") is None


def test_exit_code_2_fails_the_task_without_retry_naming_the_step_code_and_last_lines() -> None:
    pod = ended_pod(2)
    operator = make_operator(FakePodManager(pod, []))

    with pytest.raises(StepUserError) as raised:
        operator.cleanup(pod, pod)

    assert isinstance(raised.value, AirflowFailException), "AirflowFailException is what stops Airflow's retries"
    message = str(raised.value)
    assert message.startswith("train stopped on bad input, bad config or a failed check (exit code 2)")
    assert "- add rows of the other class" in message
    assert raised.value.step_message.startswith("train failed: the validation split has one class only")
    assert operator.client.patched_labels == [{"already_checked": "True"}]  # the provider's cleanup still ran


@pytest.mark.parametrize(
    ("exit_code", "reason", "words"),
    [
        (1, "Error", ["train exited with code 1; it is retried", "Traceback"]),
        (137, "OOMKilled", ["OOMKilled", "runtime.steps.train.resources.limits.memory"]),
    ],
)
def test_other_exit_codes_stay_retryable(exit_code: int, reason: str, words: list[str]) -> None:
    pod = ended_pod(exit_code, reason, "Traceback (most recent call last):\nRuntimeError: CUDA error")
    operator = make_operator(FakePodManager(pod, []))

    with pytest.raises(StepExitError) as raised:
        operator.cleanup(pod, pod)

    assert not isinstance(raised.value, AirflowFailException)
    for word in words:
        assert word in str(raised.value)


def test_a_successful_step_passes() -> None:
    pod = ended_pod(0, "Completed", "")
    make_operator(FakePodManager(pod, [])).cleanup(pod, pod)


def test_a_step_failure_without_output_points_at_the_pod_log() -> None:
    pod = ended_pod(1, "Error", "")
    with pytest.raises(StepExitError, match=f"kubectl logs -n {NAMESPACE} {POD_NAME}"):
        make_operator(FakePodManager(pod, [])).cleanup(pod, pod)


def test_deferrable_mode_fails_exit_code_2_without_retry_too() -> None:
    pod = ended_pod(2)
    operator = make_operator(FakePodManager(pod, []), deferrable=True)
    event = {"status": "failed", "name": POD_NAME, "namespace": NAMESPACE, "message": "Pod failed"}

    with pytest.raises(StepUserError, match=r"^train stopped on bad input.*\n.*\ntrain failed"):
        operator.trigger_reentry(task_context(), event)


@pytest.mark.parametrize(("exit_code", "reason"), [(2, "Error"), (1, "Error"), (3, "Error")])
def test_both_runtimes_fail_alike_on_each_exit_code(exit_code: int, reason: str) -> None:
    # The same step output and exit code: the local process and the pod raise the same exception and message.
    tail = "train failed: --epochs must be at least 1"
    local = LocalStepOperator(
        task_id="train",
        step="train",
        cmds=["python", "-c", f"import sys; print({tail!r}); sys.exit({exit_code})"],
        arguments=[],
        env_vars={},
    )
    pod = ended_pod(exit_code, reason, tail)
    with pytest.raises(StepExitError) as from_local:
        local.execute(context={})
    with pytest.raises(StepExitError) as from_pod:
        make_operator(FakePodManager(pod, [])).cleanup(pod, pod)

    assert type(from_local.value) is type(from_pod.value)
    assert isinstance(from_pod.value, AirflowFailException) is (exit_code == 2)
    assert from_local.value.step_message == from_pod.value.step_message == tail
    assert str(from_local.value) == str(from_pod.value)


# ---- a step on several nodes: the Indexed Job and its pods ----------------------------------------------------------

JOB_NAME = "job-train-k3v9q2za"
QUOTA_REFUSAL = (
    f'Error creating: pods "{JOB_NAME}-1-x8r2t" is forbidden: exceeded quota: ml-quota, requested: '
    "requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8"
)


def job_pod(index: int, pod: k8s.V1Pod | None = None) -> k8s.V1Pod:
    """Pod ``index`` of the Job, as the Job controller names, labels and annotates it; running unless ``pod`` says."""
    pod = pod or make_pod(phase="Running", node_name=f"gpu-node-{index}", conditions=[scheduled()], running=True)
    pod.metadata.name = f"{JOB_NAME}-{index}-x8r2t"
    pod.metadata.labels["batch.kubernetes.io/job-name"] = JOB_NAME
    pod.metadata.annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
    return pod


def make_job(*, failed: str | None = None, suspend: bool = False) -> k8s.V1Job:
    """The Job as the API server returns it: Complete, Failed with ``failed`` as its reason, or not finished."""
    message = f"Container base for pod {NAMESPACE}/{JOB_NAME}-1-x8r2t failed with exit code 2 matching FailJob rule"
    condition = k8s.V1JobCondition(
        type="Failed" if failed else "Complete",
        status="True",
        reason=failed,
        message=message if failed == "PodFailurePolicy" else None,
    )
    labels = {"kueue.x-k8s.io/queue-name": "team-a-gpu", "continuous-training/step": "train"}
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=JOB_NAME, namespace=NAMESPACE, labels=labels),
        spec=k8s.V1JobSpec(
            suspend=suspend,
            completions=2,
            parallelism=2,
            template=k8s.V1PodTemplateSpec(spec=make_pod().spec),
        ),
        status=k8s.V1JobStatus(conditions=[condition]),
    )


class FakeJobCluster:
    """The API the Job operator talks to (core and batch clients, the hook and the pod manager in one), with no
    cluster: the Job controller creates the pods over successive lists; each pod starts unless it is stuck; at the
    end every pod is in ``ended`` (or gone) and the Job ends as ``final_job`` says."""

    is_in_cluster = False
    is_job_failed = staticmethod(KubernetesHook.is_job_failed)

    def __init__(
        self,
        listed: list[list[k8s.V1Pod]],
        *,
        final_job: k8s.V1Job | None = None,
        ended: list[k8s.V1Pod] = (),
        stuck: dict[str, tuple[k8s.V1Pod, list[k8s.CoreV1Event]]] | None = None,
        job_now: k8s.V1Job | None = None,
        job_events: list[k8s.CoreV1Event] = (),
    ) -> None:
        self.listed = list(listed)
        self.final_job = final_job or make_job()
        self.ended = {pod.metadata.name: pod for pod in ended}
        self.stuck = stuck or {}
        self.job_now = job_now or make_job()
        self.job_events = list(job_events)
        self.selectors: list[str] = []
        self.deleted_jobs: list[str] = []
        self.deleted_pods: list[str] = []
        self.logged: list[str] = []
        self.awaited: list[str] = []

    # the hook
    def create_job(self, job: k8s.V1Job) -> k8s.V1Job:
        return job

    def wait_until_job_complete(self, job_name: str, namespace: str, job_poll_interval: float) -> k8s.V1Job:
        return self.final_job

    def get_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        if name not in self.ended:
            raise ApiException(status=404, reason="Not Found")
        return self.ended[name]

    # CoreV1Api and BatchV1Api
    def list_namespaced_pod(self, namespace: str, label_selector: str) -> k8s.V1PodList:
        self.selectors.append(label_selector)
        return k8s.V1PodList(items=self.listed.pop(0) if len(self.listed) > 1 else self.listed[0])

    def list_namespaced_event(self, namespace: str, field_selector: str) -> k8s.CoreV1EventList:
        assert field_selector == f"involvedObject.kind=Job,involvedObject.name={JOB_NAME}"
        return k8s.CoreV1EventList(items=self.job_events)

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict) -> None:
        return None

    def read_namespaced_job(self, name: str, namespace: str) -> k8s.V1Job:
        return self.job_now

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str) -> None:
        self.deleted_jobs.append(name)

    # the pod manager
    async def watch_pod_events(self, pod: k8s.V1Pod, check_interval: float) -> None:
        return None

    async def await_pod_start(self, pod: k8s.V1Pod, **timeouts: Any) -> None:
        self.awaited.append(pod.metadata.name)
        if pod.metadata.name in self.stuck:
            raise schedule_timeout()

    def read_pod(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        return self.stuck[pod.metadata.name][0] if pod.metadata.name in self.stuck else pod

    def read_pod_events(self, pod: k8s.V1Pod, resource_version: str | None = None) -> k8s.CoreV1EventList:
        events = self.stuck[pod.metadata.name][1] if pod.metadata.name in self.stuck else []
        return k8s.CoreV1EventList(items=events)

    def fetch_requested_container_logs(self, pod: k8s.V1Pod, containers: Any, follow_logs: bool) -> list:
        self.logged.append(pod.metadata.name)
        return []

    def delete_pod(self, pod: k8s.V1Pod) -> None:
        self.deleted_pods.append(pod.metadata.name)


def make_job_operator(cluster: FakeJobCluster, **kwargs: Any) -> StepJobOperator:
    operator = StepJobOperator(
        task_id="train",
        step="train",
        name=JOB_NAME.removeprefix("job-"),  # the provider prefixes Job names with job-
        random_name_suffix=False,
        namespace=NAMESPACE,
        image=TRAIN_IMAGE,
        cmds=["python", "-m", "mlsteps.distributed", "--nnodes=2"],
        completion_mode="Indexed",
        completions=2,
        parallelism=2,
        backoff_limit=0,
        wait_until_job_complete=True,
        log_events_on_failure=True,
        on_finish_action="delete_succeeded_pod",
        schedule_timeout_seconds=600,
        do_xcom_push=False,
        **kwargs,
    )
    operator.hook = operator.client = operator.job_client = operator.pod_manager = cluster
    return operator


class FakeClock:
    """Stands in for the ``time`` module of the operator: sleeping moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(pod_operator, "time", fake)
    return fake


def test_a_job_that_runs_is_awaited_pod_by_pod_once_all_exist_and_succeeds(clock: FakeClock) -> None:
    done = [job_pod(index, ended_pod(0, "Completed", "")) for index in (0, 1)]
    # The Job controller creates its pods after the Job: none, one, then both.
    cluster = FakeJobCluster([[], [job_pod(1)], [job_pod(1), job_pod(0)]], ended=done)
    operator = make_job_operator(cluster)

    assert operator.execute(task_context()) is None

    assert cluster.selectors == [f"batch.kubernetes.io/job-name={JOB_NAME}"] * 3, "this Job's pods, no earlier try's"
    assert clock.now == 1010.0, "a list every startup_check_interval_seconds (5 s)"
    assert [pod.metadata.name for pod in operator.pods] == [f"{JOB_NAME}-0-x8r2t", f"{JOB_NAME}-1-x8r2t"]
    assert cluster.awaited == [f"{JOB_NAME}-0-x8r2t", f"{JOB_NAME}-1-x8r2t"], "each pod waited for until it runs"
    assert cluster.logged == cluster.awaited, "node 0's log first"
    assert cluster.deleted_pods == cluster.logged and cluster.deleted_jobs == []


def test_a_job_pod_that_does_not_start_fails_with_its_diagnosis_and_the_job_is_deleted() -> None:
    pending = job_pod(1, make_pod(conditions=[unschedulable(GPU_SHORTAGE)]))
    stuck = {pending.metadata.name: (pending, [scheduler_event(GPU_SHORTAGE)])}
    cluster = FakeJobCluster([[job_pod(0), job_pod(1)]], stuck=stuck)

    with pytest.raises(AirflowException, match=rf"^insufficient_gpu: Pod ml/{JOB_NAME}-1-x8r2t cannot be sched"):
        make_job_operator(cluster).execute(task_context())

    # Pod 0 started and would hold its GPU while it waits for pod 1 at the rendezvous.
    assert cluster.deleted_jobs == [JOB_NAME]


@pytest.mark.parametrize(
    ("job", "events", "expected"),
    [
        pytest.param(
            make_job(suspend=True),
            [],
            rf"^awaiting_admission: Job ml/{JOB_NAME} is waiting for admission: .*until queue team-a-gpu admits",
            id="held-by-kueue",
        ),
        pytest.param(
            make_job(),
            [kubelet_event("FailedCreate", QUOTA_REFUSAL, kind="Job")],
            rf'^quota_exceeded: A pod of Job ml/{JOB_NAME} exceeds ResourceQuota "ml-quota" in namespace ml: it '
            r"requests requests.nvidia.com/gpu=8 with requests.nvidia.com/gpu=8 already used",
            id="refused-by-quota",
        ),
        pytest.param(make_job(), [], rf"^Job ml/{JOB_NAME} created 0 of its 2 pods in 600 s; see kubectl", id="silent"),
    ],
)
def test_a_job_without_its_pods_fails_with_the_jobs_diagnosis(
    job: k8s.V1Job, events: list[k8s.CoreV1Event], expected: str
) -> None:
    cluster = FakeJobCluster([[]], job_now=job, job_events=events)

    with pytest.raises(AirflowException, match=expected):
        make_job_operator(cluster).execute(task_context())

    assert cluster.deleted_jobs == [JOB_NAME]


def test_diagnose_job_leaves_the_pods_own_troubles_to_diagnose_pod() -> None:
    assert diagnose_job(make_job(), [scheduler_event(GPU_SHORTAGE)]) is None


def failed_job_pod(index: int, exit_code: int, reason: str, tail: str, minutes: float) -> k8s.V1Pod:
    pod = job_pod(index, ended_pod(exit_code, reason, tail))
    pod.status.container_statuses[0].state.terminated.finished_at = NOW + timedelta(minutes=minutes)
    return pod


def test_exit_code_2_on_any_node_fails_the_job_task_without_retry() -> None:
    # Node 1's step stops on bad input; node 0's rank loses its peer and fails after it.
    ended = [
        failed_job_pod(0, 1, "Error", "RuntimeError: Connection closed by peer", minutes=3),
        failed_job_pod(1, 2, "Error", STEP_TAIL, minutes=2),
    ]
    cluster = FakeJobCluster([[job_pod(0), job_pod(1)]], ended=ended, final_job=make_job(failed="PodFailurePolicy"))

    with pytest.raises(StepUserError) as raised:
        make_job_operator(cluster).execute(task_context())

    assert isinstance(raised.value, AirflowFailException)
    assert str(raised.value).startswith("train stopped on bad input, bad config or a failed check (exit code 2)")
    assert f"pod {JOB_NAME}-1-x8r2t (node 1 of 2):" in str(raised.value)
    assert raised.value.step_message.startswith("train failed: the validation split has one class only")
    assert cluster.deleted_pods == [], "failed pods are kept for kubectl logs"


def test_a_failed_job_task_is_retried_with_the_failure_of_the_node_that_ended_first() -> None:
    ended = [
        failed_job_pod(0, 1, "Error", "RuntimeError: Connection closed by peer", minutes=3),
        failed_job_pod(1, 137, "OOMKilled", "epoch 3/20", minutes=2),
    ]
    cluster = FakeJobCluster([[job_pod(0), job_pod(1)]], ended=ended, final_job=make_job(failed="BackoffLimitExceeded"))

    with pytest.raises(StepExitError) as raised:
        make_job_operator(cluster).execute(task_context())

    assert not isinstance(raised.value, AirflowFailException)
    assert raised.value.exit_code == 137 and raised.value.reason == "OOMKilled"
    assert f"pod {JOB_NAME}-1-x8r2t (node 1 of 2):" in str(raised.value)


def test_the_jobs_pod_failure_policy_says_exit_code_2_when_the_pods_are_gone() -> None:
    cluster = FakeJobCluster([[job_pod(0), job_pod(1)]], final_job=make_job(failed="PodFailurePolicy"))

    with pytest.raises(StepUserError) as raised:
        make_job_operator(cluster).execute(task_context())

    assert str(raised.value).startswith("train stopped on bad input, bad config or a failed check (exit code 2)")
    assert (
        f"Job {JOB_NAME} failed on its pod failure policy (exit code 2 of a train container): Container base for pod "
        f"ml/{JOB_NAME}-1-x8r2t failed with exit code 2 matching FailJob rule; the pod could not be read"
    ) in str(raised.value)


def test_a_failed_job_that_no_pod_explains_keeps_the_providers_error() -> None:
    cluster = FakeJobCluster([[job_pod(0), job_pod(1)]], final_job=make_job(failed="DeadlineExceeded"))

    with pytest.raises(AirflowException, match=rf"Kubernetes job '{JOB_NAME}' is failed with error 'DeadlineExc"):
        make_job_operator(cluster).execute(task_context())


def test_deferrable_mode_fails_a_job_with_exit_code_2_without_retry_too() -> None:
    ended = [failed_job_pod(1, 2, "Error", STEP_TAIL, minutes=2)]
    cluster = FakeJobCluster([[]], ended=ended)
    job = make_job(failed="PodFailurePolicy").to_dict()
    event = {
        "name": JOB_NAME,
        "namespace": NAMESPACE,
        "pod_names": [f"{JOB_NAME}-0-x8r2t", f"{JOB_NAME}-1-x8r2t"],
        "pod_namespace": NAMESPACE,
        "status": "error",
        "message": "Job failed with error: PodFailurePolicy",
        "job": job,
        "xcom_result": None,
    }

    with pytest.raises(StepUserError, match=rf"(?s)exit code 2.*pod {JOB_NAME}-1-x8r2t \(node 1 of 2\)"):
        make_job_operator(cluster, deferrable=True).execute_complete(task_context(), event)
