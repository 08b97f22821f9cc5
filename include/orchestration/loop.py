"""The closed loop on the embedded default, through the real Airflow services (scheduler, DAG processor, API
server), so that what starts retraining is the scheduler reacting to the ``drift_alert`` asset event:

1. the scheduler runs ``ml_retrain`` for its latest cron tick: the first champion;
2. a stream of customers like the training data is scored and logged; ``ml_drift_monitor`` checks its window:
   no drift, nothing happens;
3. two hours of customers whose features moved (covariate drift) are scored; the monitor sees drift in the first
   window (one is not enough: hysteresis) and again in the second: it emits ``drift_alert``;
4. the scheduler starts ``ml_retrain`` from the asset event; it trains on the latest export, which now holds the
   new customers, records the drift report on the MLflow run and the model version, and promotes the new champion;
5. the promotion (the ``model_promoted`` asset) starts ``ml_deploy``, which reloads the local model server with the
   new champion after its smoke test: the server the first champion's deploy started now serves the retrained model.

Hours are compressed into minutes: the streams are logged into past hours and each check is triggered with the
window it reads, and the loop's config sets ``monitoring.cooldown_hours`` to 0. Everything lives in its own state
folder (``.local/loop``), wiped at the start, and its model server on a free port is stopped at the end.
``python -m orchestration.loop``; ``make loop``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from mlsteps import results
from orchestration.embedded import local_server, prepare_airflow
from orchestration.settings import PROJECT_ROOT, Settings, load_settings

CONFIG = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"
RUN_TIMEOUT_SECONDS = 900
FINISHED = ("success", "failed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loop_config(state_dir: Path, epochs: int, min_rows: int) -> Path:
    """The project's pipeline config, made quick: few epochs, small windows, no cooldown."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["dataset"] = str(CONFIG.parent / raw["dataset"])
    raw["training"]["epochs"] = epochs
    raw["monitoring"] |= {"min_rows": min_rows, "cooldown_hours": 0}
    raw["serving"]["local"]["port"] = _free_port()
    path = state_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Services:
    """``airflow standalone`` on the loop's state, in its own process group, stopped as a whole."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        port = _free_port()
        self.env = {
            **env,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Services:
        log = self.log_file.open("w")
        self.process = subprocess.Popen(
            ["airflow", "standalone"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1)  # let the group's other members exit too

    def airflow(self, *args: str) -> str:
        """Run an ``airflow`` CLI command against the same database; its stdout."""
        done = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout


def _dag_runs(dag_id: str) -> list[Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id).all()
        session.expunge_all()
        return runs


def _wait_for_run(dag_id: str, run_type: str | None = None, run_id: str | None = None, after: int = 0) -> Any:
    """The first run of a DAG matching run type or run id (with a database id above ``after``) once it finished."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for run in _dag_runs(dag_id):
            if run.id <= after or (run_type and str(run.run_type) != run_type) or (run_id and run.run_id != run_id):
                continue
            if str(run.state) in FINISHED:
                return run
        time.sleep(2)
    raise TimeoutError(f"no finished {dag_id} run ({run_type or run_id}) within {RUN_TIMEOUT_SECONDS} s")


def _task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        return {ti.task_id: str(ti.state) for ti in rows}


def _step(settings: Settings, *args: str) -> None:
    """Run a steps CLI command with the environment the DAGs give their steps."""
    subprocess.run(
        [sys.executable, "-m", "mlsteps", *args],
        env={**os.environ, **settings.step_env()},
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _make_dataset(settings: Settings, uri: str, rows: int, seed: int, drift: float = 0.0) -> None:
    _step(settings, "make-dataset", "--output-uri", uri, "--rows", str(rows), "--seed", str(seed),
          "--covariate-drift", str(drift))  # fmt: skip


def _stream(settings: Settings, name: str, rows: int, seed: int, drift: float, hour: datetime) -> None:
    """Score ``rows`` new customers with the champion and log them in the given hour."""
    data = settings.state_dir / "streams" / f"{name}.parquet"
    _make_dataset(settings, str(data), rows, seed, drift)
    run_root = str(settings.state_dir / "streams" / name)
    scored_at = (hour + timedelta(minutes=30)).isoformat()
    _step(settings, "score", "--run-root", run_root, "--input-uri", str(data), "--prediction-store",
          settings.prediction_store, "--scored-at", scored_at)  # fmt: skip
    print(f"scored {rows} {'drifted ' if drift else ''}customers logged at {scored_at}", flush=True)


def _check(services: Services, settings: Settings, window_end: datetime) -> dict[str, Any]:
    """Trigger ml_drift_monitor for the window ending at ``window_end``; what it measured and decided."""
    from mlsteps import results

    run_id = f"loop__{window_end:%Y%m%dT%H}"
    conf = json.dumps({"window_end": window_end.isoformat()})
    services.airflow("dags", "trigger", "ml_drift_monitor", "-r", run_id, "-c", conf)
    run = _wait_for_run("ml_drift_monitor", run_id=run_id)
    drift = results.read_result(settings.run_root("ml_drift_monitor", run_id), "drift")
    states = _task_states("ml_drift_monitor", run_id)
    outcome = {
        "run_id": run_id,
        "state": str(run.state),
        "window_end": drift["window"]["end"],
        "drift_detected": drift["drift_detected"],
        "drifted_features": drift["drifted_features"],
        "alerted": states.get("alert") == "success",
    }
    verdict = "drift_alert emitted" if outcome["alerted"] else "no retraining"
    print(f"monitor window ending {outcome['window_end']}: drift={drift['drift_detected']} -> {verdict}", flush=True)
    return outcome


def _drift_alert_events() -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "drift_alert")
            .all()
        )
        return [{"extra": dict(row.extra or {}), "source_run_id": row.source_run_id} for row in rows]


