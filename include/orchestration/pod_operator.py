"""The pod operator of every step: the provider's KubernetesPodOperator, plus two answers it does not give.

- A pod that does not start fails the task with the reason why (``diagnose_pod``), not "took too long".
- A step container that ends with a non-zero exit code fails the task the way the local runtime does
  (``failures.step_exit_error``): exit code 2 (bad input, a failed check) at once and without retry, anything else
  retried with backoff, an out-of-memory kill said as such. The code is read from the container's status
  (``state.terminated.exitCode`` of the step container), the step's last lines from its termination message.

Everything else (reattaching, deletion on kill, cleanup, logs) is the provider's, in sync and deferrable mode alike.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import PodLaunchFailedException
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from orchestration.failures import step_exit_error
from orchestration.pod_diagnosis import PodDiagnosis, container_exit, diagnose_pod


class StepPodOperator(KubernetesPodOperator):
    """Runs one step's container; a pod that never starts or a step that fails says why in the task's error.

    Args:
        step: the step the container runs (``python -m mlsteps <step>``), named in failure messages.
        extra_arguments: appended to the (templated) ``arguments`` as they are; what a mapped task expands over,
            e.g. ``["--model", "gbdt"]`` for one candidate of the train step.
        kwargs: the provider's ``KubernetesPodOperator`` arguments.
    """

    _start_diagnosis: PodDiagnosis | None = None

    def __init__(self, *, step: str, extra_arguments: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.extra_arguments = list(extra_arguments or [])

    def build_pod_request_obj(self, context: Context | None = None, **kwargs: Any) -> k8s.V1Pod:
        """The provider's pod, with ``extra_arguments`` after the container's rendered arguments."""
        pod = super().build_pod_request_obj(context, **kwargs)
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
