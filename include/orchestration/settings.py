"""Airflow-side settings: which runtime runs the steps, where artifacts and MLflow live, per-step limits.

Read from the ``runtime:`` section of the pipeline config (``include/config/pipeline.yaml``), with environment
overrides for what differs per deployment:

- ``ML_RUNTIME``: ``local`` (steps run as subprocesses; the embedded default) or ``kubernetes`` (steps run as pods);
- ``ML_ARTIFACT_ROOT``: where runs, snapshots and reports go (``s3://bucket/prefix`` in production);
- ``ML_DATASET_URI``: the dataset a scheduled run reads when the model config sets no ``runtime.dataset_uri``;
  ``{dataset}`` in it stands for the model's dataset name (``s3://ml-datasets/{dataset}/latest.parquet``), so one
  value serves every model; default ``<state>/datasets/{dataset}.csv``;
- ``ML_STATE_DIR``: the one git-ignored folder of the embedded default (Airflow DB, MLflow, artifacts, data);
- ``MLFLOW_TRACKING_URI``: the MLflow server (SQLite in the state folder by default).

Everything here is cheap to import: DAG files call it at parse time.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlsteps import results
from mlsteps.config import (
    CONFIG_ENV_VAR,
    DISTRIBUTED_FAMILIES,
    PipelineConfig,
    load_pipeline_config,
    resolve_config_uri,
)
from mlsteps.data.storage import S3_ENDPOINT_ENV_VAR
from mlsteps.errors import ConfigError
from mlsteps.steps import STEPS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATASET_URI_ENV_VAR = "ML_DATASET_URI"
GPU_POOL = "gpu"  # the Airflow pool (airflow_settings.yaml) that caps concurrent GPU steps
# Most pods one training run may span (runtime.steps.train.nodes): the c10d store on the first pod serves each
# process of every pod, and a Job this wide already takes a whole GPU node pool.
MAX_TRAIN_NODES = 32


_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE]))?$")
_SUFFIX_FACTORS = {
    **{suffix: Decimal(1024) ** power for power, suffix in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: Decimal(1000) ** power for suffix, power in zip("numkMGTPE", (-3, -2, -1, *range(1, 7)), strict=True)},
}


@functools.lru_cache(maxsize=1024, typed=True)
def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``500m``, ``16Gi``, ``1e3``) as a number, so requests and limits can be compared.

    Kubernetes' grammar in a few lines: the kubernetes client's own parser costs 0.3 s of imports, which every DAG
    parse would pay (a test checks both agree). Cached: every step of every model checks the same few quantities.
    """
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 16Gi)")
    number, exponent, suffix = match.groups()
    return Decimal(number) * (Decimal(10) ** int(exponent[1:]) if exponent else _SUFFIX_FACTORS[suffix or ""])


def _quantity(value: str | int | float) -> Decimal:
    number = parse_quantity(value)
    if number <= 0:
        raise ValueError(f"{value!r} must be positive")
    return number


class Quantities(BaseModel):
    """CPU, memory and ephemeral storage of a container, as Kubernetes quantities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: str = Field("1", description="CPU cores, e.g. 500m or 4")
    memory: str = Field("2Gi", description="memory, e.g. 512Mi or 16Gi")
    ephemeral_storage: str = Field("2Gi", description="node-local disk for /tmp and caches")

    @field_validator("cpu", "memory", "ephemeral_storage", mode="before")
    @classmethod
    def _valid_quantity(cls, value: str | int | float) -> str:
        _quantity(value)
        return str(value)

    def as_kubernetes(self) -> dict[str, str]:
        """The quantities under Kubernetes' resource names."""
        return {"cpu": self.cpu, "memory": self.memory, "ephemeral-storage": self.ephemeral_storage}