def run_loop(state_dir: Path, rows: int, epochs: int, stream_rows: int) -> dict[str, Any]:
    """Run the closed loop (see the module docstring) and return what happened at each stage."""
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    os.environ.update(
        {
            "ML_STATE_DIR": str(state_dir),
            "MLSTEPS_CONFIG": str(_loop_config(state_dir, epochs, min_rows=stream_rows // 2)),
            "ML_DATASET_URI": str(state_dir / "datasets" / "churn-latest.parquet"),
        }
    )
    settings = load_settings()
    os.environ.update(prepare_airflow(settings))
    _make_dataset(settings, settings.dataset_uri, rows, seed=7)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    outcome: dict[str, Any] = {"state_dir": str(state_dir)}
    with Services(dict(os.environ), settings.state_dir / "logs" / "loop-airflow.log") as services:
        print(f"Airflow started (log: {services.log_file}); waiting for ml_retrain's scheduled run", flush=True)
        champion_run = _wait_for_run("ml_retrain", run_type="scheduled")
        outcome["champion_run"] = {"run_id": champion_run.run_id, "state": str(champion_run.state)}
        print(f"ml_retrain {champion_run.run_id}: {champion_run.state} (the first champion)", flush=True)

        _stream(settings, "steady", stream_rows, 101, drift=0.0, hour=hour - timedelta(hours=5))
        outcome["checks"] = [_check(services, settings, hour - timedelta(hours=4))]

        # The latest export now holds the new customers, with their labels: what the next retraining reads.
        _make_dataset(settings, settings.dataset_uri, rows, seed=8, drift=1.0)
        for offset, seed in ((4, 102), (3, 103)):
            _stream(settings, f"drifted-{seed}", stream_rows, seed, drift=1.0, hour=hour - timedelta(hours=offset))
            outcome["checks"].append(_check(services, settings, hour - timedelta(hours=offset - 1)))

        outcome["drift_alerts"] = _drift_alert_events()
        retrain = _wait_for_run("ml_retrain", run_type="asset_triggered", after=champion_run.id)
        outcome["retrain_run"] = {"run_id": retrain.run_id, "state": str(retrain.state), "type": str(retrain.run_type)}
        print(f"ml_retrain {retrain.run_id} ({retrain.run_type}): {retrain.state}", flush=True)
        try:
            outcome["redeploy"] = _follow_redeploy(settings, after=retrain.id)
        finally:
            local_server(settings).stop()

    outcome["retrain_summary"] = results.read_summary(settings.run_root("ml_retrain", retrain.run_id))
    outcome["model_version_tags"] = _version_tags(settings)
    return outcome


def _follow_redeploy(settings: Settings, after: int) -> dict[str, Any]:
    """The ``ml_deploy`` run that the retrained champion's promotion started, and the version the server serves."""
    deploy = _wait_for_run("ml_deploy", run_type="asset_triggered", after=after)
    from mlsteps import results

    result = results.optional_result(settings.run_root("ml_deploy", deploy.run_id), "deploy")
    served = local_server(settings).current_version()
    print(f"ml_deploy {deploy.run_id}: {deploy.state}; the local model server answers with v{served}", flush=True)
    return {"run_id": deploy.run_id, "state": str(deploy.state), "result": result, "served_version": served}


def _version_tags(settings: Settings) -> dict[str, dict[str, str]]:
    """Tags and aliases of every registered version, to show why each was trained and which one serves."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name = settings.pipeline.registry.model_name
    found = client.search_model_versions(f"name='{name}'")  # without aliases: read each version for them
    versions = [client.get_model_version(name, version.version) for version in found]
    return {version.version: {**version.tags, "aliases": ",".join(sorted(version.aliases))} for version in versions}


def main(argv: list[str] | None = None) -> int:
    """CLI of the closed loop; prints each stage and, at the end, the new champion and why it was trained."""
    parser = argparse.ArgumentParser(prog="python -m orchestration.loop", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of each training export")
    parser.add_argument("--stream-rows", type=int, default=2000, help="customers scored per hour")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of each ml_retrain run")
    parser.add_argument("--json", type=Path, help="also write the outcome here")
    args = parser.parse_args(argv)
    state_dir = Path(os.environ.get("ML_STATE_DIR", PROJECT_ROOT / ".local")).resolve() / "loop"
    outcome = run_loop(state_dir, args.rows, args.epochs, args.stream_rows)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2, default=str))
    if outcome["retrain_summary"]:
        from orchestration.retrain import format_summary

        print("\n" + format_summary(outcome["retrain_summary"]))
    print("\nmodel versions:")
    for version, tags in sorted(outcome["model_version_tags"].items(), key=lambda item: int(item[0])):
        why = tags.get("trigger", "?") + (f" ({tags['drift_report']})" if tags.get("drift_report") else "")
        print(f"  v{version} aliases [{tags['aliases']}] trained because: {why}")
    redeploy = outcome["redeploy"]
    print(
        f"ml_deploy after retraining: {redeploy['state']}, the model server answered with v{redeploy['served_version']}"
    )
    return 0 if outcome["retrain_run"]["state"] == "success" and redeploy["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
