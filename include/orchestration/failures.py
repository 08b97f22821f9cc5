"""Why a task failed: said the same way by both runtimes, and kept in the run folder for the run's summary.

A step exits 0 (done), 2 (bad input, bad config or a failed check: a retry cannot help) or anything else (a crash, an
out-of-memory kill, a lost node: worth a retry). ``step_exit_error`` turns a step's exit into the task's exception
for ``LocalStepOperator`` and ``StepPodOperator`` alike: exit 2 is an ``AirflowFailException`` (failed at once, no
retry), any other exit an ``AirflowException`` (retried with backoff). The message names the step, the exit code and
the step's last lines.

Every task of the DAGs clears its record when it starts (``on_execute_callback``) and writes it when it fails for good
(``on_failure_callback``), so ``<run folder>/failures/<task>.json`` holds exactly the tasks whose last try failed,
however often a run is cleared and re-run. The summary task reads them (``failure_summary``), writes ``summary.json``
and then fails the run with ``RunFailed`` (``close_run``), so a failed run is failed in Airflow and explained in its
folder without opening a log.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from mlsteps.data import storage
from mlsteps.errors import EXIT_USER_ERROR
from mlsteps.results import summary_uri
from orchestration.contracts import SUMMARY_TASK
from orchestration.settings import get_settings

log = logging.getLogger(__name__)

FAILURES_FOLDER = "failures"
TAIL_LINES = 40  # enough for a validation report's list of failed expectations
OOM_KILLED = "OOMKilled"
FAILED_OUTCOMES = ("failed", "rolled_back", "rollback_failed")  # a run with these outcomes fails


class StepExitError(AirflowException):
    """A step process or container ended with a non-zero exit code; Airflow retries it.

    Attributes:
        step: the step (``python -m mlsteps <step>``).
        exit_code: the exit code (negative: killed by that signal, local runtime).
        reason: Kubernetes' reason for the container's end (``OOMKilled``, ``Error``), when known.
        tail: the step's last lines of output.
    """

    def __init__(self, headline: str, step: str, exit_code: int, tail: str, reason: str | None = None) -> None:
        super().__init__(f"{headline}\n{tail}" if tail else headline)
        self.step = step
        self.exit_code = exit_code
        self.reason = reason
        self.tail = tail

    @property
    def step_message(self) -> str:
        """The step's own message (from its last ``<step> failed:`` line on), else the whole exception message."""
        lines = self.tail.splitlines()
        marker = f"{self.step} failed: "
        starts = [index for index, line in enumerate(lines) if line.startswith(marker)]
        return "\n".join(lines[starts[-1] :]) if starts else str(self)


class StepUserError(StepExitError, AirflowFailException):
    """The step exited with code 2 (bad input, bad config, a failed check): the task fails without a retry."""


def step_exit_error(step: str, exit_code: int, tail: str, reason: str | None = None) -> StepExitError:
    """The task's exception for a step that exited with ``exit_code`` (non-zero).

    Args:
        step: the step.
        exit_code: its exit code; negative for a process killed by a signal.
        tail: its last lines of output (they hold its error message).
        reason: Kubernetes' termination reason of the step container, if any.

    Returns:
        ``StepUserError`` for exit code 2 (not retried), else ``StepExitError`` (retried).
    """
    if exit_code == EXIT_USER_ERROR:
        headline = f"{step} stopped on bad input, bad config or a failed check (exit code 2); it is not retried:"
        return StepUserError(headline, step, exit_code, tail, reason)
    if reason == OOM_KILLED:
        headline = (
            f"{step} was killed for using more memory than its limit (exit code {exit_code}, OOMKilled); it is "
            f"retried. If it happens again, raise runtime.steps.{step}.resources.limits.memory (and requests.memory) "
            "in the pipeline config, or give the step less data."
        )
    elif exit_code < 0:
        headline = f"{step} was killed by {signal.Signals(-exit_code).name}; it is retried:"
    else:
        cause = f" ({reason})" if reason and reason != "Error" else ""  # "Error" is Kubernetes' word for any exit
        headline = f"{step} exited with code {exit_code}{cause}; it is retried:"
    return StepExitError(headline, step, exit_code, tail, reason)


class RunFailed(AirflowFailException):
    """The summary task's own failure: the run failed before it, and ``summary.json`` says where and why."""


def _record_uri(context: Any) -> str:
    ti = context["ti"]
    run_root = get_settings().run_root(ti.dag_id, context["run_id"])
    return storage.join(run_root, FAILURES_FOLDER, f"{ti.task_id}.json")


