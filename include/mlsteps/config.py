"""Pipeline and dataset config: YAML files validated on load.

The pipeline config (``include/config/pipeline.yaml``) holds thresholds, split, training and registry settings
and points at a dataset config (``include/config/datasets/*.yaml``) that describes the columns of one dataset.
Any CSV or Parquet file with a binary, multiclass or regression target can be used by writing a dataset config for
it (``python -m mlsteps init-dataset`` infers one from the file).
Errors name the file and the field, for example ``pipeline.yaml: training.epochs: ...``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlsteps.data import storage
from mlsteps.errors import ConfigError
from mlsteps.evaluation.tasks import DEFAULT_PRIMARY_METRIC, ESTIMABLE_METRICS, Task, is_classification, metric

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "pipeline.yaml"
CONFIG_ENV_VAR = "MLSTEPS_CONFIG"
# A model's name (registry.model_name) is a DNS-1123 label: a Kubernetes object name (Deployment, Service, label
# value), a valid part of a DAG id and an MLflow registered-model name alike.
MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    """The target column and the model's task, which decides metrics, gate, serving outputs and drift signals."""

    name: str = Field(description="target column name")
    task: Task = Field("binary", description="binary, multiclass or regression")
    classes: list[Any] | None = Field(
        None,
        description="classification: every target value as it appears in the data, in the order of the model's "
        "probability columns; binary: [negative, positive], default [0, 1]; regression: leave unset",
    )
    min: float | None = Field(None, description="regression: smallest allowed target value")
    max: float | None = Field(None, description="regression: largest allowed target value")

    @model_validator(mode="before")
    @classmethod
    def _binary_default_classes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task", "binary") == "binary" and data.get("classes") is None:
            return {**data, "classes": [0, 1]}
        return data

    @model_validator(mode="after")
    def _check_task_fields(self) -> TargetSpec:
        if not is_classification(self.task):
            if self.classes is not None:
                raise ValueError(f"target {self.name!r} is a regression target: remove classes (classification only)")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"target {self.name!r}: min {self.min} is greater than max {self.max}")
            return self
        if self.min is not None or self.max is not None:
            raise ValueError(f"target {self.name!r} is a {self.task} target: min/max apply to regression only")
        classes = self.classes or []
        if len({str(label) for label in classes}) != len(classes):
            raise ValueError(f"target {self.name!r}: classes {classes} list a value twice")
        if self.task == "binary" and len(classes) != 2:
            raise ValueError(
                f"target {self.name!r}: a binary target has exactly two classes [negative, positive], got {classes}; "
                "with more, set task: multiclass"
            )
        if self.task == "multiclass" and len(classes) < 3:
            raise ValueError(
                f"target {self.name!r}: a multiclass target lists at least three classes, got {classes}; "
                "with two, set task: binary"
            )
        return self


class LeakageConfig(_Strict):
    """When one feature on its own predicts the target so well that it must carry the answer (target leakage).

    A feature's score is its ROC AUC (classification, best class one-vs-rest, direction-free: 0.5 to 1) or its absolute
    Spearman correlation with the target (regression, 0 to 1); categorical features are scored through their mean
    target per category, learnt on another half of the sample. 0.99 leaves room for strong honest features (the best
    of the built-in datasets score below 0.9) while a copied, renamed or rescaled target scores 1.
    """

    max_single_feature_score: float = Field(
        0.99, gt=0, le=1, description="a feature scoring above this alone fails validation; 1 turns the check off"
    )
    allowed_columns: list[str] = Field(
        default_factory=list, description="features known to predict the target this well on purpose; not checked"
    )


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
    leakage: LeakageConfig = Field(
        default_factory=LeakageConfig, description="limit on how well one feature alone may predict the target"
    )
    # Source clocks drift and exports round; an hour absorbs that, while local times written as UTC from zones two or
    # more hours east of it, or dates typed wrong, still fail.
    future_tolerance_seconds: float = Field(
        3600, ge=0, description="how far past the validation time an event time may lie (clock skew between systems)"
    )

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
        unknown_allowed = [c for c in self.leakage.allowed_columns if c not in names]
        if unknown_allowed:
            raise ValueError(
                f"leakage.allowed_columns {unknown_allowed} are not features (features: {names}); "
                "list feature names only"
            )
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


