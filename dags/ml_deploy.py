"""
### <model>.deploy: serve the champion, smoke-test it through the server, roll back when it fails

Runs when the model's `<model>.retrain` promotes a version (the `<model>.model_promoted` asset), or from the UI with
the params below to deploy another version or roll back by hand (`model` = an older version number).

| param | what it changes |
| --- | --- |
| `model` | what to serve: `champion` (the alias, default) or a version number of this model |
| `strategy` | `rolling` replaces every server; `canary` (Kubernetes) serves a share of traffic first and watches it |
| `canary_share` | the canary's share of requests while it is observed (`strategy` canary) |
| `require_approval` | wait for a person to approve in the UI (*Required actions*) before rolling out |

| task | what it does | output |
| --- | --- | --- |
| `approval_gate` | `approval` when `require_approval` is set, else straight to `deploy` | |
| `approval` | a person approves or rejects in the UI (*Required actions*); a rejection skips `deploy` | |
| `deploy` | rolls `model` out (rolling, or canary on Kubernetes), smoke-tests it via the server | `result.json` |
| `summary` | the run's outcome: `deployed`, `unchanged`, `rolled_back`, `failed` or `skipped` | `summary.json` |

The smoke test sends the bundle's known rows: every probability must match and the p99 latency stay within budget.
The target follows the runtime: `local` serves from the model's own `python -m mlsteps.serve` process on this machine
(pid, port and log in `<state>/serving/<model>/`), `kubernetes` rolls out the model's `model-server-<model>`
Deployment. A failed deploy ends with the previous version serving, `champion` pointing at it again (the alias
history records the rollback), and the task failed with the reason; it is not retried. Deploying the version that
already serves changes nothing (`unchanged`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import Param, TriggerRule, chain, dag

from mlsteps.deploy import STRATEGIES
from orchestration.assets import model_assets
from orchestration.contracts import APPROVAL_TASK, DEPLOY_TASK
from orchestration.deploy import MODEL_PARAM_PATTERN, deploy_args, format_summary, summarize
from orchestration.failures import summary_task
from orchestration.models import dag_id, dag_tags, models_to_build
from orchestration.pod_task import attach_params, dag_default_args, pod_task, python_task
from orchestration.settings import Settings
from orchestration.templates import TEMPLATE_MACROS

APPROVAL_WAIT = timedelta(hours=24)
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def ask_approval(params: dict | None = None) -> str:
    """``approval`` when the run requires it, else ``deploy``."""
    from orchestration.deploy import approval_branch

    return approval_branch(params["require_approval"])


def run_params(settings: Settings) -> dict[str, Param]:
    """The run params of one model's deploy DAG: its trigger form."""
    model_name = settings.pipeline.registry.model_name
    return {
        "model": Param(
            "champion",
            type="string",
            pattern=MODEL_PARAM_PATTERN,
            title="Version to serve",
            description=f"What to serve: 'champion' (the alias) or a version number of {model_name}.",
        ),
        "strategy": Param(
            "rolling",
            type="string",
            enum=list(STRATEGIES),
            title="Rollout strategy",
            description="rolling: replace every server; canary: a share of traffic first (Kubernetes only).",
        ),
        "canary_share": Param(
            settings.pipeline.serving.canary.share,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Canary share",
            description="Share of requests the canary gets while it is observed (strategy canary).",
        ),
        "require_approval": Param(
            False,
            type="boolean",
            title="Require approval",
            description="Wait for a person to approve the deploy in the UI before rolling out.",
        ),
    }


def build(settings: Settings) -> None:
    """The deploy DAG of one model."""
    deploy_dag_id = dag_id(settings.pipeline.registry.model_name, "deploy")
    assets = model_assets(settings)
    model_name = settings.pipeline.registry.model_name

    @dag(
        dag_id=deploy_dag_id,
        schedule=[assets.promoted],
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # one rollout at a time: two would race for the same server
        doc_md=__doc__,
        tags=dag_tags(settings, "deploy"),
        default_args=dag_default_args(settings, light_task_minutes=10, max_retry_minutes=10),
        user_defined_macros=TEMPLATE_MACROS,
    )
    def ml_deploy() -> None:
        """Wire the deploy; see the module docstring."""

        # --- approval (optional) ---
        approval_gate = python_task(ask_approval, task_id="approval_gate", operator=BranchPythonOperator)
        approval = ApprovalOperator(
            task_id=APPROVAL_TASK,
            subject=f"Deploy {model_name} {{{{ params.model }}}} ({{{{ params.strategy }}}})?",
            body="Approve to roll it out to the model server; Reject skips the deploy. Run: {{ run_id }}",
            response_timeout=APPROVAL_WAIT,
        )

        # --- rollout, smoke test, rollback ---
        deploy = pod_task(
            "deploy",
            settings=settings,
            task_id=DEPLOY_TASK,
            args=deploy_args(settings),
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        )

        # --- the run's outcome, whatever happened ---
        summary = summary_task(deploy_dag_id, summarize, format_summary)

        chain(approval_gate, [approval, deploy])
        chain(approval, deploy, summary)

    attach_params(ml_deploy(), run_params(settings))  # after the tasks: see attach_params


for _settings in models_to_build("deploy"):
    build(_settings)
