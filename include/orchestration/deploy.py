"""Decisions and arguments of the ``ml_deploy`` DAG, kept out of the DAG file so they are unit-tested.

The deploy step itself (``python -m mlsteps deploy``) decides what to roll out, smoke-tests it and rolls back; this
module only says which serving target a runtime deploys to and whether a person approves first.
"""

from __future__ import annotations

import logging

from orchestration.settings import Settings

log = logging.getLogger(__name__)

APPROVAL_TASK = "approval"
DEPLOY_TASK = "deploy"
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
