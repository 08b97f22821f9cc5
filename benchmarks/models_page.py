"""Benchmark of the models page's reads: ours against the naive reads of the same state, side by side.

Builds, in a temporary folder, the state of one model that has lived a while: real MLflow on SQLite with ``--versions``
registered versions (each a training run with its holdout metrics, as ``evaluate`` logs them), ``champion`` moved by
``registry.move_alias`` at every third version (every fifth move a rollback), ``challenger`` on the last; one retrain
run per version and one deploy per promotion, their ``summary.json`` written by the DAGs' own summarizers; and
``--monitor-runs`` hourly monitor checks through the monitor's own ``record_decision`` (state, report and decision per
run) and summary. Then it times, warm (after one call), the median of ``--repeats`` calls of:

1. **ours**: ``reads.model_overview`` (five registry calls, two run lookups, one listing per DAG's runs, the newest
   summaries and the monitor's state file), and the page's app answering ``GET /api/models/<model>``, the HTML page
   and the index through HTTP (FastAPI's test client; Airflow's login replaced by a no-op, it is not what is timed);
2. **the anchor**, the naive reads of the same facts: every version (``search_model_versions``) with its run's
   metrics (``get_run`` each), the registered model's aliases and history, every run folder's ``summary.json`` (every
   file listed) and every monitor run's ``monitor/report.json`` read one by one.

It prints both with their ratio and the budget (the page answers within 1 s), and the first call of a fresh process
apart (the imports and MLflow's store start, which the app warms up when the API server starts), and writes everything
to ``benchmarks/results/models_page-<time>.json`` (or ``$BENCH_RESULTS_DIR``). ``--smoke`` runs every part on 5
versions and 30 monitor runs; its figures mean nothing.

Usage: ``python benchmarks/models_page.py [--versions 100] [--monitor-runs 1000] [--repeats 7] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from record import write_report

MODEL = "churn-classifier"
BUDGET_SECONDS = 1.0
START = datetime(2026, 1, 5, tzinfo=UTC)
SMOKE = {"versions": 5, "monitor_runs": 30, "repeats": 2}


# ---------------------------------------------------------------------------------------------------- the state
def _run_id(kind: str, hours: float) -> str:
    return f"{kind}__{(START + timedelta(hours=hours)).isoformat()}"


def register_version(
    client: Any, experiment_id: str, roc_auc: float, trigger: str = "scheduled", reason: str | None = None
) -> int:
    """A training run with holdout metrics (as evaluate logs them) registered as the next version (as register
    does); returns the version number."""
    from mlflow.entities import Metric

    run_id = client.create_run(experiment_id, tags={"trigger": trigger}).info.run_id
    metrics = {"roc_auc": roc_auc, "pr_auc": roc_auc - 0.35, "accuracy": roc_auc + 0.05, "log_loss": 0.36, "rows": 3000}
    client.log_batch(run_id, metrics=[Metric(f"holdout_{key}", value, 0, 0) for key, value in metrics.items()])
    client.set_terminated(run_id)
    tags = {"family": "mlp", "primary_metric": "roc_auc", "trigger": trigger, "trigger_reason": reason or trigger}
    return int(client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id, tags=tags).version)


def write_retrain_run(
    settings: Any,
    run_id: str,
    *,
    trigger: str = "scheduled",
    version: int | None = None,
    roc_auc: float | None = None,
    champion: int | None = None,
    promoted: bool = False,
    failed_task: str | None = None,
) -> None:
    """The step results of one retrain run as its steps leave them (with ``failed_task``'s failure record: the run
    stopped at validate), summarized by the retrain DAG's own ``summarize`` into summary.json. Evaluation, register
    and promote are there when ``roc_auc`` is given."""
    from mlsteps import results
    from mlsteps.data import storage
    from orchestration.models import dag_id
    from orchestration.retrain import summarize

    root = settings.run_root(dag_id(MODEL, "retrain"), run_id)
    results.write_result(root, "snapshot", {"snapshot_id": f"{version or 0:016x}", "rows": 20000})
    results.write_result(root, "data_check", {"proceed": True, "trigger": trigger, "message": None})
    validate_html = storage.join(root, "validate", "report.html")
    storage.write_text(validate_html, f"<html><body>validation of {run_id}</body></html>")
    statistics = {"evaluated": 69, "successful": 65 if failed_task else 69, "unsuccessful": 4 if failed_task else 0}
    validated = {"success": not failed_task, "statistics": statistics, "report_html_uri": validate_html}
    results.write_result(root, "validate", validated)
    if failed_task:
        message = "validate failed: snapshot 42aa7213c6654f1d failed 4 of 69 expectations"
        record = {"task_id": failed_task, "failed_at": START.isoformat(), "message": message, "exit_code": 2}
        storage.write_json(storage.join(root, "failures", f"{failed_task}.json"), record)
    if roc_auc is not None:
        reasons = [f"challenger roc_auc={roc_auc} {'>=' if promoted else '<'} champion roc_auc=0.78 - 0.01"]
        evaluated = {
            "challenger": {"family": "mlp", "metrics": {"roc_auc": roc_auc}, "mlflow_run_id": f"run-{version}"},
            "candidates": [{"family": "mlp", "metrics": {"roc_auc": roc_auc}}],
            "champion": champion and {"version": champion, "metrics": {"roc_auc": 0.78}},
            "gate": {"primary_metric": "roc_auc", "passed": promoted, "reasons": reasons},
            "report_uri": storage.join(root, "evaluate", "report.json"),
            "report_html_uri": storage.join(root, "evaluate", "report.html"),
        }
        storage.write_text(evaluated["report_html_uri"], "<html><body>evaluation</body></html>")
        results.write_result(root, "evaluate", evaluated)
        results.write_result(root, "register", {"model_name": MODEL, "version": version})
        if promoted:
            results.write_result(root, "promote", {"version": version})
    storage.write_json(results.summary_uri(root), summarize(root, run_id))


def write_deploy_run(settings: Any, run_id: str, version: int, previous: int | None, outcome: str) -> None:
    """The deploy step's result of one deploy run (``deployed`` or ``rolled_back``, with its failure record),
    summarized by the deploy DAG's own ``summarize``."""
    from mlsteps import results
    from mlsteps.data import storage
    from orchestration.deploy import summarize
    from orchestration.models import dag_id

    root = settings.run_root(dag_id(MODEL, "deploy"), run_id)
    reason = f"{MODEL} v{version} serves on local" if outcome == "deployed" else "smoke test failed: p99 900 ms"
    result = {
        "model_name": MODEL,
        "version": version,
        "previous_version": previous,
        "target": "local",
        "strategy": "rolling",
        "outcome": outcome,
        "reason": reason,
        "smoke": {"p99_ms": 2.5},
    }
    results.write_result(root, "deploy", result)
    if outcome == "rolled_back":
        record = {"task_id": "deploy", "failed_at": START.isoformat(), "message": reason, "exit_code": 2}
        storage.write_json(storage.join(root, "failures", "deploy.json"), record)
    storage.write_json(results.summary_uri(root), summarize(root, run_id))


