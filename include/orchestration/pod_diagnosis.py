"""Why a step pod did not start, read from its status and events; how its step container ended.

A pod that cannot be placed or started stays ``Pending`` without a word in the task log; the provider then gives up
with "Pod took too long to be scheduled ... Check the pod events in kubernetes". ``diagnose_pod`` reads what
``kubectl describe pod`` shows (the scheduler's FailedScheduling text, the kubelet's image and volume errors,
container waiting reasons, scheduling gates) and turns it into one cause and a message that names the resource,
taint, image, claim or quota with the numbers Kubernetes reported, and says what to do. ``container_exit`` reads how
a container that ran has ended. Both are pure functions of the API's objects; ``StepPodOperator`` makes them the
task's error. ``diagnose_job`` does the same for a Job whose pods were never created (a multi-node training run).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from kubernetes.client import models as k8s

from orchestration.templates import KUEUE_QUEUE_LABEL


class StartFailure(StrEnum):
    """Why a pod did not start; the order breaks ties when one scheduler message names several causes."""

    INSUFFICIENT_GPU = "insufficient_gpu"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    INSUFFICIENT_CPU = "insufficient_cpu"
    UNTOLERATED_TAINT = "untolerated_taint"
    NODE_SELECTOR_MISMATCH = "node_selector_mismatch"
    PVC_UNAVAILABLE = "pvc_unavailable"
    IMAGE_PULL_ERROR = "image_pull_error"
    MISSING_SECRET_OR_CONFIG = "missing_secret_or_config"
    QUOTA_EXCEEDED = "quota_exceeded"
    AWAITING_ADMISSION = "awaiting_admission"


@dataclass(frozen=True)
class PodDiagnosis:
    """One explanation of a pod that did not start.

    Attributes:
        cause: the (dominant) cause.
        message: one or two sentences for the task log: what blocks the pod, with Kubernetes' numbers, and the fix.
        evidence: the event or status text the diagnosis was read from, verbatim.
    """

    cause: StartFailure
    message: str
    evidence: str


_RESOURCE_ADVICE = {
    StartFailure.INSUFFICIENT_GPU: "wait for GPUs to free up, add GPU nodes or lower the step's GPU count",
    StartFailure.INSUFFICIENT_MEMORY: "lower the step's memory request or add nodes with free memory",
    StartFailure.INSUFFICIENT_CPU: "lower the step's CPU request or add nodes with free CPU",
}

# The scheduler's summary: "0/5 nodes are available: 3 Insufficient nvidia.com/gpu, 2 node(s) had untolerated
# taint {nvidia.com/gpu: present}. preemption: 0/5 nodes are available: ...". The preemption part repeats the counts.
_NODES_AVAILABLE = re.compile(r"(?P<available>\d+)/(?P<total>\d+) nodes are available: (?P<reasons>.*)", re.DOTALL)
_PREEMPTION_TAIL = re.compile(r"\.?\s*(?:no new claims to deallocate, )?preemption:.*", re.DOTALL)
_NEXT_COUNTED_REASON = re.compile(r",\s+(?=\d+ )")
_COUNTED_REASON = re.compile(r"(?P<count>\d+) (?P<reason>.+)", re.DOTALL)
_INSUFFICIENT = re.compile(r"Insufficient (?P<resource>\S+)")
# "had untolerated taint {k: v}" (1.25+), "had untolerated taint(s)" (1.32+), "had taint {k: v}, that the pod
# didn't tolerate" (older).
_TAINT = re.compile(r"untolerated taint|had taints? .*didn't tolerate")
_TAINT_KEY = re.compile(r"\{[^}]*\}")
_NODE_SELECTOR = re.compile(
    r"didn't match (?:Pod's node affinity/selector|node selector|scheduler-enforced node affinity)"
)
_CLAIM = re.compile(
    r"unbound immediate PersistentVolumeClaims|persistentvolumeclaim \"(?P<claim>[^\"]+)\" (?P<problem>not found|"
    r"is being deleted|bound to non-existent)|didn't find available persistent volumes to bind"
)
# The kubelet's admission check, when a node it was given cannot hold the pod after all.
_NODE_REJECTED = re.compile(
    r"Node didn't have enough resource: (?P<resource>[^,]+), requested: (?P<requested>\d+), "
    r"used: (?P<used>\d+), capacity: (?P<capacity>\d+)"
)
# Only texts that carry the pull error itself; the kubelet's "Error: ErrImagePull" and "Back-off pulling image"
# events repeat it without the registry's reason, and a container's waiting state is the fallback.
_IMAGE_FAILURE = re.compile(
    r"Failed to pull image|Failed to apply default image tag|is not present with pull policy of Never|"
    r"waiting with image \"[^\"]*\": (?:ErrImagePull|ImagePullBackOff|InvalidImageName|ErrImageNeverPull)\b"
)
_IMAGE_NAME = re.compile(r"image (?:tag |reference )?\"(?P<image>[^\"]+)\"")
_MISSING_OBJECT = re.compile(r"\b(?P<kind>secret|configmap) \"(?P<name>[^\"]+)\" not found")
_MISSING_KEY = re.compile(r"couldn't find key (?P<key>\S+) in (?P<kind>Secret|ConfigMap) \S+/(?P<name>[\w.-]+)")
_KINDS = {"secret": "Secret", "configmap": "ConfigMap"}
_QUOTA = re.compile(
    r"exceeded quota: (?P<quota>[^,]+), requested: (?P<requested>.+?), used: (?P<used>.+?), "
    r"limited: (?P<limited>[^\s]+?)\.?(?:$|\s)"
)
_QUOTA_NEEDS_LIMITS = re.compile(r"failed quota: (?P<quota>[^:]+): must specify (?P<what>[^\n]+)")


def _pod_ref(pod: k8s.V1Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def _containers(pod: k8s.V1Pod) -> list[k8s.V1Container]:
    return list(pod.spec.containers or []) if pod.spec else []


def _requested(pod: k8s.V1Pod, resource: str) -> str | None:
    """What the pod's containers ask for of one resource, as written in the spec (requests, else limits)."""
    amounts = []
    for container in _containers(pod):
        resources = container.resources or k8s.V1ResourceRequirements()
        amount = (resources.requests or {}).get(resource) or (resources.limits or {}).get(resource)
        if amount:
            amounts.append(str(amount))
    return f"{resource}={'+'.join(amounts)}" if amounts else None


