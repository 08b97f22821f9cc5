"""The serving bundle: what the model server needs of a model version, without MLflow's model package.

At registration each version gets a folder beside its training run's artifacts (``serving_bundle/v<version>``):

- ``model.onnx``: the package's ONNX model, copied as training exported and checked it (the contract of
  ``mlsteps.evaluation.tasks``: inputs ``numeric`` and ``categories``, output ``probabilities`` or ``prediction``);
- ``preprocessor.json``: the fitted ``TabularPreprocessor`` that turns raw rows into those inputs;
- ``task.json``: the ``TaskInfo`` (task, classes, target, family), which decides the server's outputs;
- ``signature.json``: the request columns in order, with their MLflow types;
- ``smoke.json``: a few raw rows and the ONNX model's raw outputs on them (per row the class probabilities, or the
  predicted value), the expected outputs of every smoke test (the server's own load check and the deploy step's
  check through the Service);
- ``manifest.json``: format, model name and version, task and classes, and the sha256 of every other file.

The version's tags name the folder (``serving_bundle_uri``) and the sha256 of ``manifest.json``
(``serving_bundle_sha256``), so a server verifies every byte it loads against what registration recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsteps import registry
from mlsteps.data.features import TabularPreprocessor
from mlsteps.errors import StepError
from mlsteps.evaluation.tasks import is_classification
from mlsteps.inference import TaskInfo, onnx_session, predict_raw

BUNDLE_URI_TAG = "serving_bundle_uri"
BUNDLE_SHA256_TAG = "serving_bundle_sha256"
BUNDLE_FORMAT = 2
ONNX_FILE = "model.onnx"
PREPROCESSOR_FILE = "preprocessor.json"
TASK_FILE = "task.json"
SIGNATURE_FILE = "signature.json"
SMOKE_FILE = "smoke.json"
MANIFEST_FILE = "manifest.json"
# Rows of the input example kept as smoke inputs, plus one row of nulls and one of unseen categories.
SMOKE_EXAMPLE_ROWS = 8
UNSEEN_CATEGORY = "__unseen__"


class BundleError(StepError):
    """A serving bundle is missing, incomplete, of an older format or does not match its recorded checksums."""


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
    info: TaskInfo
    smoke_inputs: list[dict[str, Any]]
    smoke_outputs: np.ndarray  # the ONNX model's raw output on smoke_inputs (float64; see predict_raw)
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


def smoke_frame(example: pd.DataFrame, preprocessor: TabularPreprocessor) -> pd.DataFrame:
    """Smoke rows: the first input-example rows, one row of nulls and one of unseen categories."""
    rows = example.head(SMOKE_EXAMPLE_ROWS).reset_index(drop=True)
    nulls = pd.DataFrame([dict.fromkeys(example.columns)], dtype=object)
    unseen = rows.head(1).astype(object).copy()
    for column in preprocessor.categorical_columns:
        unseen[column] = UNSEEN_CATEGORY
    return pd.concat([rows.astype(object), nulls, unseen], ignore_index=True)


def smoke_differences(task: str, actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per row, how far outputs are from the smoke outputs (both raw, as ``predict_raw`` returns them).

    Classification: the largest absolute difference over the row's class probabilities. Regression: the absolute
    difference relative to the expected value, or absolute where that value is below 1 in size (so that a value
    near zero does not make any rounding look large). A missing or non-finite output is infinitely far.
    """
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    gaps = np.abs(actual - expected)
    if is_classification(task):
        gaps = gaps.reshape(len(gaps), -1).max(axis=1, initial=0.0)
    else:
        gaps = gaps / np.maximum(np.abs(expected), 1.0)
    return np.nan_to_num(gaps, nan=np.inf)


def describe_difference(task: str) -> str:
    """What ``smoke_differences`` measures, for messages and reports."""
    return "absolute probability difference" if is_classification(task) else "relative prediction difference"


def values_text(values: Any) -> str:
    """One row's output for a message: a number, or a list of probabilities."""
    array = np.asarray(values, dtype=np.float64)
    return f"{float(array):.6g}" if array.ndim == 0 else "[" + ", ".join(f"{v:.6f}" for v in array.tolist()) + "]"