FAMILIES = ("mlp", "gbdt")
# The families that train data-parallel over several processes (several GPUs, several pods); the others train in one.
DISTRIBUTED_FAMILIES = ("mlp",)


def check_family(model: str) -> str:
    """``model`` if it names a family (mlp, gbdt, or ``module:Class``); the module is imported only by the train step.

    Raises:
        ValueError: naming the value and what a family looks like.
    """
    module, _, name = model.partition(":")
    if model in FAMILIES or (module and name.isidentifier() and all(p.isidentifier() for p in module.split("."))):
        return model
    raise ValueError(
        f"{model!r} is not a model family: use one of {list(FAMILIES)} or your own trainer as module:Class "
        "(for example examples.trainers.sklearn_gbt:GradientBoostingTrainer)"
    )


class GbdtConfig(_Strict):
    """Gradient-boosted trees (XGBoost): ``device=cuda`` on a GPU node, ``hist`` on CPU."""

    n_estimators: int = Field(500, ge=1, le=100_000, description="most boosting rounds")
    learning_rate: float = Field(0.1, gt=0, le=1, description="shrinkage of each tree (eta)")
    max_depth: int = Field(6, ge=1, le=32, description="deepest tree")
    min_child_weight: float = Field(1.0, ge=0, description="least hessian a leaf must hold")
    subsample: float = Field(1.0, gt=0, le=1, description="share of rows each tree sees")
    colsample_bytree: float = Field(1.0, gt=0, le=1, description="share of columns each tree sees")
    reg_lambda: float = Field(1.0, ge=0, description="L2 penalty on leaf weights")
    early_stopping_rounds: int = Field(
        20, ge=1, description="rounds without validation-loss improvement before stopping"
    )


class TrainingConfig(_Strict):
    """Which model family trains, and its hyper-parameters (the top-level ones are the network's, mlp)."""

    model: str = Field(
        "mlp",
        description="the family: mlp (the tabular network), gbdt (XGBoost), or your own trainer as module:Class "
        "(mlsteps.training.api.TabularTrainer)",
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="families trained in parallel (one pod each) for every run; the best on the holdout's primary "
        "metric becomes the challenger; empty: model alone",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="passed to your own trainer as context.params")
    gbdt: GbdtConfig = Field(GbdtConfig(), description="settings of the gbdt family")
    epochs: int = Field(20, ge=1, le=1000, description="mlp: maximum number of epochs")
    batch_size: int = Field(512, ge=1, description="mlp: rows per optimisation step")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="mlp: AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="mlp: AdamW weight decay")
    hidden_units: list[int] = Field([128, 64], min_length=1, description="mlp: width of each hidden layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="mlp: dropout after each hidden layer")
    max_embedding_dim: int = Field(16, ge=1, description="mlp: upper bound of a categorical embedding's width")
    patience: int = Field(3, ge=1, description="mlp: epochs without validation-loss improvement before stopping")
    seed: int = Field(42, description="seed for weights, shuffling, sampling and dropout")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present")

    @field_validator("model")
    @classmethod
    def _known_family(cls, model: str) -> str:
        return check_family(model)

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, candidates: list[str]) -> list[str]:
        for name in candidates:
            check_family(name)
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates {candidates} list a family twice")
        return candidates

    @property
    def candidate_families(self) -> list[str]:
        """The families every run trains: ``candidates``, else ``model`` alone."""
        return list(self.candidates) or [self.model]