def _node_constraints(pod: k8s.V1Pod) -> str | None:
    """The pod's node selector and required node affinity, as 'key=value' and 'key In [a, b]' terms."""
    spec = pod.spec or k8s.V1PodSpec(containers=[])
    terms = [f"{key}={value}" for key, value in (spec.node_selector or {}).items()]
    node_affinity = spec.affinity.node_affinity if spec.affinity else None
    required = node_affinity.required_during_scheduling_ignored_during_execution if node_affinity else None
    for term in required.node_selector_terms if required else []:
        for expression in term.match_expressions or []:
            terms.append(f"{expression.key} {expression.operator} {expression.values or []}")
    return ", ".join(terms) or None


def _claims(pod: k8s.V1Pod) -> list[str]:
    volumes = (pod.spec.volumes if pod.spec else None) or []
    return [volume.persistent_volume_claim.claim_name for volume in volumes if volume.persistent_volume_claim]


def _resource_cause(resource: str) -> StartFailure | None:
    if "gpu" in resource.lower():
        return StartFailure.INSUFFICIENT_GPU
    return {"cpu": StartFailure.INSUFFICIENT_CPU, "memory": StartFailure.INSUFFICIENT_MEMORY}.get(resource)


@dataclass(frozen=True)
class _NodeReason:
    """One clause of the scheduler's summary, e.g. '3 Insufficient nvidia.com/gpu' (nodes: 3)."""

    text: str
    reason: str
    nodes: int
    cause: StartFailure | None


def _scheduler_cause(reason: str) -> StartFailure | None:
    insufficient = _INSUFFICIENT.match(reason)
    if insufficient:
        return _resource_cause(insufficient["resource"])
    for pattern, cause in (
        (_TAINT, StartFailure.UNTOLERATED_TAINT),
        (_NODE_SELECTOR, StartFailure.NODE_SELECTOR_MISMATCH),
        (_CLAIM, StartFailure.PVC_UNAVAILABLE),
    ):
        if pattern.search(reason):
            return cause
    return None


def _describe(reason: _NodeReason, pod: k8s.V1Pod) -> str:
    """The scheduler's clause, plus what the pod asks for that the clause is about."""
    insufficient = _INSUFFICIENT.match(reason.reason)
    detail = None
    if insufficient:
        detail = _requested(pod, insufficient["resource"])
        detail = f"the pod requests {detail}" if detail else None
    elif reason.cause is StartFailure.NODE_SELECTOR_MISMATCH:
        detail = _node_constraints(pod)
        detail = f"the pod selects {detail}" if detail else None
    elif reason.cause is StartFailure.PVC_UNAVAILABLE and "unbound" in reason.text:
        detail = f"claims: {', '.join(_claims(pod))}" if _claims(pod) else None
    return f"{reason.text} ({detail})" if detail else reason.text


