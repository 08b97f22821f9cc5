"""Names and templates shared by the pod-task factory, the pod specs and the pod operator.

This module imports nothing of the other task-building modules, so imports among them run one way:
``pod_task`` -> ``pod_spec`` / ``pod_operator`` -> ``templates`` -> ``settings``.
"""

from __future__ import annotations

from orchestration.settings import get_settings

# Rendered per run by the DAG's user-defined macro ``run_root`` (see ``TEMPLATE_MACROS``).
RUN_ROOT_TEMPLATE = "{{ run_root(dag.dag_id, run_id) }}"

# The run's identity, rendered per task, so a step (in a pod as well) can record who did what, e.g. who promoted.
RUN_CONTEXT_ENV = {
    "AIRFLOW_CTX_DAG_ID": "{{ dag.dag_id }}",
    "AIRFLOW_CTX_DAG_RUN_ID": "{{ run_id }}",
    "AIRFLOW_CTX_TASK_ID": "{{ task.task_id }}",
}

# The label Kueue reads to admit a pod against its LocalQueue's quota.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# The label the Job controller gives each pod of a Job: the Job's name.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _run_root_macro(dag_id: str, run_id: str) -> str:
    return get_settings().run_root(dag_id, run_id)


TEMPLATE_MACROS = {"run_root": _run_root_macro}
