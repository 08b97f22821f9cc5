"""Pipeline and dataset config: YAML files validated on load.

The pipeline config (``include/config/pipeline.yaml``) holds thresholds, split, training and registry settings
and points at a dataset config (``include/config/datasets/*.yaml``) that describes the columns of one dataset.
Any CSV or Parquet file with a binary target can be used by writing a dataset config for it.
Errors name the file and the field, for example ``pipeline.yaml: training.epochs: ...``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlsteps.data import storage
from mlsteps.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "pipeline.yaml"
CONFIG_ENV_VAR = "MLSTEPS_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One feature column."""

    name: str = Field(description="column name in the data file")
    type: Literal["numeric", "categorical"] = Field(description="numeric (float/int) or categorical (string)")
    min: float | None = Field(None, description="smallest allowed value (numeric only)")
    max: float | None = Field(None, description="largest allowed value (numeric only)")
    categories: list[str] | None = Field(None, description="known categories (categorical only)")
    max_unknown_fraction: float = Field(
        0.01, ge=0, le=1, description="share of values outside `categories` that is still accepted"
    )
    max_null_fraction: float = Field(0.0, ge=0, le=1, description="share of missing values that is accepted")
    description: str = Field("", description="what the column means")

    @model_validator(mode="after")
    def _check_type_specific_fields(self) -> ColumnSpec:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError(f"column {self.name!r} is categorical: min/max apply to numeric columns only")
        if self.type == "numeric" and self.categories is not None:
            raise ValueError(f"column {self.name!r} is numeric: categories apply to categorical columns only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} is greater than max {self.max}")
        return self


class TargetSpec(_Strict):
    """The binary target column."""

    name: str = Field(description="target column name")
    classes: tuple[Any, Any] = Field((0, 1), description="[negative, positive] target values as they appear in data")