def _advice(reason: _NodeReason, pod: k8s.V1Pod) -> str:
    namespace = pod.metadata.namespace
    if reason.cause in _RESOURCE_ADVICE:
        return _RESOURCE_ADVICE[reason.cause]
    if reason.cause is StartFailure.UNTOLERATED_TAINT:
        taint = _TAINT_KEY.search(reason.text)
        if taint:
            return f"give the pod a toleration for taint {taint[0]} or remove that taint from the nodes"
        return "add the tolerations the nodes' taints need (kubectl describe nodes lists the taints)"
    if reason.cause is StartFailure.NODE_SELECTOR_MISMATCH:
        return "label nodes to match or relax the pod's node selector/affinity"
    claim = _CLAIM.search(reason.text)
    if claim and claim["problem"] == "not found":
        return f'create PersistentVolumeClaim "{claim["claim"]}" in namespace {namespace} or fix the claim name'
    return f"see why the claim is not usable with kubectl describe pvc -n {namespace} (no matching volume or class?)"


def _explain_scheduling(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    """FailedScheduling and PodScheduled=False: every clause listed, the clause covering most nodes as the cause."""
    summary = _NODES_AVAILABLE.search(text)
    if not summary:
        return None
    reasons = []
    for clause in _NEXT_COUNTED_REASON.split(_PREEMPTION_TAIL.sub("", summary["reasons"]).rstrip(". ")):
        counted = _COUNTED_REASON.fullmatch(clause)
        # A clause without a count (a pre-filter such as an unbound claim) rules out every node.
        nodes = int(counted["count"]) if counted else int(summary["total"])
        reason = counted["reason"] if counted else clause
        reasons.append(_NodeReason(clause, reason, nodes, _scheduler_cause(reason)))
    nodes_by_cause: Counter[StartFailure] = Counter()
    for reason in reasons:
        if reason.cause:
            nodes_by_cause[reason.cause] += reason.nodes
    if not nodes_by_cause:
        return None
    order = list(StartFailure)
    explained = sorted(
        (reason for reason in reasons if reason.cause),
        key=lambda reason: (-nodes_by_cause[reason.cause], order.index(reason.cause)),
    )
    cause = explained[0].cause
    advice = "; ".join(dict.fromkeys(_advice(reason, pod) for reason in explained))
    clauses = ", ".join(_describe(reason, pod) for reason in reasons)
    message = (
        f"Pod {_pod_ref(pod)} cannot be scheduled ({cause.replace('_', ' ')}): {summary['available']}/"
        f"{summary['total']} nodes are available: {clauses}. To fix: {advice}."
    )
    return PodDiagnosis(cause, message, text)


def _explain_node_rejection(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    rejected = _NODE_REJECTED.search(text)
    cause = _resource_cause(rejected["resource"]) if rejected else None
    if not cause:
        return None
    node = pod.spec.node_name if pod.spec else None
    message = (
        f"Pod {_pod_ref(pod)} was rejected by node {node} ({cause.replace('_', ' ')}): it requests "
        f"{rejected['resource']}={rejected['requested']} while {rejected['used']} of {rejected['capacity']} are in "
        f"use. To fix: {_RESOURCE_ADVICE[cause]}."
    )
    return PodDiagnosis(cause, message, text)


def _explain_image(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    if not _IMAGE_FAILURE.search(text):
        return None
    named = _IMAGE_NAME.search(text)
    image = f'"{named["image"]}"' if named else "of the step"
    registry_says = text.rsplit(": ", 1)[-1]
    message = (
        f"Pod {_pod_ref(pod)} cannot pull image {image}: {registry_says}. To fix: check that the image and tag exist "
        "in the registry and that the pod's imagePullSecrets grant access (runtime.kubernetes.images and "
        "image_pull_secrets in the pipeline config)."
    )
    return PodDiagnosis(StartFailure.IMAGE_PULL_ERROR, message, text)


def _explain_missing_reference(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    namespace = pod.metadata.namespace
    missing_key = _MISSING_KEY.search(text)
    if missing_key:
        message = (
            f'Pod {_pod_ref(pod)} cannot start: {missing_key["kind"]} "{missing_key["name"]}" in namespace '
            f'{namespace} has no key "{missing_key["key"]}". To fix: add the key or fix the reference.'
        )
        return PodDiagnosis(StartFailure.MISSING_SECRET_OR_CONFIG, message, text)
    missing = _MISSING_OBJECT.search(text)
    if not missing:
        return None
    kind = _KINDS[missing["kind"]]
    message = (
        f'Pod {_pod_ref(pod)} cannot start: {kind} "{missing["name"]}" does not exist in namespace {namespace}. '
        f"To fix: create it (kubectl get {missing['kind']} -n {namespace} lists what exists) or fix the name in "
        "runtime.kubernetes (secrets, config_map) of the pipeline config."
    )
    return PodDiagnosis(StartFailure.MISSING_SECRET_OR_CONFIG, message, text)


def _explain_quota(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    namespace = pod.metadata.namespace
    exceeded = _QUOTA.search(text)
    if exceeded:
        message = (
            f'Pod {_pod_ref(pod)} exceeds ResourceQuota "{exceeded["quota"]}" in namespace {namespace}: it requests '
            f"{exceeded['requested']} with {exceeded['used']} already used of {exceeded['limited']}. To fix: wait for "
            "other pods in the namespace to finish, lower the step's resources or raise the quota."
        )
        return PodDiagnosis(StartFailure.QUOTA_EXCEEDED, message, text)
    needs_limits = _QUOTA_NEEDS_LIMITS.search(text)
    if not needs_limits:
        return None
    message = (
        f'Pod {_pod_ref(pod)} is refused by ResourceQuota "{needs_limits["quota"]}" in namespace {namespace}: '
        f"it must specify {needs_limits['what']}. To fix: set those requests/limits in the step's resources."
    )
    return PodDiagnosis(StartFailure.QUOTA_EXCEEDED, message, text)


_EXPLAINERS = (_explain_scheduling, _explain_node_rejection, _explain_image, _explain_missing_reference, _explain_quota)


def _explain(text: str, pod: k8s.V1Pod) -> PodDiagnosis | None:
    for explain in _EXPLAINERS:
        diagnosis = explain(text, pod)
        if diagnosis:
            return diagnosis
    return None


def _has_started(pod: k8s.V1Pod) -> bool:
    status = pod.status or k8s.V1PodStatus()
    if status.phase in ("Running", "Succeeded"):
        return True
    states = [container.state for container in status.container_statuses or [] if container.state]
    return any(state.running or state.terminated for state in states)


def _is_scheduled(pod: k8s.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    node_name = pod.spec.node_name if pod.spec else None
    return bool(node_name) or any(c.type == "PodScheduled" and c.status == "True" for c in conditions)


def _gated(pod: k8s.V1Pod) -> PodDiagnosis | None:
    """Held back before scheduling, e.g. by Kueue until the pod's queue has quota for it."""
    gates = [gate.name for gate in (pod.spec.scheduling_gates if pod.spec else None) or []]
    conditions = (pod.status.conditions if pod.status else None) or []
    gated = next((c for c in conditions if c.type == "PodScheduled" and c.reason == "SchedulingGated"), None)
    if not gates and not gated:
        return None
    namespace = pod.metadata.namespace
    queue = (pod.metadata.labels or {}).get(KUEUE_QUEUE_LABEL)
    held_by = f"scheduling gate(s) {', '.join(gates)}" if gates else "a scheduling gate"
    waiting_for = f"queue {queue} admits it" if queue else "the gate's owner admits it"
    message = (
        f"Pod {_pod_ref(pod)} is waiting for admission: it carries {held_by}, so the scheduler ignores it until "
        f"{waiting_for}. To fix: the queue's quota is probably in use; see kubectl get workloads -n {namespace}, "
        "wait, or lower the step's resources."
    )
    evidence = f"PodScheduled=False {gated.reason}: {gated.message}" if gated else f"schedulingGates: {gates}"
    return PodDiagnosis(StartFailure.AWAITING_ADMISSION, message, evidence)


def _event_time(event: k8s.CoreV1Event) -> datetime:
    """When the event last happened; the scheduler's events carry only event_time and series."""
    series = event.series.last_observed_time if event.series else None
    created = event.metadata.creation_timestamp if event.metadata else None
    moments = (series, event.last_timestamp, event.event_time, event.first_timestamp, created)
    return next((moment for moment in moments if moment), datetime.min.replace(tzinfo=UTC))


def _event_texts(events: Sequence[k8s.CoreV1Event], scheduled: bool) -> Iterator[str]:
    """Warning events, newest first; once the pod has a node, its earlier FailedScheduling events are history."""
    ordered = sorted(enumerate(events), key=lambda item: (_event_time(item[1]), item[0]), reverse=True)
    for _, event in ordered:
        if event.type == "Warning" and not (scheduled and event.reason == "FailedScheduling"):
            yield f"{event.reason}: {event.message}"


def _status_texts(pod: k8s.V1Pod) -> Iterator[str]:
    """What the pod's status says now: container waiting reasons, the scheduling condition, a node's rejection."""
    status = pod.status or k8s.V1PodStatus()
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason:
            image = f'image "{container.image}"'
            yield f"container {container.name} waiting with {image}: {waiting.reason}: {waiting.message}"
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            yield f"PodScheduled=False {condition.reason}: {condition.message}"
    if status.reason:
        yield f"{status.reason}: {status.message}"


def diagnose_pod(pod: k8s.V1Pod, events: Sequence[k8s.CoreV1Event]) -> PodDiagnosis | None:
    """Explain why a pod has not started, from its status and its events.

    A scheduling gate explains everything while it is there. Otherwise the newest Warning event that explains the
    pod wins (FailedScheduling events only while the pod has no node); the pod's status is the fallback when the
    events are gone (they expire after an hour) or say nothing useful.

    Args:
        pod: the pod as read from the API server.
        events: the pod's events (``involvedObject.name`` = the pod), in any order.

    Returns:
        The diagnosis, or None when the pod has started or nothing explains the wait.
    """
    if _has_started(pod):
        return None
    gated = _gated(pod)
    if gated:
        return gated
    for text in (*_event_texts(events, _is_scheduled(pod)), *_status_texts(pod)):
        diagnosis = _explain(text, pod)
        if diagnosis:
            return diagnosis
    return None


def diagnose_job(job: k8s.V1Job, events: Sequence[k8s.CoreV1Event]) -> PodDiagnosis | None:
    """Explain why a Job has not created its pods, from its spec and its events.

    Its pods' own troubles (no node, no image) are ``diagnose_pod``'s; before they exist, the Job is either held back
    (``spec.suspend``, which is how Kueue keeps a Job until its queue admits all of its pods at once) or the API
    server refuses to create them, which only the Job's events say (``FailedCreate``: a quota, a missing Secret). The
    newest Warning event that ``diagnose_pod``'s explanations understand wins, said of the Job's pods.

    Args:
        job: the Job as read from the API server.
        events: the Job's events (``involvedObject.name`` = the Job), in any order.

    Returns:
        The diagnosis, or None when nothing explains the missing pods.
    """
    namespace, name = job.metadata.namespace, job.metadata.name
    labels = job.metadata.labels or {}
    if job.spec and job.spec.suspend:
        queue = labels.get(KUEUE_QUEUE_LABEL)
        waiting_for = f"queue {queue} admits all of its pods at once" if queue else "whoever suspended it resumes it"
        message = (
            f"Job {namespace}/{name} is waiting for admission: it is suspended, so it creates no pods until "
            f"{waiting_for}. To fix: the queue's quota is probably in use; see kubectl get workloads -n {namespace}, "
            "wait, or lower the step's resources or nodes."
        )
        return PodDiagnosis(StartFailure.AWAITING_ADMISSION, message, "spec.suspend: true")
    template = job.spec.template if job.spec and job.spec.template else k8s.V1PodTemplateSpec()
    # The Job's pod as the explanations read it: its requests, claims and affinity, under the Job's name.
    stand_in = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels), spec=template.spec)
    for text in _event_texts(events, scheduled=True):
        diagnosis = _explain(text, stand_in)
        if diagnosis:
            subject = f"Pod {_pod_ref(stand_in)}"
            return replace(diagnosis, message=diagnosis.message.replace(subject, f"A pod of Job {namespace}/{name}", 1))
    return None


@dataclass(frozen=True)
class ContainerExit:
    """How a container ended, from ``status.containerStatuses[].state.terminated``.

    Attributes:
        exit_code: the process's exit code (137 for SIGKILL, e.g. an out-of-memory kill).
        reason: Kubernetes' reason: ``Completed``, ``Error``, ``OOMKilled``, ...
        message: the termination message: with ``terminationMessagePolicy: FallbackToLogsOnError`` the last lines of
            a failed container's log.
        finished_at: when it ended, if Kubernetes says.
    """

    exit_code: int
    reason: str | None
    message: str
    finished_at: datetime | None = None


def container_exit(pod: k8s.V1Pod, container_name: str) -> ContainerExit | None:
    """How one container of the pod ended, or None when it has not terminated (or is not in the status)."""
    statuses = (pod.status.container_statuses if pod.status else None) or []
    status = next((status for status in statuses if status.name == container_name), None)
    terminated = status.state.terminated if status and status.state else None
    if terminated is None or terminated.exit_code is None:
        return None
    message = (terminated.message or "").rstrip()
    return ContainerExit(terminated.exit_code, terminated.reason, message, terminated.finished_at)
