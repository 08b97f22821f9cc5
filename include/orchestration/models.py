"""The models of this deployment: one config file per model under ``include/config/models/``, each with its own loop.

A model config is a pipeline config that ``extends`` the shared defaults (``include/config/pipeline.yaml``) and holds
only what differs: its dataset config, its registry name, and whatever else it changes (families, gate, schedules,
monitoring, serving port, team, images, resources). The DAG files build one retrain, monitor and deploy DAG per
valid model (``dag_id``); adding a model is adding one file.

Each file is loaded on its own, so a broken one breaks only its model: ``load_models`` returns an entry per file,
with its settings or the error that names the file and the field. The errors are raised by one DAG file of their
own (``dags/model_configs.py``), so they appear as that file's import error in the Airflow UI while every other
model's DAGs keep running. Two files claiming one model name or one local serving port are both refused.

Fields that belong to the whole deployment (where steps run, the artifact root, the MLflow server, the cluster
namespace) come from the defaults and the environment only: a model config that sets them is refused, so every model
of a deployment writes to the same stores and runs on the same cluster.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsteps.config import (
    CANARY_SUFFIX,
    DEFAULT_CONFIG_PATH,
    KUBERNETES_NAME_LENGTH,
    MAX_MODEL_NAME_LENGTH,
    MODEL_NAME,
    SERVER_NAME_PREFIX,
    read_config_yaml,
    resolve_config_uri,
)
from mlsteps.errors import ConfigError
from orchestration.settings import Settings, load_settings

MODELS_DIR_ENV_VAR = "ML_MODELS_DIR"
DEFAULT_MODELS_DIR = DEFAULT_CONFIG_PATH.parent / "models"
PURPOSES = ("retrain", "monitor", "deploy")
# runtime fields that hold for every model of a deployment, set in the defaults or the environment only.
DEPLOYMENT_FIELDS = ("mode", "artifact_root", "mlflow_tracking_uri")
DEPLOYMENT_KUBERNETES_FIELDS = ("namespace", "connection_id", "config_map", "secrets")


def dag_id(model_name: str, purpose: str) -> str:
    """The DAG id of one model's loop for one purpose, e.g. ``churn-classifier.retrain``: a model's DAGs sort
    together in the UI."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    return f"{model_name}.{purpose}"


def dag_tags(settings: Settings, purpose: str) -> list[str]:
    """Tags of one model's DAG: the purpose, the model, its dataset and its team (``runtime.kubernetes.labels``)."""
    team = settings.runtime.kubernetes.labels.get("team")
    model = settings.pipeline.registry.model_name
    return [
        "ml",
        purpose,
        f"model:{model}",
        f"dataset:{settings.pipeline.dataset.name}",
        *([f"team:{team}"] if team else []),
    ]


@dataclass(frozen=True)
class ModelEntry:
    """One model config file: its settings, or why it cannot run."""

    config_path: Path
    settings: Settings | None
    error: str | None = None

    @property
    def name(self) -> str | None:
        """The registered model name; None when the config does not load."""
        return self.settings.pipeline.registry.model_name if self.settings else None


def models_dir() -> Path:
    """The folder of model configs: ``$ML_MODELS_DIR``, else ``include/config/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV_VAR) or DEFAULT_MODELS_DIR)


def _own_fields_problems(raw: dict[str, Any]) -> list[str]:
    """What a model file must set itself (its dataset and name) and must not set (deployment-wide fields)."""
    problems = []
    if "dataset" not in raw:
        problems.append("dataset: missing; every model names its own dataset config (datasets/<name>.yaml)")
    if not (raw.get("registry") or {}).get("model_name"):
        problems.append("registry.model_name: missing; every model has its own registered name")
    runtime = raw.get("runtime") or {}
    problems += [
        f"runtime.{key}: is deployment-wide; set it in {DEFAULT_CONFIG_PATH.name} or the environment, not per model"
        for key in DEPLOYMENT_FIELDS
        if key in runtime
    ]
    problems += [
        f"runtime.kubernetes.{key}: is deployment-wide; set it in {DEFAULT_CONFIG_PATH.name}, not per model"
        for key in DEPLOYMENT_KUBERNETES_FIELDS
        if key in (runtime.get("kubernetes") or {})
    ]
    return problems


@functools.lru_cache(maxsize=8)
def _resolved_defaults(config_uri: str) -> frozenset[Path]:
    """The shared defaults' files, resolved: the bundled ``pipeline.yaml`` and the config ``$MLSTEPS_CONFIG`` names."""
    return frozenset({DEFAULT_CONFIG_PATH.resolve(), Path(config_uri).resolve()})


