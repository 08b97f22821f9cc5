"""Shared fixtures: a loaded pipeline config, MLflow on SQLite, and moto's standalone S3 server over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

from mlsteps.config import DatasetConfig, PipelineConfig, load_pipeline_config
from mlsteps.data import storage

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never touch the project's own .local/ state: Airflow and the embedded default get a throw-away home.
# Set before anything imports Airflow, which reads its configuration once.
_TEST_STATE = Path(tempfile.mkdtemp(prefix="mlsteps-tests-"))
os.environ["ML_STATE_DIR"] = str(_TEST_STATE)
os.environ["AIRFLOW_HOME"] = str(_TEST_STATE / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
for _name in ("ML_RUNTIME", "ML_ARTIFACT_ROOT", "ML_DATASET_URI", "MLFLOW_TRACKING_URI", "MLSTEPS_CONFIG"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def pipeline_config() -> PipelineConfig:
    """The bundled pipeline config (built-in churn dataset)."""
    return load_pipeline_config()


@pytest.fixture
def dataset(pipeline_config: PipelineConfig) -> DatasetConfig:
    """The bundled churn dataset config."""
    return pipeline_config.dataset


@pytest.fixture
def mlflow_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """MLflow tracking and registry on a fresh SQLite file; artifacts under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", (tmp_path / "mlartifacts").as_uri())
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def serving_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real serving bundle (ONNX model, preprocessor, smoke rows) of a known risk-score model, version 1.

    Read-only for tests: copy it before changing anything (``fake_models.break_bundle`` breaks a copy).
    """
    from fake_models import write_test_bundle

    return write_test_bundle(tmp_path_factory.mktemp("bundle") / "v1")


@pytest.fixture(scope="session")
def task_bundle_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Serving bundles of the fake multiclass and regression models (``fake_models.task_model``), version 1, by task.

    Read-only for tests, as ``serving_bundle_dir``.
    """
    from fake_models import write_task_bundle

    root = tmp_path_factory.mktemp("task-bundles")
    return {task: write_task_bundle(root / task, task) for task in ("multiclass", "regression")}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's standalone server in its own process, reached over real HTTP; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the moto server; storage and subprocesses use it through S3_ENDPOINT_URL."""
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV_VAR, moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.s3_client.cache_clear()
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{slug}-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    storage.s3_client.cache_clear()