def build_registry_and_runs(settings: Any, versions: int) -> dict[str, int]:
    """Versions, alias moves, retrain and deploy runs of the model; returns what was made."""
    from mlflow import MlflowClient

    from mlsteps import registry

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment_id = client.create_experiment("churn-retraining")
    client.create_registered_model(MODEL)
    champion, moves, deploys = None, 0, 0
    for number in range(1, versions + 1):
        hours = 24.0 * number
        roc_auc = 0.75 + 0.0002 * number
        register_version(client, experiment_id, roc_auc)
        promoted = number % 3 == 1
        write_retrain_run(
            settings, _run_id("scheduled", hours), version=number, roc_auc=roc_auc, promoted=promoted, champion=champion
        )
        if not promoted:
            continue
        registry.move_alias(client, MODEL, "champion", number, actor=_run_id("scheduled", hours), reason="promote")
        moves += 1
        rolled_back = champion is not None and moves % 5 == 0
        outcome = "rolled_back" if rolled_back else "deployed"
        write_deploy_run(settings, _run_id("asset_triggered", hours + 1), number, champion, outcome)
        deploys += 1
        if rolled_back:  # the deploy puts the champion back, as run_deploy does
            reason = "rollback: smoke test failed"
            registry.move_alias(
                client, MODEL, "champion", champion, actor=_run_id("asset_triggered", hours + 1), reason=reason
            )
            moves += 1
        else:
            champion = number
    client.set_registered_model_alias(MODEL, "challenger", str(versions))
    return {"versions": versions, "alias_moves": moves, "retrain_runs": versions, "deploy_runs": deploys}


