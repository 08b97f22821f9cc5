"""The factories of every task: ``pod_task`` for the heavy ones (the steps), ``python_task`` for the light ones.

``pod_task("train", args=[...])`` returns a KubernetesPodOperator for runtime ``kubernetes`` or a
``LocalStepOperator`` for runtime ``local``. Both get the same container command
(``python -m mlsteps <step> --run-root <run folder> ...``) and the same environment, so a DAG behaves the same
on a laptop and on a cluster. Retries, timeouts, priority and the GPU pool come from the pipeline config, in one
place; what only a pod needs (resources, GPU scheduling, security, secrets, volumes) is in ``pod_spec``.

The light tasks (branches, checks, summaries) run a Python function in the worker (``python_task``). Also the two
DAG-level pieces every DAG file shares: ``dag_default_args`` and ``attach_params``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import BaseOperator

from orchestration.failures import clear_failure, record_failure
from orchestration.settings import GPU_POOL, Settings, get_settings
from orchestration.templates import RUN_CONTEXT_ENV, RUN_ROOT_TEMPLATE

if TYPE_CHECKING:
    from airflow.sdk import DAG, Param

AIRFLOW_PRIORITY_WEIGHT = 1  # what Airflow gives a task that sets no priority_weight
JSON_SCHEMA_DRAFT_7 = "http://json-schema.org/draft-07/schema#"  # the draft of the run params' schemas


def dag_default_args(settings: Settings, light_task_minutes: int, max_retry_minutes: int) -> dict[str, Any]:
    """``default_args`` of every DAG: owner, retries with exponential backoff, a timeout for the light Airflow
    tasks (the steps get theirs from the pipeline config), the model's priority (Airflow's default plus
    ``runtime.priority_weight_offset``), and the failure record the run's summary reads."""
    return {
        "owner": "ml-platform",
        "priority_weight": AIRFLOW_PRIORITY_WEIGHT + settings.runtime.priority_weight_offset,
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=max_retry_minutes),
        "execution_timeout": timedelta(minutes=light_task_minutes),
        "on_execute_callback": clear_failure,
        "on_failure_callback": record_failure,
    }


def attach_params(dag: DAG, params: dict[str, Param]) -> DAG:
    """Give a DAG its run params once its tasks exist, their schemas declared as JSON Schema draft 7; the assignment
    validates the defaults as ``DAG(params=...)`` does, so a default outside its own schema still fails the parse.

    Both make a DAG file's parse cheaper without changing what the params accept:

    - A task created while its DAG has params takes a deep copy of them (Airflow's ``BaseOperator``, once per class of
      the operator's hierarchy that defines ``__init__``): with 50 models the copies would be 40% of a DAG file's
      parse, and they are not needed. A run's params are the DAG's with the task's own on top (``process_params``);
      the trigger form, the check of a run's conf and the serialized DAG read the DAG's. (The ``approval`` task's
      form keeps none of the DAG's params either way.)
    - Airflow validates every param of a scheduled DAG at each parse, and ``jsonschema`` first checks the schema
      itself against its draft's metaschema: draft 7's is one document, four times faster to check against than the
      seven vocabularies of the default, 2020-12. The keywords the params use (``type``, ``enum``, ``minimum``,
      ``exclusiveMinimum``, ``pattern``, ``items``, ``format``, ...) mean the same in both drafts.

    Returns:
        The DAG.
    """
    for param in params.values():
        param.schema.setdefault("$schema", JSON_SCHEMA_DRAFT_7)
    dag.params = params  # type: ignore[assignment]  # DAG converts the dict to a ParamsDict and validates it
    return dag


def python_task(
    function: Callable[..., Any],
    *,
    task_id: str,
    operator: type[PythonOperator] = PythonOperator,
    **operator_kwargs: Any,
) -> PythonOperator:
    """The light task that runs ``function`` in the worker, as ``@task`` would at half its parse time.

    As with ``@task``, the function gets the context values its arguments name (``run_id``, ``params``, ``dag_run``,
    ``outlet_events``, ...), its return value is the task's XCom, and its docstring is the task's doc. ``@task``
    binds and re-checks the function's signature at each call and builds the operator through two more classes:
    twice the operator's cost: 30 ms of a DAG file's parse with 50 models.

    Args:
        function: what the task runs.
        task_id: the task id.
        operator: ``PythonOperator``; ``BranchPythonOperator`` when the function returns the task id(s) to follow,
            ``ShortCircuitOperator`` when a false result skips what follows.
        operator_kwargs: passed on to the operator (``trigger_rule``, ``outlets``, ``multiple_outputs`` for a dict
            result whose keys should also be XComs of their own, as ``@task`` does for ``-> dict``).

    Returns:
        The operator.
    """
    return operator(task_id=task_id, python_callable=function, doc_md=function.__doc__, **operator_kwargs)


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
        A ``StepPodOperator`` (runtime ``kubernetes``; a ``StepJobOperator`` for a step on several nodes) or a
        ``LocalStepOperator`` (runtime ``local``, one process); mapped over ``expand_over`` when given.
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
        "priority_weight": limits.priority_weight + settings.runtime.priority_weight_offset,
        **({"pool": GPU_POOL} if limits.gpus else {}),
        **operator_kwargs,
    }
    # Imported here: the pod side pulls in the kubernetes client (0.3 s), which a local DAG parse need not pay.
    if settings.runtime.mode == "local":
        from orchestration.local_step import LocalStepOperator

        operator: type[BaseOperator] = LocalStepOperator
        kwargs = common
    else:
        from orchestration.pod_operator import StepJobOperator, StepPodOperator
        from orchestration.pod_spec import job_operator_kwargs, pod_operator_kwargs

        operator, kwargs = StepPodOperator, {**common, **pod_operator_kwargs(step, settings, common)}
        if limits.nodes > 1:  # the same pod on each node, as one Indexed Job
            operator, kwargs = StepJobOperator, {**kwargs, **job_operator_kwargs(step, settings)}
    if expand_over is None:
        return operator(**kwargs)
    return operator.partial(**kwargs).expand(extra_arguments=expand_over)