class EvaluationConfig(_Strict):
    """Holdout metrics and the promotion gate: one primary metric, a bar to clear, and how much worse than the
    champion a challenger may be. Checked against the dataset's task when the pipeline config loads."""

    primary_metric: str | None = Field(
        None, description="the gate's metric (mlsteps.evaluation.tasks.METRICS); default: roc_auc, regression rmse"
    )
    threshold: float | None = Field(
        None,
        description="the challenger's primary metric must reach this (at least, when higher is better; at most, "
        "when lower is better); null: no absolute bar",
    )
    max_degradation: float = Field(
        0.01, ge=0, description="largest worsening of the primary metric versus the champion that still promotes"
    )
    degradation: Literal["absolute", "relative"] = Field(
        "absolute", description="max_degradation in the metric's units (absolute) or as a share of the champion's"
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
    """Settings of one feature (or of the prediction signals) that replace the global ones; unset fields inherit
    them."""

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
    score: FeatureDriftConfig = Field(
        FeatureDriftConfig(),
        description="settings of the prediction drift, applied to every prediction signal (probabilities, the "
        "predicted class or value)",
    )


class LabelsConfig(_Strict):
    """Where the labels of production predictions arrive, late: CSV or Parquet files under one URI."""

    uri: str | None = Field(
        None,
        description="a folder (every .csv, .parquet or .pq file under it) or one file, path or s3:// URI; "
        "unset: no labels, so no realized performance",
    )
    id_column: str | None = Field(None, description="the labels' id column; unset: dataset.id_column")
    label_column: str | None = Field(None, description="the labels' label column; unset: dataset.target.name")
    labelled_at_column: str | None = Field(
        None, description="optional column of when each label became known (reported, never required)"
    )


class EstimatedPerformanceConfig(_Strict):
    """Performance estimated from the champion's calibrated probabilities before labels arrive (classification)."""

    action: Literal["off", "alert", "trigger"] = Field(
        "alert", description="what an estimated drop does: nothing, an alert without retraining, or retraining"
    )
    metric: str | None = Field(
        None, description="roc_auc, accuracy, f1 (binary) or macro_f1; unset: the primary metric if estimable"
    )
    consecutive_windows: int = Field(2, ge=1, description="an estimated drop counts after this many windows in a row")


class PerformanceConfig(_Strict):
    """Realized performance on labelled predictions and estimated performance, each judged against noise."""

    labels: LabelsConfig = LabelsConfig()
    metric: str | None = Field(None, description="the realized metric; unset: evaluation.primary_metric")
    label_delay_hours: int = Field(
        0, ge=0, le=24 * 365, description="a window is judged on realized performance this long after its end"
    )
    min_labelled_rows: int = Field(
        200, ge=1, description="a matured window with fewer labelled predictions is not judged"
    )
    id_lookback_hours: int = Field(
        24 * 7, ge=1, description="labels whose id no prediction of this many hours before their window has are unknown"
    )
    consecutive_windows: int = Field(
        1, ge=1, description="a realized drop triggers after this many judged windows in a row (confirmed)"
    )
    band_sigmas: float = Field(
        3.0, gt=0, le=10, description="a drop is a value beyond the holdout's expectation by this many sampling errors"
    )
    bootstrap_samples: int = Field(
        200, ge=20, le=10_000, description="holdout resamples at the window's size that give the sampling error"
    )
    estimated: EstimatedPerformanceConfig = EstimatedPerformanceConfig()


class MonitoringConfig(_Strict):
    """How production predictions are watched: the window each check reads and when drift or a performance drop
    triggers retraining."""

    model_alias: str = Field("champion", description="the registry alias whose predictions are checked")
    window_hours: int = Field(1, ge=1, le=24 * 31, description="hours of prediction logs each check reads")
    min_rows: int = Field(500, ge=1, description="a window with fewer logged predictions is skipped, not judged")
    consecutive_windows: int = Field(
        2, ge=1, description="retraining starts after drift in this many consecutive windows (hysteresis)"
    )
    cooldown_hours: float = Field(
        24, ge=0, description="no retraining trigger within this long after the champion was trained or the last one"
    )
    performance: PerformanceConfig = PerformanceConfig()


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


# Names of a model's serving objects in the cluster, derived from its registered name unless serving.kubernetes sets
# them: Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget model-server-<model>, and the canary
# Deployment model-server-<model>-canary. Each must be a DNS-1123 label (at most 63 characters), which leaves the
# model name at most MAX_MODEL_NAME_LENGTH characters.
SERVER_NAME_PREFIX = "model-server-"
CANARY_SUFFIX = "-canary"
KUBERNETES_NAME_LENGTH = 63
MAX_MODEL_NAME_LENGTH = KUBERNETES_NAME_LENGTH - len(SERVER_NAME_PREFIX) - len(CANARY_SUFFIX)
# A Service name is a DNS-1035 label: it starts with a letter. Deployments take DNS-1123 labels.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class KubernetesServingConfig(_Strict):
    """One model's serving objects in the cluster: ``make render`` writes them from include/k8s/model-server.yaml, the
    deploy step (``--target kubernetes``) rolls them out. Unset names derive from the model (``for_model``), so a
    model config sets none of them."""

    namespace: str = Field("ml", min_length=1, description="namespace of the model server")
    deployment: str | None = Field(
        None,
        pattern=_OBJECT_NAME.pattern,
        description="the Deployment that serves (track=stable); default model-server-<model>; also names its "
        "HorizontalPodAutoscaler and PodDisruptionBudget",
    )
    canary_deployment: str | None = Field(
        None,
        pattern=_OBJECT_NAME.pattern,
        description="the Deployment a canary rollout creates and removes; default <deployment>-canary",
    )
    service: str | None = Field(
        None, pattern=_SERVICE_NAME.pattern, description="the Service of stable and canary pods; default <deployment>"
    )
    container: str = Field("model-server", min_length=1, description="the server container in the pod template")
    service_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="base URL the smoke test calls; default http://<service>.<namespace>.svc.cluster.local (port 80)",
    )

    @model_validator(mode="after")
    def _distinct_deployments(self) -> KubernetesServingConfig:
        if self.deployment is not None and self.canary_deployment == self.deployment:
            raise ValueError(
                f"canary_deployment and deployment are both {self.deployment!r}: give the canary its own name"
            )
        return self

    def for_model(self, model_name: str) -> KubernetesServingConfig:
        """These names with every unset one derived from the registered model name.

        Raises:
            ConfigError: a derived name is not a Kubernetes name (the model name has characters other than lowercase
                letters, digits and '-', or is longer than ``MAX_MODEL_NAME_LENGTH``).
        """
        deployment = self.deployment or f"{SERVER_NAME_PREFIX}{model_name}"
        service = self.service or deployment
        names = {
            "deployment": deployment,
            "canary_deployment": self.canary_deployment or f"{deployment}{CANARY_SUFFIX}",
            "service": service,
        }
        bad = {
            field: name
            for field, name in names.items()
            if not (_SERVICE_NAME if field == "service" else _OBJECT_NAME).match(name)
        }
        if bad:
            raise ConfigError(
                f"serving.kubernetes: model {model_name!r} gives {bad}, not Kubernetes names (lowercase letters, "
                f"digits and '-', at most {KUBERNETES_NAME_LENGTH} characters): use a model name of at most "
                f"{MAX_MODEL_NAME_LENGTH} such characters, or set these fields"
            )
        url = self.service_url or f"http://{service}.{self.namespace}.svc.cluster.local"
        return self.model_copy(update={**names, "service_url": url})


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