class Resources(BaseModel):
    """Requests and limits of a step's container; limits default to the requests (no overcommit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: Quantities = Quantities()
    limits: Quantities = Field(Quantities(), description="default: equal to the requests")

    @model_validator(mode="before")
    @classmethod
    def _limits_default_to_requests(cls, data: object) -> object:
        if isinstance(data, dict):
            return {**data, "limits": {**(data.get("requests") or {}), **(data.get("limits") or {})}}
        return data

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for name in Quantities.model_fields:
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if _quantity(limit) < _quantity(request):
                raise ValueError(f"limits.{name}={limit} is below requests.{name}={request}")
        return self


class StepSettings(BaseModel):
    """How one step runs: Airflow limits, and its pod's image, identity and resources on Kubernetes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_minutes: int = Field(30, ge=1, description="execution_timeout of the task")
    retries: int = Field(2, ge=0, le=10, description="retries after infrastructure failures (not after bad input)")
    priority_weight: int = Field(1, ge=1, description="scheduler priority when slots are scarce")
    image: Literal["steps", "train"] = Field("steps", description="which of runtime.kubernetes.images runs the step")
    service_account: str = Field("ml-steps", description="ServiceAccount of the pod (one per step class)")
    needs_kubernetes_api: bool = Field(False, description="mount a ServiceAccount token (only the deploy step)")
    gpus: int = Field(0, ge=0, description="GPUs of the pod; more than 1 runs one training process per GPU")
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_TRAIN_NODES,
        description="pods that train together, each with `gpus` GPUs on its own node (train only, mlp only): an "
        "Indexed Job on Kubernetes; the local runtime runs one process",
    )
    resources: Resources = Resources()

    @property
    def execution_timeout(self) -> timedelta:
        """The task's execution timeout."""
        return timedelta(minutes=self.timeout_minutes)


class GpuSettings(BaseModel):
    """How GPU pods find and are allowed onto GPU nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str = Field("nvidia.com/gpu", description="extended resource of the device plugin")
    per_node: int = Field(8, ge=1, description="the most GPUs one node of the GPU node pool has")
    product_label: str = Field("nvidia.com/gpu.product", description="node label naming the GPU model")
    products: tuple[str, ...] = Field((), description="accepted GPU models (node affinity); empty: any GPU node")
    taint_key: str = Field("nvidia.com/gpu", description="key of the taint GPU nodes carry (tolerated: Exists)")


class DataVolume(BaseModel):
    """A PersistentVolumeClaim for large datasets (read-only) and training checkpoints (read-write)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim_name: str = Field(description="name of the PersistentVolumeClaim in the namespace")
    datasets_path: str = Field("/mnt/datasets", description="read-only mount of the claim's datasets/ folder")
    checkpoints_path: str = Field("/mnt/checkpoints", description="read-write mount of its checkpoints/ folder")


