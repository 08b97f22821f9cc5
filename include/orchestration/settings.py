"""Airflow-side settings: which runtime runs the steps, where artifacts and MLflow live, per-step limits.

Read from the ``runtime:`` section of the pipeline config (``include/config/pipeline.yaml``), with environment
overrides for what differs per deployment:

- ``ML_RUNTIME``: ``local`` (steps run as subprocesses; the embedded default) or ``kubernetes`` (steps run as pods);
- ``ML_ARTIFACT_ROOT``: where runs, snapshots and reports go (``s3://bucket/prefix`` in production);
- ``ML_DATASET_URI``: the dataset a scheduled run reads;
- ``ML_STATE_DIR``: the one git-ignored folder of the embedded default (Airflow DB, MLflow, artifacts, data);
- ``MLFLOW_TRACKING_URI``: the MLflow server (SQLite in the state folder by default).

Everything here is cheap to import: DAG files call it at parse time.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlsteps import results
from mlsteps.config import CONFIG_ENV_VAR, PipelineConfig, load_pipeline_config, resolve_config_uri
from mlsteps.errors import ConfigError
from mlsteps.storage import S3_ENDPOINT_ENV_VAR

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STEPS = ("snapshot", "validate", "preprocess", "train", "evaluate", "register", "promote")


class StepSettings(BaseModel):
    """Orchestration limits of one step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_minutes: int = Field(30, ge=1, description="execution_timeout of the task")
    retries: int = Field(2, ge=0, le=10, description="retries after infrastructure failures (not after bad input)")
    priority_weight: int = Field(1, ge=1, description="scheduler priority when slots are scarce")

    @property
    def execution_timeout(self) -> timedelta:
        """The task's execution timeout."""
        return timedelta(minutes=self.timeout_minutes)


class KubernetesSettings(BaseModel):
    """Where and how pods run for runtime ``kubernetes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("ml", description="namespace of the step pods")
    image: str = Field("ghcr.io/example/mlsteps:0.1.0", description="steps image, pinned by tag or digest")
    connection_id: str = Field("kubernetes_default", description="Airflow connection to the cluster")

    @field_validator("image")
    @classmethod
    def _pinned(cls, image: str) -> str:
        name = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
            raise ValueError(f"image {image!r} must be pinned by a tag (not latest) or a digest")
        return image


class RuntimeSettings(BaseModel):
    """The ``runtime:`` section of the pipeline config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["local", "kubernetes"] = Field("local", description="where the steps run")
    artifact_root: str | None = Field(None, description="runs, snapshots, reports; default: <state>/artifacts")
    dataset_uri: str | None = Field(None, description="dataset of scheduled runs; default: the built-in one")
    retrain_cron: str = Field("0 3 * * 1", description="cron of scheduled retraining (UTC)")
    steps: dict[str, StepSettings] = Field(
        default_factory=dict, validate_default=True, description="per-step limits; unlisted steps get the defaults"
    )
    kubernetes: KubernetesSettings = KubernetesSettings()

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: dict[str, StepSettings]) -> dict[str, StepSettings]:
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown steps {unknown}; known steps: {list(STEPS)}")
        return {name: steps.get(name, StepSettings()) for name in STEPS}


class Settings(BaseModel):
    """Resolved settings of this deployment."""

    model_config = ConfigDict(frozen=True)

    config_uri: str
    pipeline: PipelineConfig
    runtime: RuntimeSettings
    state_dir: Path
    artifact_root: str
    dataset_uri: str
    mlflow_tracking_uri: str

    def run_root(self, dag_id: str, run_id: str) -> str:
        """The artifact folder of one DAG run (the same function the steps use)."""
        return results.run_root(self.artifact_root, dag_id, run_id)

    @property
    def snapshot_store(self) -> str:
        """Where content-addressed dataset snapshots are kept, shared by all runs."""
        return f"{self.artifact_root.rstrip('/')}/snapshots"

    def step(self, name: str) -> StepSettings:
        """Limits of one step."""
        return self.runtime.steps[name]

    def step_env(self) -> dict[str, str]:
        """Environment of every step process or pod: the same for both runtimes (secrets are added separately)."""
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            CONFIG_ENV_VAR: self.config_uri,
            "PYTHONUNBUFFERED": "1",
        }
        if self.mlflow_tracking_uri.startswith("sqlite:"):
            # A database-only store keeps artifacts where new experiments say: the state folder, never the cwd.
            env["MLFLOW_ARTIFACT_LOCATION"] = (self.state_dir / "mlflow" / "artifacts").as_uri()
        if os.environ.get(S3_ENDPOINT_ENV_VAR):
            env[S3_ENDPOINT_ENV_VAR] = os.environ[S3_ENDPOINT_ENV_VAR]
        return env


def load_settings(config_uri: str | None = None) -> Settings:
    """Resolve settings from the pipeline config and the environment.

    Raises:
        ConfigError: naming the file and the field that is wrong.
    """
    config_uri = resolve_config_uri(config_uri)
    pipeline = load_pipeline_config(config_uri)
    try:
        runtime = RuntimeSettings.model_validate(pipeline.runtime)
    except ValidationError as exc:
        details = "; ".join(f"runtime.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{config_uri}: {details}") from None
    mode = os.environ.get("ML_RUNTIME", runtime.mode)
    if mode not in ("local", "kubernetes"):
        raise ConfigError(f"ML_RUNTIME={mode!r}: use 'local' or 'kubernetes'")
    runtime = runtime.model_copy(update={"mode": mode})
    state_dir = Path(os.environ.get("ML_STATE_DIR", PROJECT_ROOT / ".local")).resolve()
    artifact_root = os.environ.get("ML_ARTIFACT_ROOT") or runtime.artifact_root or str(state_dir / "artifacts")
    dataset_uri = os.environ.get("ML_DATASET_URI") or runtime.dataset_uri or str(state_dir / "datasets" / "churn.csv")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}"
    if mode == "kubernetes" and not artifact_root.startswith("s3://"):
        raise ConfigError(f"runtime kubernetes needs an s3:// artifact root that pods can reach, got {artifact_root!r}")
    return Settings(
        config_uri=config_uri,
        pipeline=pipeline,
        runtime=runtime,
        state_dir=state_dir,
        artifact_root=artifact_root,
        dataset_uri=dataset_uri,
        mlflow_tracking_uri=tracking_uri,
    )


@functools.cache
def get_settings() -> Settings:
    """Settings of this process, loaded once (DAG files call this at parse time)."""
    return load_settings()
