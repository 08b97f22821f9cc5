"""The serving bundle: exported at registration, faithful to the trained model, verified byte for byte on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_models import GOOD, MODEL_NAME, log_model

from mlsteps import serving_bundle, tracking
from mlsteps.errors import StepError
from mlsteps.model import predict_frame
from mlsteps.serving_bundle import BundleError


@pytest.fixture
def registered(mlflow_tracking: str) -> tuple[int, str]:
    """A registered version of a known model with its bundle published; returns (version, training run id)."""
    import mlflow

    run_id, model_uri = log_model(GOOD)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    serving_bundle.publish_bundle(tracking.client(), MODEL_NAME, version, model_uri, run_id)
    return version, run_id


def test_published_bundle_reproduces_the_trained_model_without_torch(registered: tuple[int, str], tmp_path: Path):
    version, _ = registered
    client = tracking.client()
    bundle = serving_bundle.fetch_bundle(client, MODEL_NAME, version, tmp_path / "dl")

    assert (bundle.model_name, bundle.model_version) == (MODEL_NAME, version)
    assert [c.name for c in bundle.columns][:2] == ["tenure_months", "age"]
    assert {c.type for c in bundle.columns} == {"double", "string"}
    # smoke rows include a row of nulls and a row of unseen categories
    assert any(all(value is None for value in row.values()) for row in bundle.smoke_inputs)
    assert any(row["plan"] == serving_bundle.UNSEEN_CATEGORY for row in bundle.smoke_inputs)
    import pandas as pd

    rows = pd.DataFrame(bundle.smoke_inputs)
    numeric, categories = bundle.preprocessor.transform(rows)
    served = serving_bundle.onnx_probability(bundle.onnx_path, numeric, categories)
    np.testing.assert_allclose(served, bundle.smoke_probability, atol=1e-6)
    # the expected outputs are the package's own (torch) predictions
    import mlflow.pyfunc

    package = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    np.testing.assert_allclose(package.predict(rows)["probability"], bundle.smoke_probability, atol=1e-6)


def test_publishing_again_keeps_the_first_bundle(registered: tuple[int, str]) -> None:
    version, run_id = registered
    client = tracking.client()
    tags = client.get_model_version(MODEL_NAME, str(version)).tags
    again = serving_bundle.publish_bundle(client, MODEL_NAME, version, "models:/unused", run_id)
    assert again == tags[serving_bundle.BUNDLE_SHA256_TAG]


def test_a_changed_file_is_refused_and_named(registered: tuple[int, str], tmp_path: Path) -> None:
    version, _ = registered
    bundle = serving_bundle.fetch_bundle(tracking.client(), MODEL_NAME, version, tmp_path / "dl")
    copy = Path(shutil.copytree(bundle.folder, tmp_path / "copy"))
    smoke = json.loads((copy / "smoke.json").read_text())
    smoke["probability"][0] = 0.5
    (copy / "smoke.json").write_text(json.dumps(smoke))

    with pytest.raises(BundleError, match=r"smoke\.json does not match the sha256"):
        serving_bundle.read_bundle(copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(BundleError, match=r"manifest\.json has sha256 .* registration recorded"):
        serving_bundle.read_bundle(copy, bundle.sha256)


def test_a_version_without_bundle_and_unknown_aliases_are_named(mlflow_tracking: str, tmp_path: Path) -> None:
    import mlflow

    _, model_uri = log_model(GOOD)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    client = tracking.client()
    with pytest.raises(BundleError, match=rf"{MODEL_NAME} v{version} has no serving bundle"):
        serving_bundle.fetch_bundle(client, MODEL_NAME, version, tmp_path)
    assert serving_bundle.resolve_version(client, MODEL_NAME, str(version)) == version
    with pytest.raises(StepError, match=f"model {MODEL_NAME} has no alias 'champion'"):
        serving_bundle.resolve_version(client, MODEL_NAME, "champion")
    with pytest.raises(StepError, match=f"model {MODEL_NAME} has no version 99"):
        serving_bundle.resolve_version(client, MODEL_NAME, "99")


def test_an_export_that_changes_the_model_is_refused(tmp_path: Path) -> None:
    from fake_models import PIPELINE, risk_score_network

    from mlsteps.data.datasets import generate_churn
    from mlsteps.data.features import TabularPreprocessor

    dataset = PIPELINE.dataset
    sample = generate_churn(500, seed=5)
    preprocessor = TabularPreprocessor.fit(sample, dataset.numeric_features, dataset.categorical_features)
    network = risk_score_network(preprocessor, GOOD)
    rows = sample[[*dataset.numeric_features, *dataset.categorical_features]].head(4)
    expected = predict_frame(preprocessor, network, rows)["probability"].to_numpy() + 0.01
    with pytest.raises(BundleError, match="does not reproduce the trained model"):
        serving_bundle.write_bundle(
            tmp_path / "b",
            network=network,
            preprocessor=preprocessor,
            columns=[],
            smoke_rows=rows,
            expected_probability=expected,
            model_name=MODEL_NAME,
            model_version=1,
            source_model_uri="models:/m-1",
            decision_threshold=0.5,
        )


def test_the_test_bundles_load_and_a_broken_one_keeps_valid_checksums(serving_bundle_dir: Path, tmp_path: Path):
    from fake_models import break_bundle

    good = serving_bundle.read_bundle(serving_bundle_dir)
    broken = serving_bundle.read_bundle(break_bundle(Path(shutil.copytree(serving_bundle_dir, tmp_path / "b"))))
    assert good.sha256 != broken.sha256
    np.testing.assert_allclose(broken.smoke_probability, 1 - np.array(good.smoke_probability))


def test_a_broken_version_is_registered_with_an_intact_bundle(mlflow_tracking: str, tmp_path: Path) -> None:
    from fake_models import register_with_bundle

    version = register_with_bundle(broken=True)
    bundle = serving_bundle.fetch_bundle(tracking.client(), MODEL_NAME, version, tmp_path)
    assert bundle.model_version == version
