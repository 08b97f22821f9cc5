"""Step ``drift``: compare the last window of the champion's logged predictions with its training data.

Reads the prediction log for ``[window end - window hours, window end)`` and the model's version only, loads the
reference profile and the task from that version's model package, and writes a JSON and an HTML report under
``<run-root>/drift/`` (also logged to MLflow, experiment ``<experiment>-drift``). A window with too few rows, or no
model behind the alias yet, is skipped and says so; a data-quality problem (a missing or all-null feature) is
reported as such and never counts as drift. Deciding whether to retrain (hysteresis, cooldown) is the
orchestrator's job; this step only measures.

The window is read ``processing.batch_rows`` rows at a time (``prediction_log.WindowReader``) and its statistics are
added up batch by batch (``mlsteps.monitoring.drift.WindowDrift``): memory follows the batch, not the window, and the
report is the whole window's, except a Wasserstein distance of a column with more values than ``batch_rows``, which is
exact up to a bound its message states.

Besides the features, the model's prediction signals of its task are compared with those on the training data
(``mlsteps.monitoring.drift.profile.prediction_signals``): binary the positive-class probability; multiclass each
class's probability and the predicted-class mix; regression the predicted value. They are reported as prediction drift
(``prediction_drift``, ``drifted_predictions``) and do not count towards the features' dataset decision.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

from mlsteps import registry, tracking
from mlsteps.cli_options import ConfigUri, PredictionStore, RunRoot, WindowEnd
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import output_columns
from mlsteps.monitoring import prediction_log
from mlsteps.results import read_result, result_uri, step_dir, write_result

if TYPE_CHECKING:
    from mlsteps.inference import TaskInfo
    from mlsteps.monitoring.drift import DriftReport, ReferenceProfile

STEP = "drift"
OK, SKIPPED, DATA_QUALITY_FAILED = "ok", "skipped", "data_quality_failed"
# MLflow metric names allow letters, digits, _ - . and spaces (and slashes, read as folders); a label may hold anything.
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w\-. ]")


def _previous(run_root: str, window: dict[str, str], model_version: int) -> dict[str, Any] | None:
    """The result of an earlier attempt at the same window and model version (a retry has nothing to add)."""
    if not storage.exists(result_uri(run_root, STEP)):
        return None
    previous = read_result(run_root, STEP)
    same = previous.get("window") == window and previous.get("model_version") == model_version
    return previous if same and previous["status"] != SKIPPED else None


def _log_to_mlflow(config: PipelineConfig, payload: dict[str, Any], report: dict[str, Any], files: list[Path]) -> str:
    import mlflow

    tracking.start_experiment(f"{config.registry.experiment_name}-drift")
    dataset = report["dataset"]
    with mlflow.start_run(run_name=f"drift-{payload['model_name']}-v{payload['model_version']}") as run:
        mlflow.set_tags(
            {
                "model_name": payload["model_name"],
                "model_version": payload["model_version"],
                "status": payload["status"],
                "window_start": payload["window"]["start"],
                "window_end": payload["window"]["end"],
            }
        )
        metrics = {"rows": payload["rows"], "drifted_features": dataset["drifted_features"]}
        metrics["drifted_share"] = dataset["drifted_share"]
        metrics["drifted_predictions"] = len(payload["drifted_predictions"])
        for signal in report["prediction"]:
            if signal["statistic"] is not None:
                metrics[f"prediction_statistic.{_NOT_IN_METRIC_NAMES.sub('_', signal['name'])}"] = signal["statistic"]
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def run(run_root: str, config: PipelineConfig, prediction_store: str, window_end: str | None = None) -> dict[str, Any]:
    """Measure drift of one window; see the module docstring.

    Args:
        run_root: folder of this run's artifacts.
        config: the pipeline config (``drift`` methods and thresholds, ``monitoring`` window and minimum rows).
        prediction_store: root of the prediction log.
        window_end: end of the window (ISO 8601, no offset means UTC); default: the start of the current hour.

    Returns:
        The payload written to ``result.json``.

    Raises:
        DataError: the champion's package has no reference profile or task (logged by an older version: retrain), the
            log's files disagree on a column type, or the logged rows lack the model's output columns.
    """
    from mlsteps.model import download_package, read_package, reference_profile_path
    from mlsteps.monitoring.drift import load_profile, render_html

    monitoring, model_name = config.monitoring, config.registry.model_name
    start, end = prediction_log.window_before(window_end, monitoring.window_hours)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    payload: dict[str, Any] = {"model_name": model_name, "model_alias": monitoring.model_alias, "window": window}
    version = registry.alias_version(tracking.client(), model_name, monitoring.model_alias)
    if version is None:
        return _skip(run_root, payload, f"no model version has alias {monitoring.model_alias!r} yet: nothing to check")
    model_version = int(version.version)
    payload |= {"model_version": model_version, "model_trained_at": _iso_millis(version.creation_timestamp)}
    if (previous := _previous(run_root, window, model_version)) is not None:
        print(f"{STEP}: window {window['start']} .. {window['end']} already checked; nothing to do", flush=True)
        return previous

    logged = prediction_log.WindowReader(
        prediction_store, model_name, start, end, model_version=model_version, batch_rows=config.processing.batch_rows
    )
    rows = payload["rows"] = logged.rows()
    if rows < monitoring.min_rows:
        return _skip(
            run_root,
            payload,
            f"{rows} predictions of {model_name} v{model_version} logged in {window['start']} .. "
            f"{window['end']}, fewer than monitoring.min_rows={monitoring.min_rows}: window skipped",
        )

    out = step_dir(run_root, STEP)
    model_uri = registry.model_uri(model_name, model_version)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            package = download_package(model_uri, Path(tmp))
            profile_path = reference_profile_path(package, model_uri)
            info = read_package(package).info
        except FileNotFoundError as exc:
            raise DataError(str(exc)) from None
        profile = load_profile(str(profile_path))
        report = _measure_window(logged, profile, info, config).to_dict()
        title = f"Drift of {model_name} v{model_version}, {window['start']} .. {window['end']}"
        files = [Path(tmp) / "report.json", Path(tmp) / "report.html"]
        storage.write_json(str(files[0]), report)
        files[1].write_text(render_html(report, title))
        for path in files:
            storage.upload_file(path, storage.join(out, path.name))
        dataset = report["dataset"]
        payload |= {
            "status": DATA_QUALITY_FAILED if report["data_quality_failed"] else OK,
            "message": "; ".join(report["data_quality_problems"]) or dataset["message"],
            "drift_detected": bool(dataset["drift_detected"]) and not report["data_quality_failed"],
            "drifted_features": [f["name"] for f in report["features"] if f["drifted"]],
            "task": info.task,
            "prediction_drift": any(signal["drifted"] for signal in report["prediction"]),
            "drifted_predictions": [signal["name"] for signal in report["prediction"] if signal["drifted"]],
            "drifted_share": dataset["drifted_share"],
            "data_quality_problems": report["data_quality_problems"],
            "report_uri": storage.join(out, "report.json"),
            "report_html_uri": storage.join(out, "report.html"),
        }
        payload["mlflow_run_id"] = _log_to_mlflow(config, payload, report, files)
    write_result(run_root, STEP, payload)
    print(f"{STEP}: {model_name} v{model_version}, {rows} rows: {payload['message']}", flush=True)
    return payload


def _measure_window(
    logged: prediction_log.WindowReader, profile: ReferenceProfile, info: TaskInfo, config: PipelineConfig
) -> DriftReport:
    """Compare the window with the profile, ``processing.batch_rows`` logged rows at a time.

    Only the profile's features and the task's outputs are read. Every statistic is the whole window's, except a
    Wasserstein distance of a column with more values than ``batch_rows``: that one comes from counts and sums
    (``WindowDrift``) and its message states how far from the exact one it may be.

    Raises:
        DataError: the logged rows lack the model's output columns, or those hold text.
    """
    from mlsteps.monitoring.drift import WindowDrift, prediction_signals

    window = WindowDrift(profile, config.drift, keep_values=config.processing.batch_rows)
    for batch in logged.frames([*profile.features, *output_columns(info.task, info.classes)]):
        window.add(batch, predictions=prediction_signals(info.task, info.classes, batch))
    return window.report()


def _iso_millis(milliseconds: int) -> str:
    return pd.Timestamp(milliseconds, unit="ms", tz="UTC").isoformat()


def _skip(run_root: str, payload: dict[str, Any], message: str) -> dict[str, Any]:
    payload |= {"status": SKIPPED, "message": message, "drift_detected": False, "drifted_features": []}
    write_result(run_root, STEP, payload)
    print(f"{STEP}: {message}", flush=True)
    return payload


def main(
    run_root: RunRoot,
    prediction_store: PredictionStore,
    window_end: WindowEnd = None,
    window_hours: Annotated[
        int | None,
        typer.Option("--window-hours", min=1, max=24 * 31, help="window length; default: monitoring.window_hours"),
    ] = None,
    min_rows: Annotated[
        int | None, typer.Option("--min-rows", min=1, help="skip smaller windows; default: monitoring.min_rows")
    ] = None,
    config: ConfigUri = None,
) -> None:
    """Measure drift of the champion's last window of logged predictions against its training data.

    Writes <run-root>/drift/report.json and report.html (per feature and per prediction signal: method,
    statistic, p-value, threshold, drifted) and result.json with status ok, skipped (too few rows, no champion)
    or data_quality_failed.

    Args:
        run_root: folder of this run's artifacts.
        prediction_store: root folder of the prediction log.
        window_end: end of the window; default: the start of the current hour.
        window_hours: window length; default: monitoring.window_hours.
        min_rows: fewer logged predictions skip the window; default: monitoring.min_rows.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.

    Examples:
        python -m mlsteps drift --run-root ./state/runs/ml_model_monitor/m-1 --prediction-store ./state/predictions

        python -m mlsteps drift --run-root s3://ml/runs/mon/r1 --prediction-store s3://ml/predictions \\
            --window-end 2026-11-25T10:00:00Z --window-hours 6
    """
    overrides = {"window_hours": window_hours, "min_rows": min_rows}
    monitoring = {key: value for key, value in overrides.items() if value is not None}
    run(run_root, load_pipeline_config(config, {"monitoring": monitoring}), prediction_store, window_end)
