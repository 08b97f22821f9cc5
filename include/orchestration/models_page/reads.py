"""What the models page shows of one model, read from the stores the loop already writes; nothing here writes.

- **Registry** (MLflow): the ``champion`` and ``challenger`` versions with their tags (family, trigger, promotion)
  and the holdout metrics that ``evaluate`` logs on their training runs (``holdout_<metric>``); the alias history
  (``mlsteps.registry.alias_history``: who moved ``champion``, from which version to which, why, when).
- **Run folders** (``<artifact root>/runs/<model>.<purpose>/<run>/summary.json``, written by every DAG's last task):
  recent training runs (outcome, trigger, gate, reports), deploys and rollbacks, monitor decisions.
- **Monitor state** (``<artifact root>/monitor/<model>/state.json``): drift and performance of the last windows
  (``orchestration.monitor.KEPT_WINDOWS``), the series of the page's charts.
- **Serving**: the newest deploy that decided what serves (its ``deploy`` result), and where: the local server's
  record (``<state>/serving/<model>/server.json``) or the model's Kubernetes Service.

What a read costs does not grow with a model's age: five registry calls and two run lookups, one listing of each
DAG's run folder (names only: the run ids order them), the newest ``RUNS_SHOWN`` summaries (read concurrently, as
S3 objects would be) and one state file. ``benchmarks/models_page.py`` measures it against the naive reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlsteps import registry, results
from mlsteps.data import storage
from mlsteps.deploy import ROLLBACK_REASON_PREFIX
from mlsteps.deploy.local import STATE_FILE as LOCAL_SERVER_FILE
from orchestration.contracts import DEPLOY_TASK
from orchestration.models import dag_id
from orchestration.settings import Settings

RUNS_SHOWN = 20  # training runs and deploys listed per model
MONITOR_RUNS_SHOWN = 24  # monitor decisions listed per model (a day of hourly checks)
READ_THREADS = 8  # summaries read at once: S3 answers each GET in tens of milliseconds
# The deploy step's outcomes, and which version serves after each (orchestration.deploy.ROLLBACK_OUTCOMES names the
# failed ones; a test keeps the two in step).
SERVING_OUTCOMES = ("deployed", "unchanged")
ROLLBACK_OUTCOMES = ("rolled_back", "rollback_failed")
# The reports a run's page links to, by name: where each lives in its run folder. Served by the page's app, only
# for the runs of the model's own DAGs, and only these files.
REPORTS = {
    "validation": "validate/report.html",
    "evaluation": "evaluate/report.html",
    "evaluation_json": "evaluate/report.json",
    "monitor": "monitor/report.html",
    "drift": "drift/report.html",
    "drift_json": "drift/report.json",
    "performance_json": "performance/report.json",
}
RUN_FOLDER = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # what results.safe_name makes of a run id
# Airflow's generated run ids end in the run's time: manual__2026-11-30T12:39:31.611295+00:00, made a folder name by
# results.safe_name (manual__2026-11-30T12-39-31.611295-00-00). Folders of custom run ids order by their time on disk.
_RUN_TIME = re.compile(r"__(\d{4}-\d{2}-\d{2})T(\d{2})[-:](\d{2})[-:](\d{2})(\.\d+)?")


@dataclass(frozen=True)
class Links:
    """Where the page's links point: the page's own routes, the Airflow UI and REST API, the MLflow UI."""

    page: str = ""  # the page's mount point, e.g. /ml-models
    airflow: str = ""  # Airflow's base path ([api] base_url), "" at the root
    mlflow: str | None = None  # the MLflow UI; None when the tracking store has none (SQLite)

    @classmethod
    def for_tracking_uri(cls, tracking_uri: str, page: str = "", airflow: str = "") -> Links:
        """Links with the MLflow UI at the tracking server, when it is one (http or https)."""
        mlflow = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None
        return cls(page=page.rstrip("/"), airflow=airflow.rstrip("/"), mlflow=mlflow)

    def model(self, model_name: str) -> str:
        """The model's page."""
        return f"{self.page}/{quote(model_name)}"

    def report(self, model_name: str, purpose: str, folder: str, name: str) -> str:
        """One report of one run, served by the page's app."""
        return f"{self.page}/{quote(model_name)}/runs/{purpose}/{quote(folder)}/{name}"

    def run_check(self, model_name: str, purpose: str) -> str:
        """The page's own check of a run's params (``prechecks``), asked before the run is posted to Airflow."""
        return f"{self.page}/api/models/{quote(model_name)}/checks/{purpose}"

    def dag(self, dag: str) -> str:
        """The DAG's page in the Airflow UI (its Trigger button opens the form with every param)."""
        return f"{self.airflow}/dags/{quote(dag, safe='')}"

    def dag_run(self, dag: str, run_id: str) -> str:
        """One DAG run in the Airflow UI."""
        return f"{self.dag(dag)}/runs/{quote(run_id, safe='')}"

    def trigger(self, dag: str) -> str:
        """Airflow's REST endpoint that triggers the DAG (``POST``): Airflow validates the params and permissions."""
        return f"{self.airflow}/api/v2/dags/{quote(dag, safe='')}/dagRuns"

    def mlflow_run(self, run_id: str | None) -> str | None:
        """The training run in the MLflow UI."""
        return f"{self.mlflow}/#/runs/{run_id}" if self.mlflow and run_id else None

    def mlflow_version(self, model_name: str, version: int) -> str | None:
        """The model version in the MLflow UI."""
        return f"{self.mlflow}/#/models/{quote(model_name, safe='')}/versions/{version}" if self.mlflow else None