def clear_failure(context: Any) -> None:
    """``on_execute_callback``: a task that starts again has not failed (yet); drop its record of an earlier try."""
    storage.delete(_record_uri(context))


def record_failure(context: Any) -> None:
    """``on_failure_callback``: keep why the task failed for good in the run folder; never raises."""
    error = context.get("exception")
    if isinstance(error, RunFailed):
        return
    ti = context["ti"]
    record: dict[str, Any] = {
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "failed_at": datetime.now(UTC).isoformat(),
        "error": type(error).__name__ if error else None,
        "message": str(error) if error else "the task failed without an exception (killed, or its worker was lost)",
    }
    if isinstance(error, StepExitError):
        record.update(
            step=error.step,
            exit_code=error.exit_code,
            reason=error.reason,
            message=error.step_message,
            tail=error.tail,
        )
    try:
        storage.write_json(_record_uri(context), record)
    except Exception:  # a callback must not hide the task's own failure
        log.exception("could not record the failure of %s", ti.task_id)


def read_failures(run_root: str) -> list[dict[str, Any]]:
    """The failure records of one run, first failure first."""
    folder = storage.join(run_root, FAILURES_FOLDER)
    records = [storage.read_json(uri) for uri in storage.list_files(folder) if uri.endswith(".json")]
    return sorted(records, key=lambda record: record["failed_at"])


def failure_summary(run_root: str) -> dict[str, Any] | None:
    """What a failed run's summary says about the failure: the first failed task and its message, or None."""
    failures = read_failures(run_root)
    if not failures:
        return None
    first = failures[0]
    return {
        "outcome": "failed",
        "failed_task": first["task_id"],
        "message": first["message"],
        "failures": [{key: record.get(key) for key in ("task_id", "exit_code", "message")} for record in failures],
    }


def unexplained_failure(missing: str) -> dict[str, Any]:
    """The failure of a run that stopped without a record (its worker was lost before the callback could run)."""
    return {
        "outcome": "failed",
        "failed_task": None,
        "message": f"the run stopped before {missing} and left no failure record; see its task logs",
        "failures": [],
    }


def outcome_lines(summary: dict[str, Any], message: str = "") -> list[str]:
    """The first lines of every run's report: the run, its outcome, the failed task and the message (or ``message``,
    for a run whose summary has none)."""
    lines = [f"run           {summary['run_id']}", f"outcome       {summary['outcome'].upper()}"]
    if summary.get("failed_task"):
        lines.append(f"failed task   {summary['failed_task']}")
    return lines + [f"  {line}" for line in (summary.get("message") or message).splitlines()]


def close_run(run_root: str, summary: dict[str, Any], report: str) -> dict[str, Any]:
    """Write ``summary.json``, print the summary's report for the task log, and fail the task when the run failed.

    Raises:
        RunFailed: the summary's outcome is one of ``FAILED_OUTCOMES``, so the DAG run ends failed.
    """
    storage.write_json(summary_uri(run_root), summary)
    print(report)
    if summary["outcome"] in FAILED_OUTCOMES:
        where = f" at {summary['failed_task']}" if summary.get("failed_task") else ""
        raise RunFailed(f"the run {summary['outcome'].replace('_', ' ')}{where}: {summary.get('message', '')}")
    return summary


def summary_task(
    dag_id: str,
    summarize: Callable[[str, str], dict[str, Any]],
    format_summary: Callable[[dict[str, Any]], str],
) -> Any:
    """The last task of a DAG: after everything else, whatever happened, summarize the run and close it.

    Args:
        dag_id: the DAG, whose run folder holds the results and failure records.
        summarize: the DAG's ``(run_root, run_id) -> summary``.
        format_summary: the DAG's ``summary -> report`` for the task log.

    Returns:
        The task (its output is the summary), to wire with ``chain``.
    """

    def summary(run_id: str | None = None) -> dict:
        """Store the run's outcome as ``summary.json`` and log it; fail when the run failed."""
        run_root = get_settings().run_root(dag_id, run_id)
        outcome = summarize(run_root, run_id)
        return close_run(run_root, outcome, format_summary(outcome))

    # As pod_task.python_task builds it (that module imports this one): the operator, at half the parse time of @task.
    return PythonOperator(
        task_id=SUMMARY_TASK,
        python_callable=summary,
        doc_md=summary.__doc__,
        trigger_rule=TriggerRule.ALL_DONE,
        multiple_outputs=True,  # each key of the summary is also an XCom of its own, as @task makes it for a dict
    )
