"""A small client of MLflow's REST API: what the model server needs of the registry, without the MLflow package.

The server resolves a version or an alias and downloads that version's serving bundle; nothing else. Doing that
with mlflow-skinny put mlflow-skinny and what only it brings (databricks-sdk, google-auth, cryptography, GitPython,
OpenTelemetry, ...) into the serving image. This client speaks to the MLflow server with the standard library:

- ``GET /api/2.0/mlflow/registered-models/get``: the model's aliases (a missing alias is ``None``, as
  ``mlsteps.registry.alias_version_number`` has it for the steps);
- ``GET /api/2.0/mlflow/model-versions/get``: the version's tags (the bundle's URI and sha256);
- ``GET /api/2.0/mlflow/runs/get``: the run's artifact root, which the bundle's ``runs:/<run id>/<path>`` URI is under;
- artifacts under ``mlflow-artifacts:`` (the server's proxied artifact store): ``GET
  /api/2.0/mlflow-artifacts/artifacts?path=`` lists a folder, ``GET /api/2.0/mlflow-artifacts/artifacts/<path>``
  downloads a file; ``s3://`` roots through boto3 and local paths or ``file://`` by copy (``mlsteps.data.storage``).

Authentication, TLS, timeouts and retries follow MLflow's own client and read its environment variables:
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (HTTP basic; they win over a token, as in MLflow),
``MLFLOW_TRACKING_TOKEN`` (bearer), ``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA
bundle file or folder; otherwise the system's CA store), ``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import logging
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from mlsteps.data import storage
from mlsteps.errors import ConfigError
from mlsteps.serving_bundle import BundleError, MlflowRegistryReader, RegistryReader

logger = logging.getLogger(__name__)

TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
MISSING = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for a model, version or run that does not exist
# Answers worth another try (MLflow's client retries the same ones); any other error is final.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 120.0
# MLflow's defaults for its variables of the same names (mlflow.environment_variables).
DEFAULT_TIMEOUT_SECONDS = 120.0
DEFAULT_MAX_RETRIES = 7
DEFAULT_BACKOFF_FACTOR = 2.0


class RegistryError(RuntimeError):
    """The MLflow server answered with an error, or could not be reached; a later try may succeed."""


class _Missing(Exception):
    """MLflow answered that the resource does not exist (HTTP 404, RESOURCE_DOES_NOT_EXIST)."""


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value not in {"", "true", "false", "1", "0"}:
        raise ConfigError(f"{name}={os.environ[name]!r} is not a boolean: set it to true or false")
    return value in {"true", "1"}


def _number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        number = float(value) if value else default
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number: set it to seconds or a count, or unset it") from None
    if number < 0:
        raise ConfigError(f"{name}={value!r} is negative: set it to 0 or more, or unset it")
    return number


class MlflowRestClient(RegistryReader):
    """The model registry of an MLflow server, read over its REST API (see the module docstring)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure_tls: bool = False,
        server_cert_path: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    ) -> None:
        """A client of the MLflow server at ``tracking_uri`` (``http(s)://host[:port][/prefix]``).

        Args:
            tracking_uri: the MLflow server.
            token: bearer token (``MLFLOW_TRACKING_TOKEN``).
            username: basic-auth user; with ``password`` it wins over ``token``, as in MLflow's client.
            password: basic-auth password.
            insecure_tls: do not verify the server's TLS certificate.
            server_cert_path: CA bundle (file or folder) to verify the server's certificate with.
            timeout: seconds to wait for each answer.
            max_retries: further tries after a connection failure or an answer of 429 or 5xx.
            backoff_factor: the n-th retry waits ``backoff_factor * 2**n`` seconds, at most 120.

        Raises:
            ConfigError: the URI is not http(s), or both ``insecure_tls`` and ``server_cert_path`` are given.
        """
        parsed = urlparse(tracking_uri)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ConfigError(
                f"{TRACKING_URI_ENV_VAR}={tracking_uri!r} is not an MLflow server: the model server reads the registry "
                "over MLflow's REST API, so point it at the server (http://mlflow:5000 or https://...), or serve a "
                "downloaded bundle with --bundle DIR"
            )
        if insecure_tls and server_cert_path:
            raise ConfigError(
                "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: verify the server "
                "with the CA bundle, or not at all; unset one"
            )
        self.base_url = tracking_uri.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self._authorization = None
        if username and password:
            self._authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        elif token:
            self._authorization = f"Bearer {token}"
        self._tls = None
        if parsed.scheme == "https":
            self._tls = ssl.create_default_context(
                cafile=server_cert_path if server_cert_path and Path(server_cert_path).is_file() else None,
                capath=server_cert_path if server_cert_path and Path(server_cert_path).is_dir() else None,
            )
            if insecure_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE

    @classmethod
    def from_environment(cls) -> MlflowRestClient:
        """A client of the server at ``MLFLOW_TRACKING_URI``, with MLflow's authentication and HTTP variables.

        Raises:
            ConfigError: ``MLFLOW_TRACKING_URI`` is not set or not http(s), or a variable has a bad value.
        """
        uri = os.environ.get(TRACKING_URI_ENV_VAR, "")
        if not uri:
            raise ConfigError(
                f"{TRACKING_URI_ENV_VAR} is not set: point it at the MLflow server (http://mlflow:5000) that holds "
                "the model registry, or serve a downloaded bundle with --bundle DIR"
            )
        cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
        if cert_path and not Path(cert_path).exists():
            raise ConfigError(
                f"MLFLOW_TRACKING_SERVER_CERT_PATH={cert_path!r} does not exist: mount the CA bundle there, or unset it"
            )
        return cls(
            uri,
            token=os.environ.get("MLFLOW_TRACKING_TOKEN") or None,
            username=os.environ.get("MLFLOW_TRACKING_USERNAME") or None,
            password=os.environ.get("MLFLOW_TRACKING_PASSWORD") or None,
            insecure_tls=_flag("MLFLOW_TRACKING_INSECURE_TLS"),
            server_cert_path=cert_path,
            timeout=_number("MLFLOW_HTTP_REQUEST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS),
            max_retries=int(_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES", DEFAULT_MAX_RETRIES)),
            backoff_factor=_number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", DEFAULT_BACKOFF_FACTOR),
        )

    def version_tags(self, model_name: str, version: int) -> dict[str, str] | None:
        """The tags of a model version; None when the model or the version does not exist."""
        found = self._api("model-versions/get", name=model_name, version=str(version))
        if found is None:
            return None
        return {tag["key"]: tag.get("value", "") for tag in found["model_version"].get("tags", [])}

    def alias_version(self, model_name: str, alias: str) -> int | None:
        """The version number an alias points at; None when the model or the alias does not exist."""
        found = self._api("registered-models/get", name=model_name)
        aliases = [] if found is None else found["registered_model"].get("aliases", [])
        return next((int(entry["version"]) for entry in aliases if entry["alias"] == alias), None)

    def download(self, artifact_uri: str, dest: Path) -> Path:
        """Download an artifact folder (``runs:/<run id>/<path>``, or an artifact store URI) into ``dest``.

        Returns:
            ``dest/<the folder's name>``, holding the folder's files.

        Raises:
            BundleError: the run does not exist, or nothing is stored at the URI.
            ConfigError: the run's artifacts are in a store this client does not read (gs://, wasbs://, ...).
        """
        location = self._artifact_location(artifact_uri)
        folder = dest / location.rstrip("/").rsplit("/", 1)[-1]
        scheme = urlparse(location).scheme
        if scheme == "mlflow-artifacts":
            copied = self._copy_served_folder(location, folder)
        elif storage.is_s3(location) or scheme in {"", "file"}:
            copied = _copy_store_folder(location, folder)
        else:
            raise ConfigError(
                f"the artifacts of {artifact_uri} are at {location}, a store the model server does not read: it reads "
                "mlflow-artifacts: (run the MLflow server with --serve-artifacts), s3:// and local paths"
            )
        if not copied:
            raise BundleError(
                f"nothing is stored at {artifact_uri} ({location}): the artifacts are gone; re-run register for the "
                "version"
            )
        logger.info("downloaded %d files of %s from %s", copied, artifact_uri, location)
        return folder

    def _artifact_location(self, artifact_uri: str) -> str:
        """Where a ``runs:/`` URI's artifacts are stored (the run's artifact root joined with the path); other URIs
        as they are."""
        parsed = urlparse(artifact_uri)
        if parsed.scheme != "runs":
            return artifact_uri
        run_id, _, path = parsed.path.lstrip("/").partition("/")
        run = self._api("runs/get", run_id=run_id) if run_id else None
        if run is None:
            raise BundleError(f"{artifact_uri} names run {run_id!r}, which the MLflow server at {self.base_url} lacks")
        root = run["run"]["info"]["artifact_uri"].rstrip("/")
        return f"{root}/{path.strip('/')}" if path.strip("/") else root

    def _copy_served_folder(self, location: str, folder: Path) -> int:
        """Copy a folder of the server's proxied artifact store; the number of files copied."""
        parsed = urlparse(location)
        tracking = urlparse(self.base_url)
        # As MLflow resolves these URIs: the host in the URI if any, else the tracking server's, with its path prefix.
        service = f"{tracking.scheme}://{parsed.netloc or tracking.netloc}{tracking.path.rstrip('/')}{ARTIFACTS_API}"
        copied = 0
        pending = [(parsed.path.strip("/"), folder)]
        while pending:
            path, local = pending.pop()
            for entry in json.loads(self._get(f"{service}?{urlencode({'path': path})}")).get("files", []):
                name = entry["path"]
                if name in {"", ".", ".."} or "/" in name or "\\" in name:
                    raise RegistryError(f"{service} listed {name!r} in {path!r}: not a file name; refusing to write it")
                remote = f"{path}/{name}" if path else name
                if entry.get("is_dir"):
                    pending.append((remote, local / name))
                    continue
                local.mkdir(parents=True, exist_ok=True)
                self._get(f"{service}/{quote(remote)}", into=local / name)
                copied += 1
        return copied

    def _api(self, endpoint: str, **params: str) -> dict[str, Any] | None:
        """GET an endpoint of the REST API; its JSON answer, or None when MLflow says the resource does not exist."""
        url = f"{self.base_url}{API}/{endpoint}?{urlencode(params)}"
        try:
            return json.loads(self._get(url))
        except _Missing:
            return None
        except json.JSONDecodeError as exc:
            raise RegistryError(
                f"GET {url} answered with something other than JSON ({exc}): is {self.base_url} an MLflow server?"
            ) from None

    def _get(self, url: str, into: Path | None = None) -> bytes:
        """GET ``url`` with the credentials, retrying what may pass; the body, or written to ``into`` (then b"").

        Raises:
            _Missing: HTTP 404 with MLflow's error code RESOURCE_DOES_NOT_EXIST.
            ConfigError: HTTP 401 or 403 (the credentials).
            RegistryError: any other error answer, or no answer after the retries.
        """
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self._authorization:
            request.add_unredirected_header("Authorization", self._authorization)  # never sent on to a redirect
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout, context=self._tls) as answer:
                    if into is None:
                        return answer.read()
                    with into.open("wb") as file:
                        shutil.copyfileobj(answer, file, 1 << 20)
                    return b""
            except urllib.error.HTTPError as error:
                failure = _http_failure(url, error)
                if error.code not in RETRY_STATUSES:
                    raise failure from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", None) or repr(error)
                if isinstance(reason, ssl.SSLError):  # the same certificate fails every try
                    raise RegistryError(
                        f"GET {url}: TLS failed ({reason}): set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle "
                        "that signed the MLflow server's certificate"
                    ) from None
                failure = RegistryError(f"GET {url} failed: {reason}; is the MLflow server at {self.base_url} up?")
            if attempt >= self.max_retries:
                raise failure from None
            wait = min(self.backoff_factor * 2**attempt, MAX_BACKOFF_SECONDS)
            attempt += 1
            logger.warning("%s; retry %d of %d in %.1f s", failure, attempt, self.max_retries, wait)
            time.sleep(wait)


def _http_failure(url: str, error: urllib.error.HTTPError) -> Exception:
    """The exception for an error answer, with MLflow's error code and message when it sent them."""
    body = error.read()
    try:
        details = json.loads(body)
    except ValueError:
        details = {}
    if not isinstance(details, dict):
        details = {}
    if error.code == 404 and details.get("error_code") == MISSING:
        return _Missing(details.get("message", ""))
    said = details.get("message") or body.decode(errors="replace").strip()[:300] or error.reason
    code = f" {details['error_code']}" if details.get("error_code") else ""
    if error.code in {401, 403}:
        return ConfigError(
            f"GET {url}: HTTP {error.code}{code}: {said.rstrip('.')}; the MLflow server refused the credentials: set "
            "MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, to a user that may read "
            "the model"
        )
    return RegistryError(f"GET {url}: HTTP {error.code}{code}: {said}")


def _copy_store_folder(location: str, folder: Path) -> int:
    """Copy every file under an s3:// or local folder into ``folder``, keeping their relative paths; how many."""
    root = location.rstrip("/") if storage.is_s3(location) else str(storage.local_path(location)).rstrip("/")
    files = storage.list_files(location)
    for uri in files:
        storage.download_file(uri, folder / uri.removeprefix(root).lstrip("/"))
    return len(files)


def registry_from_environment() -> RegistryReader:
    """The registry the model server loads from, by ``MLFLOW_TRACKING_URI``.

    An http(s) URI (every image): this REST client. Another store (``sqlite:///...``, as the local environment's
    embedded default has it) is read with MLflow's client where MLflow is installed; the serving image has no MLflow,
    and there ``MlflowRestClient`` refuses such a URI with what to set instead.

    Raises:
        ConfigError: ``MLFLOW_TRACKING_URI`` is not set, or names no MLflow server where MLflow is not installed.
    """
    uri = os.environ.get(TRACKING_URI_ENV_VAR, "")
    if uri and urlparse(uri).scheme not in {"http", "https"} and importlib.util.find_spec("mlflow") is not None:
        from mlsteps import tracking

        return MlflowRegistryReader(tracking.client())
    return MlflowRestClient.from_environment()
