"""Decisions and arguments of the ``ml_deploy`` DAG, kept out of the DAG file so they are unit-tested.

The deploy step itself (``python -m mlsteps deploy``) decides what to roll out, smoke-tests it and rolls back; this
module only says which serving target a runtime deploys to and whether a person approves first.
"""

from __future__ import annotations

import logging
from typing import Any

from mlsteps import results
from orchestration.contracts import APPROVAL_TASK, DEPLOY_TASK
from orchestration.failures import failure_summary, outcome_lines
from orchestration.settings import Settings

log = logging.getLogger(__name__)

# The deploy step's outcomes when the new version failed: its result.json says what serves now.
ROLLBACK_OUTCOMES = ("rolled_back", "rollback_failed")
# A version number or the alias that serving follows.
MODEL_PARAM_PATTERN = r"^(champion|[1-9][0-9]*)$"


def target_args(settings: Settings) -> list[str]:
    """The deploy step's target options: the local model server for runtime ``local``, else the cluster's.

    Runtime ``local`` serves from a process on this machine whose pid, port and log live in the state folder, and
    which logs its predictions where the drift monitor reads them.
    """
    if settings.runtime.mode == "local":
        return [
            "--target",
            "local",
            "--state-dir",
            str(settings.serving_state_dir),
            "--prediction-store",
            settings.prediction_store,
        ]
    return ["--target", "kubernetes"]


def deploy_args(settings: Settings) -> list[str]:
    """Every argument of the deploy step after ``--run-root``: the run's params, then the runtime's target."""
    run_params = [
        "--model",
        "{{ params.model }}",
        "--strategy",
        "{{ params.strategy }}",
        "--canary-share",
        "{{ params.canary_share }}",
    ]
    return [*run_params, *target_args(settings)]


def approval_branch(require_approval: bool) -> str:
    """The task after the approval gate: ``approval`` when a person must approve first, else ``deploy``."""
    if require_approval:
        log.info("require_approval is set -> %s: the deploy waits for a person's answer", APPROVAL_TASK)
        return APPROVAL_TASK
    log.info("require_approval is not set -> %s", DEPLOY_TASK)
    return DEPLOY_TASK


def summarize(run_root: str, run_id: str) -> dict[str, Any]:
    """The outcome of one deploy run, from the deploy step's result and the run's failure records.

    ``deployed`` and ``unchanged`` succeed; ``rolled_back`` (the previous version serves again) and
    ``rollback_failed`` are the deploy step's own failed outcomes; ``failed`` is any other failure; ``skipped`` means
    the deploy did not run (a person rejected it).
    """
    deployed = results.optional_result(run_root, DEPLOY_TASK)
    failure = failure_summary(run_root)
    if failure and deployed and deployed["outcome"] in ROLLBACK_OUTCOMES:
        failure = {**failure, "outcome": deployed["outcome"]}
    outcome = failure or (
        {"outcome": deployed["outcome"]} if deployed else {"outcome": "skipped", "message": "the deploy did not run"}
    )
    return {"run_id": run_id, "run_root": run_root, **outcome, "deploy": deployed}


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of one deploy run."""
    deployed = summary["deploy"] or {}
    lines = outcome_lines(summary, deployed.get("reason", ""))
    if deployed:
        lines.append(
            f"model         {deployed['model_name']} v{deployed['version']} on {deployed['target']} "
            f"({deployed['strategy']}), before: {deployed['previous_version'] or 'none'}"
        )
    lines.append(f"run folder    {summary['run_root']}")
    return "\n".join(lines)
