"""A failed run explains itself: failure records in the run folder, and the summary each DAG writes from them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException

from mlsteps import results
from mlsteps.data import storage
from orchestration import deploy, monitor, retrain
from orchestration.failures import (
    RunFailed,
    clear_failure,
    close_run,
    read_failures,
    record_failure,
    step_exit_error,
)
from orchestration.settings import get_settings

VALIDATION_TAIL = (
    "validating snapshot 0123abcd: 3000 rows, 12 columns\n"
    "validate failed: snapshot 0123abcd failed 1 of 40 expectations:\n"
    "- tenure_months: column is missing\n"
    "Report: /runs/validate/report.html."
)


def _context(dag_id: str, run_id: str, task_id: str, error: BaseException | None) -> dict[str, Any]:
    """What Airflow hands a task's callbacks, as far as the failure record reads it."""
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id=task_id, try_number=1), "run_id": run_id, "exception": error}


def _fail(dag_id: str, run_id: str, task_id: str, error: BaseException | None) -> str:
    context = _context(dag_id, run_id, task_id, error)
    clear_failure(context)
    record_failure(context)
    return get_settings().run_root(dag_id, run_id)


def test_a_step_failure_is_recorded_with_the_steps_own_message() -> None:
    run_root = _fail("ml_retrain", "manual__r1", "validate", step_exit_error("validate", 2, VALIDATION_TAIL))

    [record] = read_failures(run_root)

    assert record["task_id"] == "validate" and record["exit_code"] == 2
    assert record["message"].startswith("validate failed: snapshot 0123abcd failed 1 of 40")
    assert "- tenure_months: column is missing" in record["message"]
    assert record["tail"] == VALIDATION_TAIL


def test_a_task_that_starts_again_drops_its_old_failure() -> None:
    run_root = _fail("ml_retrain", "manual__r2", "train", step_exit_error("train", 1, "RuntimeError: NCCL timeout"))
    assert [r["task_id"] for r in read_failures(run_root)] == ["train"]

    clear_failure(_context("ml_retrain", "manual__r2", "train", None))  # the task is cleared and runs again

    assert read_failures(run_root) == []


def test_any_task_failure_is_recorded_and_the_summarys_own_failure_is_not() -> None:
    run_root = _fail("ml_retrain", "manual__r3", "gate", AirflowException("no result of step 'evaluate'"))
    _fail("ml_retrain", "manual__r3", "summary", RunFailed("the run failed at gate"))

    [record] = read_failures(run_root)
    assert record == {
        **record,
        "task_id": "gate",
        "error": "AirflowException",
        "message": "no result of step 'evaluate'",
    }


def test_a_failed_retraining_run_writes_its_summary_and_fails() -> None:
    run_root = _fail("ml_retrain", "manual__r4", "validate", step_exit_error("validate", 2, VALIDATION_TAIL))
    results.write_result(run_root, "snapshot", {"snapshot_id": "0123abcd", "rows": 3000})
    results.write_result(
        run_root,
        "validate",
        {
            "success": False,
            "statistics": {"evaluated": 40, "successful": 39, "unsuccessful": 1},
            "report_html_uri": f"{run_root}/validate/report.html",
        },
    )

    summary = retrain.summarize(run_root, "manual__r4")
    with pytest.raises(RunFailed, match="^the run failed at validate: validate failed: snapshot 0123abcd"):
        close_run(run_root, summary, retrain.format_summary(summary))

    assert storage.read_json(storage.join(run_root, "summary.json")) == summary
    assert summary["outcome"] == "failed" and summary["failed_task"] == "validate"
    assert summary["promoted"] is False and summary["registered_version"] is None
    text = retrain.format_summary(summary)
    for expected in ("FAILED", "failed task   validate", "tenure_months: column is missing", "39/40", "0123abcd"):
        assert expected in text


def _deploy_result(outcome: str) -> dict[str, Any]:
    return {
        "model_name": "churn-classifier",
        "version": 5,
        "previous_version": 4,
        "target": "local",
        "strategy": "rolling",
        "outcome": outcome,
        "reason": "smoke test: p99 310.0 ms > budget 250 ms",
    }


def test_a_rolled_back_deploy_says_so_and_fails() -> None:
    message = "deploy failed: churn-classifier v5 was rolled back on local, v4 serves again: smoke test: p99 310.0 ms"
    run_root = _fail("ml_deploy", "asset__d1", "deploy", step_exit_error("deploy", 2, message))
    results.write_result(run_root, "deploy", _deploy_result("rolled_back"))

    summary = deploy.summarize(run_root, "asset__d1")

    assert summary["outcome"] == "rolled_back" and summary["failed_task"] == "deploy"
    assert summary["message"] == message
    with pytest.raises(RunFailed, match="^the run rolled back at deploy"):
        close_run(run_root, summary, deploy.format_summary(summary))
    assert "churn-classifier v5 on local (rolling), before: 4" in deploy.format_summary(summary)


def test_a_deploy_that_did_not_run_or_succeeded_does_not_fail() -> None:
    run_root = get_settings().run_root("ml_deploy", "manual__d2")
    assert deploy.summarize(run_root, "manual__d2")["outcome"] == "skipped"

    results.write_result(run_root, "deploy", _deploy_result("deployed"))
    summary = close_run(run_root, deploy.summarize(run_root, "manual__d2"), "report")
    assert summary["outcome"] == "deployed"


def test_a_monitor_run_reports_its_decision_or_its_failure() -> None:
    run_root = get_settings().run_root("ml_model_monitor", "scheduled__m1")
    storage.write_json(
        storage.join(run_root, monitor.DECISION_FILE), {"action": "pending", "reason": "drift in 1 window"}
    )
    assert monitor.summarize(run_root, "scheduled__m1")["outcome"] == "pending"

    _fail("ml_model_monitor", "scheduled__m1", "drift", step_exit_error("drift", 1, "OSError: store unreachable"))
    summary = monitor.summarize(run_root, "scheduled__m1")

    assert summary["outcome"] == "failed" and summary["failed_task"] == "drift"
    assert "OSError: store unreachable" in monitor.format_summary(summary)


def test_a_run_that_stopped_without_a_record_is_failed_not_rejected() -> None:
    # A lost worker runs no callback: no record, but no evaluation either, so the run did not end in a decision.
    run_root = get_settings().run_root("ml_retrain", "manual__r5")
    results.write_result(run_root, "snapshot", {"snapshot_id": "0123abcd", "rows": 3000})

    summary = retrain.summarize(run_root, "manual__r5")

    assert summary["outcome"] == "failed" and "stopped before evaluate" in summary["message"]
    assert "stopped before evaluate" in retrain.format_summary(summary), "the report says why, with no failed task"
    assert monitor.summarize(run_root, "manual__r5")["outcome"] == "failed"