def _pinned_image(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
        raise ValueError(f"image {image!r} must be pinned by a tag (not latest) or a digest")
    return image


# A PriorityClass name: a DNS-1123 subdomain.
_PRIORITY_CLASS = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class ModelServerSettings(BaseModel):
    """One model's server pods on Kubernetes (``make render``); an unset field keeps what
    ``include/k8s/model-server.yaml`` says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(None, description="server image pinned by tag or digest; default the template's")
    resources: Resources | None = Field(None, description="requests and limits of the server; default the template's")
    min_replicas: int | None = Field(None, ge=1, description="fewest pods the autoscaler keeps; default the template's")
    max_replicas: int | None = Field(None, ge=1, description="most pods the autoscaler runs; default the template's")
    priority_class_name: str | None = Field(
        None, pattern=_PRIORITY_CLASS, description="PriorityClass of the server pods; default the steps' one"
    )

    @field_validator("image")
    @classmethod
    def _pinned(cls, image: str | None) -> str | None:
        return None if image is None else _pinned_image(image)

    @model_validator(mode="after")
    def _replicas_in_order(self) -> ModelServerSettings:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_replicas={low} is above max_replicas={high}")
        return self


class KubernetesSettings(BaseModel):
    """Where and how pods run for runtime ``kubernetes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("ml", description="namespace of the step pods")
    connection_id: str = Field("kubernetes_default", description="Airflow connection to the cluster")
    images: dict[Literal["steps", "train"], str] = Field(
        default_factory=lambda: {
            "steps": "ghcr.io/example/mlsteps:0.1.0",
            "train": "ghcr.io/example/mlsteps-train:0.1.0",
        },
        description="images pinned by tag or digest: steps (CPU) and train (CUDA)",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = Field((), description="Secrets of type dockerconfigjson for the registry")
    run_as_user: int = Field(10001, ge=1, description="non-root UID of every container (the images' user)")
    run_as_group: int = Field(10001, ge=1, description="GID of every container and owner of mounted volumes")
    config_map: str = Field("mlsteps-config", description="ConfigMap with the pipeline config (make render)")
    secrets: tuple[str, ...] = Field(
        ("ml-object-storage", "ml-mlflow"),
        description="Secrets passed as environment (envFrom); empty with workload identity",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra labels of step pods and serving objects, e.g. team and cost center"
    )
    priority_class_name: str | None = Field(
        None,
        pattern=_PRIORITY_CLASS,
        description="PriorityClass (it must exist) of the model's step and server pods; unset: the cluster's default",
    )
    model_server: ModelServerSettings = Field(ModelServerSettings(), description="the model's server pods")
    gpu: GpuSettings = GpuSettings()
    kueue_queue: str | None = Field(None, description="Kueue LocalQueue that admits GPU pods against a team quota")
    data_volume: DataVolume | None = Field(None, description="optional claim for datasets and checkpoints")
    schedule_timeout_seconds: int = Field(600, ge=1, description="how long a pod may wait for a node")
    startup_timeout_seconds: int = Field(900, ge=1, description="how long a scheduled pod may pull images and start")
    deferrable: bool = Field(False, description="wait for pods in the triggerer instead of a worker slot")

    @field_validator("images")
    @classmethod
    def _pinned(cls, images: dict[str, str]) -> dict[str, str]:
        missing = sorted({"steps", "train"} - set(images))
        if missing:
            raise ValueError(f"images {missing} missing; give both steps and train")
        return {key: _pinned_image(image) for key, image in images.items()}


class NewDataSettings(BaseModel):
    """Event-driven retraining: the SQS queue that receives the dataset bucket's S3 event notifications.

    The triggerer long-polls the queue (``orchestration.new_data``) and updates the ``training_data`` asset when a new
    version of the dataset object arrives; without a queue only the cron, monitor alerts and producers of the asset
    (an upstream DAG's outlet, ``POST /api/v2/assets/events``) start a retraining.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_url: str | None = Field(None, description="SQS queue URL of the dataset bucket's notifications; unset: none")
    aws_conn_id: str | None = Field(
        "aws_default", description="Airflow AWS connection the triggerer reads the queue with; null: boto3's chain"
    )
    region_name: str | None = Field(None, description="region of the queue; default: the connection's")
    wait_time_seconds: int = Field(20, ge=0, le=20, description="SQS long-poll wait of each receive (at most 20)")
    poll_seconds: int = Field(60, ge=0, description="pause after a receive that found the queue empty")

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError(
                f"{url!r} is not an SQS queue URL; give the queue's QueueUrl, "
                "e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/ml-dataset-events"
            )
        return url


class RuntimeSettings(BaseModel):
    """The ``runtime:`` section of the pipeline config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["local", "kubernetes"] = Field("local", description="where the steps run")
    artifact_root: str | None = Field(None, description="runs, snapshots, reports; default: <state>/artifacts")
    dataset_uri: str | None = Field(
        None, description="dataset of scheduled runs; default: $ML_DATASET_URI, else <state>/datasets/<dataset>.csv"
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow server; default: SQLite in the state folder")
    retrain_cron: str = Field("0 3 * * 1", description="cron of scheduled retraining (UTC)")
    monitor_cron: str = Field("0 * * * *", description="cron of the drift checks (UTC); each reads the window before")
    priority_weight_offset: int = Field(
        0,
        description="added to the Airflow priority_weight of every task of the model's DAGs: positive for a model "
        "whose runs should get worker slots first when they are scarce, negative for one that can wait",
    )
    steps: dict[str, StepSettings] = Field(
        default_factory=dict, validate_default=True, description="per-step settings; unlisted steps get the defaults"
    )
    kubernetes: KubernetesSettings = KubernetesSettings()
    new_data: NewDataSettings = NewDataSettings()

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: dict[str, StepSettings]) -> dict[str, StepSettings]:
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown steps {unknown}; known steps: {list(STEPS)}")
        return {name: steps.get(name, StepSettings()) for name in STEPS}

    @model_validator(mode="after")
    def _gpus_fit_a_node(self) -> RuntimeSettings:
        per_node = self.kubernetes.gpu.per_node
        too_many = {name: step.gpus for name, step in self.steps.items() if step.gpus > per_node}
        if too_many:
            raise ValueError(
                f"steps {too_many} ask for more GPUs than a node has (kubernetes.gpu.per_node={per_node}); "
                "one pod runs on one node"
            )
        multi = sorted(name for name, step in self.steps.items() if step.gpus > 1 and name != "train")
        if multi:
            raise ValueError(f"steps {multi} ask for several GPUs; only train runs one process per GPU (use 0 or 1)")
        spread = {name: step.nodes for name, step in self.steps.items() if step.nodes > 1 and name != "train"}
        if spread:
            raise ValueError(f"steps {spread} ask for several nodes; only train runs on several pods (use 1)")
        return self


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

    @property
    def prediction_store(self) -> str:
        """Where scoring and serving log predictions, partitioned by model and hour."""
        return results.prediction_store(self.artifact_root)

    @property
    def serving_state_dir(self) -> Path:
        """Runtime ``local``: where the deploy step keeps this model's local server's pid, port and log."""
        return self.state_dir / "serving" / self.pipeline.registry.model_name

    @property
    def monitor_state_uri(self) -> str:
        """The drift monitor's memory of recent windows and its last trigger (hysteresis and cooldown)."""
        return results.monitor_state(self.artifact_root, self.pipeline.registry.model_name)

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


def _check_reachable_from_pods(
    config_uri: str, runtime: RuntimeSettings, artifact_root: str, dataset_uri: str, tracking_uri: str
) -> None:
    """Pods cannot see the worker's disk: runtime kubernetes needs object storage and an MLflow server."""
    problems = []
    volume = runtime.kubernetes.data_volume
    if not dataset_uri.startswith("s3://") and not (volume and dataset_uri.startswith(volume.datasets_path + "/")):
        where = f" or a file under {volume.datasets_path}/ (the data volume)" if volume else ""
        problems.append(f"runtime.dataset_uri (or ML_DATASET_URI) must be an s3:// URI{where}, got {dataset_uri!r}")
    if not artifact_root.startswith("s3://"):
        problems.append(f"runtime.artifact_root (or ML_ARTIFACT_ROOT) must be an s3:// URI, got {artifact_root!r}")
    if not tracking_uri.startswith(("http://", "https://")):
        problems.append(
            "runtime.mlflow_tracking_uri (or MLFLOW_TRACKING_URI) must be an http(s) MLflow server, "
            f"got {tracking_uri!r}"
        )
    if problems:
        raise ConfigError(f"{config_uri}: runtime kubernetes: " + "; ".join(problems))


def _check_multi_node_families(config_uri: str, pipeline: PipelineConfig, runtime: RuntimeSettings) -> None:
    """Training on several pods is data-parallel, which only the network families do: refuse the others at load
    time rather than start a Job whose every pod would stop with the same error."""
    nodes = runtime.steps["train"].nodes
    families = pipeline.training.candidate_families
    single = [family for family in families if family not in DISTRIBUTED_FAMILIES]
    if nodes > 1 and single:
        raise ConfigError(
            f"{config_uri}: runtime.steps.train.nodes={nodes} trains one model data-parallel over {nodes} pods, "
            f"which only the {list(DISTRIBUTED_FAMILIES)} family does; training.model/candidates {families} include "
            f"{single}, which train in one process on one node: set runtime.steps.train.nodes to 1 for this model, "
            f"or train only {list(DISTRIBUTED_FAMILIES)}"
        )


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
    _check_multi_node_families(config_uri, pipeline, runtime)
    state_dir = Path(os.environ.get("ML_STATE_DIR", PROJECT_ROOT / ".local")).resolve()
    artifact_root = os.environ.get("ML_ARTIFACT_ROOT") or runtime.artifact_root or str(state_dir / "artifacts")
    dataset_name = pipeline.dataset.name
    default_dataset = os.environ.get(DATASET_URI_ENV_VAR) or str(state_dir / "datasets" / "{dataset}.csv")
    dataset_uri = runtime.dataset_uri or default_dataset.replace("{dataset}", dataset_name)
    tracking_uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or runtime.mlflow_tracking_uri
        or f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}"
    )
    if mode == "kubernetes":
        _check_reachable_from_pods(config_uri, runtime, artifact_root, dataset_uri, tracking_uri)
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