@dataclass(frozen=True)
class RunFolder:
    """One DAG run's folder: its name (the run id made safe), URI and when the run started, if known."""

    name: str
    uri: str
    at: datetime | None


def run_time(run_id: str) -> datetime | None:
    """When a run started, from an Airflow-generated run id or its folder name; None for a custom run id."""
    match = _RUN_TIME.search(run_id)
    if not match:
        return None
    day, hour, minute, second, fraction = match.groups()
    return datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}{fraction or ''}").replace(tzinfo=UTC)


def _local_folders(root: Path) -> list[tuple[str, datetime | None]]:
    if not root.is_dir():
        return []
    with os.scandir(root) as entries:
        folders = [entry for entry in entries if entry.is_dir() and RUN_FOLDER.match(entry.name)]
    found = []
    for entry in folders:
        at = run_time(entry.name) or datetime.fromtimestamp(entry.stat().st_mtime, UTC)
        found.append((entry.name, at))
    return found


def _s3_folders(prefix: str) -> list[tuple[str, datetime | None]]:
    """The run folders under an S3 prefix: one listing with a delimiter, so no file inside a run is listed."""
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    key = key.rstrip("/") + "/"
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/")
    names = [common["Prefix"][len(key) :].rstrip("/") for page in pages for common in page.get("CommonPrefixes", [])]
    return [(name, run_time(name)) for name in names if RUN_FOLDER.match(name)]


def run_folders(artifact_root: str, dag: str) -> list[RunFolder]:
    """Every run folder of a DAG, newest first (folders of custom run ids on S3, which carry no time, last)."""
    dag_root = storage.join(artifact_root, "runs", results.safe_name(dag))
    found = _s3_folders(dag_root) if storage.is_s3(dag_root) else _local_folders(storage.local_path(dag_root))
    oldest = datetime.min.replace(tzinfo=UTC)
    found.sort(key=lambda item: (item[1] or oldest, item[0]), reverse=True)
    return [RunFolder(name, storage.join(dag_root, name), at) for name, at in found]


def _json_or_none(uri: str | None) -> Any | None:
    if not uri:
        return None
    try:
        return storage.read_json(uri)
    except FileNotFoundError:
        return None


def read_json_many(uris: Iterable[str | None]) -> list[Any | None]:
    """JSON documents read concurrently, in the order given; None for each that does not exist (yet) or is None."""
    uris = list(uris)
    if len(uris) <= 1:
        return [_json_or_none(uri) for uri in uris]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(uris))) as pool:
        return list(pool.map(_json_or_none, uris))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _report_links(uris: Iterable[str | None], links: Links, model: str, purpose: str, folder: str) -> dict[str, str]:
    """The page's link for each report a summary names (by the report's place in the run folder)."""
    named = [uri for uri in uris if uri]
    return {
        name: links.report(model, purpose, folder, name)
        for name, relative in REPORTS.items()
        if any(uri.endswith("/" + relative) for uri in named)
    }


