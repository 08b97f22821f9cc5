"""The embedded default on one machine: a local Airflow on SQLite that runs the whole loop, no cluster, no cloud.

``python -m orchestration.embedded run`` prepares everything that is missing (Airflow home and database, the
project's ``airflow_settings.yaml``, the built-in dataset) and runs a DAG in-process with ``dag.test()``,
the steps running as local subprocesses. Airflow's own log goes to ``.local/logs/``; the console shows each task as
it finishes and, at the end, the run's summary. All state lives in ``.local/`` (``make clean`` removes it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mlsteps import results
from orchestration.settings import PROJECT_ROOT, Settings

SETTINGS_FILE = PROJECT_ROOT / "airflow_settings.yaml"
SQLITE_BUSY_TIMEOUT_SECONDS = 30
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment of the local Airflow: home, DAGs and plugins of this project, SQLite, no examples."""
    home = settings.state_dir / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # A writer waits up to 30 s for another's transaction (SQLite's default, 5 s, fails UI requests while the
        # scheduler writes); the database file itself is in write-ahead-log mode (_write_ahead_logging).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_SECONDS}",
        "ML_STATE_DIR": str(settings.state_dir),
    }


def _airflow(args: list[str], env: dict[str, str], log_file: Path) -> None:
    """Run an ``airflow`` CLI command of this environment, its output appended to the setup log."""
    with log_file.open("a") as log:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env={**os.environ, **env}, stdout=log, stderr=log, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"`airflow {' '.join(args)}` failed (exit {done.returncode}); see {log_file}")


def settings_files(settings_yaml: Path, folder: Path) -> dict[str, Path]:
    """Translate the Astro-format ``airflow_settings.yaml`` into the files ``airflow <kind> import`` reads."""
    section = (yaml.safe_load(settings_yaml.read_text()) or {}).get("airflow", {}) or {}
    pools = {
        p["pool_name"]: {
            "slots": p["pool_slot"],
            "description": p.get("pool_description", ""),
            "include_deferred": False,
        }
        for p in section.get("pools") or []
    }
    connections = {
        c["conn_id"]: {
            "conn_type": c["conn_type"],
            "description": c.get("conn_description", ""),
            "host": c.get("conn_host"),
            "login": c.get("conn_login"),
            "password": c.get("conn_password"),
            "schema": c.get("conn_schema"),
            "port": c.get("conn_port"),
            "extra": json.dumps(c.get("conn_extra") or {}),
        }
        for c in section.get("connections") or []
    }
    variables = {v["variable_name"]: v["variable_value"] for v in section.get("variables") or []}
    files = {}
    for kind, content in (("pools", pools), ("connections", connections), ("variables", variables)):
        if content:
            files[kind] = folder / f"{kind}.json"
            files[kind].write_text(json.dumps(content, indent=2))
    return files


def _create_tracking_store(tracking_uri: str) -> None:
    """Create a SQLite tracking store's tables once, before any task: steps that start together on a fresh state
    (the monitor's drift and performance) would otherwise race to create them and one would fail."""
    if tracking_uri.startswith("sqlite:"):
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)


