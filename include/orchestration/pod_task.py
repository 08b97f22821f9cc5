"""The one factory for every heavy task.

``pod_task("train", args=[...])`` returns a KubernetesPodOperator for runtime ``kubernetes`` or a
``LocalStepOperator`` for runtime ``local``. Both get the same container command
(``python -m mlsteps <step> --run-root <run folder> ...``) and the same environment, so a DAG behaves the same
on a laptop and on a cluster. Retries, timeouts, priority and the GPU pool come from the pipeline config, in one
place; what only a pod needs (resources, GPU scheduling, security, secrets, volumes) is in ``pod_spec``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from orchestration.failures import clear_failure, record_failure
from orchestration.settings import GPU_POOL, Settings, get_settings
from orchestration.templates import RUN_CONTEXT_ENV, RUN_ROOT_TEMPLATE


def dag_default_args(light_task_minutes: int, max_retry_minutes: int) -> dict[str, Any]:
    """``default_args`` of every DAG: owner, retries with exponential backoff, a timeout for the light Airflow
    tasks (the steps get theirs from the pipeline config), and the failure record the run's summary reads."""
    return {
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=max_retry_minutes),
        "execution_timeout": timedelta(minutes=light_task_minutes),
        "on_execute_callback": clear_failure,
        "on_failure_callback": record_failure,
    }


def step_command(step: str, args: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The container entrypoint and arguments of a step, as (cmds, arguments)."""
    return ["python", "-m", "mlsteps", step], ["--run-root", RUN_ROOT_TEMPLATE, *(args or [])]


def pod_task(
    step: str,
    *,
    args: list[str] | None = None,
    task_id: str | None = None,
    settings: Settings | None = None,
    expand_over: Any = None,
    **operator_kwargs: Any,
) -> Any:
    """Build the task that runs one step, or one mapped task instance per element of ``expand_over``.

    Args:
        step: the step name (``python -m mlsteps <step>``); also the default task_id.
        args: extra CLI arguments; Jinja templates such as ``{{ params.epochs }}`` are rendered per run.
        task_id: task id when one step appears twice in a DAG.
        settings: settings to use instead of this process's (tests render both runtimes with it).
        expand_over: a list (or an upstream task's output listing) of argument lists; each becomes one mapped
            task instance (Airflow dynamic task mapping) whose command ends with that list, e.g. one train pod per
            candidate family. The lists are used as they are, not rendered.
        operator_kwargs: passed on to the operator (``outlets``, ``trigger_rule``, ...).

    Returns:
        A ``StepPodOperator`` (runtime ``kubernetes``) or a ``LocalStepOperator`` (runtime ``local``); mapped over
        ``expand_over`` when given.
    """
    settings = settings or get_settings()
    limits = settings.step(step)
    cmds, arguments = step_command(step, args)
    common: dict[str, Any] = {
        "task_id": task_id or step,
        "step": step,
        "cmds": cmds,
        "arguments": arguments,
        "env_vars": {**settings.step_env(), **RUN_CONTEXT_ENV},
        "retries": limits.retries,
        "execution_timeout": limits.execution_timeout,
        "priority_weight": limits.priority_weight,
        **({"pool": GPU_POOL} if limits.gpus else {}),
        **operator_kwargs,
    }
    # Imported here: the pod side pulls in the kubernetes client (0.3 s), which a local DAG parse need not pay.
    if settings.runtime.mode == "local":
        from orchestration.local_step import LocalStepOperator

        operator: type[BaseOperator] = LocalStepOperator
        kwargs = common
    else:
        from orchestration.pod_operator import StepPodOperator
        from orchestration.pod_spec import pod_operator_kwargs

        operator, kwargs = StepPodOperator, {**common, **pod_operator_kwargs(step, settings, common)}
    if expand_over is None:
        return operator(**kwargs)
    return operator.partial(**kwargs).expand(extra_arguments=expand_over)
