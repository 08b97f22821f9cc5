"""
### <model>.monitor: watch the champion in production and start retraining when it no longer fits

Runs hourly (`runtime.monitor_cron`); each run checks the window of prediction logs before it (or the window that
ends at the `window_end` param) for the model version behind `monitoring.model_alias`, on three signals:

- **input drift**: the window's features and scores against the training data's reference profile;
- **realized performance**: the task's metric on the predictions whose labels have arrived
  (`monitoring.performance.labels`), on the window `label_delay_hours` back, against the holdout's expectation and
  its sampling error at that many rows;
- **estimated performance** (classification): the metric expected from the champion's calibrated probabilities,
  before any label; blind to concept drift, which realized performance confirms.

| task | what it does | output |
| --- | --- | --- |
| `drift` | the window's features and scores against the package's reference profile | `drift/report.html` |
| `performance` | realized (labels joined by request id) and estimated performance vs the holdout | `performance/` |
| `decide` | hysteresis per signal, shared cooldown; the report over the recent windows | `monitor/report.html` |
| `alert` | emits `<model>.monitor_alert` (signal, figures, reports); `<model>.retrain` starts | asset event |
| `quiet` | no retraining (an estimated drop that only alerts ends `alert_only`); `decide` logs why | |
| `summary` | the run's outcome: the decision (`alert`, `quiet`, `pending`, ...) or `failed` | `summary.json` |

Params: `window_end` checks another window than the hour before the run (a re-check or a backfill decides the same
way: times are the windows' ends). A data-quality problem in the logs (a missing or all-null feature) or in the
labels (duplicates, conflicts, wrong types, unknown ids) is reported as such and never starts retraining.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import CronTriggerTimetable, Param, chain, dag

from orchestration.assets import model_assets
from orchestration.contracts import ALERT_TASK, QUIET_TASK
from orchestration.failures import summary_task
from orchestration.models import dag_id, dag_tags, models_to_build
from orchestration.monitor import format_summary, summarize
from orchestration.pod_task import attach_params, dag_default_args, pod_task, python_task
from orchestration.settings import Settings
from orchestration.templates import TEMPLATE_MACROS

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def stay_quiet() -> None:
    """No retraining this time; ``decide`` logged why."""


def run_params() -> dict[str, Param]:
    """The run params of a monitor DAG: its trigger form."""
    return {
        "window_end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Window end",
            description="End of the window to check (UTC); empty: this run's time, so the hour before it.",
        ),
    }


def build(settings: Settings) -> None:
    """The monitor DAG of one model."""
    monitor_dag_id = dag_id(settings.pipeline.registry.model_name, "monitor")
    assets = model_assets(settings)
    window_args = [
        "--prediction-store",
        settings.prediction_store,
        "--window-end",
        "{{ params.window_end or dag_run.run_after.isoformat() }}",
    ]

    @dag(
        dag_id=monitor_dag_id,
        schedule=CronTriggerTimetable(settings.runtime.monitor_cron, timezone="UTC"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=__doc__,
        tags=dag_tags(settings, "monitor"),
        default_args=dag_default_args(settings, light_task_minutes=5, max_retry_minutes=10),
        user_defined_macros=TEMPLATE_MACROS,
    )
    def ml_model_monitor() -> None:
        """Wire the monitor's checks and decision; see the module docstring."""
        drift = pod_task("drift", settings=settings, args=window_args)
        performance = pod_task("performance", settings=settings, args=window_args)

        def judge(run_id: str | None = None) -> str:
            """Apply each signal's hysteresis and the cooldown to the checks' results; ``alert`` or ``quiet``."""
            from orchestration.monitor import record_decision

            pipeline = settings.pipeline
            decision = record_decision(
                settings.run_root(monitor_dag_id, run_id),
                settings.monitor_state_uri,
                pipeline.monitoring,
                title=f"Monitor of {pipeline.registry.model_name}",
            )
            print(f"{decision.action}: {decision.reason}\nreport: {decision.report_html_uri}")
            return ALERT_TASK if decision.alert else QUIET_TASK

        decide = python_task(judge, task_id="decide", operator=BranchPythonOperator)

        def emit_alert(run_id: str | None = None, *, outlet_events=None) -> dict:
            """Emit ``monitor_alert`` with the signal, its figures and the reports, which starts ``ml_retrain``."""
            from orchestration.contracts import monitor_alert_extra
            from orchestration.monitor import read_decision

            decision = read_decision(settings.run_root(monitor_dag_id, run_id))
            extra = monitor_alert_extra(decision, settings.pipeline.registry.model_name)
            outlet_events[assets.alert].extra = extra
            print(f"monitor_alert: {extra}")
            return extra

        # multiple_outputs: each key of the payload is also an XCom of its own, as @task makes it for a dict
        alert = python_task(emit_alert, task_id=ALERT_TASK, outlets=[assets.alert], multiple_outputs=True)
        quiet = python_task(stay_quiet, task_id=QUIET_TASK)

        # --- the run's outcome, whatever happened ---
        summary = summary_task(monitor_dag_id, summarize, format_summary)

        chain([drift, performance], decide, [alert, quiet], summary)

    attach_params(ml_model_monitor(), run_params())  # after the tasks: see attach_params


for _settings in models_to_build("monitor"):
    build(_settings)
