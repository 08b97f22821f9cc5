"""MLflow set-up shared by the steps that track or register models.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` (a server in production, SQLite in the embedded default).
With a file-based store, ``MLFLOW_ARTIFACT_LOCATION`` says where new experiments keep their artifacts, so
they never land in the current working directory.

Transient faults in talking to an MLflow server are retried by MLflow's own REST client (a urllib3 ``Retry``
under ``requests``), which its environment variables configure; the steps keep MLflow's defaults:

- ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7, at most 10): retries after the first attempt;
- ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (default 2, a whole number) and ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER``
  (default 1.0): retry ``i`` waits ``factor * 2**(i - 1)`` seconds plus up to ``jitter`` seconds at random (the
  first retry at once), at most 120 s a wait: about four minutes of retries with the defaults;
- ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (default 120): seconds a request may take.

MLflow retries every method on connection errors (refused, reset), read errors and HTTP 408, 429, 500, 502, 503
and 504, artifact uploads and downloads through the server included. A fault that outlasts the retries is
``StoreUnavailable``, naming the tracking URI and the attempts: a retryable task failure, not a user error. A
refusal no retry changes is a ``RegistryError`` (exit 2) naming the tracking URI and the fix: an unknown model,
version or run (``RESOURCE_DOES_NOT_EXIST``), ``PERMISSION_DENIED`` or ``UNAUTHENTICATED``. It is an
``MlflowException`` too, with the same ``error_code``, so code that treats a missing model as "not yet" still does.
Clients from ``client()`` raise these errors; wrap other MLflow calls in ``mlflow_errors()``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlsteps.errors import ConfigError, RegistryError, StepError, StoreUnavailable

ARTIFACT_LOCATION_ENV_VAR = "MLFLOW_ARTIFACT_LOCATION"
# The refusals of an MLflow server that no retry changes, by error code, with what to do about them.
_REFUSALS = {
    "RESOURCE_DOES_NOT_EXIST": (
        "it does not exist there: check registry.model_name in the pipeline config and the version, alias or run "
        "asked for, and that MLFLOW_TRACKING_URI points at the registry that holds them"
    ),
    "PERMISSION_DENIED": (
        "this user lacks the permission: grant it READ, EDIT or MANAGE on the experiment or registered model, or "
        "use a user that has it (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_TOKEN)"
    ),
    "UNAUTHENTICATED": (
        "the server did not accept the credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
        "MLFLOW_TRACKING_TOKEN, to credentials it accepts"
    ),
}


def _require_tracking_uri() -> None:
    """Refuse to fall back silently to a ``./mlruns`` store in the working directory."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "MLFLOW_TRACKING_URI is not set: point it at the MLflow server or sqlite:///path/mlflow.db "
            "that holds the runs and the model registry"
        )


def tracking_uri() -> str:
    """The tracking URI as messages show it: without a user or password it may carry."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri  # as given: rebuilding would drop the empty host of sqlite:////path
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def http_attempts() -> int:
    """How many times MLflow's REST client tries a request: the first attempt and its retries."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    return MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() + 1


@functools.cache
def _refusal_type() -> type[Exception]:
    """A ``RegistryError`` that is also an ``MlflowException``, made when MLflow is first imported."""
    from mlflow.exceptions import MlflowException

    class MlflowRefusal(RegistryError, MlflowException):
        """A refusal of the MLflow server that no retry changes; ``error_code`` is the server's."""

    return MlflowRefusal


def _unreachable(exc: BaseException) -> bool:
    """Whether MLflow gave up on a server that did not answer: a connection error, a timeout, retries used up, or a
    connection that broke off mid-answer (a restart; ``ChunkedEncodingError``). MLflow raises its own exception
    from within the ``requests`` one."""
    import requests

    transient = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
    )
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, transient):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def mlflow_failure(exc: BaseException) -> Exception | None:
    """The package's error for a failed MLflow call, or None to keep the original.

    Returns:
        A ``RegistryError`` (also an ``MlflowException``) for a refusal in ``_REFUSALS``, ``StoreUnavailable`` for a
        server that did not answer through every retry, None for anything else.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    if not isinstance(exc, MlflowException) or isinstance(exc, StepError):
        return None
    if exc.error_code in _REFUSALS:
        message = f"MLflow at {tracking_uri()} refused a request ({exc.error_code}: {exc.message}): "
        return _refusal_type()(message + _REFUSALS[exc.error_code], error_code=ErrorCode.Value(exc.error_code))
    if _unreachable(exc):
        return StoreUnavailable(
            f"MLflow tracking server {tracking_uri()} was unreachable or broke off its answer, with each request "
            f"tried up to {http_attempts()} times ({exc.message}): check that it is up and reachable from here, or "
            "raise MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR to ride out longer outages; "
            "the task can be retried as it is"
        )
    return None


@contextlib.contextmanager
def mlflow_errors() -> Iterator[None]:
    """Turn MLflow failures into the package's errors (``mlflow_failure``); others pass unchanged.

    Raises:
        RegistryError: the server refused for good (unknown model or version, no permission, bad credentials).
        StoreUnavailable: the server did not answer through every retry.
    """
    try:
        yield
    except Exception as exc:
        failure = mlflow_failure(exc)
        if failure is None:
            raise
        raise failure from exc


class _Client:
    """An ``MlflowClient`` whose calls raise the package's errors (``mlflow_errors``); attributes pass through."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with mlflow_errors():
                return value(*args, **kwargs)

        return call


def start_experiment(experiment_name: str) -> str:
    """Point MLflow at the configured tracking server and make sure the experiment exists.

    Returns:
        The experiment id.

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` is not set.
        RegistryError: the server refused (``mlflow_errors``).
        StoreUnavailable: the server did not answer through every retry.
    """
    import mlflow

    _require_tracking_uri()
    with mlflow_errors():
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = mlflow.create_experiment(
                experiment_name, artifact_location=os.environ.get(ARTIFACT_LOCATION_ENV_VAR) or None
            )
        else:
            experiment_id = experiment.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client() -> Any:
    """An MLflow client for the configured tracking and registry URIs, raising the package's errors.

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` is not set.
    """
    from mlflow import MlflowClient

    _require_tracking_uri()
    return _Client(MlflowClient())