def write_bundle_from_parts(
    out_dir: Path,
    *,
    onnx_model_path: Path,
    preprocessor: TabularPreprocessor,
    info: TaskInfo,
    columns: Sequence[ColumnSpec],
    example: pd.DataFrame,
    model_name: str,
    model_version: int,
    source_model_uri: str,
) -> str:
    """Write a bundle folder from an ONNX model file and what the package says about it; return the manifest's sha256.

    The smoke outputs are the ONNX model's own raw outputs on the smoke rows (``smoke_frame`` of ``example``),
    computed with ONNX Runtime as the server computes them. Training already checked the ONNX model against the
    native one, so the bundle needs no check of its own here.

    Raises:
        BundleError: the model's outputs on the smoke rows are not finite (it could never pass a smoke test).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_model_path, out_dir / ONNX_FILE)
    rows = smoke_frame(example, preprocessor)
    numeric, categories = preprocessor.transform(rows)
    outputs = predict_raw(onnx_session(out_dir / ONNX_FILE), numeric, categories, info.task)
    if not np.all(np.isfinite(outputs)):
        raise BundleError(
            f"the ONNX model of {model_name} v{model_version} ({source_model_uri}) gives non-finite outputs on the "
            "smoke rows (the input example, a row of nulls, a row of unseen categories): retrain the model"
        )
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor.to_dict(), indent=1))
    (out_dir / TASK_FILE).write_text(json.dumps(asdict(info), indent=1))
    (out_dir / SIGNATURE_FILE).write_text(json.dumps([asdict(column) for column in columns], indent=1))
    (out_dir / SMOKE_FILE).write_text(json.dumps({"inputs": json_rows(rows), "outputs": outputs.tolist()}, indent=1))
    files = (ONNX_FILE, PREPROCESSOR_FILE, TASK_FILE, SIGNATURE_FILE, SMOKE_FILE)
    manifest = {
        "format": BUNDLE_FORMAT,
        "model_name": model_name,
        "model_version": int(model_version),
        "source_model_uri": source_model_uri,
        "task": info.task,
        "classes": info.classes,
        "files": {name: sha256_of(out_dir / name) for name in files},
        "written_with": _package_versions("onnxruntime", "mlflow", "mlflow-skinny"),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return sha256_of(out_dir / MANIFEST_FILE)


def export_bundle(package_dir: Path, out_dir: Path, model_name: str, model_version: int, source_model_uri: str) -> str:
    """Make the bundle of a downloaded MLflow model package (``mlsteps.model``'s layout): its ONNX model is copied.

    Returns:
        The sha256 of the bundle's manifest.

    Raises:
        BundleError: the package is of an older layout (no ONNX model, task, signature or input example).
    """
    from mlsteps.model import read_package

    try:
        package = read_package(package_dir)
    except FileNotFoundError as exc:
        raise BundleError(f"cannot make a serving bundle of {source_model_uri}: {exc}") from None
    return write_bundle_from_parts(
        out_dir,
        onnx_model_path=package.onnx_path,
        preprocessor=package.preprocessor,
        info=package.info,
        columns=[ColumnSpec(name, mlflow_type) for name, mlflow_type in package.columns],
        example=package.example,
        model_name=model_name,
        model_version=model_version,
        source_model_uri=source_model_uri,
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
        BundleError: a file is missing or unreadable, a checksum differs (naming the file), or the bundle is of
            another format (format 1: a binary torch export, made before models were exported to ONNX at training).
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
    found = manifest.get("format")
    if found != BUNDLE_FORMAT:
        who = f"{manifest.get('model_name', 'the model')} v{manifest.get('model_version', '?')}"
        raise BundleError(
            f"serving bundle {folder} of {who} has format {found}, this server reads format {BUNDLE_FORMAT} only "
            "(the ONNX model exported at training, any task): a bundle cannot be converted, so retrain the model "
            "and register the new version (the train and register steps make a format-2 bundle)"
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
        info=TaskInfo.from_dict(_read_json(folder, TASK_FILE)),
        smoke_inputs=smoke["inputs"],
        smoke_outputs=np.asarray(smoke["outputs"], dtype=np.float64),
        sha256=actual,
    )


class RegistryReader(ABC):
    """What resolving a version and fetching its bundle need of a model registry.

    The steps read the registry with an MLflow client (``MlflowRegistryReader``); the model server reads it over
    MLflow's REST API (``mlsteps.serve.registry_client``), so that the serving image needs no MLflow package.
    """

    @abstractmethod
    def version_tags(self, model_name: str, version: int) -> dict[str, str] | None:
        """The tags of a model version; None when the model or the version does not exist."""

    @abstractmethod
    def alias_version(self, model_name: str, alias: str) -> int | None:
        """The version number an alias points at; None when the model or the alias does not exist."""

    @abstractmethod
    def download(self, artifact_uri: str, dest: Path) -> Path:
        """Download an artifact folder (a ``runs:/<run id>/<path>`` URI) into ``dest``; returns the local folder."""


class MlflowRegistryReader(RegistryReader):
    """The registry through an ``MlflowClient`` (mlflow-skinny): any tracking URI MLflow reads, SQLite included."""

    def __init__(self, client: Any) -> None:
        """Read through ``client``, an ``mlflow.MlflowClient``."""
        self.client = client

    def version_tags(self, model_name: str, version: int) -> dict[str, str] | None:
        """The tags of a model version; None when the model or the version does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_model_version(model_name, str(version)).tags)
        except MlflowException as exc:
            if registry.is_missing(exc):
                return None
            raise

    def alias_version(self, model_name: str, alias: str) -> int | None:
        """The version number an alias points at; None when the model or the alias does not exist."""
        return registry.alias_version_number(self.client, model_name, alias)

    def download(self, artifact_uri: str, dest: Path) -> Path:
        """Download an artifact folder into ``dest`` with MLflow's artifact repositories."""
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dest), tracking_uri=self.client.tracking_uri
        )
        return Path(local)