def write_monitor_check(settings: Any, run_id: str, end: datetime, drifting: bool, value: float) -> None:
    """One monitor check of v1 of the settings' model for the hour before ``end``, through the monitor's own decision,
    report and summary: drift results, a realized performance ``value``, the alert decision and ``summary.json``."""
    from mlsteps import results
    from mlsteps.data import storage
    from orchestration.models import dag_id
    from orchestration.monitor import record_decision, summarize

    model = settings.pipeline.registry.model_name
    root = settings.run_root(dag_id(model, "monitor"), run_id)
    window = {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()}
    drift = {
        "status": "ok",
        "message": f"window ending {end.isoformat()}",
        "window": window,
        "model_version": 1,
        "model_trained_at": START.isoformat(),
        "drift_detected": drifting,
        "drifted_features": ["age", "plan"] if drifting else [],
        "drifted_share": 0.5 if drifting else 0.05,
    }
    realized = {
        "kind": "realized",
        "metric": "roc_auc",
        "status": "ok",
        "value": value,
        "expected": 0.80,
        "sampling_error": 0.0133,
        "lower": 0.76,
        "upper": 0.84,
        "rows": 400,
        "drop": value < 0.76,
        "message": f"realized roc_auc {value:.3f}",
        "window": window,
    }
    results.write_result(root, "drift", drift)
    results.write_result(root, "performance", {"status": "ok", "model_version": 1, "realized": realized})
    record_decision(root, settings.monitor_state_uri, settings.pipeline.monitoring, f"Monitor of {model}")
    storage.write_json(results.summary_uri(root), summarize(root, run_id))


def build_monitor_runs(settings: Any, runs: int) -> None:
    """Hourly monitor checks of the champion: drift in 5 hours of every 50, when the realized ROC AUC drops too."""
    for hour in range(runs):
        drifting = hour % 50 >= 45
        value = 0.80 - (0.05 if drifting else 0.0) + 0.01 * ((hour % 7) - 3) / 3
        end = START + timedelta(hours=10_000 + hour)
        write_monitor_check(settings, _run_id("scheduled", 10_000 + hour), end, drifting, value)


# ---------------------------------------------------------------------------------------------------- the reads
def naive_reads(settings: Any, client: Any) -> dict[str, int]:
    """The same facts read the obvious way: every version and its run, every summary, every monitor report."""
    from mlsteps import registry
    from mlsteps.data import storage
    from orchestration.models import dag_id

    versions = client.search_model_versions(f"name='{MODEL}'")
    metrics = {version.version: client.get_run(version.run_id).data.metrics for version in versions}
    registered = client.get_registered_model(MODEL)
    history = registry.alias_history(client, MODEL, registry.CHAMPION)
    files = 0
    for purpose in ("retrain", "deploy", "monitor"):
        runs = storage.join(settings.artifact_root, "runs", dag_id(MODEL, purpose))
        for uri in storage.list_files(runs):
            if uri.endswith("/summary.json") or uri.endswith("/monitor/report.json"):
                storage.read_json(uri)
                files += 1
    return {"versions": len(metrics), "aliases": len(registered.aliases), "moves": len(history), "files": files}


# What a fresh API server process pays for its first page view: the imports, the model configs, MLflow's store.
COLD_PROBE = """
import json, sys, time
began = time.perf_counter()
from orchestration.models import load_models
from orchestration.models_page import app, reads
settings = next(entry.settings for entry in load_models() if entry.name == sys.argv[1])
client = app.mlflow_client(settings.mlflow_tracking_uri)
reads.model_overview(settings, client, reads.Links.for_tracking_uri(settings.mlflow_tracking_uri))
first = time.perf_counter() - began
began = time.perf_counter()
reads.model_overview(settings, client, reads.Links.for_tracking_uri(settings.mlflow_tracking_uri))
print(json.dumps({"first_s": first, "second_s": time.perf_counter() - began}))
"""


