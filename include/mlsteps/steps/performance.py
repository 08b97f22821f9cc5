"""Step ``performance``: how well the champion performs in production, realized from labels and estimated before them.

Two windows per check, both of the champion's logged predictions:

- **estimated** (classification): the current window ``[end - window hours, end)``. Confidence-based performance
  estimation (``mlsteps.monitoring.performance.estimate``) turns the champion's probabilities, calibrated by the
  calibrator fitted on its validation split (in the model package), into the expected metric. It needs no labels,
  so it speaks as soon as predictions are logged; it is blind to concept drift (the relationship between features
  and target changing while the inputs look the same), which only realized performance shows.
- **realized**: the window that has matured, ``label_delay_hours`` earlier. Labels (``monitoring.performance.labels``)
  are joined to its predictions by request id; with at least ``min_labelled_rows`` labelled predictions, the task's
  metric is computed with the same code as evaluate. No label yet, or a labels file that cannot be used (a missing
  column, fractional ids), leaves it unjudged and says why; the run goes on.

Each value is judged against the champion's holdout (``performance_reference/holdout.npz`` on its training run,
written by evaluate): its expected value and the sampling error at the window's size (a bootstrap), so that a drop
is a value beyond ``band_sigmas`` sampling errors, not a bare threshold. Label problems (duplicates, conflicting
labels, wrong types, missing ids, labels of another model version, labels for ids never logged) are counted and
reported, never silently used. Deciding whether to retrain is the monitor's job (``orchestration.monitor``).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

from mlsteps import registry, tracking
from mlsteps.cli_options import ConfigUri, PredictionStore, RunRoot, WindowEnd
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import ESTIMABLE_METRICS, output_columns
from mlsteps.monitoring import prediction_log
from mlsteps.results import step_dir, write_result

if TYPE_CHECKING:
    from mlsteps.monitoring.performance.labels import LabelSet

STEP = "performance"
OK, SKIPPED = "ok", "skipped"
REPORT_FILE = "report.json"


def _window(start: pd.Timestamp, end: pd.Timestamp) -> dict[str, str]:
    return {"start": start.isoformat(), "end": end.isoformat()}


def _reference(run_id: str, folder: Path) -> Any:
    """The champion's holdout reference from its training run, or None when evaluate did not write one."""
    from mlsteps.model import PERFORMANCE_REFERENCE_DIR, PERFORMANCE_REFERENCE_FILE
    from mlsteps.monitoring.performance.reference import PerformanceReference

    client = tracking.client()
    path = f"{PERFORMANCE_REFERENCE_DIR}/{PERFORMANCE_REFERENCE_FILE}"
    if path not in {item.path for item in client.list_artifacts(run_id, PERFORMANCE_REFERENCE_DIR)}:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return PerformanceReference.load(Path(client.download_artifacts(run_id, path, str(folder))))


def estimated_metric(config: PipelineConfig) -> str | None:
    """The metric estimation reports: ``estimated.metric``, else the primary metric if estimable, else ROC AUC;
    None where the task has no estimation (regression)."""
    task = config.dataset.target.task
    if task not in ESTIMABLE_METRICS:
        return None
    chosen = config.monitoring.performance.estimated.metric
    return chosen or (config.primary_metric if config.primary_metric in ESTIMABLE_METRICS[task] else "roc_auc")


def _unavailable(kind: str, metric: str | None, status: str, message: str) -> dict[str, Any]:
    """A verdict that was not judged, in the shape of ``PerformanceVerdict.to_dict``."""
    return {"kind": kind, "metric": metric, "status": status, "drop": False, "message": message, "value": None}


def _estimated(
    config: PipelineConfig,
    store: str,
    version: int,
    window: tuple[pd.Timestamp, pd.Timestamp],
    reference: Any,
    package: Any,
) -> dict[str, Any] | None:
    """The estimated verdict on the current window; None where estimation is off or the task has none."""
    from mlsteps.evaluation.tasks import probabilities_of
    from mlsteps.monitoring.performance.calibration import Calibrator
    from mlsteps.monitoring.performance.estimate import estimate_metrics
    from mlsteps.monitoring.performance.judge import judge

    performance, info = config.monitoring.performance, package.info
    metric = estimated_metric(config)
    if metric is None or performance.estimated.action == "off":
        return None
    if package.calibrator is None:
        message = f"v{version}'s package has no calibrator (logged before estimation existed): retrain to estimate"
        return _unavailable("estimated", metric, "not_estimable", message)
    if reference is None:
        return _unavailable("estimated", metric, "not_estimable", _no_reference(version))
    columns = [prediction_log.REQUEST_ID, *output_columns(info.task, info.classes)]
    records = prediction_log.read_window(store, config.registry.model_name, *window, columns, model_version=version)
    if len(records) < config.monitoring.min_rows:
        message = (
            f"{len(records)} predictions in the window, fewer than monitoring.min_rows={config.monitoring.min_rows}: "
            "not estimated"
        )
        return _unavailable("estimated", metric, "insufficient_rows", message)
    probabilities = probabilities_of(info.task, info.classes, records)
    estimates = estimate_metrics(info.task, info.classes, probabilities, Calibrator.from_dict(package.calibrator))
    return judge(
        "estimated",
        metric,
        estimates[metric],
        len(records),
        reference,
        info.task,
        band_sigmas=performance.band_sigmas,
        samples=performance.bootstrap_samples,
    ).to_dict()