class DatasetConfig(_Strict):
    """Schema and data-quality limits of one dataset."""

    name: str = Field(description="dataset name, used in snapshot paths and MLflow tags")
    description: str = Field("", description="what one row is")
    target: TargetSpec
    id_column: str | None = Field(None, description="unique row id; used for hash splits and joining labels")
    timestamp_column: str | None = Field(None, description="event time; used for time splits")
    features: list[ColumnSpec] = Field(min_length=1, description="model input columns")
    min_rows: int = Field(100, ge=1, description="fewest rows a snapshot may have")
    max_rows: int | None = Field(None, ge=1, description="most rows a snapshot may have")
    slice_columns: list[str] = Field(default_factory=list, description="categorical columns for per-slice metrics")

    @model_validator(mode="after")
    def _check_columns(self) -> DatasetConfig:
        names = [c.name for c in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features listed twice: {duplicates}")
        special = {"target": self.target.name, "id_column": self.id_column, "timestamp_column": self.timestamp_column}
        for field, column in special.items():
            if column is not None and column in names:
                raise ValueError(f"{field} {column!r} must not also be a feature")
        categorical = {c.name for c in self.features if c.type == "categorical"}
        unknown_slices = [s for s in self.slice_columns if s not in categorical]
        if unknown_slices:
            raise ValueError(f"slice_columns {unknown_slices} are not categorical features")
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"max_rows {self.max_rows} is below min_rows {self.min_rows}")
        return self

    @property
    def numeric_features(self) -> list[str]:
        """Names of the numeric feature columns, in config order."""
        return [c.name for c in self.features if c.type == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        """Names of the categorical feature columns, in config order."""
        return [c.name for c in self.features if c.type == "categorical"]

    @property
    def required_columns(self) -> list[str]:
        """Every column a data file must have: features, target, id and timestamp."""
        extra = [c for c in (self.id_column, self.timestamp_column) if c]
        return [*extra, *(c.name for c in self.features), self.target.name]


class SplitConfig(_Strict):
    """How a snapshot is split into train, validation and holdout."""

    method: Literal["time", "hash"] = Field(
        "time", description="time: latest rows are holdout; hash: stable split by hashing the id column"
    )
    validation_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of rows for early stopping")
    holdout_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of rows for evaluation and the gate")


class TrainingConfig(_Strict):
    """Hyper-parameters of the tabular network."""

    epochs: int = Field(20, ge=1, le=1000, description="maximum number of epochs")
    batch_size: int = Field(512, ge=1, description="rows per optimisation step")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    hidden_units: list[int] = Field([128, 64], min_length=1, description="width of each hidden layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after each hidden layer")
    max_embedding_dim: int = Field(16, ge=1, description="upper bound of a categorical embedding's width")
    patience: int = Field(3, ge=1, description="epochs without validation-loss improvement before stopping")
    seed: int = Field(42, description="seed for weights, shuffling and dropout")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present")


class EvaluationConfig(_Strict):
    """Holdout metrics and the promotion gate."""

    min_roc_auc: float = Field(0.70, ge=0, le=1, description="the challenger's holdout ROC AUC must reach this")
    max_roc_auc_regression: float = Field(
        0.01, ge=0, le=1, description="largest ROC AUC drop versus the champion that still promotes"
    )
    calibration_bins: int = Field(10, ge=2, le=100, description="bins of the expected calibration error")
    slice_min_rows: int = Field(30, ge=1, description="slices with fewer holdout rows are not reported")


class RegistryConfig(_Strict):
    """MLflow names."""

    model_name: str = Field(description="registered model name; MLflow refuses blank names and '/' or ':' in them")
    experiment_name: str = Field(min_length=1, description="MLflow experiment of the training runs")

    @field_validator("model_name")
    @classmethod
    def _mlflow_accepts_model_name(cls, name: str) -> str:
        """MLflow's own rules, checked at load: MLflow would refuse the name only at register, after training."""
        if not name.strip() or "/" in name or ":" in name or name == "." or name.startswith(".."):
            raise ValueError(
                f"{name!r} is not a name MLflow accepts for a registered model: it must not be blank, contain '/' "
                "or ':', be '.' or start with '..'; set it to a name such as churn-classifier"
            )
        return name


DriftMethod = Literal["ks", "wasserstein", "psi", "chisquare", "jensenshannon"]


class DriftThresholds(_Strict):
    """The drift threshold of each method: an alpha for the p-value tests, a distance for the others."""

    ks: float = Field(0.05, gt=0, lt=1, description="Kolmogorov-Smirnov: drift when the BH-adjusted p-value is below")
    chisquare: float = Field(0.05, gt=0, lt=1, description="chi-square: drift when the BH-adjusted p-value is below")
    wasserstein: float = Field(
        0.1, gt=0, description="Wasserstein distance divided by the reference std: drift at or above"
    )
    jensenshannon: float = Field(
        0.1, gt=0, le=1, description="Jensen-Shannon distance (natural log, 0 to 0.833): drift at or above"
    )
    psi: float = Field(0.1, gt=0, description="population stability index: drift at or above (0.25: a major shift)")


class MinEffectSizes(_Strict):
    """How large a difference a p-value test must also show, so that sample size alone never raises an alarm."""

    ks: float = Field(0.1, ge=0, le=1, description="smallest KS statistic (largest gap between the two ECDFs)")
    chisquare: float = Field(
        0.1, ge=0, description="smallest Cohen's w: root of the summed squared share differences over pooled shares"
    )


class FeatureDriftConfig(_Strict):
    """Settings of one feature (or of the score) that replace the global ones; unset fields inherit them."""

    method: DriftMethod | None = Field(None, description="method for this feature; unset: chosen by type and size")
    threshold: float | None = Field(None, gt=0, description="threshold of the method; unset: drift.thresholds")
    min_effect_size: float | None = Field(
        None, ge=0, description="effect-size gate of a p-value test; unset: drift.min_effect_size"
    )
    min_samples: int | None = Field(None, ge=2, description="fewest non-null values to judge; unset: drift.min_samples")


class DriftConfig(_Strict):
    """Drift detection: per-feature methods and thresholds, the dataset decision and the reference profile."""

    numeric_method: Literal["auto", "ks", "wasserstein", "psi"] = Field(
        "auto", description="method for numeric features; auto: ks on small samples, wasserstein on large ones"
    )
    categorical_method: Literal["auto", "chisquare", "jensenshannon", "psi"] = Field(
        "auto", description="method for categorical features; auto: chisquare on small, jensenshannon on large"
    )
    large_sample_size: int = Field(
        1000, ge=2, description="auto uses distances once the smaller of the two samples has this many values"
    )
    thresholds: DriftThresholds = Field(DriftThresholds(), description="drift threshold of each method")
    min_effect_size: MinEffectSizes = Field(
        MinEffectSizes(), description="effect size a p-value test must also reach to count as drift"
    )
    min_samples: int = Field(50, ge=2, description="fewer non-null values on either side: insufficient data")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="dataset drift when at least this share of the judged features drift"
    )
    psi_bins: int = Field(10, ge=2, le=100, description="reference-quantile bins of the PSI (fixed in the profile)")
    psi_epsilon: float = Field(1e-4, gt=0, lt=0.01, description="share used for an empty PSI bin, so log stays finite")
    reference_sample_size: int = Field(
        100_000, ge=1000, description="most values kept per numeric column in the reference profile"
    )
    features: dict[str, FeatureDriftConfig] = Field(default_factory=dict, description="per-feature overrides")
    score: FeatureDriftConfig = Field(FeatureDriftConfig(), description="settings of the prediction (score) drift")


