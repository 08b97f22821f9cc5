"""Tiny models with known behaviour, for the registry, evaluation, scoring and serving tests.

Each is a real ``mlsteps.model`` package (preprocessor, network, signature, drift profile) whose network computes
``sigmoid(bias + sum of weight * term)`` exactly: a term is a numeric column or ``column=value`` (an indicator). The
network has no hidden layer and one-wide embeddings, so the weights are set rather than trained; the score equals
the logistic formula wherever the numeric terms have no nulls (nulls are median-imputed, as in every model).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch

from mlsteps import tracking
from mlsteps.config import load_pipeline_config
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import TabularPreprocessor
from mlsteps.drift import build_profile, save_profile
from mlsteps.model import REFERENCE_PROFILE_FILE, log_model_package, predict_frame
from mlsteps.training.mlp import NetworkSpec, TabularNet

PIPELINE = load_pipeline_config()
MODEL_NAME = PIPELINE.registry.model_name
GOOD = {
    "tenure_months": -0.035,
    "support_calls_90d": 0.22,
    "days_since_last_login": 0.025,
    "late_payments_12m": 0.25,
    "contract_type=monthly": 1.1,
    "contract_type=two_year": -0.9,
}
WORSE = {"tenure_months": -0.035, "contract_type=monthly": 1.1, "contract_type=two_year": -0.9}
WEAK = {"age": 0.01}


def risk_score_network(preprocessor: TabularPreprocessor, weights: dict[str, float], bias: float = -1.5) -> TabularNet:
    """A TabularNet whose logit is ``bias + sum(weight * term)`` on raw (unstandardised) feature values."""
    spec = NetworkSpec(
        numeric_features=len(preprocessor.numeric_columns),
        cardinalities=preprocessor.cardinalities,
        hidden_units=[],
        dropout=0.0,
        max_embedding_dim=1,
    )
    network = TabularNet(spec)
    linear = network.mlp[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(bias)
        for position, (column, stats) in enumerate(preprocessor.numeric.items()):
            weight = weights.get(column, 0.0)
            # the network sees (x - mean) / std: scale back to raw values
            linear.weight[0, position] = weight * stats.std
            linear.bias += weight * stats.mean
        offset = len(preprocessor.numeric)
        for position, (column, vocabulary) in enumerate(preprocessor.vocabularies.items()):
            linear.weight[0, offset + position] = 1.0
            embedding = network.embeddings[position].weight
            embedding.zero_()
            for index, category in enumerate(vocabulary, start=1):
                embedding[index, 0] = weights.get(f"{column}={category}", 0.0)
    return network.eval()


def log_model(weights: dict[str, float], bias: float = -1.5) -> tuple[str, str]:
    """Log a risk-score model package in a training run; returns (run id, model URI)."""
    dataset = PIPELINE.dataset
    sample = generate_churn(2000, seed=11)
    preprocessor = TabularPreprocessor.fit(sample, dataset.numeric_features, dataset.categorical_features)
    network = risk_score_network(preprocessor, weights, bias)
    features = sample[[*dataset.numeric_features, *dataset.categorical_features]]
    scores = predict_frame(preprocessor, network, features)["probability"].to_numpy()
    tracking.start_experiment(PIPELINE.registry.experiment_name)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        profile = Path(tmp) / REFERENCE_PROFILE_FILE
        save_profile(build_profile(sample, dataset.features, scores=scores, config=PIPELINE.drift), str(profile))
        info = log_model_package(preprocessor, network, features.head(5), profile)
    return run.info.run_id, info.model_uri


def write_test_bundle(folder: Path, weights: dict[str, float] = GOOD, model_version: int = 1) -> Path:
    """A serving bundle of a risk-score model, written straight to ``folder`` (no MLflow); returns the folder."""
    from mlsteps.serving_bundle import ColumnSpec, bundle_from_model

    dataset = PIPELINE.dataset
    sample = generate_churn(2000, seed=11)
    preprocessor = TabularPreprocessor.fit(sample, dataset.numeric_features, dataset.categorical_features)
    columns = [ColumnSpec(name, "double") for name in dataset.numeric_features]
    columns += [ColumnSpec(name, "string") for name in dataset.categorical_features]
    bundle_from_model(
        folder,
        network=risk_score_network(preprocessor, weights),
        preprocessor=preprocessor,
        columns=columns,
        example=sample[[spec.name for spec in columns]],
        model_name=MODEL_NAME,
        model_version=model_version,
        source_model_uri=f"models:/{MODEL_NAME}/{model_version}",
    )
    return folder


def break_bundle(folder: Path) -> Path:
    """Make a bundle wrong but intact: its smoke expectations no longer match its model, checksums still do.

    The model behind it "predicts wrongly", so a server refuses to load it and a deploy's smoke test fails.
    """
    import json

    from mlsteps.serving_bundle import MANIFEST_FILE, SMOKE_FILE, sha256_of

    smoke = json.loads((folder / SMOKE_FILE).read_text())
    smoke["probability"] = [1.0 - p for p in smoke["probability"]]
    (folder / SMOKE_FILE).write_text(json.dumps(smoke, indent=1))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][SMOKE_FILE] = sha256_of(folder / SMOKE_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return folder


def register_with_bundle(weights: dict[str, float] = GOOD, *, broken: bool = False) -> int:
    """Register a risk-score model as a new version with its serving bundle (broken: see ``break_bundle``).

    Needs MLflow tracking set up (the ``mlflow_tracking`` fixture).
    """
    from mlsteps import serving_bundle

    run_id, model_uri = log_model(weights)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    client = tracking.client()
    if not broken:
        serving_bundle.publish_bundle(client, MODEL_NAME, version, model_uri, run_id)
        return version
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_test_bundle(Path(tmp) / "bundle", weights, version)
        serving_bundle.upload_bundle(client, MODEL_NAME, version, run_id, break_bundle(folder))
    return version
