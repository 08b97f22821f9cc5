"""What a run's params must satisfy beyond their JSON Schema, checked before the run starts.

Airflow's trigger API checks types, enums and bounds against each DAG's params; it cannot know whether a dataset
file exists or a model version does. The models page asks these checks before it posts a run to Airflow, so a typo
in a path or a version is refused in the page (or the API answer) instead of failing the run's first pod:

- ``retrain``: ``dataset_uri`` names a CSV or Parquet file that exists, can be read (its header line or Parquet
  footer, nothing more) and has every column the model's dataset config needs;
- ``deploy``: ``model`` is ``champion`` while the model has one, or a version number the registry has;
- every DAG: no param the DAG does not have (Airflow would add it silently, a misspelt name running the default).

A check the page's own identity cannot make (no S3 credentials, access denied where the steps' identity is allowed)
does not refuse: the run's first step checks again with the steps' identity.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from mlsteps import registry
from mlsteps.errors import DataError
from orchestration.models import dag_id
from orchestration.settings import Settings

log = logging.getLogger(__name__)

VERSIONS_NAMED = 10  # the newest versions a refusal lists


def _dataset_problems(settings: Settings, conf: dict[str, Any]) -> list[str]:
    from mlsteps.data.snapshots import read_columns

    uri = conf.get("dataset_uri", settings.dataset_uri)
    if not isinstance(uri, str) or not uri:
        return []  # the wrong type or an empty value: Airflow's schema check names it
    try:
        columns = read_columns(uri)
    except DataError as exc:
        return [f"dataset_uri: {exc}"]
    except Exception as exc:  # no credentials here, access denied to this server's identity but not the steps'
        log.warning("models page: cannot check dataset_uri %s with the page's identity: %s", uri, exc)
        return []
    missing = [column for column in settings.pipeline.dataset.required_columns if column not in columns]
    if missing:
        return [
            f"dataset_uri: {uri} lacks the columns {missing} that {settings.pipeline.registry.model_name} needs "
            f"(it has {columns[:20]}{' ...' if len(columns) > 20 else ''}); give a file with them, or change the "
            "model's dataset config"
        ]
    return []


def _version_problems(settings: Settings, client: Any, conf: dict[str, Any]) -> list[str]:
    model_name = settings.pipeline.registry.model_name
    wanted = conf.get("model", registry.CHAMPION)
    if wanted == registry.CHAMPION:
        if registry.alias_version(client, model_name, registry.CHAMPION) is None:
            retrain = dag_id(model_name, "retrain")
            return [f"model: {model_name} has no champion yet; run {retrain} first, or give a version number"]
        return []
    if not isinstance(wanted, str) or not wanted.isdigit():
        return []  # Airflow's schema check (champion or a version number) names it
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(model_name, wanted)
        return []
    except MlflowException as exc:
        if not registry.is_missing(exc):
            raise
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name='{model_name}'")), reverse=True)
    known = ", ".join(str(v) for v in versions[:VERSIONS_NAMED]) or "none yet"
    return [f"model: {model_name} has no version {wanted}; its newest versions are {known}"]


def run_problems(
    settings: Settings, client: Any, purpose: str, conf: dict[str, Any], known_params: Collection[str] | None
) -> list[str]:
    """What is wrong with the params of a run of one of the model's DAGs that their schema cannot say; [] when fine.

    Args:
        settings: the model's settings.
        client: an MLflow client of the deployment's tracking server.
        purpose: ``retrain``, ``deploy`` or ``monitor`` (which has nothing to check beyond its schema).
        conf: the run's params as they will be posted to Airflow.
        known_params: the DAG's params as Airflow has them (None when Airflow has not parsed the DAG yet). Airflow
            takes a param it does not know as a new one, so a misspelt name would run with the default silently.
    """
    unknown = sorted(set(conf) - set(known_params)) if known_params is not None else []
    if unknown:
        dag = dag_id(settings.pipeline.registry.model_name, purpose)
        return [f"unknown params {unknown}: {dag} has {sorted(known_params or [])}; check the spelling"]
    if purpose == "retrain":
        return _dataset_problems(settings, conf)
    if purpose == "deploy":
        return _version_problems(settings, client, conf)
    return []