class MonitoringConfig(_Strict):
    """How production predictions are watched: the window each check reads and when drift triggers retraining."""

    model_alias: str = Field("champion", description="the registry alias whose predictions are checked")
    window_hours: int = Field(1, ge=1, le=24 * 31, description="hours of prediction logs each check reads")
    min_rows: int = Field(500, ge=1, description="a window with fewer logged predictions is skipped, not judged")
    consecutive_windows: int = Field(
        2, ge=1, description="retraining starts after drift in this many consecutive windows (hysteresis)"
    )
    cooldown_hours: float = Field(
        24, ge=0, description="no retraining trigger within this long after the champion was trained or the last one"
    )


class SmokeConfig(_Strict):
    """The smoke test after every rollout: the bundle's smoke rows through the serving endpoint."""

    requests: int = Field(
        50, ge=1, le=10_000, description="inference requests sent; the p99 latency is taken over them"
    )
    latency_budget_ms: float = Field(250, gt=0, description="the p99 latency of those requests must stay within this")
    tolerance: float = Field(
        1e-4, gt=0, lt=0.1, description="largest difference from the bundle's expected probabilities that passes"
    )
    request_timeout_seconds: float = Field(10, gt=0, description="one request that takes longer fails the test")


class KubernetesServingConfig(_Strict):
    """The model server's objects in the cluster (include/k8s/model-server.yaml)."""

    namespace: str = Field("ml", min_length=1, description="namespace of the model server")
    deployment: str = Field("model-server", min_length=1, description="the Deployment that serves (track=stable)")
    canary_deployment: str = Field(
        "model-server-canary", min_length=1, description="the Deployment a canary rollout creates and removes"
    )
    container: str = Field("model-server", min_length=1, description="the server container in the pod template")
    service_url: str = Field(
        "http://model-server.ml.svc.cluster.local",
        pattern=r"^https?://",
        description="base URL of the Service (port 80) that the smoke test calls",
    )

    @model_validator(mode="after")
    def _distinct_deployments(self) -> KubernetesServingConfig:
        if self.canary_deployment == self.deployment:
            raise ValueError(
                f"canary_deployment and deployment are both {self.deployment!r}: give the canary its own name"
            )
        return self


