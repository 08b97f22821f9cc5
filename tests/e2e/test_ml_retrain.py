"""The main job end to end: the churn model's retrain DAG runs on the embedded default exactly as `make demo` runs it.

All runs share one state folder: the first trains and promotes a champion, the second trains a challenger and
compares it with that champion on the same holdout, then a broken file must stop the run at `snapshot` (unreadable)
or at `validate` (a missing column) with a message naming the problem, and the registry and the champion unchanged.
Every run has recognisable secrets in its environment (inert here: MLflow is on SQLite, S3 is not used); none of them
may appear in anything the runs leave or the models page shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn

pytestmark = pytest.mark.e2e

CONF: dict[str, Any] = {}  # the defaults, as `make demo` runs them (early stopping keeps training short)
DAG_ID = "churn-classifier.retrain"
# Values that cannot occur by chance, in the credentials every process of a run inherits.
PLANTED_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "planted-e2e-aws-secret-4c8e1f6a2b9d",
    "MLFLOW_TRACKING_TOKEN": "planted-e2e-mlflow-token-7b3d5a9e1c0f",
}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded")


def _run_main_job(state_dir: Path, conf: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run of the retrain DAG on the embedded runtime; its console output and its outcome file."""
    env = {**os.environ, "ML_STATE_DIR": str(state_dir), **PLANTED_SECRETS}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.embedded", "run", "--model", "churn-classifier", "--rows", "10000"]
        + ["--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    outcome_files = sorted((state_dir / "logs").glob(f"{DAG_ID}-*.json"))
    assert outcome_files, done.stdout + done.stderr
    return done, json.loads(outcome_files[-1].read_text())


def _registry(state_dir: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}")


def _summary(state_dir: Path, run_id: str) -> dict[str, Any]:
    from mlsteps.results import run_root

    return storage.read_json(storage.join(run_root(str(state_dir / "artifacts"), DAG_ID, run_id), "summary.json"))


@pytest.fixture(scope="module")
def first_run(state_dir: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    return _run_main_job(state_dir, CONF)


@pytest.fixture(scope="module")
def second_run(state_dir: Path, first_run: Any) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    return _run_main_job(state_dir, CONF)


def test_first_run_registers_and_promotes_a_champion(state_dir: Path, first_run: Any) -> None:
    done, outcome = first_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert outcome["state"] == "success"
    assert outcome["tasks"]["promote"]["state"] == "success"
    assert outcome["tasks"]["reject"]["state"] == "skipped"

    summary = _summary(state_dir, outcome["run_id"])
    assert summary["outcome"] == "promoted"
    assert summary["validation"]["success"] is True
    assert summary["champion_version_at_evaluation"] is None
    assert summary["challenger_metrics"]["roc_auc"] > 0.7
    assert summary["gate"]["passed"] is True
    assert summary["promoted"] is True

    champion = _registry(state_dir).get_model_version_by_alias(summary["model_name"], "champion")
    assert champion.version == summary["registered_version"]
    assert champion.tags["promoted_by"] == outcome["run_id"]  # the step got the run's identity from the task
    assert champion.tags["snapshot_id"] == summary["snapshot_id"]
    for report in summary["reports"].values():
        assert storage.exists(report), report
    # the console shows the summary a person reads
    for expected in (outcome["run_id"], "validation    passed", "gate          PASSED", "aliases challenger, champion"):
        assert expected in done.stdout


def test_second_run_compares_the_challenger_with_the_champion(state_dir: Path, first_run: Any, second_run: Any) -> None:
    first = _summary(state_dir, first_run[1]["run_id"])
    done, outcome = second_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary(state_dir, outcome["run_id"])

    assert summary["snapshot_id"] == first["snapshot_id"]  # same data, same content-addressed snapshot
    assert summary["champion_version_at_evaluation"] == first["registered_version"]
    assert summary["champion_metrics"]["roc_auc"] == pytest.approx(first["challenger_metrics"]["roc_auc"])
    assert int(summary["registered_version"]) == int(first["registered_version"]) + 1
    assert any("champion" in reason for reason in summary["gate"]["reasons"])
    champion = _registry(state_dir).get_model_version_by_alias(summary["model_name"], "champion")
    assert champion.version == (summary["registered_version"] if summary["promoted"] else first["registered_version"])


BAD_INPUTS = {
    # case: (the task that must stop the run, words the console must show). One case per stopping task: what each
    # check finds is covered case by case in tests/unit (test_validate.py, test_snapshot.py); here, that the DAG
    # stops at that task, says why on the console and in its summary, does not retry and changes nothing.
    "missing column": ("validate", ["tenure_months", "column is missing"]),
    "unreadable file": ("snapshot", ["broken.parquet"]),
}


def _write_bad_input(case: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if case == "unreadable file":
        path = folder / "broken.parquet"
        path.write_bytes(b"PAR1 this is not parquet")
    else:
        path = folder / "broken.csv"
        generate_churn(3000, seed=11).drop(columns=["tenure_months"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_early_with_its_message_and_changes_nothing(
    state_dir: Path, second_run: Any, case: str
) -> None:
    stopping_task, words = BAD_INPUTS[case]
    path = _write_bad_input(case, state_dir / "bad-inputs" / case.replace(" ", "-"))
    registry = _registry(state_dir)
    model_name = _summary(state_dir, second_run[1]["run_id"])["model_name"]
    versions_before = {v.version for v in registry.search_model_versions(f"name='{model_name}'")}
    champion_before = registry.get_model_version_by_alias(model_name, "champion").version

    done, outcome = _run_main_job(state_dir, {**CONF, "dataset_uri": str(path)})

    assert done.returncode != 0
    assert outcome["state"] == "failed"
    assert outcome["tasks"][stopping_task]["state"] == "failed"
    assert outcome["tasks"]["train"]["state"] == "upstream_failed"
    for word in words:
        assert word in done.stdout, f"console does not name {word!r}:\n{done.stdout[-2000:]}"
    summary = _summary(state_dir, outcome["run_id"])  # the run folder says why, without opening a log
    assert (summary["outcome"], summary["failed_task"]) == ("failed", stopping_task)
    assert all(word in summary["message"] for word in words), summary["message"]
    assert outcome["tasks"][stopping_task]["try_number"] == 1, "bad input is not retried"
    assert {v.version for v in registry.search_model_versions(f"name='{model_name}'")} == versions_before
    assert registry.get_model_version_by_alias(model_name, "champion").version == champion_before


def test_no_planted_secret_leaks_into_what_the_runs_leave_or_the_models_page(
    state_dir: Path, first_run: Any, second_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from orchestration.models import load_models
    from orchestration.models_page import reads, render

    # Every file of the state folder as bytes: the runs' task logs, step logs, reports, result and summary JSON, the
    # MLflow SQLite database (tags, params, metrics) and its artifacts, the Airflow database, the snapshots.
    files = [path for path in sorted(state_dir.rglob("*")) if path.is_file()]
    assert len(list((state_dir / "logs").glob(f"{DAG_ID}-*.log"))) >= 2, "no run's task log was scanned"
    assert (state_dir / "mlflow" / "mlflow.db") in files
    monkeypatch.setenv("ML_STATE_DIR", str(state_dir))
    settings = next(entry.settings for entry in load_models() if entry.name == "churn-classifier")
    links = reads.Links.for_tracking_uri(settings.mlflow_tracking_uri, page="/ml-models")
    overview = reads.model_overview(settings, MlflowClient(tracking_uri=settings.mlflow_tracking_uri), links)
    assert overview["champion"] is not None, "the page shows nothing of the runs"
    page = render.render_model(overview, "/ml-models/")
    consoles = [done.stdout + done.stderr for done, _ in (first_run, second_run)]

    for name, value in PLANTED_SECRETS.items():
        secret = value.encode()
        leaked = [str(path.relative_to(state_dir)) for path in files if secret in path.read_bytes()]
        assert not leaked, f"{name}'s value is in {leaked}"
        assert not any(value in console for console in consoles), f"{name}'s value is on a run's console"
        assert value not in json.dumps(overview, default=str), f"{name}'s value is in the models page's data"
        assert value not in page, f"{name}'s value is on the models page"