def _no_reference(version: int) -> str:
    return (
        f"v{version} has no holdout reference (performance_reference/holdout.npz on its training run; evaluate writes "
        "it): retrain to judge its performance"
    )


def _realized(
    config: PipelineConfig,
    store: str,
    version: int,
    window: tuple[pd.Timestamp, pd.Timestamp],
    reference: Any,
    info: Any,
) -> dict[str, Any] | None:
    """The realized verdict on the matured window with its label counts; None without a labels source."""
    from mlsteps.evaluation.metrics import metric_value
    from mlsteps.monitoring.performance.judge import judge
    from mlsteps.monitoring.performance.labels import NoLabelsYet, match_labels, read_labels

    performance, dataset, model_name = config.monitoring.performance, config.dataset, config.registry.model_name
    source = performance.labels
    if source.uri is None:
        return None
    metric = performance.metric or config.primary_metric
    try:
        labels = read_labels(
            source.uri,
            id_column=source.id_column or dataset.id_column or prediction_log.REQUEST_ID,
            label_column=source.label_column or dataset.target.name,
            labelled_at_column=source.labelled_at_column,
            task=info.task,
            classes=info.classes,
        )
    except DataError as exc:
        # No label yet is nothing to judge; a broken labels feed (a file without its columns, fractional ids) is
        # reported, not raised: neither may stop the drift check and the estimate of the same run, nor count as a drop.
        status = "insufficient_labels" if isinstance(exc, NoLabelsYet) else "bad_labels"
        print(f"{STEP}: realized {metric} not judged ({status}): {exc}", flush=True)
        verdict = _unavailable("realized", metric, status, f"realized {metric} not judged: {exc}")
        return {**verdict, "rows": 0, "window": _window(*window), "labels": {}, "label_problems": [str(exc)]}
    ids = [prediction_log.REQUEST_ID, prediction_log.MODEL_VERSION]
    champion = prediction_log.read_window(
        store, model_name, *window, [*ids, *output_columns(info.task, info.classes)], model_version=version
    )
    everyone = prediction_log.read_window(store, model_name, *window, ids)
    others = everyone[everyone[prediction_log.MODEL_VERSION] != version]
    labelled = match_labels(pd.concat([champion, others], ignore_index=True), labels, info.task, info.classes, version)
    unknown = _unknown_ids(labels, store, model_name, window, performance.id_lookback_hours)
    counts = {**labels.counts, **labelled.counts, "unknown_ids": unknown}
    problems = list(labels.problems)
    if labelled.counts["other_version"]:
        problems.append(
            f"{labelled.counts['other_version']} label(s) are for predictions of another model version than v{version} "
            "in this window: not used for its performance"
        )
    if unknown:
        problems.append(f"{unknown} label(s) that arrived in this check's span match no logged prediction: not used")
    rows = labelled.counts["labelled"]
    value = metric_value(info.task, info.classes, metric, labelled.y_true, labelled.output) if rows else None
    if reference is None:
        verdict = _unavailable("realized", metric, "no_reference", _no_reference(version))
    else:
        verdict = judge(
            "realized",
            metric,
            value,
            rows,
            reference,
            info.task,
            band_sigmas=performance.band_sigmas,
            samples=performance.bootstrap_samples,
            min_rows=performance.min_labelled_rows,
        ).to_dict()
    return {**verdict, "window": _window(*window), "labels": counts, "label_problems": problems}