def _model_layers(path: Path) -> dict[str, Any]:
    """What the model file and the configs it extends set, up to (not including) the shared defaults (the bundled
    ``pipeline.yaml``, or ``$MLSTEPS_CONFIG``): a model may extend another model's file, but never takes its identity
    (dataset, name) from the defaults by mistake."""
    defaults = _resolved_defaults(resolve_config_uri(None))
    merged: dict[str, Any] = {}
    current: Path | None = path
    seen: set[Path] = set()
    while current is not None:
        resolved = current.resolve()  # once a layer: resolving paths is most of what this function costs
        if current != path and resolved in defaults:
            break
        if resolved in seen:
            raise ConfigError(f"{path}: extends forms a cycle through {current}")
        seen.add(resolved)
        raw = read_config_yaml(str(current))
        merged = {**raw, **merged, "runtime": {**(raw.get("runtime") or {}), **(merged.get("runtime") or {})}}
        merged["registry"] = {**(raw.get("registry") or {}), **(merged.get("registry") or {})}
        base = raw.get("extends")
        current = (current.parent / base) if isinstance(base, str) else None
    return merged


def _load_entry(path: Path) -> ModelEntry:
    try:
        problems = _own_fields_problems(_model_layers(path))
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems))
        settings = load_settings(str(path))
    except ConfigError as exc:
        message = str(exc)  # a dataset config's or a defaults' error names that file: say which model it breaks
        return ModelEntry(path, None, message if message.startswith(str(path)) else f"{path}: {message}")
    name = settings.pipeline.registry.model_name
    if not MODEL_NAME.match(name):
        message = (
            f"{path}: registry.model_name {name!r} is not a valid model name: lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {MAX_MODEL_NAME_LENGTH} characters (it names the "
            "DAGs, the Kubernetes objects and the registered model)"
        )
        return ModelEntry(path, None, message)
    if len(name) > MAX_MODEL_NAME_LENGTH:
        message = (
            f"{path}: registry.model_name {name!r} has {len(name)} characters, at most {MAX_MODEL_NAME_LENGTH} fit: "
            f"its canary Deployment on Kubernetes is {SERVER_NAME_PREFIX}<model>{CANARY_SUFFIX}, and Kubernetes names "
            f"have at most {KUBERNETES_NAME_LENGTH} characters; choose a shorter name"
        )
        return ModelEntry(path, None, message)
    return ModelEntry(path, settings)


def _refuse_clashes(entries: list[ModelEntry]) -> list[ModelEntry]:
    """Both files of a clash (one model name, or one local serving port) are refused, naming the other."""
    claims: dict[tuple[str, Any], list[ModelEntry]] = {}
    for entry in entries:
        if entry.settings is not None:
            claims.setdefault(("registry.model_name", entry.name), []).append(entry)
            port = entry.settings.pipeline.serving.local.port
            claims.setdefault(("serving.local.port", port), []).append(entry)
    problems: dict[Path, list[str]] = {}
    for (field, value), claimants in claims.items():
        if len(claimants) > 1:
            for entry in claimants:
                others = ", ".join(str(other.config_path) for other in claimants if other is not entry)
                problems.setdefault(entry.config_path, []).append(
                    f"{field} {value!r} is also claimed by {others}: give each model its own"
                )
    return [
        ModelEntry(entry.config_path, None, f"{entry.config_path}: " + "; ".join(problems[entry.config_path]))
        if entry.config_path in problems
        else entry
        for entry in entries
    ]


def load_models(folder: Path | None = None) -> list[ModelEntry]:
    """Every model config of the folder (``*.yaml``, sorted by file name), loaded and checked one by one.

    Raises:
        ConfigError: the folder does not exist or holds no model config.
    """
    folder = folder or models_dir()
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not paths:
        raise ConfigError(
            f"no model config in {folder}: add one <model>.yaml per model (see include/config/models/), or point "
            f"{MODELS_DIR_ENV_VAR} at the folder that has them"
        )
    return _refuse_clashes([_load_entry(path) for path in paths])


@functools.cache
def get_models() -> tuple[ModelEntry, ...]:
    """The models of this process, loaded once (every DAG file calls this at parse time)."""
    return tuple(load_models())


def valid_models() -> list[Settings]:
    """The settings of every model whose config loads: the models that get DAGs."""
    return [entry.settings for entry in get_models() if entry.settings is not None]


def models_to_build(purpose: str) -> list[Settings]:
    """The models whose DAG of this purpose a DAG file builds: every valid model when the dag-processor parses it;
    only the one whose DAG runs a task when a worker parses it for that task (Airflow's parsing context names the
    DAG), so a task's start does not pay for building every model's DAG."""
    from airflow.sdk import get_parsing_context

    wanted = get_parsing_context().dag_id
    models = valid_models()
    if wanted is None:
        return models
    return [settings for settings in models if dag_id(settings.pipeline.registry.model_name, purpose) == wanted]


def model_settings(model_name: str) -> Settings:
    """The settings of one model by its registered name.

    Raises:
        ConfigError: no valid model config has that name.
    """
    for settings in valid_models():
        if settings.pipeline.registry.model_name == model_name:
            return settings
    known = sorted(entry.name for entry in get_models() if entry.name)
    raise ConfigError(f"no valid model config names model {model_name!r}; the valid models are {known}")
