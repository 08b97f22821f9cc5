"""The closed loop on the embedded default, through the real Airflow services (scheduler, DAG processor, API
server), so that what starts retraining is the scheduler reacting to asset events:

1. the scheduler runs ``ml_retrain`` for its latest cron tick: the first champion;
2. a stream of customers like the training data is scored and logged; ``ml_model_monitor`` checks its window:
   nothing happens;
3. **input drift**: two hours of customers whose features moved are scored (their labels not in yet); the monitor
   sees drift in the first window (one is not enough: hysteresis) and again in the second: it emits
   ``monitor_alert`` (signal ``drift``); the scheduler starts ``ml_retrain``, which trains on the latest export (now
   holding the new customers), records why on the MLflow run and the model version, and promotes the new champion;
   the promotion (``model_promoted``) starts ``ml_deploy``, which switches the local model server to it after its
   smoke test;
4. **concept drift**: customers like the new champion's training data, but whose churn follows another
   relationship, are scored and their labels arrive; input drift stays quiet, realized performance falls below the
   holdout's band: ``monitor_alert`` (signal ``realized_performance``), retraining on the latest export, redeploy;
5. **new data**: a ``training_data`` event for the export the champion was trained on stops ``ml_retrain`` at
   ``data_check`` (``unchanged``: duplicate notifications are harmless); a new export lands and its event, posted
   to Airflow's REST API as a producer outside Airflow would, starts ``ml_retrain`` on it.

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
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from mlsteps import results
from orchestration import services
from orchestration.embedded import local_server, prepare_airflow
from orchestration.models import DEFAULT_MODELS_DIR, MODELS_DIR_ENV_VAR, dag_id, model_settings
from orchestration.settings import PROJECT_ROOT, Settings

CHURN, TIERS = "churn-classifier", "tier-classifier"
RETRAIN, MONITOR, DEPLOY = (dag_id(CHURN, purpose) for purpose in ("retrain", "monitor", "deploy"))
RUN_TIMEOUT_SECONDS = 900
FINISHED = ("success", "failed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loop_models(state_dir: Path, epochs: int, min_rows: int) -> Path:
    """The project's two built-in models, made quick: few epochs, small windows, no cooldown, labels and datasets in
    the loop's state, a free port each. The tiers model runs beside churn to show that one model's alerts retrain
    that model only."""
    folder = state_dir / "models"
    folder.mkdir(parents=True)
    for name in ("churn", "tiers"):
        overrides = {
            "extends": str(DEFAULT_MODELS_DIR / f"{name}.yaml"),
            "training": {"epochs": epochs, **({"candidates": ["gbdt"]} if name == "tiers" else {})},
            "monitoring": {
                "min_rows": min_rows,
                "cooldown_hours": 0,
                "performance": {"labels": {"uri": str(state_dir / "labels" / name)}, "min_labelled_rows": min_rows},
            },
            "serving": {"local": {"port": _free_port()}},
            "runtime": {"dataset_uri": str(state_dir / "datasets" / f"{name}-latest.parquet")},
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    return folder


# Airflow tuned for a loop compressed into minutes: DAGs run unpaused, the scheduler and the processor react quickly.
LOOP_TUNING = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
}


class Services:
    """The Airflow services (``orchestration.services``) on the loop's state and free ports, stopped as a whole."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        port, mlflow_port = _free_port(), _free_port()
        self.running = services.Running(services.DEFAULT_HOST, port, mlflow_port, {}, "")
        self.env = {**services.services_env(settings, services.DEFAULT_HOST, port, mlflow_port), **LOOP_TUNING}

    def __enter__(self) -> Services:
        running = self.running
        self.running = services.start(self.settings, running.host, running.port, running.mlflow_port, LOOP_TUNING)
        return self

    def __exit__(self, *exc: object) -> None:
        services.stop(self.settings)

    def airflow(self, *args: str) -> str:
        """Run an ``airflow`` CLI command against the same database; its stdout."""
        done = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the REST API (``/api/v2/...``) as the admin user, as a producer outside Airflow would."""
        login = {"username": services.ADMIN_USER, "password": services.admin_password(self.settings)}
        token = _http("POST", f"{self.running.url}/auth/token", login)["access_token"]
        return _http(method, f"{self.running.url}{path}", body, token)


def _http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


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


def _make_dataset(settings: Settings, uri: str, rows: int, seed: int, drift: float = 0.0, concept: float = 0.0) -> None:
    _step(settings, "make-dataset", "--output-uri", uri, "--rows", str(rows), "--seed", str(seed),
          "--task", settings.pipeline.dataset.target.task,
          "--covariate-drift", str(drift), "--concept-drift", str(concept))  # fmt: skip


def _stream(
    settings: Settings,
    name: str,
    rows: int,
    seed: int,
    hour: datetime,
    drift: float,
    concept: float = 0.0,
    labelled: bool = True,
) -> None:
    """Score ``rows`` new customers with the champion and log them in the given hour; with ``labelled``, their labels
    arrive at once (the loop's ``label_delay_hours`` is 0) as one Parquet file in the labels folder."""
    data = settings.state_dir / "streams" / f"{name}.parquet"
    _make_dataset(settings, str(data), rows, seed, drift, concept)
    run_root = str(settings.state_dir / "streams" / name)
    scored_at = (hour + timedelta(minutes=30)).isoformat()
    _step(settings, "score", "--run-root", run_root, "--input-uri", str(data), "--prediction-store",
          settings.prediction_store, "--scored-at", scored_at)  # fmt: skip
    kind = "drifted " if drift else "concept-drifted " if concept else ""
    if not labelled:
        print(f"scored {rows} {kind}customers logged at {scored_at}; their labels have not arrived", flush=True)
        return
    import pandas as pd

    dataset = settings.pipeline.dataset
    labels = pd.read_parquet(data, columns=[dataset.id_column, dataset.target.name])
    labels_folder = Path(settings.pipeline.monitoring.performance.labels.uri)
    labels_folder.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(labels_folder / f"{name}.parquet", index=False)
    print(f"scored {rows} {kind}customers logged at {scored_at}; their labels arrived", flush=True)


def _check(airflow: Services, settings: Settings, window_end: datetime) -> dict[str, Any]:
    """Trigger ml_model_monitor for the window ending at ``window_end``; what it measured and decided."""
    from orchestration.monitor import read_decision

    run_id = f"loop__{window_end:%Y%m%dT%H}"
    conf = json.dumps({"window_end": window_end.isoformat()})
    airflow.airflow("dags", "trigger", MONITOR, "-r", run_id, "-c", conf)
    run = _wait_for_run(MONITOR, run_id=run_id)
    run_root = settings.run_root(MONITOR, run_id)
    drift = results.read_result(run_root, "drift")
    realized = (results.optional_result(run_root, "performance") or {}).get("realized") or {}
    decision = read_decision(run_root) or {}
    outcome = {
        "run_id": run_id,
        "state": str(run.state),
        "window_end": drift["window"]["end"],
        "drift_detected": drift["drift_detected"],
        "drifted_features": drift["drifted_features"],
        "realized": {key: realized.get(key) for key in ("status", "value", "lower", "upper", "drop", "rows")},
        "action": decision.get("action"),
        "signals": decision.get("signals", []),
        "alerted": _task_states(MONITOR, run_id).get("alert") == "success",
        "report_html_uri": decision.get("report_html_uri"),
    }
    verdict = f"monitor_alert ({', '.join(outcome['signals'])})" if outcome["alerted"] else "no retraining"
    print(
        f"monitor window ending {outcome['window_end']}: drift={drift['drift_detected']}, realized "
        f"{realized.get('metric')}={realized.get('value')} -> {decision.get('action')}: {verdict}",
        flush=True,
    )
    return outcome


def _asset_events(name: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == name)
            .order_by(AssetEvent.id)
            .all()
        )
        return [{"extra": dict(row.extra or {}), "source_run_id": row.source_run_id} for row in rows]


