"""evaluate: score the challenger and the current champion on the same holdout and judge the promotion gate.

A failed gate is a decision, not an error: the step exits 0 and the orchestrator branches on ``gate.passed``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.features import binary_labels, require_columns
from mlsteps.errors import DataError
from mlsteps.evaluation import classification_metrics, gate_decision, render_report_html, slice_metrics
from mlsteps.predictions import PROBABILITY, check_predictions

STEP = "evaluate"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"


def _read_holdout(holdout_uri: str, dataset: DatasetConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The holdout's feature columns (config order, typed) and its 0/1 labels."""
    holdout = storage.read_parquet(holdout_uri)
    feature_names = [column.name for column in dataset.features]
    what = f"holdout {holdout_uri}"
    require_columns(holdout, [*feature_names, dataset.target.name], what)
    if holdout.empty:
        raise DataError(f"{holdout_uri}: holdout has no rows: raise split.holdout_fraction or use a larger snapshot")
    # Typed as serving sends rows (the model signature's types): numbers as float64, categories as strings.
    types = {**dict.fromkeys(dataset.numeric_features, "float64"), **dict.fromkeys(dataset.categorical_features, "str")}
    return holdout[feature_names].astype(types), binary_labels(
        holdout[dataset.target.name], dataset.target.classes, what
    )


def _predict_probability(model_uri: str, features: pd.DataFrame) -> np.ndarray:
    """The model's positive-class probability for every row, checked to be a probability."""
    import mlflow

    output = mlflow.pyfunc.load_model(model_uri).predict(features)
    return check_predictions(output, len(features), model_uri)[PROBABILITY].to_numpy(dtype=float)


def _score_model(model_uri: str, features: pd.DataFrame, labels: np.ndarray, config: PipelineConfig) -> dict[str, Any]:
    """Holdout metrics and slices of one model."""
    probability = _predict_probability(model_uri, features)
    evaluation = config.evaluation
    metrics = classification_metrics(labels, probability, evaluation.calibration_bins)
    slices = slice_metrics(
        features,
        config.dataset.slice_columns,
        labels,
        probability,
        min_rows=evaluation.slice_min_rows,
        calibration_bins=evaluation.calibration_bins,
    )
    print(f"{STEP}: {model_uri} on {metrics['rows']} holdout rows: {_summary(metrics)}", flush=True)
    return {"model_uri": model_uri, "metrics": metrics, "slices": slices}


def _summary(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float))


def _threshold_overrides(min_roc_auc: float | None, max_roc_auc_regression: float | None) -> dict[str, Any]:
    given = {"min_roc_auc": min_roc_auc, "max_roc_auc_regression": max_roc_auc_regression}
    evaluation = {key: value for key, value in given.items() if value is not None}
    return {"evaluation": evaluation} if evaluation else {}


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    min_roc_auc: Annotated[
        float | None,
        typer.Option(
            "--min-roc-auc", min=0.0, max=1.0, help="minimum holdout ROC AUC of the challenger; overrides the config"
        ),
    ] = None,
    max_roc_auc_regression: Annotated[
        float | None,
        typer.Option(
            "--max-roc-auc-regression",
            min=0.0,
            max=1.0,
            help="largest ROC AUC drop versus the champion that still passes; overrides the config",
        ),
    ] = None,
) -> None:
    r"""Score challenger and champion on the same holdout and judge the promotion gate.

    Reads the preprocess result (holdout) and the train result (challenger).
    The champion is the version behind the registry alias ``champion`` of
    registry.model_name, if there is one. Writes report.json, report.html and
    result.json under <run-root>/evaluate/. A failed gate still exits 0:
    gate.passed in result.json tells the orchestrator which way to go.

    Args:
        run_root: folder of this run's artifacts.
        config: pipeline config YAML.
        min_roc_auc: overrides evaluation.min_roc_auc.
        max_roc_auc_regression: overrides evaluation.max_roc_auc_regression.

    Examples:
        python -m mlsteps evaluate --run-root /tmp/runs/r1

        python -m mlsteps evaluate --run-root s3://ml/runs/r1 \
            --min-roc-auc 0.75 --max-roc-auc-regression 0.005
    """
    pipeline = load_pipeline_config(config, _threshold_overrides(min_roc_auc, max_roc_auc_regression))
    model_name = pipeline.registry.model_name
    preprocess = results.read_result(run_root, "preprocess")
    challenger_uri = results.read_result(run_root, "train")["model_uri"]
    client = tracking.client()
    features, labels = _read_holdout(preprocess["holdout_uri"], pipeline.dataset)

    challenger = _score_model(challenger_uri, features, labels, pipeline)
    champion_version = registry.alias_version(client, model_name, registry.CHAMPION)
    champion = None
    if champion_version is None:
        print(f"{STEP}: {model_name} has no {registry.CHAMPION} yet: the gate judges the minimum only", flush=True)
    else:
        version = int(champion_version.version)
        champion_uri = registry.model_uri(model_name, version)
        champion = {
            "version": version,
            "run_id": champion_version.run_id,
            **_score_model(champion_uri, features, labels, pipeline),
        }

    gate = gate_decision(challenger["metrics"], champion["metrics"] if champion else None, pipeline.evaluation)
    for reason in gate.reasons:
        print(f"{STEP}: gate: {reason}", flush=True)
    print(f"{STEP}: gate {'PASSED' if gate.passed else 'FAILED'} for {challenger_uri}", flush=True)

    report = {
        "model_name": model_name,
        "holdout_uri": preprocess["holdout_uri"],
        "snapshot_id": preprocess["snapshot_id"],
        "challenger": challenger,
        "champion": champion,
        "gate": gate.to_dict(),
    }
    folder = results.step_dir(run_root, STEP)
    report_uri = storage.join(folder, REPORT_FILE)
    report_html_uri = storage.join(folder, REPORT_HTML_FILE)
    storage.write_json(report_uri, report)
    storage.write_text(report_html_uri, render_report_html(report))
    results.write_result(run_root, STEP, {**report, "report_uri": report_uri, "report_html_uri": report_html_uri})