class ProcessingConfig(_Strict):
    """How the data steps hold data: in batches, so their memory is set here and not by the size of the data."""

    batch_rows: int = Field(
        100_000,
        ge=1_000,
        description="rows a data step (snapshot, validate, preprocess, evaluate, score, drift) and training's input "
        "hold in memory at a time; peak memory grows with it and with the number of columns, not with the rows",
    )


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
    processing: ProcessingConfig = ProcessingConfig()
    runtime: dict[str, Any] = Field(default_factory=dict, description="read by the orchestration side only")

    @model_validator(mode="after")
    def _gate_fits_task(self) -> PipelineConfig:
        task, evaluation = self.dataset.target.task, self.evaluation
        try:
            chosen = metric(task, self.primary_metric)
        except ValueError as exc:
            raise ValueError(f"evaluation.primary_metric: {exc}") from None
        low, high = chosen.bounds or (-math.inf, math.inf)
        if evaluation.threshold is not None and not low <= evaluation.threshold <= high:
            raise ValueError(
                f"evaluation.threshold {evaluation.threshold} is outside the range of {chosen.name} [{low}, {high}]"
            )
        if evaluation.degradation == "relative" and evaluation.max_degradation > 1:
            raise ValueError(
                f"evaluation.max_degradation {evaluation.max_degradation} is a share with degradation: relative "
                "(0.05 is 5%): set it at most 1"
            )
        performance = self.monitoring.performance
        if performance.metric is not None:
            try:
                metric(task, performance.metric)
            except ValueError as exc:
                raise ValueError(f"monitoring.performance.metric: {exc}") from None
        estimable = ESTIMABLE_METRICS.get(task, ())
        estimated = performance.estimated.metric
        if estimated is not None and estimated not in estimable:
            raise ValueError(
                f"monitoring.performance.estimated.metric {estimated!r} cannot be estimated for a {task} task: "
                + (f"use one of {list(estimable)}" if estimable else "estimation needs probabilities; unset it")
            )
        return self

    @property
    def primary_metric(self) -> str:
        """The gate's metric: ``evaluation.primary_metric``, else the task's default."""
        return self.evaluation.primary_metric or DEFAULT_PRIMARY_METRIC[self.dataset.target.task]


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def read_config_yaml(uri: str) -> dict[str, Any]:
    """One config file's top-level mapping as written (``extends`` not followed).

    A local file is parsed once per process and version (path and modification time): a deployment with many model
    configs parses the shared defaults they extend once per DAG file, not once per model.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    version = _local_version(uri)
    return _copied(_parsed_yaml(uri, version)) if version is not None else _parse_yaml(uri)


def _local_version(uri: str) -> int | None:
    """A local file's modification time (what the caches key on); None for an object-store URI or no file."""
    path = Path(uri)
    return path.stat().st_mtime_ns if not storage.is_s3(uri) and path.is_file() else None