def _announce_new_data(airflow: Services, settings: Settings, uri: str) -> None:
    """Post a ``training_data`` asset event, as an export job outside Airflow does when it has written new data."""
    from orchestration.assets import model_assets

    name = model_assets(settings).training_data.name
    (asset,) = airflow.api("GET", f"/api/v2/assets?name_pattern={name}")["assets"]
    airflow.api("POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": {"uri": uri, "producer": "loop"}})
    print(f"posted a training_data event for {uri}", flush=True)


def _retrain_after(settings: Settings, after: int, what: str) -> tuple[Any, dict[str, Any]]:
    """The asset-triggered ml_retrain run after database id ``after``, with its summary."""
    run = _wait_for_run(RETRAIN, run_type="asset_triggered", after=after)
    summary = results.read_summary(settings.run_root(RETRAIN, run.run_id)) or {}
    print(f"ml_retrain {run.run_id} ({what}): {run.state}, outcome {summary.get('outcome')}", flush=True)
    return run, {
        "run_id": run.run_id,
        "state": str(run.state),
        "type": str(run.run_type),
        "outcome": summary.get("outcome"),
        "message": summary.get("message"),
        "registered_version": summary.get("registered_version"),
    }


def run_loop(state_dir: Path, rows: int, epochs: int, stream_rows: int) -> dict[str, Any]:
    """Run the closed loop (see the module docstring) and return what happened at each stage."""
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    os.environ.update(
        {
            "ML_STATE_DIR": str(state_dir),
            MODELS_DIR_ENV_VAR: str(_loop_models(state_dir, epochs, min_rows=stream_rows // 2)),
        }
    )
    settings, tiers = model_settings(CHURN), model_settings(TIERS)
    os.environ.update(prepare_airflow(settings))
    _make_dataset(settings, settings.dataset_uri, rows, seed=7)
    _make_dataset(tiers, tiers.dataset_uri, rows, seed=7)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    outcome: dict[str, Any] = {"state_dir": str(state_dir)}
    with Services(settings) as airflow:
        print(f"Airflow started (logs: {airflow.running.logs}); waiting for ml_retrain's scheduled run", flush=True)
        champion_run = _wait_for_run(RETRAIN, run_type="scheduled")
        outcome["champion_run"] = {"run_id": champion_run.run_id, "state": str(champion_run.state)}
        print(f"ml_retrain {champion_run.run_id}: {champion_run.state} (the first champion)", flush=True)
        try:
            _stream(settings, "steady", stream_rows, 101, hour - timedelta(hours=9), drift=0.0)
            outcome["checks"] = [_check(airflow, settings, hour - timedelta(hours=8))]

            # Input drift, before any label of the new customers arrived. The latest export holds them, with their
            # labels: what retraining reads.
            _make_dataset(settings, settings.dataset_uri, rows, seed=8, drift=1.0)
            for offset, seed in ((8, 102), (7, 103)):
                hour_logged = hour - timedelta(hours=offset)
                _stream(settings, f"drifted-{seed}", stream_rows, seed, hour_logged, drift=1.0, labelled=False)
                outcome["checks"].append(_check(airflow, settings, hour - timedelta(hours=offset - 1)))
            retrain, outcome["retrain_run"] = _retrain_after(settings, champion_run.id, "input drift")
            outcome["redeploy"] = _follow_redeploy(settings, after=retrain.id)

            # Concept drift: the same customers as the champion's training data, churning for other reasons.
            _make_dataset(settings, settings.dataset_uri, rows, seed=9, drift=1.0, concept=1.0)
            _stream(settings, "concept-104", stream_rows, 104, hour - timedelta(hours=5), drift=1.0, concept=1.0)
            outcome["concept_checks"] = [_check(airflow, settings, hour - timedelta(hours=4))]
            concept, outcome["concept_retrain_run"] = _retrain_after(settings, retrain.id, "concept drift")
            outcome["concept_redeploy"] = _follow_redeploy(settings, after=concept.id)

            # New data: a duplicate notification for the champion's own data, then a new export.
            _announce_new_data(airflow, settings, settings.dataset_uri)
            duplicate, outcome["duplicate_data_run"] = _retrain_after(settings, concept.id, "duplicate event")
            _make_dataset(settings, settings.dataset_uri, rows, seed=10, drift=1.0, concept=1.0)
            _announce_new_data(airflow, settings, settings.dataset_uri)
            fresh, outcome["new_data_run"] = _retrain_after(settings, duplicate.id, "new data")
            if outcome["new_data_run"]["outcome"] == "promoted":
                _follow_redeploy(settings, after=fresh.id)
        finally:
            for model in (settings, tiers):
                local_server(model).stop()

    from orchestration.assets import model_assets

    outcome["monitor_alerts"] = _asset_events(model_assets(settings).alert.name)
    outcome["tier_retrain_runs"] = [str(run.run_type) for run in _dag_runs(dag_id(TIERS, "retrain"))]
    outcome["retrain_summary"] = results.read_summary(settings.run_root(RETRAIN, retrain.run_id))
    outcome["model_version_tags"] = _version_tags(settings)
    return outcome


def _follow_redeploy(settings: Settings, after: int) -> dict[str, Any]:
    """The ``ml_deploy`` run that the retrained champion's promotion started, and the version the server serves."""
    deploy = _wait_for_run(DEPLOY, run_type="asset_triggered", after=after)
    from mlsteps import results

    result = results.optional_result(settings.run_root(DEPLOY, deploy.run_id), "deploy")
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
        why = tags.get("trigger", "?") + (f": {tags['trigger_reason']}" if tags.get("trigger_reason") else "")
        print(f"  v{version} aliases [{tags['aliases']}] trained because: {why}")
    for stage in ("redeploy", "concept_redeploy"):
        redeploy = outcome[stage]
        print(f"{stage}: {redeploy['state']}, the model server answered with v{redeploy['served_version']}")
    for stage in ("duplicate_data_run", "new_data_run"):
        run = outcome[stage]
        print(f"{stage}: {run['outcome']}{': ' + run['message'] if run.get('message') else ''}")
    runs = [outcome[key] for key in ("retrain_run", "concept_retrain_run", "redeploy", "concept_redeploy")]
    return 0 if all(run["state"] == "success" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