def registry_reader(client: Any) -> RegistryReader:
    """``client`` as a ``RegistryReader``: a reader as it is, an ``MlflowClient`` wrapped."""
    return client if isinstance(client, RegistryReader) else MlflowRegistryReader(client)


def _version_tags(reader: RegistryReader, model_name: str, version: int) -> dict[str, str]:
    tags = reader.version_tags(model_name, version)
    if tags is None:
        raise StepError(f"model {model_name} has no version {version}")
    return tags


def resolve_version(client: Any, model_name: str, alias_or_version: str) -> int:
    """A version number from ``"7"`` or an alias such as ``"champion"``.

    Args:
        client: a ``RegistryReader`` or an ``MlflowClient``.
        model_name: registered model name.
        alias_or_version: a version number or an alias.

    Raises:
        StepError: the version or alias does not exist (naming the model and what was asked for).
    """
    reader = registry_reader(client)
    text = str(alias_or_version).strip()
    if text.isdigit():
        _version_tags(reader, model_name, int(text))
        return int(text)
    number = reader.alias_version(model_name, text)
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
    """Make and upload the bundle of a registered version, once: a version that has one keeps it.

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

    Args:
        client: a ``RegistryReader`` or an ``MlflowClient``.
        model_name: registered model name.
        model_version: the version.
        dest: the folder to download into (created when missing).

    Raises:
        StepError: the version does not exist.
        BundleError: the version has no bundle, or the download does not match.
    """
    reader = registry_reader(client)
    tags = _version_tags(reader, model_name, model_version)
    uri, sha = tags.get(BUNDLE_URI_TAG), tags.get(BUNDLE_SHA256_TAG)
    if not uri or not sha:
        raise BundleError(
            f"{model_name} v{model_version} has no serving bundle (tags {BUNDLE_URI_TAG}, {BUNDLE_SHA256_TAG}): it was "
            "registered before bundles existed or its registration did not finish; re-run register for it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    bundle = read_bundle(reader.download(uri, dest), sha)
    if (bundle.model_name, bundle.model_version) != (model_name, int(model_version)):
        raise BundleError(
            f"the bundle at {uri} is for {bundle.model_name} v{bundle.model_version}, not {model_name} v{model_version}"
        )
    return bundle