# --- registry -------------------------------------------------------------------------------------------------


def _holdout_metrics(run: Any | None) -> dict[str, float]:
    """The holdout metrics ``evaluate`` logged on a training run (``holdout_<metric>``), by metric name."""
    if run is None:
        return {}
    prefix = "holdout_"
    return {key[len(prefix) :]: value for key, value in sorted(run.data.metrics.items()) if key.startswith(prefix)}


def version_view(client: Any, version: Any, links: Links) -> dict[str, Any]:
    """One model version as the page shows it: tags, holdout metrics and links.

    Args:
        client: an MLflow client.
        version: the ``ModelVersion``.
        links: where links point.

    Returns:
        The version's number, aliases, creation time, lineage and promotion tags, holdout metrics and links.
    """
    from mlflow.exceptions import MlflowException

    tags = dict(version.tags)
    run_id = version.run_id or tags.get("mlflow_run_id")
    run = None
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:  # a deleted run leaves the version without its metrics, not the page broken
            if not registry.is_missing(exc):
                raise
    number = int(version.version)
    keep = (
        "family",
        "task",
        "snapshot_id",
        "dataset",
        "primary_metric",
        "gate_passed",
        "trigger",
        "trigger_reason",
        "monitor_report",
        "drifted_features",
        "promoted_at",
        "promoted_by",
        "previous_champion",
        "forced",
        "code_version",
    )
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC) if version.creation_timestamp else None
    return {
        "version": number,
        "aliases": sorted(version.aliases),
        "created_at": _iso(created),
        "run_id": run_id,
        "tags": {key: tags[key] for key in keep if key in tags},
        "metrics": _holdout_metrics(run),
        "links": {"mlflow_run": links.mlflow_run(run_id), "mlflow_version": links.mlflow_version(version.name, number)},
    }


def _event_kind(reason: str) -> str:
    if reason.startswith(ROLLBACK_REASON_PREFIX):
        return "rollback"
    return "promote" if reason.startswith("promote") else "other"


def alias_events(model_name: str, events: list[registry.AliasEvent], links: Links) -> list[dict[str, Any]]:
    """The alias history, newest first: from which version to which, who (with a link to the DAG run), why, when."""
    shown = []
    for event in reversed(events):
        kind = _event_kind(event.reason)
        purpose = {"promote": "retrain", "rollback": "deploy"}.get(kind)
        by_run = purpose is not None and event.actor != "cli"
        actor_link = links.dag_run(dag_id(model_name, purpose), event.actor) if by_run else None
        shown.append(
            {
                "alias": event.alias,
                "kind": kind,
                "from_version": event.from_version,
                "to_version": event.to_version,
                "actor": event.actor,
                "actor_link": actor_link,
                "reason": event.reason,
                "at": _iso(event.at),
            }
        )
    return shown


def registry_view(client: Any, model_name: str, links: Links) -> dict[str, Any]:
    """The model's ``champion`` and ``challenger`` and the history of ``champion``; both None before registration."""
    champion = registry.alias_version(client, model_name, registry.CHAMPION)
    challenger = registry.alias_version(client, model_name, registry.CHALLENGER)
    if challenger is not None and champion is not None and challenger.version == champion.version:
        challenger_view = None  # the challenger was promoted: it is the champion, shown once
    else:
        challenger_view = challenger and version_view(client, challenger, links)
    return {
        "champion": champion and version_view(client, champion, links),
        "challenger": challenger_view,
        "challenger_is_champion": challenger is not None and challenger_view is None,
        "alias_history": alias_events(model_name, registry.alias_history(client, model_name, registry.CHAMPION), links),
    }


# --- runs -----------------------------------------------------------------------------------------------------