def _write_ahead_logging(database: Path) -> None:
    """Put the local Airflow database in write-ahead-log mode, which the file keeps for every process that opens it.

    With SQLite's default rollback journal a reader blocks writers: while the scheduler and running tasks read, a
    UI or REST request that writes (a trigger, its audit log line) waits 5 s and fails with "database is locked".
    """
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def prepare_airflow(settings: Settings) -> dict[str, str]:
    """Create or migrate the local Airflow database and apply ``airflow_settings.yaml`` when it changed."""
    env = airflow_env(settings)
    home = Path(env["AIRFLOW_HOME"])
    logs = settings.state_dir / "logs"
    for folder in (home, logs, settings.state_dir / "mlflow"):
        folder.mkdir(parents=True, exist_ok=True)
    _create_tracking_store(settings.mlflow_tracking_uri)
    setup_log = logs / "setup.log"
    stamp = home / ".applied"
    fingerprint = hashlib.sha256(SETTINGS_FILE.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == fingerprint and (home / "airflow.db").exists():
        _write_ahead_logging(home / "airflow.db")  # a state folder prepared before it was set
        return env
    print(f"preparing the local Airflow in {home} (first run takes a minute)", flush=True)
    _airflow(["db", "migrate"], env, setup_log)
    _write_ahead_logging(home / "airflow.db")
    for kind, path in settings_files(SETTINGS_FILE, home).items():
        extra = ["--overwrite"] if kind == "connections" else []
        _airflow([kind, "import", *extra, str(path)], env, setup_log)
    stamp.write_text(fingerprint)
    return env


def ensure_dataset(settings: Settings, rows: int, seed: int) -> None:
    """Write the built-in dataset to the default dataset URI if nothing is there yet."""
    from mlsteps.data import storage

    if storage.is_s3(settings.dataset_uri) or storage.exists(settings.dataset_uri):
        return
    task = settings.pipeline.dataset.target.task
    print(f"generating the built-in {task} dataset ({rows} rows) at {settings.dataset_uri}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlsteps",
            "make-dataset",
            "--output-uri",
            settings.dataset_uri,
            "--rows",
            str(rows),
            "--seed",
            str(seed),
            "--task",
            task,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _dag_test(dag_id: str, conf: dict[str, Any], outcome_file: Path) -> None:
    """Child process: run one DAG with ``dag.test()`` and write the run's outcome as JSON."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(PROJECT_ROOT / "dags"))
    if dag_id not in bag.dags:
        raise SystemExit(f"{dag_id} did not load; DAG import errors: {bag.import_errors}")
    started = time.time()
    dag_run = bag.dags[dag_id].test(run_conf=conf)
    tasks = {
        ti.task_id: {
            "state": str(ti.state),
            "try_number": ti.try_number,
            "started_at": ti.start_date.isoformat() if ti.start_date else None,
            "seconds": (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None,
        }
        for ti in dag_run.get_task_instances()
    }
    outcome = {
        "dag_id": dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "seconds": round(time.time() - started, 3),
        "tasks": tasks,
    }
    outcome_file.write_text(json.dumps(outcome, indent=2))


def run_dag(settings: Settings, env: dict[str, str], dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Run a DAG in a child process, echo task ends, and return the outcome written by ``_dag_test``."""
    logs = settings.state_dir / "logs"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_file = logs / f"{dag_id}-{stamp}.log"
    outcome_file = logs / f"{dag_id}-{stamp}.json"
    argv = [sys.executable, "-m", "orchestration.embedded", "_dag-test", dag_id, json.dumps(conf), str(outcome_file)]
    print(f"running {dag_id} (Airflow log: {log_file})", flush=True)
    with log_file.open("w") as log:
        child = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            text = line.rstrip()
            if match := _TASK_END.search(text):
                print(f"  task {match.group(1)} ended", flush=True)
        child.wait()
    if child.returncode != 0 or not outcome_file.exists():
        raise SystemExit(f"{dag_id} could not run (exit {child.returncode}); see {log_file}")
    outcome = json.loads(outcome_file.read_text())
    outcome["log_file"] = str(log_file)
    outcome["summary"] = results.read_summary(settings.run_root(dag_id, outcome["run_id"]))
    return outcome


def run(settings: Settings, purpose: str, conf: dict[str, Any], rows: int, seed: int) -> dict[str, Any]:
    """Prepare the embedded default and run one model's DAG; its outcome, with the summary its last task wrote."""
    from orchestration.models import dag_id

    env = prepare_airflow(settings)
    ensure_dataset(settings, rows, seed)
    return run_dag(settings, env, dag_id(settings.pipeline.registry.model_name, purpose), conf)


def _report(purpose: str, outcome: dict[str, Any]) -> bool:
    """Print a run's summary (failed runs have one too) and its end; whether it succeeded."""
    from orchestration import deploy, monitor, retrain
    from orchestration.contracts import SUMMARY_TASK

    formatters = {"retrain": retrain, "deploy": deploy, "monitor": monitor}
    print()
    if outcome["summary"]:
        print(formatters[purpose].format_summary(outcome["summary"]))
    print(f"\n{outcome['dag_id']} run {outcome['run_id']}: {outcome['state']} in {outcome['seconds']:.0f} s")
    # The summary task fails on purpose after a failure (a run is judged by its last task): not worth naming.
    failed = [task for task, info in outcome["tasks"].items() if info["state"] == "failed" and task != SUMMARY_TASK]
    if failed:
        print(f"failed: {', '.join(failed)}; the task logs are in {outcome['log_file']}")
    return outcome["state"] == "success"


def local_server(settings: Settings) -> Any:
    """The local model server that ``ml_deploy`` runs for these settings' state folder."""
    from mlsteps.deploy.local import LocalTarget

    pipeline = settings.pipeline
    return LocalTarget.from_config(
        pipeline.registry.model_name, pipeline.serving, settings.serving_state_dir, settings.prediction_store
    )


def _chosen_models(names: list[str] | None) -> list[Settings]:
    """The settings of the models named (default: every valid model); a broken config is reported, not run.

    Raises:
        SystemExit: a named model has no valid config.
    """
    from orchestration.models import get_models, valid_models

    for entry in get_models():
        if entry.error:
            print(f"skipping {entry.config_path.name}: {entry.error}", flush=True)
    models = {settings.pipeline.registry.model_name: settings for settings in valid_models()}
    unknown = sorted(set(names or []) - set(models))
    if unknown:
        raise SystemExit(f"no valid model config names {unknown}; the models are {sorted(models)}")
    return [models[name] for name in names] if names else list(models.values())


def main(argv: list[str] | None = None) -> int:
    """CLI: ``run`` each model's DAG on the embedded default and print its summary, or start the Airflow services."""
    parser = argparse.ArgumentParser(prog="python -m orchestration.embedded", description=__doc__.split("\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="run a DAG of each model on the embedded default and print its summary")
    run_cmd.add_argument("--purpose", default="retrain", choices=["retrain", "monitor", "deploy"], help="which DAG")
    run_cmd.add_argument("--model", action="append", help="a model's registered name, repeatable; default: every model")
    run_cmd.add_argument("--conf", default="{}", help="run params as JSON, e.g. '{\"epochs\": 5}'")
    run_cmd.add_argument("--rows", type=int, default=20000, help="rows of the built-in dataset if it is generated")
    run_cmd.add_argument("--seed", type=int, default=7, help="seed of the built-in dataset if it is generated")
    run_cmd.add_argument(
        "--deploy",
        action="store_true",
        help="when a retrain run promotes, run the model's deploy DAG next, as the scheduler does on its promotion",
    )
    sub.add_parser("stop-server", help="stop the local model servers that the deploy DAGs started")
    child = sub.add_parser("_dag-test", help=argparse.SUPPRESS)
    child.add_argument("dag_id")
    child.add_argument("conf")
    child.add_argument("outcome_file", type=Path)
    args = parser.parse_args(argv)

    if args.command == "stop-server":
        for settings in _chosen_models(None):
            local_server(settings).stop()
        return 0
    if args.command == "_dag-test":
        _dag_test(args.dag_id, json.loads(args.conf), args.outcome_file)
        return 0
    succeeded, serving = True, []
    for settings in _chosen_models(args.model):
        outcome = run(settings, args.purpose, json.loads(args.conf), args.rows, args.seed)
        succeeded = _report(args.purpose, outcome) and succeeded
        promoted = outcome["tasks"].get("promote", {}).get("state") == "success"
        if args.deploy and args.purpose == "retrain" and promoted:
            # dag.test() does not follow Assets: run what the scheduler would start on the model's promotion
            succeeded = _report("deploy", run(settings, "deploy", {}, args.rows, args.seed)) and succeeded
            serving.append(f"{settings.pipeline.registry.model_name} at {local_server(settings).endpoint()}")
    if serving:
        print("\nserving: " + "; ".join(serving) + " (curl examples in the README); stop them: make stop-server")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