@functools.lru_cache(maxsize=256)
def _parsed_yaml(uri: str, version: int) -> dict[str, Any]:
    return _parse_yaml(uri)


def _copied(data: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy`` of what YAML yields, without its generic dispatch: new dicts, lists and sets (a node YAML
    aliases stays shared, as in a deep copy); the scalars are immutable and kept."""
    memo = {} if memo is None else memo
    if not isinstance(data, dict | list | set):
        return data
    if id(data) in memo:
        return memo[id(data)]
    if isinstance(data, dict):
        memo[id(data)] = copied = {}
        copied.update((key, _copied(value, memo)) for key, value in data.items())
    elif isinstance(data, list):
        memo[id(data)] = copied = []
        copied.extend(_copied(value, memo) for value in data)
    else:
        memo[id(data)] = copied = set(data)  # set members are hashable, so immutable
    return copied


def _parse_yaml(uri: str) -> dict[str, Any]:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {uri}") from exc
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
        return DatasetConfig.model_validate(read_config_yaml(uri))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(uri, exc)) from None


@functools.lru_cache(maxsize=256)
def _validated_dataset(uri: str, version: int) -> DatasetConfig:
    """A local dataset config, validated once per process and version: many model configs share a few datasets."""
    return load_dataset_config(uri)


def resolve_config_uri(uri: str | None) -> str:
    """The pipeline config to use: the given URI, else ``$MLSTEPS_CONFIG``, else the bundled default."""
    return uri or os.environ.get(CONFIG_ENV_VAR) or str(DEFAULT_CONFIG_PATH)


def _read_pipeline_yaml(uri: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A pipeline config's mapping, with the config it ``extends`` (relative to it) merged in underneath."""
    if uri in seen:
        raise ConfigError(f"{uri}: extends forms a cycle: {' -> '.join([*seen, uri])}")
    raw = read_config_yaml(uri)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{uri}: extends: expected the path of another pipeline config, got {base!r}")
    base_uri = storage.join(storage.parent(uri), base)
    parent = _read_pipeline_yaml(base_uri, (*seen, uri))
    if isinstance(parent.get("dataset"), str) and "dataset" not in raw:
        # A dataset path is relative to the file that names it.
        parent["dataset"] = storage.join(storage.parent(base_uri), parent["dataset"])
    return _deep_merge(parent, raw)


def load_pipeline_config(uri: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load the pipeline config (and the one it ``extends``, if any) and the dataset config it points at, then apply
    overrides.

    Args:
        uri: pipeline YAML (path or URI); see ``resolve_config_uri``.
        overrides: nested values that replace the file's, e.g. ``{"training": {"epochs": 3}}``.

    Raises:
        ConfigError: naming the file and the field that is wrong.
    """
    uri = resolve_config_uri(uri)
    raw = _deep_merge(_read_pipeline_yaml(uri), overrides or {})
    dataset_ref = raw.get("dataset")
    if isinstance(dataset_ref, str):
        dataset_uri = storage.join(storage.parent(uri), dataset_ref)
        version = _local_version(dataset_uri)
        dataset = _validated_dataset(dataset_uri, version) if version is not None else load_dataset_config(dataset_uri)
        raw["dataset"] = dataset.model_dump()
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(uri, exc)) from None