def _unknown_ids(
    labels: LabelSet, store: str, model_name: str, window: tuple[pd.Timestamp, pd.Timestamp], lookback_hours: int
) -> int | None:
    """Labels that arrived since the matured window began (``labelled_at``) whose id no prediction of the
    ``lookback_hours`` before it, or since, has; None without ``labelled_at`` (nothing says which labels are new:
    older labels of predictions no longer in the lookback would all count)."""
    from mlsteps.monitoring.performance.labels import unknown_label_ids

    arrived = labels.frame["labelled_at"]
    if arrived.isna().all():
        return None
    start = window[0] - pd.Timedelta(hours=lookback_hours)
    logged = prediction_log.read_window(
        store, model_name, start, pd.Timestamp.now(tz="UTC"), [prediction_log.REQUEST_ID]
    )
    recent = replace(labels, frame=labels.frame[arrived >= window[0]])
    return unknown_label_ids(recent, logged[prediction_log.REQUEST_ID])


def run(run_root: str, config: PipelineConfig, prediction_store: str, window_end: str | None = None) -> dict[str, Any]:
    """Judge the champion's estimated and realized performance; see the module docstring.

    Args:
        run_root: folder of this run's artifacts.
        config: the pipeline config (``monitoring`` and ``monitoring.performance``).
        prediction_store: root of the prediction log.
        window_end: end of the current window (ISO 8601, no offset means UTC); default: the start of this hour.

    Returns:
        The payload written to ``result.json``: ``estimated`` and ``realized`` verdicts (None where not configured
        or not possible for the task), with ``status`` ok, or skipped when no version has the alias yet.

    Raises:
        DataError: the champion's package cannot be read. A labels source without its columns, or with ids of the
            wrong type, is not raised: the realized verdict says ``bad_labels`` with the file and the column.
    """
    from mlsteps.model import download_package, read_package

    monitoring, model_name = config.monitoring, config.registry.model_name
    current = prediction_log.window_before(window_end, monitoring.window_hours)
    delay = pd.Timedelta(hours=monitoring.performance.label_delay_hours)
    matured = (current[0] - delay, current[1] - delay)
    payload: dict[str, Any] = {"model_name": model_name, "model_alias": monitoring.model_alias}
    payload["window"] = _window(*current)
    version = registry.alias_version(tracking.client(), model_name, monitoring.model_alias)
    if version is None:
        message = f"no model version has alias {monitoring.model_alias!r} yet: nothing to judge"
        payload |= {"status": SKIPPED, "message": message, "estimated": None, "realized": None}
        write_result(run_root, STEP, payload)
        print(f"{STEP}: {message}", flush=True)
        return payload
    model_version = int(version.version)
    payload |= {"model_version": model_version}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            package = read_package(download_package(registry.model_uri(model_name, model_version), Path(tmp) / "pkg"))
        except FileNotFoundError as exc:
            raise DataError(str(exc)) from None
        reference = _reference(version.run_id, Path(tmp) / "reference")
        estimated = _estimated(config, prediction_store, model_version, current, reference, package)
        realized = _realized(config, prediction_store, model_version, matured, reference, package.info)
    payload |= {
        "status": OK,
        "task": package.info.task,
        "estimated": estimated,
        "realized": realized,
        "message": "; ".join(f"{v['kind']}: {v['message']}" for v in (realized, estimated) if v) or "nothing to judge",
    }
    report_uri = storage.join(step_dir(run_root, STEP), REPORT_FILE)
    storage.write_json(report_uri, payload)
    payload["report_uri"] = report_uri
    write_result(run_root, STEP, payload)
    print(f"{STEP}: {model_name} v{model_version}: {payload['message']}", flush=True)
    return payload


def main(
    run_root: RunRoot,
    prediction_store: PredictionStore,
    window_end: WindowEnd = None,
    labels_uri: Annotated[
        str | None,
        typer.Option("--labels-uri", help="labels folder or file; default: monitoring.performance.labels.uri"),
    ] = None,
    config: ConfigUri = None,
) -> None:
    """Judge the champion's realized performance (labelled predictions) and estimated performance (no labels).

    Writes <run-root>/performance/report.json and result.json: per kind the metric, its value, the holdout's
    expectation and the band of its sampling error, whether it dropped, and the label counts and problems.

    Args:
        run_root: folder of this run's artifacts.
        prediction_store: root folder of the prediction log.
        window_end: end of the current window; default: the start of the current hour.
        labels_uri: where labels arrive; default: monitoring.performance.labels.uri.
        config: pipeline config YAML; default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml.

    Examples:
        python -m mlsteps performance --run-root ./state/runs/ml_model_monitor/m-1 \\
            --prediction-store ./state/predictions --labels-uri ./state/labels

        python -m mlsteps performance --run-root s3://ml/runs/mon/r1 --prediction-store s3://ml/predictions \\
            --window-end 2026-11-25T10:00:00Z
    """
    overrides = {"monitoring": {"performance": {"labels": {"uri": labels_uri}}}} if labels_uri else {}
    run(run_root, load_pipeline_config(config, overrides), prediction_store, window_end)