def _newest(settings: Settings, purpose: str, count: int) -> tuple[int, list[tuple[RunFolder, dict[str, Any] | None]]]:
    """How many runs one of the model's DAGs has, and the newest with their summaries (None while a run has not
    ended)."""
    folders = run_folders(settings.artifact_root, dag_id(settings.pipeline.registry.model_name, purpose))
    summaries = read_json_many(results.summary_uri(folder.uri) for folder in folders[:count])
    return len(folders), list(zip(folders[:count], summaries, strict=True))


def _run_common(folder: RunFolder, summary: dict[str, Any] | None, dag: str, links: Links) -> dict[str, Any]:
    run_id = (summary or {}).get("run_id")
    return {
        "run_id": run_id or folder.name,
        "folder": folder.name,
        "at": _iso((run_id and run_time(run_id)) or folder.at),
        "outcome": (summary or {}).get("outcome"),  # None: still running, or stopped before its summary
        "failed_task": (summary or {}).get("failed_task"),
        "message": (summary or {}).get("message"),
        "links": {"airflow_run": links.dag_run(dag, run_id) if run_id else None},
    }


def training_runs(settings: Settings, links: Links, count: int = RUNS_SHOWN) -> list[dict[str, Any]]:
    """The model's newest retrain runs: outcome, what started it, the gate, the version registered, the reports."""
    model = settings.pipeline.registry.model_name
    dag = dag_id(model, "retrain")
    _, newest = _newest(settings, "retrain", count)
    # The challenger's MLflow run is in the evaluate result, not the summary: read those too, for the links.
    evaluations = read_json_many(
        results.result_uri(folder.uri, "evaluate") if summary and summary.get("challenger_metrics") else None
        for folder, summary in newest
    )
    shown = []
    for (folder, summary), evaluation in zip(newest, evaluations, strict=True):
        run = _run_common(folder, summary, dag, links)
        summary = summary or {}
        gate = summary.get("gate") or {}
        metric = gate.get("primary_metric")
        mlflow_run_id = ((evaluation or {}).get("challenger") or {}).get("mlflow_run_id")
        run.update(
            trigger=summary.get("trigger"),
            registered_version=summary.get("registered_version"),
            promoted=summary.get("promoted"),
            primary_metric=metric,
            challenger_value=(summary.get("challenger_metrics") or {}).get(metric),
            champion_value=(summary.get("champion_metrics") or {}).get(metric),
            champion_version=summary.get("champion_version_at_evaluation"),
            gate_passed=gate.get("passed"),
            gate_reasons=gate.get("reasons") or [],
            snapshot_id=summary.get("snapshot_id"),
            rows=summary.get("rows"),
            mlflow_run_id=mlflow_run_id,
        )
        run["links"].update(
            mlflow_run=links.mlflow_run(mlflow_run_id),
            **_report_links((summary.get("reports") or {}).values(), links, model, "retrain", folder.name),
        )
        shown.append(run)
    return shown


def deploys(settings: Settings, links: Links, count: int = RUNS_SHOWN) -> list[dict[str, Any]]:
    """The model's newest deploy runs: what was rolled out, what served before, the outcome and why."""
    dag = dag_id(settings.pipeline.registry.model_name, "deploy")
    shown = []
    for folder, summary in _newest(settings, "deploy", count)[1]:
        run = _run_common(folder, summary, dag, links)
        result = (summary or {}).get(DEPLOY_TASK) or {}
        smoke = result.get("smoke") or {}
        run.update(
            version=result.get("version"),
            previous_version=result.get("previous_version"),
            target=result.get("target"),
            strategy=result.get("strategy"),
            reason=result.get("reason"),
            deploy_outcome=result.get("outcome"),
            champion_moved=result.get("champion_moved"),
            smoke_p99_ms=smoke.get("p99_ms"),
        )
        shown.append(run)
    return shown


def _served_version(deploy_runs: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int | None]:
    """The newest deploy that decided what serves, and the version serving since (None: unknown)."""
    for run in deploy_runs:
        outcome = run["deploy_outcome"]
        if outcome in SERVING_OUTCOMES:
            return run, run["version"]
        if outcome == "rolled_back":
            return run, run["previous_version"]
        if outcome == "rollback_failed":
            return run, None
    return None, None


