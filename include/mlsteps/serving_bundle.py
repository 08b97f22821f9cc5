"""The serving bundle: what the model server needs of a model version, without torch or the MLflow package.

At registration each version gets a folder beside its training run's artifacts (``serving_bundle/v<version>``):

- ``model.onnx``: the network exported with torch.onnx; inputs ``numeric`` (float32, rows x numeric columns) and
  ``categories`` (int64, rows x categorical columns), output ``logit`` (float32, rows);
- ``preprocessor.json``: the fitted ``TabularPreprocessor`` that turns raw rows into those inputs;
- ``signature.json``: the request columns in order, with their MLflow types;
- ``smoke.json``: a few raw rows and the probabilities the trained model gave them, the expected outputs of every
  smoke test (the server's own load check and the deploy step's check through the Service);
- ``manifest.json``: format, model name and version, decision threshold and the sha256 of every other file.

The version's tags name the folder (``serving_bundle_uri``) and the sha256 of ``manifest.json``
(``serving_bundle_sha256``), so a server verifies every byte it loads against what registration recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsteps import registry
from mlsteps.data.features import TabularPreprocessor
from mlsteps.errors import StepError

BUNDLE_URI_TAG = "serving_bundle_uri"
BUNDLE_SHA256_TAG = "serving_bundle_sha256"
BUNDLE_FORMAT = 1
ONNX_FILE = "model.onnx"
PREPROCESSOR_FILE = "preprocessor.json"
SIGNATURE_FILE = "signature.json"
SMOKE_FILE = "smoke.json"
MANIFEST_FILE = "manifest.json"
ONNX_INPUTS = ("numeric", "categories")
ONNX_OUTPUT = "logit"
# ONNX Runtime and torch differ by float rounding only; more means the export changed the model.
PARITY_TOLERANCE = 1e-5
# Rows of the input example kept as smoke inputs, plus one row of nulls and one of unseen categories.
SMOKE_EXAMPLE_ROWS = 8
UNSEEN_CATEGORY = "__unseen__"


class BundleError(StepError):
    """A serving bundle is missing, incomplete or does not match its recorded checksums."""


@dataclass(frozen=True)
class ColumnSpec:
    """One request column: its name and MLflow type (double, float, long, integer, boolean, string)."""

    name: str
    type: str


@dataclass(frozen=True)
class ServingBundle:
    """A verified bundle folder, read into what the server uses."""

    folder: Path
    model_name: str
    model_version: int
    columns: list[ColumnSpec]
    preprocessor: TabularPreprocessor
    onnx_path: Path
    decision_threshold: float
    smoke_inputs: list[dict[str, Any]]
    smoke_probability: list[float]
    sha256: str


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON values: numpy scalars become Python ones, nulls become None."""

    def plain(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        return value.item() if isinstance(value, np.generic) else value

    return [{column: plain(value) for column, value in row.items()} for row in frame.astype(object).to_dict("records")]


def _package_versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _export_onnx(network: Any, numeric: np.ndarray, categories: np.ndarray, path: Path) -> None:
    """Export the network with the torch.export-based exporter, rows as a dynamic dimension."""
    import logging
    import warnings

    import torch

    rows = torch.export.Dim("rows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notes (deprecations inside torch, optional torchvision ops)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            network.cpu().eval(),
            (torch.from_numpy(numeric), torch.from_numpy(categories)),
            input_names=list(ONNX_INPUTS),
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: rows}, {0: rows}),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))


def probability_of(logits: np.ndarray) -> np.ndarray:
    """Positive-class probabilities (float64, one per row) from the exported model's ``logit`` output."""
    return 1.0 / (1.0 + np.exp(-logits.reshape(-1).astype(np.float64)))


