"""The serving bundle: the package's ONNX model with its smoke outputs, per task, verified byte for byte on load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_models import GOOD, MODEL_NAME, TASK, log_model, risk_score_model

from mlsteps import serving_bundle, tracking
from mlsteps.errors import StepError
from mlsteps.evaluation.tasks import probabilities_of
from mlsteps.inference import onnx_session, predict_frame, predict_raw
from mlsteps.serving_bundle import BundleError, ColumnSpec


@pytest.fixture
def registered(mlflow_tracking: str) -> tuple[int, str]:
    """A registered version of a known model with its bundle published; returns (version, training run id)."""
    import mlflow

    run_id, model_uri = log_model(GOOD)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    serving_bundle.publish_bundle(tracking.client(), MODEL_NAME, version, model_uri, run_id)
    return version, run_id


def test_published_bundle_holds_the_packages_onnx_model_and_its_outputs(registered: tuple[int, str], tmp_path: Path):
    import mlflow.artifacts
    import mlflow.pyfunc

    version, _ = registered
    bundle = serving_bundle.fetch_bundle(tracking.client(), MODEL_NAME, version, tmp_path / "dl")
    package = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}", dst_path=str(tmp_path)))

    assert (bundle.model_name, bundle.model_version, bundle.info) == (MODEL_NAME, version, TASK)
    assert [c.name for c in bundle.columns][:2] == ["tenure_months", "age"]
    assert {c.type for c in bundle.columns} == {"double", "string"}
    # copied, not exported again
    assert bundle.onnx_path.read_bytes() == next(package.rglob("model.onnx")).read_bytes()
    # smoke rows include a row of nulls and a row of unseen categories
    assert any(all(value is None for value in row.values()) for row in bundle.smoke_inputs)
    assert any(row["plan"] == serving_bundle.UNSEEN_CATEGORY for row in bundle.smoke_inputs)
    rows = pd.DataFrame(bundle.smoke_inputs)
    assert bundle.smoke_outputs.shape == (len(rows), 2)
    predicted = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}").predict(rows)
    np.testing.assert_allclose(probabilities_of("binary", [0, 1], predicted), bundle.smoke_outputs, atol=1e-7)
    manifest = json.loads((bundle.folder / serving_bundle.MANIFEST_FILE).read_text())
    assert (manifest["format"], manifest["task"], manifest["classes"]) == (2, "binary", [0, 1])


def test_serving_and_bundle_code_never_import_torch() -> None:
    probe = (
        "import sys, mlsteps.serving_bundle, mlsteps.serve.app, mlsteps.serve.cli, mlsteps.deploy.smoke; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


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
    smoke["outputs"][0] = [0.5, 0.5]
    (copy / "smoke.json").write_text(json.dumps(smoke))

    with pytest.raises(BundleError, match=r"smoke\.json does not match the sha256"):
        serving_bundle.read_bundle(copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(BundleError, match=r"manifest\.json has sha256 .* registration recorded"):
        serving_bundle.read_bundle(copy, bundle.sha256)


def test_a_format_1_bundle_is_refused_with_what_to_do(serving_bundle_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(serving_bundle_dir, tmp_path / "old"))
    manifest = json.loads((copy / serving_bundle.MANIFEST_FILE).read_text())
    (copy / serving_bundle.MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 1}))

    with pytest.raises(BundleError) as refused:
        serving_bundle.read_bundle(copy)
    assert str(refused.value) == (
        f"serving bundle {copy} of {MODEL_NAME} v1 has format 1, this server reads format 2 only (the ONNX model "
        "exported at training, any task): a bundle cannot be converted, so retrain the model and register the new "
        "version (the train and register steps make a format-2 bundle)"
    )


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


def test_a_model_without_finite_outputs_on_the_smoke_rows_gets_no_bundle(tmp_path: Path) -> None:
    preprocessor, model = risk_score_model(GOOD, bias=float("nan"))
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    columns = [ColumnSpec(name, "double") for name in preprocessor.numeric_columns]
    columns += [ColumnSpec(name, "string") for name in preprocessor.categorical_columns]
    example = pd.DataFrame({name: [1.0] for name in preprocessor.numeric_columns}).assign(
        **{name: ["x"] for name in preprocessor.categorical_columns}
    )

    with pytest.raises(BundleError, match=rf"ONNX model of {MODEL_NAME} v3 \(models:/m-1\) gives non-finite outputs"):
        serving_bundle.write_bundle_from_parts(
            tmp_path / "b",
            onnx_model_path=onnx_path,
            preprocessor=preprocessor,
            info=TASK,
            columns=columns,
            example=example,
            model_name=MODEL_NAME,
            model_version=3,
            source_model_uri="models:/m-1",
        )


@pytest.mark.parametrize(("task", "width"), [("multiclass", 3), ("regression", None)])
def test_bundles_of_the_other_tasks_record_the_task_and_the_models_raw_outputs(
    task_bundle_dirs: dict[str, Path], task: str, width: int | None
) -> None:
    bundle = serving_bundle.read_bundle(task_bundle_dirs[task])
    rows = pd.DataFrame(bundle.smoke_inputs)
    numeric, categories = bundle.preprocessor.transform(rows)

    assert bundle.info.task == task
    assert bundle.smoke_outputs.shape == ((len(rows),) if width is None else (len(rows), width))
    raw = predict_raw(onnx_session(bundle.onnx_path), numeric, categories, task)
    np.testing.assert_array_equal(raw, bundle.smoke_outputs)
    frame = predict_frame(bundle.preprocessor, onnx_session(bundle.onnx_path), bundle.info, rows)
    assert list(frame.columns) == (
        ["probability_stay", "probability_downgrade", "probability_leave", "prediction"]
        if task == "multiclass"
        else ["prediction"]
    )
    manifest = json.loads((bundle.folder / serving_bundle.MANIFEST_FILE).read_text())
    assert (manifest["task"], manifest["classes"]) == (task, bundle.info.classes)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_broken_bundle_keeps_valid_checksums_and_expects_other_outputs(
    serving_bundle_dir: Path, task_bundle_dirs: dict[str, Path], tmp_path: Path, task: str
) -> None:
    from fake_models import break_bundle

    folder = serving_bundle_dir if task == "binary" else task_bundle_dirs[task]
    good = serving_bundle.read_bundle(folder)
    broken = serving_bundle.read_bundle(break_bundle(Path(shutil.copytree(folder, tmp_path / "b"))))

    assert good.sha256 != broken.sha256
    differences = serving_bundle.smoke_differences(task, broken.smoke_outputs, good.smoke_outputs)
    assert differences.min() > 1e-3


def test_smoke_differences_are_absolute_for_probabilities_and_relative_for_predictions() -> None:
    probabilities = np.array([[0.2, 0.8], [0.5, 0.5]])
    moved = np.array([[0.25, 0.75], [0.5, np.nan]])

    np.testing.assert_allclose(serving_bundle.smoke_differences("binary", moved, probabilities), [0.05, np.inf])
    np.testing.assert_allclose(
        serving_bundle.smoke_differences("regression", np.array([101.0, 0.3]), np.array([100.0, 0.1])), [0.01, 0.2]
    )


def test_a_broken_version_is_registered_with_an_intact_bundle(mlflow_tracking: str, tmp_path: Path) -> None:
    from fake_models import register_with_bundle

    version = register_with_bundle(broken=True)
    bundle = serving_bundle.fetch_bundle(tracking.client(), MODEL_NAME, version, tmp_path)
    assert bundle.model_version == version
