"""Run-scoped outputs: every step writes only under ``<artifact root>/runs/<dag>/<run id>/<step>/``.

A step ends by writing ``result.json`` in its folder (URIs, metrics, hashes). Downstream steps and the Airflow
tasks read results through ``read_result``, so the local runtime and Kubernetes pods share one contract.
Re-running a step for the same run overwrites its own folder and nothing else.
"""

from __future__ import annotations

import re
from typing import Any

from mlsteps.data import storage
from mlsteps.errors import StepError

RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"  # the run's outcome, written by its DAG's last task
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str) -> str:
    """A path segment made from a run id: characters such as ``:`` and ``+`` become ``-``."""
    return _UNSAFE.sub("-", value).strip("-") or "run"


def run_root(artifact_root: str, dag_id: str, run_id: str) -> str:
    """The folder of one DAG run's artifacts."""
    return storage.join(artifact_root, "runs", safe_name(dag_id), safe_name(run_id))


def prediction_store(artifact_root: str) -> str:
    """Where scoring and serving log predictions (``mlsteps.monitoring.prediction_log``), beside the runs."""
    return storage.join(artifact_root, "predictions")


def monitor_state(artifact_root: str, model_name: str) -> str:
    """The drift monitor's memory of recent windows and its last trigger, per model."""
    return storage.join(artifact_root, "monitor", safe_name(model_name), "state.json")


def candidate_step(family: str) -> str:
    """Where the train step writes for one candidate family (``train/mlp``, ``train/gbdt``, ``train/my.module-Cls``):
    candidates trained in parallel for one run never share a folder, and evaluate finds each by its family."""
    return f"train/{safe_name(family)}"


def step_dir(root: str, step: str) -> str:
    """The folder a step writes into for one run."""
    return storage.join(root, step)


def result_uri(root: str, step: str) -> str:
    """Where a step's ``result.json`` lives for one run."""
    return storage.join(step_dir(root, step), RESULT_FILE)


def write_result(root: str, step: str, payload: dict[str, Any]) -> str:
    """Write a step's result (``step`` is added to the payload) and return its URI."""
    uri = result_uri(root, step)
    storage.write_json(uri, {"step": step, **payload})
    return uri


def read_result(root: str, step: str) -> dict[str, Any]:
    """Read the result of an upstream step of the same run.

    Raises:
        StepError: the upstream step has not written its result for this run root.
    """
    uri = result_uri(root, step)
    try:
        return storage.read_json(uri)
    except FileNotFoundError:
        raise StepError(f"no result of step {step!r} at {uri}: run `{step}` for this --run-root first") from None


def optional_result(root: str, step: str) -> dict[str, Any] | None:
    """The result of a step of this run, or None when the step did not run (skipped by a branch, or failed)."""
    uri = result_uri(root, step)
    return storage.read_json(uri) if storage.exists(uri) else None


def record_elapsed(root: str, step: str, seconds: float) -> None:
    """Add the step process's wall time to its result (benchmarks compare it with the task's wall time)."""
    result = optional_result(root, step)
    if result is not None:
        storage.write_json(result_uri(root, step), {**result, "elapsed_seconds": round(seconds, 3)})


def summary_uri(root: str) -> str:
    """Where a run's ``summary.json`` lives."""
    return storage.join(root, SUMMARY_FILE)


def read_summary(root: str) -> dict[str, Any] | None:
    """The ``summary.json`` of a run, or None when its summary task has not written it (yet)."""
    uri = summary_uri(root)
    return storage.read_json(uri) if storage.exists(uri) else None