def onnx_probability(onnx_path: Path, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Positive-class probabilities (float64) from the exported model, as the server computes them."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([ONNX_OUTPUT], dict(zip(ONNX_INPUTS, (numeric, categories), strict=True)))
    return probability_of(logits)


def smoke_frame(example: pd.DataFrame, preprocessor: TabularPreprocessor) -> pd.DataFrame:
    """Smoke rows: the first input-example rows, one row of nulls and one of unseen categories."""
    rows = example.head(SMOKE_EXAMPLE_ROWS).reset_index(drop=True)
    nulls = pd.DataFrame([dict.fromkeys(example.columns)], dtype=object)
    unseen = rows.head(1).astype(object).copy()
    for column in preprocessor.categorical_columns:
        unseen[column] = UNSEEN_CATEGORY
    return pd.concat([rows.astype(object), nulls, unseen], ignore_index=True)


def write_bundle(
    out_dir: Path,
    *,
    network: Any,
    preprocessor: TabularPreprocessor,
    columns: list[ColumnSpec],
    smoke_rows: pd.DataFrame,
    expected_probability: np.ndarray,
    model_name: str,
    model_version: int,
    source_model_uri: str,
    decision_threshold: float,
) -> str:
    """Write a bundle folder and return the sha256 of its manifest.

    ``expected_probability`` is what the trained model gave ``smoke_rows``; export checks that the ONNX model
    reproduces it (callers pass the torch model's output, so the bundle is known to be faithful).

    Raises:
        BundleError: the exported model's probabilities differ from the expected ones or are not finite.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    numeric, categories = preprocessor.transform(smoke_rows)
    onnx_path = out_dir / ONNX_FILE
    _export_onnx(network, numeric, categories, onnx_path)
    exported = onnx_probability(onnx_path, numeric, categories)
    gap = float(np.max(np.abs(exported - expected_probability), initial=0.0))
    if not np.all(np.isfinite(exported)) or gap > PARITY_TOLERANCE:
        raise BundleError(
            f"the ONNX export of {model_name} v{model_version} does not reproduce the trained model on the smoke rows "
            f"(largest probability difference {gap:.3g}, tolerance {PARITY_TOLERANCE}, finite: "
            f"{bool(np.all(np.isfinite(exported)))}); the model was not made servable"
        )
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor.to_dict(), indent=1))
    (out_dir / SIGNATURE_FILE).write_text(json.dumps([{"name": c.name, "type": c.type} for c in columns], indent=1))
    smoke = {"inputs": json_rows(smoke_rows), "probability": [float(p) for p in expected_probability]}
    (out_dir / SMOKE_FILE).write_text(json.dumps(smoke, indent=1))
    files = (ONNX_FILE, PREPROCESSOR_FILE, SIGNATURE_FILE, SMOKE_FILE)
    manifest = {
        "format": BUNDLE_FORMAT,
        "model_name": model_name,
        "model_version": int(model_version),
        "source_model_uri": source_model_uri,
        "decision_threshold": decision_threshold,
        "files": {name: sha256_of(out_dir / name) for name in files},
        "exported_with": _package_versions("torch", "onnx", "onnxscript", "onnxruntime", "mlflow"),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return sha256_of(out_dir / MANIFEST_FILE)


def export_bundle(package_dir: Path, out_dir: Path, model_name: str, model_version: int, source_model_uri: str) -> str:
    """Make the bundle of a downloaded MLflow model package (``mlsteps.model``'s pyfunc layout).

    Returns:
        The sha256 of the bundle's manifest.
    """
    from mlflow.models import Model

    from mlsteps.model import NETWORK_ARTIFACT, PREPROCESSOR_ARTIFACT
    from mlsteps.training.mlp import load_network

    package = Model.load(str(package_dir))
    artifacts = package.flavors["python_function"]["artifacts"]
    preprocessor = TabularPreprocessor.from_dict(
        json.loads((package_dir / artifacts[PREPROCESSOR_ARTIFACT]["path"]).read_text())
    )
    network = load_network(package_dir / artifacts[NETWORK_ARTIFACT]["path"], "cpu")
    example = package.load_input_example(str(package_dir))
    if package.signature is None or example is None:
        raise BundleError(f"model package {source_model_uri} has no signature or input example; retrain to add them")
    return bundle_from_model(
        out_dir,
        network=network,
        preprocessor=preprocessor,
        columns=[ColumnSpec(spec.name, spec.type.name) for spec in package.signature.inputs.inputs],
        example=example,
        model_name=model_name,
        model_version=model_version,
        source_model_uri=source_model_uri,
    )


def bundle_from_model(
    out_dir: Path,
    *,
    network: Any,
    preprocessor: TabularPreprocessor,
    columns: list[ColumnSpec],
    example: pd.DataFrame,
    model_name: str,
    model_version: int,
    source_model_uri: str,
) -> str:
    """Write the bundle of a trained network: smoke rows from ``example``, expected outputs from the network itself.

    Returns:
        The sha256 of the bundle's manifest.
    """
    from mlsteps.model import DECISION_THRESHOLD, predict_frame

    rows = smoke_frame(example, preprocessor)
    return write_bundle(
        out_dir,
        network=network,
        preprocessor=preprocessor,
        columns=columns,
        smoke_rows=rows,
        expected_probability=predict_frame(preprocessor, network, rows)["probability"].to_numpy(dtype=np.float64),
        model_name=model_name,
        model_version=model_version,
        source_model_uri=source_model_uri,
        decision_threshold=DECISION_THRESHOLD,
    )


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise BundleError(f"serving bundle {folder} has no {name}; re-register the model version") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"serving bundle file {folder / name} is not valid JSON ({exc})") from None


def read_bundle(folder: Path, expected_sha256: str | None = None) -> ServingBundle:
    """Read and verify a bundle folder.

    Args:
        folder: the bundle folder.
        expected_sha256: the manifest's sha256 as registration recorded it; None checks the files against the
            manifest only.

    Raises:
        BundleError: a file is missing or unreadable, or a checksum differs (naming the file).
    """
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise BundleError(f"{folder} is not a serving bundle: it has no {MANIFEST_FILE}")
    actual = sha256_of(folder / MANIFEST_FILE)
    if expected_sha256 is not None and actual != expected_sha256:
        raise BundleError(
            f"serving bundle {folder / MANIFEST_FILE} has sha256 {actual}, registration recorded {expected_sha256}: "
            "the bundle was changed after registration; do not serve it"
        )
    manifest = _read_json(folder, MANIFEST_FILE)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"serving bundle {folder} has format {manifest.get('format')}, this server reads format {BUNDLE_FORMAT}"
        )
    for name, recorded in manifest["files"].items():
        if not (folder / name).is_file():
            raise BundleError(f"serving bundle {folder} lacks {name}, which its manifest lists")
        if sha256_of(folder / name) != recorded:
            raise BundleError(f"serving bundle file {folder / name} does not match the sha256 in its manifest")
    smoke = _read_json(folder, SMOKE_FILE)
    return ServingBundle(
        folder=folder,
        model_name=manifest["model_name"],
        model_version=int(manifest["model_version"]),
        columns=[ColumnSpec(**column) for column in _read_json(folder, SIGNATURE_FILE)],
        preprocessor=TabularPreprocessor.from_dict(_read_json(folder, PREPROCESSOR_FILE)),
        onnx_path=folder / ONNX_FILE,
        decision_threshold=float(manifest["decision_threshold"]),
        smoke_inputs=smoke["inputs"],
        smoke_probability=[float(p) for p in smoke["probability"]],
        sha256=actual,
    )


def resolve_version(client: Any, model_name: str, alias_or_version: str) -> int:
    """A version number from ``"7"`` or an alias such as ``"champion"``.

    Raises:
        StepError: the version or alias does not exist (naming the model and what was asked for).
    """
    from mlflow.exceptions import MlflowException

    text = str(alias_or_version).strip()
    if text.isdigit():
        try:
            client.get_model_version(model_name, text)
        except MlflowException as exc:
            if registry.is_missing(exc):
                raise StepError(f"model {model_name} has no version {text}") from None
            raise
        return int(text)
    number = registry.alias_version_number(client, model_name, text)
    if number is None:
        raise StepError(f"model {model_name} has no alias {text!r}: promote a version first, or name a version")
    return number


def upload_bundle(client: Any, model_name: str, model_version: int, run_id: str, folder: Path) -> str:
    """Log a bundle folder to the run's artifacts and tag the version with its URI and sha256 (the sha last)."""
    sha = sha256_of(folder / MANIFEST_FILE)
    artifact_path = f"serving_bundle/v{model_version}"
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
    registry.set_version_tags(client, model_name, model_version, {BUNDLE_URI_TAG: f"runs:/{run_id}/{artifact_path}"})
    registry.set_version_tags(client, model_name, model_version, {BUNDLE_SHA256_TAG: sha})
    return sha


def publish_bundle(client: Any, model_name: str, model_version: int, source_model_uri: str, run_id: str) -> str:
    """Export and upload the bundle of a registered version, once: a version that has one keeps it.

    Returns:
        The sha256 of the bundle's manifest.
    """
    import mlflow.artifacts

    tags = client.get_model_version(model_name, str(model_version)).tags
    if tags.get(BUNDLE_SHA256_TAG):
        return tags[BUNDLE_SHA256_TAG]
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        package = Path(mlflow.artifacts.download_artifacts(artifact_uri=source_model_uri, dst_path=f"{tmp}/package"))
        bundle = Path(tmp) / "bundle"
        export_bundle(package, bundle, model_name, model_version, source_model_uri)
        return upload_bundle(client, model_name, model_version, run_id, bundle)


def fetch_bundle(client: Any, model_name: str, model_version: int, dest: Path) -> ServingBundle:
    """Download a version's bundle into ``dest`` and verify it against the sha256 recorded at registration.

    Raises:
        BundleError: the version has no bundle, or the download does not match.
    """
    import mlflow.artifacts

    tags = client.get_model_version(model_name, str(model_version)).tags
    uri, sha = tags.get(BUNDLE_URI_TAG), tags.get(BUNDLE_SHA256_TAG)
    if not uri or not sha:
        raise BundleError(
            f"{model_name} v{model_version} has no serving bundle (tags {BUNDLE_URI_TAG}, {BUNDLE_SHA256_TAG}): it was "
            "registered before bundles existed or its registration did not finish; re-run register for it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    bundle = read_bundle(folder, sha)
    if (bundle.model_name, bundle.model_version) != (model_name, int(model_version)):
        raise BundleError(
            f"the bundle at {uri} is for {bundle.model_name} v{bundle.model_version}, not {model_name} v{model_version}"
        )
    return bundle