class CanaryConfig(_Strict):
    """A canary rollout: a share of the pods serves the new version and is judged by its own metrics."""

    share: float = Field(0.1, gt=0, le=1, description="canary replicas = max(1, round(share * stable replicas))")
    observation_seconds: float = Field(300, ge=0, description="how long the canary's metrics are watched")
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="share of the canary's inference requests that may fail (HTTP 5xx)"
    )
    max_p99_ms: float = Field(250, gt=0, description="the canary's p99 inference latency must stay within this")
    min_requests: int = Field(
        100, ge=0, description="fewer canary requests in the window: judged by the smoke test alone (reported so)"
    )


class LocalServingConfig(_Strict):
    """The server the local runtime runs on this machine."""

    host: str = Field("127.0.0.1", min_length=1, description="address the local server binds to")
    port: int = Field(8081, ge=1, le=65535, description="port of the local server")


class ServingConfig(_Strict):
    """How the deploy step rolls a model version out and decides whether it serves well enough to stay, and how the
    model server reads requests (``strict_columns``, ``max_string_length``)."""

    smoke: SmokeConfig = SmokeConfig()
    rollout_timeout_seconds: float = Field(
        600, gt=0, description="a rollout (or rollback) not complete by then fails the deploy"
    )
    poll_seconds: float = Field(2, gt=0, description="interval between rollout status checks")
    kubernetes: KubernetesServingConfig = KubernetesServingConfig()
    canary: CanaryConfig = CanaryConfig()
    local: LocalServingConfig = LocalServingConfig()
    strict_columns: bool = Field(
        False,
        description="model server: refuse MLflow-format requests with columns the model does not use "
        "(false: ignore them, as `mlflow models serve` does, and count them in /metrics)",
    )
    max_string_length: int | None = Field(
        None,
        ge=1,
        description="model server: longest string (BYTES) value a request may send; "
        "null: twice the longest category seen in training, at least 64 characters",
    )

    @model_validator(mode="after")
    def _poll_within_timeout(self) -> ServingConfig:
        if self.poll_seconds > self.rollout_timeout_seconds:
            raise ValueError(
                f"poll_seconds {self.poll_seconds} exceeds rollout_timeout_seconds {self.rollout_timeout_seconds}: "
                "the rollout would be checked at most once"
            )
        return self


class PipelineConfig(_Strict):
    """Everything the steps need besides their input URIs."""

    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    drift: DriftConfig = DriftConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig
    runtime: dict[str, Any] = Field(default_factory=dict, description="read by the orchestration side only")


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def _read_yaml(uri: str) -> dict[str, Any]:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {uri}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{uri}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_dataset_config(uri: str) -> DatasetConfig:
    """Load and validate one dataset config.

    Raises:
        ConfigError: the file is missing, not YAML, or a field is invalid (the message names it).
    """
    try:
        return DatasetConfig.model_validate(_read_yaml(uri))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(uri, exc)) from None


def resolve_config_uri(uri: str | None) -> str:
    """The pipeline config to use: the given URI, else ``$MLSTEPS_CONFIG``, else the bundled default."""
    return uri or os.environ.get(CONFIG_ENV_VAR) or str(DEFAULT_CONFIG_PATH)


def load_pipeline_config(uri: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load the pipeline config and the dataset config it points at, then apply overrides.

    Args:
        uri: pipeline YAML (path or URI); see ``resolve_config_uri``.
        overrides: nested values that replace the file's, e.g. ``{"training": {"epochs": 3}}``.

    Raises:
        ConfigError: naming the file and the field that is wrong.
    """
    uri = resolve_config_uri(uri)
    raw = _deep_merge(_read_yaml(uri), overrides or {})
    dataset_ref = raw.get("dataset")
    if isinstance(dataset_ref, str):
        dataset_uri = storage.join(storage.parent(uri), dataset_ref)
        raw["dataset"] = load_dataset_config(dataset_uri).model_dump()
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(uri, exc)) from None