def _local_server(settings: Settings) -> dict[str, Any]:
    """The local model server's record (pid, port) and whether that process is a model server still running."""
    local = settings.pipeline.serving.local
    where = {"endpoint": f"http://{local.host}:{local.port}", "pid": None, "running": False}
    record = settings.serving_state_dir / LOCAL_SERVER_FILE
    if not record.is_file():  # the deploy step writes it when it starts the server; stop-server removes it
        return where
    server = storage.read_json(str(record))
    cmdline = Path(f"/proc/{server['pid']}/cmdline")
    try:
        os.kill(server["pid"], 0)
        running = not cmdline.exists() or b"mlsteps.serve" in cmdline.read_bytes()
    except (ProcessLookupError, PermissionError):
        running = False
    return {**where, "endpoint": f"http://{local.host}:{server['port']}", "pid": server["pid"], "running": running}


def serving_view(settings: Settings, deploy_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Which version serves and where, from the newest deploy that decided it (``deploy_runs`` newest first).

    The version is what that deploy left serving: the new version when it deployed (or it already served), the
    version before it when it rolled back, unknown when the rollback failed too.
    """
    model = settings.pipeline.registry.model_name
    decided, version = _served_version(deploy_runs)
    if decided is None:
        return {"version": None, "target": None, "since": None, "deploy_run_id": None, "note": "never deployed"}
    target = decided["target"]
    if target == "local":
        where = _local_server(settings)
    else:
        names = settings.pipeline.serving.kubernetes.for_model(model)
        where = {"endpoint": names.service_url, "deployment": f"{names.namespace}/{names.deployment}"}
    note = None
    if decided["deploy_outcome"] == "rollback_failed":
        note = f"unknown: the rollback failed too ({decided['reason']})"
    elif decided["deploy_outcome"] == "rolled_back":
        note = f"v{decided['version']} was rolled back: {decided['reason']}"
    return {
        "version": version,
        "target": target,
        "since": decided["at"],
        "deploy_run_id": decided["run_id"],
        "note": note,
        **where,
    }


# --- monitor --------------------------------------------------------------------------------------------------


def _performance_point(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry or entry.get("status") != "ok":
        return None
    keep = ("metric", "value", "expected", "lower", "upper", "rows", "fired")
    return {key: entry.get(key) for key in keep}


def monitor_series(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Drift and performance per window, oldest first, from the monitor's state (the windows it keeps)."""
    series = []
    for window in state.get("windows", []):
        drift = window.get("drift") or {}
        series.append(
            {
                "window_end": window["window_end"],
                "model_version": window.get("model_version"),
                "drift_status": drift.get("status"),
                "drifted_share": drift.get("drifted_share"),
                "drift_fired": bool(drift.get("fired")),
                "drifted_features": drift.get("drifted_features") or [],
                "realized": _performance_point(window.get("realized_performance")),
                "estimated": _performance_point(window.get("estimated_performance")),
            }
        )
    return series


def monitor_view(settings: Settings, links: Links, count: int = MONITOR_RUNS_SHOWN) -> dict[str, Any]:
    """The monitor's windows (the charts), its last alert and its newest decisions with their reports."""
    model = settings.pipeline.registry.model_name
    dag = dag_id(model, "monitor")
    state = _json_or_none(settings.monitor_state_uri) or {}
    runs = []
    total, newest = _newest(settings, "monitor", count)
    for folder, summary in newest:
        run = _run_common(folder, summary, dag, links)
        summary = summary or {}
        run.update(
            signals=summary.get("signals") or [],
            model_version=summary.get("model_version"),
            window=summary.get("window"),
            drifted_features=summary.get("drifted_features") or [],
        )
        run["links"].update(_report_links([summary.get("report_html_uri")], links, model, "monitor", folder.name))
        runs.append(run)
    last_alert = state.get("last_alert")
    return {
        "windows": monitor_series(state),
        "last_alert": last_alert
        and {key: last_alert.get(key) for key in ("window_end", "reason", "signals", "model_version")},
        "runs": runs,
        "runs_total": total,
    }


# --- the model ------------------------------------------------------------------------------------------------


def actions(settings: Settings, links: Links, registry_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a person may start from the page, each with its prefilled params (the DAGs' own param names).

    The page first asks its own check of what the params' schema cannot say (``prechecks``: the dataset exists, the
    version does), then posts the run to Airflow's REST API (``POST /api/v2/dags/{dag_id}/dagRuns``), so Airflow
    validates the params against the DAG's and checks the user's permission, exactly as for its own trigger form.
    """
    model = settings.pipeline.registry.model_name
    training = settings.pipeline.training
    retrain_conf = {
        "dataset_uri": settings.dataset_uri,
        "candidates": training.candidate_families,
        "force_promotion": False,
    }
    found = [
        {"name": "retrain", "label": "Retrain", "purpose": "retrain", "conf": retrain_conf},
        {
            "name": "deploy_champion",
            "label": "Deploy the champion",
            "purpose": "deploy",
            "conf": {"model": registry.CHAMPION, "strategy": "rolling", "require_approval": False},
        },
    ]
    # Going back by hand: the champion the last promotion replaced (never a version a rollback took back).
    current = (registry_state.get("champion") or {}).get("version")
    previous = next(
        (
            event["from_version"]
            for event in registry_state.get("alias_history", [])
            if event["kind"] == "promote" and event["from_version"] not in (None, current)
        ),
        None,
    )
    if previous is not None:  # it serves again; champion stays where it is (the next promotion deploys it)
        found.append(
            {
                "name": "deploy_previous",
                "label": f"Deploy v{previous} (the champion before)",
                "purpose": "deploy",
                "conf": {"model": str(previous), "strategy": "rolling", "require_approval": False},
            }
        )
    for action in found:
        action["dag_id"] = dag_id(model, action["purpose"])
        action["check"] = links.run_check(model, action["purpose"])
        action["endpoint"] = links.trigger(action["dag_id"])
        action["form"] = links.dag(action["dag_id"])
    return found


def model_overview(settings: Settings, client: Any, links: Links) -> dict[str, Any]:
    """Everything the page shows of one model.

    Args:
        settings: the model's settings (``orchestration.models``).
        client: an MLflow client of the deployment's tracking server.
        links: where links point.

    Returns:
        The model's name and DAGs, its registry state (champion, challenger, alias history), what serves and where,
        recent deploys, training runs and monitor decisions, the monitor's windows, and the runs one may start.
    """
    model = settings.pipeline.registry.model_name
    registry_state = registry_view(client, model, links)
    deploy_runs = deploys(settings, links)
    return {
        "model": model,
        "task": settings.pipeline.dataset.target.task,
        "primary_metric": settings.pipeline.primary_metric,
        "dags": {purpose: dag_id(model, purpose) for purpose in ("retrain", "monitor", "deploy")},
        "links": {
            "page": links.model(model),
            **{f"{purpose}_dag": links.dag(dag_id(model, purpose)) for purpose in ("retrain", "monitor", "deploy")},
        },
        **registry_state,
        "serving": serving_view(settings, deploy_runs),
        "deploys": deploy_runs,
        "training_runs": training_runs(settings, links),
        "monitor": monitor_view(settings, links),
        "actions": actions(settings, links, registry_state),
    }


def model_card(settings: Settings, client: Any, links: Links) -> dict[str, Any]:
    """One model's line on the index: champion, challenger, what serves, the last training run and monitor decision."""
    model = settings.pipeline.registry.model_name
    champion = registry.alias_version_number(client, model, registry.CHAMPION)
    challenger = registry.alias_version_number(client, model, registry.CHALLENGER)
    deploy_runs = deploys(settings, links, count=RUNS_SHOWN)
    last_training = training_runs(settings, links, count=1)
    last_monitor = monitor_view(settings, links, count=1)
    return {
        "model": model,
        "task": settings.pipeline.dataset.target.task,
        "champion": champion,
        "challenger": challenger if challenger != champion else None,
        "serving": serving_view(settings, deploy_runs),
        "last_training_run": last_training[0] if last_training else None,
        "last_monitor_run": last_monitor["runs"][0] if last_monitor["runs"] else None,
        "last_alert": last_monitor["last_alert"],
        "links": {"page": links.model(model)},
    }
