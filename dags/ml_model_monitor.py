"""
### ml_drift_monitor: watch the champion's predictions and start retraining when they drift

Runs hourly (`runtime.monitor_cron`); each run checks the window of prediction logs before it (or the window that
ends at the `window_end` param), for the model version behind `monitoring.model_alias`.

| task | what it does | output |
| --- | --- | --- |
| `drift` | the window's features and scores against the reference profile in the model package | `drift/report.html` |
| `decide` | skip small windows; hysteresis (`consecutive_windows`) and `cooldown_hours` | monitor `state.json` |
| `alert` | emits `drift_alert` (extra: report, drifted features, model version); `ml_retrain` starts | asset event |
| `quiet` | no retraining; the reason is in the `decide` log | |
| `summary` | the run's outcome: the decision (`alert`, `no_drift`, ...) or `failed` | `summary.json` |

A data-quality problem in the logs (a missing or all-null feature) is reported as such and never starts retraining.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, chain, dag, task

from orchestration.assets import DRIFT_ALERT
from orchestration.contracts import ALERT_TASK, QUIET_TASK
from orchestration.failures import summary_task
from orchestration.monitor import format_summary, summarize
from orchestration.pod_task import dag_default_args, pod_task
from orchestration.settings import get_settings
from orchestration.templates import TEMPLATE_MACROS

DAG_ID = Path(__file__).stem
SETTINGS = get_settings()


@dag(
    dag_id=DAG_ID,
    schedule=CronTriggerTimetable(SETTINGS.runtime.monitor_cron, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "monitoring", SETTINGS.pipeline.dataset.name],
    default_args=dag_default_args(light_task_minutes=5, max_retry_minutes=10),
    user_defined_macros=TEMPLATE_MACROS,
    params={
        "window_end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="end of the window to check (UTC); empty: this run's time, so the hour before it",
        ),
    },
)
def ml_drift_monitor() -> None:
    """Wire the drift check; see the module docstring."""
    drift = pod_task(
        "drift",
        args=[
            "--prediction-store",
            SETTINGS.prediction_store,
            "--window-end",
            "{{ params.window_end or dag_run.run_after.isoformat() }}",
        ],
    )

    @task.branch(task_id="decide")
    def decide(run_id: str | None = None) -> str:
        """Apply hysteresis and cooldown to the drift step's result; ``alert`` or ``quiet``."""
        from orchestration.monitor import record_decision

        decision = record_decision(
            SETTINGS.run_root(DAG_ID, run_id), SETTINGS.monitor_state_uri, SETTINGS.pipeline.monitoring
        )
        print(f"{decision.action}: {decision.reason}")
        return ALERT_TASK if decision.alert else QUIET_TASK

    @task(task_id=ALERT_TASK, outlets=[DRIFT_ALERT])
    def alert(run_id: str | None = None, *, outlet_events=None) -> dict:
        """Emit ``drift_alert`` with the report and the drifted features, which starts ``ml_retrain``."""
        from mlsteps.results import read_result
        from orchestration.contracts import drift_alert_extra

        extra = drift_alert_extra(read_result(SETTINGS.run_root(DAG_ID, run_id), "drift"))
        outlet_events[DRIFT_ALERT].extra = extra
        print(f"drift_alert: {extra}")
        return extra

    @task(task_id=QUIET_TASK)
    def quiet() -> None:
        """No retraining this time; ``decide`` logged why."""

    # --- the run's outcome, whatever happened ---
    summary = summary_task(DAG_ID, summarize, format_summary)

    chain(drift, decide(), [alert(), quiet()], summary)


ml_drift_monitor()
