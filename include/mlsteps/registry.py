"""MLflow model registry helpers: idempotent registration, alias lookups and version tags.

Versions carry ``run_root`` and ``source_model_uri`` tags, so a retried ``register`` finds the version its first
attempt created instead of adding a second one. Aliases name roles: ``challenger`` is the latest registered
candidate, ``champion`` the model that serves.
"""

from __future__ import annotations

import os
from typing import Any

import mlsteps
from mlsteps import storage
from mlsteps.errors import ConfigError

CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_ROOT_TAG = "run_root"
SOURCE_TAG = "source_model_uri"
CODE_VERSION_ENV_VAR = "CODE_VERSION"
IMAGE_ENV_VAR = "STEP_IMAGE"
# Training-run tags that say why a model was trained; register copies them onto the model version.
TRIGGER_TAGS = ("trigger", "drift_report", "drifted_features")


def model_uri(model_name: str, version: int) -> str:
    """The registry URI of one model version, loadable by ``mlflow.pyfunc.load_model``."""
    return f"models:/{model_name}/{version}"


def code_version() -> str:
    """The package version, plus ``$CODE_VERSION`` (for example a git commit) when the image sets it."""
    extra = os.environ.get(CODE_VERSION_ENV_VAR)
    return f"{mlsteps.__version__}+{extra}" if extra else mlsteps.__version__


def is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None when the model or the alias does not exist yet.

    Args:
        client: an MLflow client.
        model_name: registered model name.
        alias: alias such as ``champion``.

    Returns:
        The ``ModelVersion`` or None.
    """
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else client.get_model_version(model_name, str(version))


def alias_version_number(client: Any, model_name: str, alias: str) -> int | None:
    """The version number an alias points at, or None."""
    version = alias_version(client, model_name, alias)
    return None if version is None else int(version.version)


def _filter_literal(value: str) -> str:
    """Quote a value for an MLflow search filter (it accepts either quote character, without escapes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"cannot search the registry for {value!r}: it contains both quote characters; rename it")


def version_with_tags(client: Any, model_name: str, tags: dict[str, str]) -> Any | None:
    """The newest version of a model that carries all the given tags, or None."""
    conditions = [f"name={_filter_literal(model_name)}"]
    conditions += [f"tags.{key}={_filter_literal(value)}" for key, value in tags.items()]
    found = client.search_model_versions(" and ".join(conditions))
    return max(found, key=lambda version: int(version.version), default=None)


def run_root_tag(run_root: str) -> str:
    """The run root as versions record it: local paths made absolute, so ``runs/r1`` and ``$PWD/runs/r1`` match."""
    return run_root if storage.is_s3(run_root) else str(storage.local_path(run_root).resolve())


def register_once(client: Any, model_name: str, source_uri: str, run_root: str) -> tuple[Any, bool]:
    """Register ``source_uri`` as a version of ``model_name`` unless this run root already registered it.

    The identifying tags are set when the version is created, so a retry after any later failure finds it. A model
    re-trained within the same run root has another source URI and becomes a new version.

    Args:
        client: an MLflow client.
        model_name: registered model name (created when missing).
        source_uri: the trained model (``models:/<model id>`` or ``runs:/<run id>/<path>``).
        run_root: this run's root; marks the version as this run's.

    Returns:
        The model version and whether it was created now (False: reused from an earlier attempt).
    """
    import mlflow

    identity = {RUN_ROOT_TAG: run_root_tag(run_root), SOURCE_TAG: source_uri}
    existing = version_with_tags(client, model_name, identity)
    if existing is not None:
        return existing, False
    return mlflow.register_model(source_uri, model_name, tags=identity), True


def tag_text(value: Any) -> str:
    """How a tag value is stored: booleans as ``true``/``false``, None as ``none``, the rest as ``str``."""
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def set_version_tags(client: Any, model_name: str, version: int, tags: dict[str, Any]) -> None:
    """Set tags on a model version (values stored as ``tag_text`` gives them)."""
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, tag_text(value))