def cold_first_call() -> dict[str, float]:
    """The first and second ``model_overview`` of a fresh process (the environment names the state)."""
    done = subprocess.run([sys.executable, "-c", COLD_PROBE, MODEL], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _timed(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return {"median_ms": 1000 * statistics.median(seconds), "max_ms": 1000 * max(seconds)}


def measure(settings: Any, repeats: int) -> dict[str, Any]:
    """First call, then warm medians of ours (function and HTTP) and of the anchor."""
    from fastapi.testclient import TestClient

    from orchestration.models_page import app as page_app
    from orchestration.models_page import reads

    cold = cold_first_call()
    client = page_app.mlflow_client(settings.mlflow_tracking_uri)
    links = reads.Links.for_tracking_uri(settings.mlflow_tracking_uri)
    overview = reads.model_overview(settings, client, links)

    async def anyone() -> str:
        return "benchmark"

    auth = page_app.Auth(user=anyone, visible_dags=lambda user, ids: ids, sees_config_errors=lambda user: True)
    http = TestClient(page_app.create_app(auth=auth))
    for path in ("/api/models", f"/api/models/{MODEL}", f"/{MODEL}"):
        assert http.get(path).status_code == 200, path
    figures = {
        "fresh_process": cold,
        "ours_function": _timed(lambda: reads.model_overview(settings, client, links), repeats),
        "ours_api_model": _timed(lambda: http.get(f"/api/models/{MODEL}"), repeats),
        "ours_page_model": _timed(lambda: http.get(f"/{MODEL}"), repeats),
        "ours_api_index": _timed(lambda: http.get("/api/models"), repeats),
        "anchor_naive": _timed(lambda: naive_reads(settings, client), repeats),
        "shown": {
            "training_runs": len(overview["training_runs"]),
            "deploys": len(overview["deploys"]),
            "alias_moves": len(overview["alias_history"]),
            "monitor_windows": len(overview["monitor"]["windows"]),
            "monitor_runs": f"{len(overview['monitor']['runs'])} of {overview['monitor']['runs_total']}",
        },
        "anchor_read": naive_reads(settings, client),
    }
    return figures


def _print(figures: dict[str, Any], made: dict[str, int]) -> None:
    anchor = figures["anchor_naive"]["median_ms"]
    print(f"state: {made}")
    cold = figures["fresh_process"]
    print(
        f"a fresh process: first call {cold['first_s']:.2f} s (imports, configs, MLflow's store; the app warms this up "
        f"when the API server starts), second {1000 * cold['second_s']:.1f} ms"
    )
    print(f"{'read (warm, median)':<44}{'ms':>10}{'max ms':>10}{'anchor / ours':>16}")
    for name, label in (
        ("ours_function", "ours: reads.model_overview"),
        ("ours_api_model", "ours: GET /api/models/<model> (HTTP)"),
        ("ours_page_model", "ours: GET /<model> (HTML page)"),
        ("ours_api_index", "ours: GET /api/models (index)"),
        ("anchor_naive", "anchor: every version, summary, report"),
    ):
        row = figures[name]
        print(f"{label:<44}{row['median_ms']:>10.1f}{row['max_ms']:>10.1f}{anchor / row['median_ms']:>15.1f}x")
    slowest = max(figures[name]["max_ms"] for name in ("ours_api_model", "ours_page_model", "ours_api_index"))
    verdict = "within" if slowest / 1000 < BUDGET_SECONDS else "OVER"
    print(f"slowest answer of ours {slowest:.1f} ms: {verdict} the {BUDGET_SECONDS:g} s budget")
    print(f"shown: {figures['shown']}; the anchor read {figures['anchor_read']}")


def main() -> None:
    """Build the state, time ours and the anchor, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=100, help="registered versions of the model")
    parser.add_argument("--monitor-runs", type=int, default=1000, help="hourly monitor runs")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each read (median reported)")
    parser.add_argument("--keep", type=Path, help="build the state in this folder and keep it (default: temporary)")
    parser.add_argument("--smoke", action="store_true", help="every part on tiny state; the figures mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.versions, args.monitor_runs, args.repeats = SMOKE["versions"], SMOKE["monitor_runs"], SMOKE["repeats"]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-models-page-"))
    folder.mkdir(parents=True, exist_ok=True)
    # Settings read these when the model configs load; nothing of the project's own .local/ is touched.
    os.environ["ML_STATE_DIR"] = str(folder / "state")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_ARTIFACT_LOCATION"] = (folder / "mlartifacts").as_uri()
    for name in ("ML_ARTIFACT_ROOT", "ML_MODELS_DIR"):
        os.environ.pop(name, None)
    try:
        from orchestration.models import load_models

        settings = next(entry.settings for entry in load_models() if entry.name == MODEL)
        began = time.perf_counter()
        made = build_registry_and_runs(settings, args.versions)
        build_monitor_runs(settings, args.monitor_runs)
        made["monitor_runs"] = args.monitor_runs
        print(f"built the state in {time.perf_counter() - began:.1f} s under {folder}")
        figures = measure(settings, args.repeats)
        _print(figures, made)
        config = {"versions": args.versions, "monitor_runs": args.monitor_runs, "repeats": args.repeats}
        write_report("models_page", {**config, "smoke": args.smoke}, {"state": made, **figures})
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
