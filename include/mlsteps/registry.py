"""MLflow model registry helpers: idempotent registration, alias lookups, alias history and version tags.

Versions carry ``run_root`` and ``source_model_uri`` tags, so a retried ``register`` finds the version its first
attempt created instead of adding a second one; a create request that MLflow's client re-sent after a lost answer
(see ``mlsteps.tracking`` for its retries) leaves a twin, which ``register_once`` removes. Aliases name roles:
``challenger`` is the latest registered candidate, ``champion`` the model that serves.

Every move of an alias made through ``move_alias`` is also recorded as a tag of the registered model
(``alias_history.<alias>.<UTC time>``, a compact JSON value), so the history of an alias and "which version served
at time X" take one ``get_registered_model`` call and live in the registry itself, next to the aliases.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import mlsteps
from mlsteps import locks, tracking
from mlsteps.data import storage
from mlsteps.errors import ConfigError

CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_ROOT_TAG = "run_root"
SOURCE_TAG = "source_model_uri"
CODE_VERSION_ENV_VAR = "CODE_VERSION"
IMAGE_ENV_VAR = "STEP_IMAGE"
# Training-run tags that say why a model was trained; register copies them onto the model version.
TRIGGER_TAGS = ("trigger", "trigger_reason", "monitor_report", "drifted_features")
ALIAS_HISTORY_PREFIX = "alias_history"
# Sorts as it reads: lexicographic order of the tag keys is chronological order. No colons: MLflow rejects them in
# tag keys on Windows.
_EVENT_KEY_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
# MLflow validates registered-model tag values up to 100 000 characters, but its SQL store's column holds 5000
# (registered_model_tags.value VARCHAR(5000)); MySQL and PostgreSQL refuse longer values.
MAX_EVENT_VALUE_CHARS = 5000
_TRUNCATED = " [truncated]"
# A champion move is a few registry calls; waiting two minutes covers a slow server, and a lease of ten minutes
# outlasts any holder that is still alive.
CHAMPION_LOCK_WAIT_S = 120.0
CHAMPION_LOCK_LEASE_S = 600.0


def model_uri(model_name: str, version: int) -> str:
    """The registry URI of one model version, loadable by ``mlflow.pyfunc.load_model``."""
    return f"models:/{model_name}/{version}"


def code_version() -> str:
    """The package version, plus ``$CODE_VERSION`` (for example a git commit) when the image sets it."""
    extra = os.environ.get(CODE_VERSION_ENV_VAR)
    return f"{mlsteps.__version__}+{extra}" if extra else mlsteps.__version__


def is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _registered_model(client: Any, model_name: str) -> Any | None:
    """The registered model, or None when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise


def alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None when the model or the alias does not exist yet.

    Args:
        client: an MLflow client.
        model_name: registered model name.
        alias: alias such as ``champion``.

    Returns:
        The ``ModelVersion`` or None.
    """
    registered = _registered_model(client, model_name)
    version = None if registered is None else registered.aliases.get(alias)
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


def _versions_with_tags(client: Any, model_name: str, tags: dict[str, str]) -> list[Any]:
    conditions = [f"name={_filter_literal(model_name)}"]
    conditions += [f"tags.{key}={_filter_literal(value)}" for key, value in tags.items()]
    return list(client.search_model_versions(" and ".join(conditions)))


def version_with_tags(client: Any, model_name: str, tags: dict[str, str]) -> Any | None:
    """The newest version of a model that carries all the given tags, or None."""
    return max(_versions_with_tags(client, model_name, tags), key=lambda version: int(version.version), default=None)


def run_root_tag(run_root: str) -> str:
    """The run root as versions record it: local paths made absolute, so ``runs/r1`` and ``$PWD/runs/r1`` match."""
    return run_root if storage.is_s3(run_root) else str(storage.local_path(run_root).resolve())


def register_once(client: Any, model_name: str, source_uri: str, run_root: str) -> tuple[Any, bool]:
    """Register ``source_uri`` as a version of ``model_name`` unless this run root already registered it.

    The identifying tags are set when the version is created, so a retry after any later failure finds it. A model
    re-trained within the same run root has another source URI and becomes a new version. When the create request
    was answered twice (MLflow's client re-sends it when the answer is lost), the oldest version is kept and its
    twins, which nothing points at yet, are deleted.

    Args:
        client: an MLflow client.
        model_name: registered model name (created when missing).
        source_uri: the trained model (``models:/<model id>`` or ``runs:/<run id>/<path>``).
        run_root: this run's root; marks the version as this run's.

    Returns:
        The model version and whether it was created now (False: reused from an earlier attempt).

    Raises:
        RegistryError: the server refused (``tracking.mlflow_errors``).
        StoreUnavailable: the server did not answer through every retry.
    """
    import mlflow

    identity = {RUN_ROOT_TAG: run_root_tag(run_root), SOURCE_TAG: source_uri}
    existing = version_with_tags(client, model_name, identity)
    if existing is not None:
        return existing, False
    with tracking.mlflow_errors():
        created = mlflow.register_model(source_uri, model_name, tags=identity)
    twins = sorted(_versions_with_tags(client, model_name, identity), key=lambda version: int(version.version))
    for twin in twins[1:]:
        if not twin.aliases:
            client.delete_model_version(model_name, str(twin.version))
    return (twins[0] if twins else created), True


def delete_unfinished(client: Any, model_name: str, version: int) -> bool:
    """Delete a version whose registration failed for good, so that no version is left without its serving bundle.

    A version that has a bundle or an alias is kept. Best effort: when the registry cannot be reached either, the
    version stays, and its missing ``serving_bundle_sha256`` tag marks it unfinished (a re-run of ``register``
    completes it; ``serving_bundle.fetch_bundle`` refuses it).

    Returns:
        Whether the version was deleted.
    """
    from mlsteps.serving_bundle import BUNDLE_SHA256_TAG

    try:
        found = client.get_model_version(model_name, str(version))
        if found.aliases or found.tags.get(BUNDLE_SHA256_TAG):
            return False
        client.delete_model_version(model_name, str(version))
    except Exception:  # the failure being handled matters more than this clean-up's
        return False
    return True


def tag_text(value: Any) -> str:
    """How a tag value is stored: booleans as ``true``/``false``, None as ``none``, the rest as ``str``."""
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def set_version_tags(client: Any, model_name: str, version: int, tags: dict[str, Any]) -> None:
    """Set tags on a model version (values stored as ``tag_text`` gives them)."""
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, tag_text(value))


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: from which version to which (None: the alias did not exist / was removed), who, why."""

    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: datetime


def _event_key(alias: str, at: datetime) -> str:
    return f"{ALIAS_HISTORY_PREFIX}.{alias}.{at.astimezone(UTC).strftime(_EVENT_KEY_TIME_FORMAT)}"


def _event_value(event: AliasEvent) -> str:
    """The event as compact JSON, the reason shortened until the value fits MLflow's SQL column."""

    def encode(reason: str) -> str:
        payload = {
            "from": event.from_version,
            "to": event.to_version,
            "actor": event.actor,
            "reason": reason,
            "at": event.at.isoformat(),
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    value = encode(event.reason)
    reason = event.reason
    while len(value) > MAX_EVENT_VALUE_CHARS and reason:
        reason = reason[: max(0, len(reason) - (len(value) - MAX_EVENT_VALUE_CHARS) - len(_TRUNCATED))]
        value = encode(reason + _TRUNCATED)
    return value


def _parse_event(alias: str, value: str) -> AliasEvent:
    payload = json.loads(value)
    return AliasEvent(
        alias=alias,
        from_version=payload["from"],
        to_version=payload["to"],
        actor=payload["actor"],
        reason=payload["reason"],
        at=datetime.fromisoformat(payload["at"]),
    )


def _events_in(registered: Any, alias: str) -> list[AliasEvent]:
    prefix = f"{ALIAS_HISTORY_PREFIX}.{alias}."
    keys = sorted(key for key in registered.tags if key.startswith(prefix))
    return [_parse_event(alias, registered.tags[key]) for key in keys]


def move_alias(
    client: Any, model_name: str, alias: str, version: int | None, *, actor: str, reason: str
) -> AliasEvent | None:
    """Point an alias at a version (None removes it) and record the move in the alias history.

    The event is recorded before the alias moves: a crash in between leaves an event whose move a retry repeats
    (a second event, seconds later), never a move without its event.

    Args:
        client: an MLflow client.
        model_name: registered model name (it must exist).
        alias: alias such as ``champion``.
        version: the version it should point at; None deletes the alias (nothing served before a failed deploy).
        actor: who moved it (a DAG run id, or ``cli``).
        reason: why, e.g. the gate summary or ``rollback: <why>``; shortened when it would not fit the registry.

    Returns:
        The recorded event, or None when the alias already pointed there (nothing changes, nothing is recorded).
    """
    registered = client.get_registered_model(model_name)
    current = registered.aliases.get(alias)
    current_version = None if current is None else int(current)
    if current_version == version:
        return None
    at = datetime.now(UTC)
    while _event_key(alias, at) in registered.tags:  # two moves within one microsecond keep both events
        at += timedelta(microseconds=1)
    event = AliasEvent(alias, current_version, version, actor, reason, at)
    client.set_registered_model_tag(model_name, _event_key(alias, at), _event_value(event))
    if version is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, str(version))
    return event


def champion_lock(run_root: str, model_name: str, actor: str) -> AbstractContextManager[locks.Holder]:
    """The lock held around every check-then-move of ``champion``: MLflow has no compare-and-set on aliases.

    Args:
        run_root: this run's root; with the tracking URI it says where the locks live (``locks.lock_root``).
        model_name: registered model name; each model has its own lock.
        actor: who moves it, shown to whoever waits.

    Raises:
        ConfigError: no place shared by every writer of the registry is known (``locks.lock_root``).
    """
    uri = locks.lock_uri(locks.lock_root(run_root), model_name, CHAMPION)
    return locks.held(uri, actor, wait_s=CHAMPION_LOCK_WAIT_S, lease_s=CHAMPION_LOCK_LEASE_S)


def alias_history(client: Any, model_name: str, alias: str) -> list[AliasEvent]:
    """Every recorded move of an alias, oldest first; empty when the model or its history does not exist."""
    registered = _registered_model(client, model_name)
    return [] if registered is None else _events_in(registered, alias)


def alias_version_at(client: Any, model_name: str, alias: str, when: datetime) -> int | None:
    """The version an alias pointed at, at a moment: what served on a date, for audits and incident reviews.

    Args:
        client: an MLflow client.
        model_name: registered model name.
        alias: alias such as ``champion``.
        when: the moment; a naive datetime is taken as UTC.

    Returns:
        The ``to_version`` of the last recorded move at or before ``when``; None when the alias had no recorded
        move by then or had been removed (moves made outside ``move_alias`` are not in the history).
    """
    moment = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    earlier = [event for event in alias_history(client, model_name, alias) if event.at <= moment]
    return earlier[-1].to_version if earlier else None
