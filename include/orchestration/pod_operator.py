"""The pod operator of every step: the provider's KubernetesPodOperator, plus two answers it does not give.

- A pod that does not start fails the task with the reason why (``diagnose_pod``), not "took too long".
- A step container that ends with a non-zero exit code fails the task the way the local runtime does
  (``failures.step_exit_error``): exit code 2 (bad input, a failed check) at once and without retry, anything else
  retried with backoff, an out-of-memory kill said as such. The code is read from the container's status
  (``state.terminated.exitCode`` of the step container), the step's last lines from its termination message.

Everything else (reattaching, deletion on kill, cleanup, logs) is the provider's, in sync and deferrable mode alike.

A step on several nodes (training with ``nodes > 1``) runs as an Indexed Job of such pods: ``StepJobOperator`` is
the provider's KubernetesJobOperator with the same two answers, for every pod of the Job and for the Job itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import PodLaunchFailedException
from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from mlsteps.errors import EXIT_USER_ERROR
from orchestration.failures import StepExitError, step_exit_error
from orchestration.pod_diagnosis import PodDiagnosis, container_exit, diagnose_job, diagnose_pod
from orchestration.templates import JOB_NAME_LABEL

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the annotation of a pod's index in its Job
# The Job's reason for failing when its pod failure policy's rule (exit code 2 of the step container) matched.
POD_FAILURE_POLICY = "PodFailurePolicy"


class StepPodOperator(KubernetesPodOperator):
    """Runs one step's container; a pod that never starts or a step that fails says why in the task's error.

    Args:
        step: the step the container runs (``python -m mlsteps <step>``), named in failure messages.
        extra_arguments: appended to the (templated) ``arguments`` as they are; what a mapped task expands over,
            e.g. ``["--model", "gbdt"]`` for one candidate of the train step.
        kwargs: the provider's ``KubernetesPodOperator`` arguments.
    """

    _start_diagnosis: PodDiagnosis | None = None
    # Set by StepJobOperator while it builds its Job for make render: the provider builds a Job's pod template through
    # build_pod_request_obj without passing dry_run on.
    _dry_run = False

    def __init__(self, *, step: str, extra_arguments: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.extra_arguments = list(extra_arguments or [])

    def build_pod_request_obj(self, context: Context | None = None, **kwargs: Any) -> k8s.V1Pod:
        """The provider's pod, with ``extra_arguments`` after the container's rendered arguments."""
        pod = super().build_pod_request_obj(context, **{"dry_run": self._dry_run, **kwargs})
        container = pod.spec.containers[0]
        container.args = [*(container.args or []), *self.extra_arguments]
        return pod

    def await_pod_start(self, pod: k8s.V1Pod) -> None:
        """Wait as the provider does; when the pod fails to start or times out, raise its diagnosis instead.

        Raises:
            AirflowException: starting with the diagnosis, chained to the provider's launch error; the launch
                error itself when the pod or its events cannot be read or explain nothing.
        """
        try:
            super().await_pod_start(pod)
        except (PodLaunchFailedException, PodLaunchTimeoutException) as launch_error:
            diagnosis = self._diagnose_start(pod)
            if diagnosis is None:
                raise
            raise self._start_failure(diagnosis) from launch_error

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """Deferrable mode: the trigger reports a start timeout or launch error; explain it like ``await_pod_start``.

        The pod is read before the provider's cleanup, which may delete it. A step that ran and failed is classified
        by ``cleanup``, which the provider calls here too.
        """
        if event.get("status") in ("timeout", "error"):
            self._diagnose_start(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=event["name"], namespace=event["namespace"])))
        try:
            return super().trigger_reentry(context, event)
        except AirflowException as failure:
            if self._start_diagnosis is None:
                raise
            raise self._start_failure(self._start_diagnosis) from failure

    def cleanup(
        self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None, context: Context | None = None
    ) -> None:
        """The provider's cleanup; its "Pod ... returned a failure" becomes the step's own failure.

        Raises:
            StepUserError: the step container exited with code 2; the task fails without a retry.
            StepExitError: it exited with another non-zero code; the task is retried.
            AirflowException: the provider's failure, when the container's exit code is not known.
        """
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowException as failure:
            if self._start_diagnosis is not None:  # await_pod_start or trigger_reentry raises why it never started
                return
            exited = container_exit(remote_pod, self.base_container_name) if remote_pod else None
            if exited is None or exited.exit_code == 0:
                raise
            tail = exited.message or f"(no output; kubectl logs -n {pod.metadata.namespace} {pod.metadata.name})"
            error = step_exit_error(self.step, exited.exit_code, tail, exited.reason)
            self.log.error("%s", error)
            raise error from failure

    def _diagnose_start(self, pod: k8s.V1Pod) -> PodDiagnosis | None:
        """Read the pod and its events and keep the diagnosis; None when reading fails or nothing explains it."""
        try:
            remote_pod = self.pod_manager.read_pod(pod)
            events = self.pod_manager.read_pod_events(remote_pod).items
            self._start_diagnosis = diagnose_pod(remote_pod, events)
        except Exception:
            self.log.warning("Could not read pod %s and its events to explain it", pod.metadata.name, exc_info=True)
        return self._start_diagnosis

    def _start_failure(self, diagnosis: PodDiagnosis) -> AirflowException:
        self.log.error("%s", diagnosis.message)
        return AirflowException(f"{diagnosis.cause}: {diagnosis.message}\nEvidence: {diagnosis.evidence}")


def _completion_index(pod: k8s.V1Pod) -> int:
    return int((pod.metadata.annotations or {}).get(COMPLETION_INDEX, 0))


class StepJobOperator(KubernetesJobOperator, StepPodOperator):
    """Runs one step on several pods at once as an Indexed Job (training on several nodes); fails like one pod.

    The provider's KubernetesJobOperator creates the Job, waits for it to finish and reads its pods' logs; what
    ``StepPodOperator`` adds to a pod holds for the Job:

    - every pod of the Job is awaited until it starts (``StepPodOperator.await_pod_start``), so one that cannot start
      fails the task with its diagnosis; pods that are never created (the Job suspended until Kueue admits it, or
      refused by a quota) fail it with the Job's (``diagnose_job``). Either way the Job is deleted, so the pods that
      did start do not hold their GPUs waiting for the missing one;
    - a failed Job fails the task as its step failed: exit code 2 on any pod, or the Job's pod failure policy saying
      so when that pod is gone, without retry; else the failure of the pod that ended first (the others stop because
      it did), retried.

    Args:
        kwargs: ``StepPodOperator``'s and the provider's ``KubernetesJobOperator`` arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pods_started = False
        self._failed_pods: list[tuple[datetime, StepExitError]] = []

    def build_job_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Job:
        """The provider's Job; with ``dry_run`` built without a cluster connection, as ``build_pod_request_obj`` does
        (``make render``)."""
        self._dry_run = dry_run
        try:
            return super().build_job_request_obj(context)
        finally:
            self._dry_run = False

    def execute(self, context: Context) -> Any:
        """Run the Job as the provider does; a failed Job fails the task with its step's failure.

        Raises:
            StepUserError: a pod's step exited with code 2; not retried.
            StepExitError: the first pod to fail exited with another code; retried.
            AirflowException: a pod did not start (its diagnosis), or the provider's failure when no pod says more.
        """
        self._failed_pods, self._pods_started = [], False
        try:
            return super().execute(context)
        except Exception as failure:
            error = self._step_failure(*self._job_failure())
            if error is None:
                raise
            raise error from failure

    def execute_complete(self, context: Context, event: dict, **kwargs: Any) -> Any:
        """Deferrable mode: the trigger reports the finished Job; a failed one fails the task like ``execute``."""
        self._failed_pods = []
        try:
            return super().execute_complete(context, event, **kwargs)
        except AirflowException as failure:
            conditions = ((event.get("job") or {}).get("status") or {}).get("conditions") or []
            failed = next((c for c in conditions if c.get("type") == "Failed"), {})
            error = self._step_failure(failed.get("reason"), failed.get("message"))
            if error is None:
                raise
            raise error from failure

    def get_pods(self, pod_request_obj: k8s.V1Pod, context: Context, *, exclude_checked: bool = True) -> Sequence:
        """The Job's pods once every one has started, in index order.

        Replaces the provider's lookup by the task's labels, which lists at once (before the Job controller has
        created the pods, or while Kueue holds them back) and matches an earlier try's failed pods too: pods are
        found by their Job's name, for up to ``schedule_timeout_seconds``.

        Raises:
            AirflowException: the Job did not create all its pods in time, or one did not start, with the diagnosis;
                the Job is deleted first.
        """
        job = self.job
        namespace, name = job.metadata.namespace, job.metadata.name
        deadline = time.monotonic() + self.schedule_timeout_seconds
        try:
            while True:
                pods = self.client.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
                if len(pods) >= self.parallelism:
                    break
                if time.monotonic() >= deadline:
                    raise self._pods_not_created(len(pods))
                time.sleep(self.startup_check_interval_seconds)
            pods = sorted(pods, key=_completion_index)
            for pod in pods:
                self.await_pod_start(pod)
        except Exception:
            self._delete_job()
            raise
        self._pods_started = True
        return pods

    def cleanup(
        self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None, context: Context | None = None
    ) -> None:
        """``StepPodOperator``'s cleanup of one pod of the Job; a failed step is kept for the Job's failure (the
        provider would log and drop what cleanup raises for each pod)."""
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except StepExitError as error:
            exited = container_exit(remote_pod, self.base_container_name)
            index = _completion_index(remote_pod)
            where = f"pod {remote_pod.metadata.name} (node {index} of {self.parallelism})"
            ended = (exited.finished_at if exited else None) or datetime.max.replace(tzinfo=UTC)
            failure = step_exit_error(self.step, error.exit_code, f"{where}:\n{error.tail}", error.reason)
            self._failed_pods.append((ended, failure))

    def _step_failure(self, job_reason: str | None, job_message: str | None) -> StepExitError | None:
        """The task's error for a failed Job: exit code 2 on any pod wins, else the pod that ended first; when no
        pod could be read, the Job's own word that its pod failure policy matched exit code 2. None: nothing known.

        Args:
            job_reason: the reason of the Job's ``Failed`` condition (``PodFailurePolicy``, ``BackoffLimitExceeded``).
            job_message: that condition's message, which names the pod and the exit code.
        """
        if self._failed_pods:
            bad_input = [error for _, error in self._failed_pods if error.exit_code == EXIT_USER_ERROR]
            error = bad_input[0] if bad_input else min(self._failed_pods, key=lambda item: item[0])[1]
        elif job_reason == POD_FAILURE_POLICY:
            job = f"Job {self.job.metadata.name}" if self.job else "The Job"
            tail = (
                f"{job} failed on its pod failure policy (exit code {EXIT_USER_ERROR} of a {self.step} container): "
                f"{job_message}; the pod could not be read, kubectl logs shows its output while it exists"
            )
            error = step_exit_error(self.step, EXIT_USER_ERROR, tail)
        else:
            return None
        self.log.error("%s", error)
        return error

    def _job_failure(self) -> tuple[str | None, str | None]:
        """The reason and message of the Job's ``Failed`` condition; None, None when it did not fail or never ran."""
        status = self.job.status if self._pods_started and self.job is not None else None
        failed = next((c for c in (status.conditions or []) if c.type == "Failed"), None) if status else None
        return (failed.reason, failed.message) if failed else (None, None)

    def _pods_not_created(self, created: int) -> AirflowException:
        namespace, name = self.job.metadata.namespace, self.job.metadata.name
        diagnosis = None
        try:
            job = self.job_client.read_namespaced_job(name, namespace)
            selector = f"involvedObject.kind=Job,involvedObject.name={name}"
            events = self.client.list_namespaced_event(namespace, field_selector=selector).items
            diagnosis = diagnose_job(job, events)
        except Exception:
            self.log.warning("Could not read Job %s and its events to explain it", name, exc_info=True)
        if diagnosis:
            return self._start_failure(diagnosis)
        return AirflowException(
            f"Job {namespace}/{name} created {created} of its {self.parallelism} pods in "
            f"{self.schedule_timeout_seconds} s; see kubectl describe job -n {namespace} {name}"
        )

    def _delete_job(self) -> None:
        name, namespace = self.job.metadata.name, self.job.metadata.namespace
        try:
            self.job_client.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
            self.log.info("Deleted Job %s/%s, which could not start all its pods", namespace, name)
        except Exception:
            self.log.warning("Could not delete Job %s/%s", namespace, name, exc_info=True)
