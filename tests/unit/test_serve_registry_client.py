"""The model server's MLflow REST client against a real MLflow server (the host's full MLflow: SQLite, artifacts it
serves itself over HTTP), and against a small local HTTP server that records what the client sends (credentials,
retries, TLS)."""

from __future__ import annotations

import base64
import http.server
import json
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_models import GOOD, MODEL_NAME, log_model, register_with_bundle
from mlflow_server import running_mlflow_server

from mlsteps import tracking
from mlsteps.data import storage
from mlsteps.errors import ConfigError, StepError
from mlsteps.serve.model import fetch_from_registry, registry_loader
from mlsteps.serve.registry_client import MlflowRestClient, RegistryError, registry_from_environment
from mlsteps.serving_bundle import (
    BUNDLE_SHA256_TAG,
    BUNDLE_URI_TAG,
    BundleError,
    MlflowRegistryReader,
    fetch_bundle,
    read_bundle,
    resolve_version,
)

# The versions the registry fixture makes, in this order.
SERVED, NO_BUNDLE, TAMPERED = 1, 2, 3


@dataclass(frozen=True)
class Registry:
    """A running MLflow server and the folder of its store."""

    url: str
    folder: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An MLflow server whose model has v1 with its bundle behind ``champion``, v2 without a bundle and v3 with one;
    ``MLFLOW_TRACKING_URI`` names the server for the module."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry")
    with running_mlflow_server(folder) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", url)
        patch.delenv("MLFLOW_ARTIFACT_LOCATION", raising=False)  # the server's own store: mlflow-artifacts:
        mlflow.set_tracking_uri(url)
        try:
            assert register_with_bundle() == SERVED
            tracking.client().set_registered_model_alias(MODEL_NAME, "champion", str(SERVED))
            assert int(mlflow.register_model(log_model(GOOD)[1], MODEL_NAME).version) == NO_BUNDLE
            assert register_with_bundle() == TAMPERED
            yield Registry(url, folder)
        finally:
            mlflow.set_tracking_uri(None)


def test_resolves_versions_and_aliases_as_the_mlflow_client_does(registry: Registry) -> None:
    rest, mlflow_client = MlflowRestClient(registry.url), tracking.client()

    for reader in (rest, MlflowRegistryReader(mlflow_client)):
        assert resolve_version(reader, MODEL_NAME, "champion") == SERVED
        assert resolve_version(reader, MODEL_NAME, f" {NO_BUNDLE} ") == NO_BUNDLE
    assert rest.version_tags(MODEL_NAME, SERVED) == mlflow_client.get_model_version(MODEL_NAME, str(SERVED)).tags
    assert rest.alias_version(MODEL_NAME, "challenger") is None
    assert (rest.version_tags("no-such-model", 1), rest.alias_version("no-such-model", "champion")) == (None, None)


def test_downloads_the_bundle_over_the_servers_artifact_api_and_verifies_it(registry: Registry, tmp_path: Path) -> None:
    mlflow_client = tracking.client()
    tags = mlflow_client.get_model_version(MODEL_NAME, str(SERVED)).tags
    run_id = tags[BUNDLE_URI_TAG].removeprefix("runs:/").split("/")[0]
    assert mlflow_client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")

    bundle = fetch_bundle(MlflowRestClient(registry.url), MODEL_NAME, SERVED, tmp_path / "rest")
    through_mlflow = fetch_bundle(mlflow_client, MODEL_NAME, SERVED, tmp_path / "mlflow")

    assert (bundle.model_name, bundle.model_version, bundle.sha256) == (MODEL_NAME, SERVED, tags[BUNDLE_SHA256_TAG])
    assert bundle.folder == tmp_path / "rest" / f"v{SERVED}"
    files = {path.name: path.read_bytes() for path in bundle.folder.iterdir()}
    assert files == {path.name: path.read_bytes() for path in through_mlflow.folder.iterdir()}


def test_the_registry_loader_reads_the_server_named_by_the_environment(registry: Registry) -> None:
    assert isinstance(registry_from_environment(), MlflowRestClient)

    served = registry_loader(MODEL_NAME)("champion")

    assert (served.name, served.version) == (MODEL_NAME, str(SERVED))


@pytest.mark.parametrize(
    ("model", "selector", "error", "message"),
    [
        (MODEL_NAME, "gold", StepError, f"model {MODEL_NAME} has no alias 'gold': promote a version first"),
        (MODEL_NAME, "99", StepError, f"model {MODEL_NAME} has no version 99"),
        ("no-such-model", "champion", StepError, "model no-such-model has no alias 'champion'"),
        ("no-such-model", "1", StepError, "model no-such-model has no version 1"),
        (MODEL_NAME, str(NO_BUNDLE), BundleError, f"{MODEL_NAME} v{NO_BUNDLE} has no serving bundle"),
    ],
)
def test_refuses_a_missing_alias_version_model_or_bundle(
    registry: Registry, model: str, selector: str, error: type[Exception], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        fetch_from_registry(model, selector, tmp_path)


def test_a_bundle_changed_in_the_artifact_store_is_refused(registry: Registry, tmp_path: Path) -> None:
    [smoke] = (registry.folder / "artifacts").rglob(f"serving_bundle/v{TAMPERED}/smoke.json")
    smoke.write_text(smoke.read_text().replace("0.", "1.", 1))

    with pytest.raises(BundleError, match=r"smoke\.json does not match the sha256 in its manifest"):
        fetch_from_registry(MODEL_NAME, str(TAMPERED), tmp_path)


def test_downloads_bundles_from_s3_and_local_artifact_roots(
    serving_bundle_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    prefix = f"{s3_bucket}/1/0123abcd/artifacts/serving_bundle/v1"
    for path in serving_bundle_dir.iterdir():
        storage.upload_file(path, f"{prefix}/{path.name}")
    client = MlflowRestClient("http://127.0.0.1:9")  # these roots are read without the server

    copies = [
        client.download(prefix, tmp_path / "s3"),
        client.download(serving_bundle_dir.as_uri(), tmp_path / "file"),
        client.download(str(serving_bundle_dir), tmp_path / "path"),
    ]

    expected = read_bundle(serving_bundle_dir).sha256
    assert [(copy.name, read_bundle(copy).sha256) for copy in copies] == [("v1", expected)] * 3
    with pytest.raises(BundleError, match=f"nothing is stored at {tmp_path / 'gone'}"):
        client.download(str(tmp_path / "gone"), tmp_path / "none")
    with pytest.raises(
        ConfigError, match="are at gs://bucket/1/run/artifacts/b, a store the model server does not read"
    ):
        client.download("gs://bucket/1/run/artifacts/b", tmp_path / "gs")


@dataclass
class FakeServer:
    """A local HTTP server that answers every GET with the next scripted answer (the last one repeats) and records
    each request's path and headers."""

    answers: list[tuple[int, dict[str, Any]]]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


def _version_answer(tags: dict[str, str]) -> tuple[int, dict[str, Any]]:
    tag_list = [{"key": key, "value": value} for key, value in tags.items()]
    return 200, {"model_version": {"name": "m", "version": "4", "tags": tag_list}}


@contextmanager
def _serving(fake: FakeServer, tls: ssl.SSLContext | None = None) -> Iterator[FakeServer]:
    """Run ``fake`` on a free local port (over TLS with ``tls``) until the block ends."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append((self.path, dict(self.headers)))
            status, body = fake.answers.pop(0) if len(fake.answers) > 1 else fake.answers[0]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_port}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("credentials", "authorization"),
    [
        ({"MLFLOW_TRACKING_TOKEN": "t0ken"}, "Bearer t0ken"),
        ({"MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "pw:1"}, "Basic YW5uOnB3OjE="),
        # As in MLflow's client, a user and password win over a token.
        (
            {"MLFLOW_TRACKING_TOKEN": "t0ken", "MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "pw:1"},
            "Basic YW5uOnB3OjE=",
        ),
        ({}, None),
    ],
)
def test_sends_mlflows_credentials_from_the_environment(
    credentials: dict[str, str], authorization: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _serving(FakeServer([_version_answer({"a": "b"})])) as fake:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{fake.url}/mlflow")  # behind a proxy, under a path
        for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)

        tags = MlflowRestClient.from_environment().version_tags("m", 4)

    assert tags == {"a": "b"}
    [(path, headers)] = fake.requests
    assert path == "/mlflow/api/2.0/mlflow/model-versions/get?name=m&version=4"
    assert headers.get("Authorization") == authorization
    if authorization and authorization.startswith("Basic "):
        assert base64.b64decode(authorization.removeprefix("Basic ")) == b"ann:pw:1"


def test_refused_credentials_say_what_to_set() -> None:
    refusal = (401, {"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."})
    with _serving(FakeServer([refusal])) as fake:
        client = MlflowRestClient(fake.url, token="wrong")
        with pytest.raises(
            ConfigError, match=r"HTTP 401 UNAUTHENTICATED: You are not authenticated; .*: set MLFLOW_TRACKING_TOKEN"
        ):
            client.alias_version("m", "champion")
    assert len(fake.requests) == 1  # not retried


def test_retries_what_may_pass_and_names_the_url_and_status_of_what_does_not() -> None:
    unavailable = (503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"})
    with _serving(FakeServer([unavailable, unavailable, _version_answer({"k": "v"})])) as fake:
        assert MlflowRestClient(fake.url, max_retries=2, backoff_factor=0).version_tags("m", 4) == {"k": "v"}
    assert len(fake.requests) == 3

    with _serving(FakeServer([unavailable])) as fake:
        url = f"{fake.url}/api/2.0/mlflow/model-versions/get?name=m&version=4"
        with pytest.raises(RegistryError, match=f"GET {re.escape(url)}: HTTP 503 TEMPORARILY_UNAVAILABLE: busy"):
            MlflowRestClient(fake.url, max_retries=1, backoff_factor=0).version_tags("m", 4)
    assert len(fake.requests) == 2

    # A 404 without MLflow's RESOURCE_DOES_NOT_EXIST is not a missing model: the URL is wrong.
    wrong_url = r"/api/2\.0/mlflow/registered-models/get\?name=m: HTTP 404"
    with _serving(FakeServer([(404, {"detail": "Not Found"})])) as fake, pytest.raises(RegistryError, match=wrong_url):
        MlflowRestClient(fake.url).alias_version("m", "champion")


def test_verifies_the_servers_certificate_with_the_ca_bundle_it_is_given(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    with _serving(FakeServer([_version_answer({"k": "v"})]), tls) as fake:
        assert MlflowRestClient(fake.url, server_cert_path=str(cert)).version_tags("m", 4) == {"k": "v"}
        assert MlflowRestClient(fake.url, insecure_tls=True).version_tags("m", 4) == {"k": "v"}
        with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED.*set MLFLOW_TRACKING_SERVER_CERT_PATH"):
            MlflowRestClient(fake.url).version_tags("m", 4)


@pytest.mark.parametrize("uri", ["sqlite:///tmp/mlflow.db", "file:///tmp/mlruns", "databricks", "mlflow:5000"])
def test_refuses_a_tracking_uri_that_is_not_an_http_server(uri: str) -> None:
    with pytest.raises(
        ConfigError,
        match=f"MLFLOW_TRACKING_URI={re.escape(repr(uri))} is not an MLflow server: .*"
        "point it at the server \\(http://mlflow:5000",
    ):
        MlflowRestClient(uri)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({}, "MLFLOW_TRACKING_URI is not set: point it at the MLflow server"),
        ({"MLFLOW_TRACKING_INSECURE_TLS": "yes"}, "MLFLOW_TRACKING_INSECURE_TLS='yes' is not a boolean"),
        ({"MLFLOW_HTTP_REQUEST_TIMEOUT": "soon"}, "MLFLOW_HTTP_REQUEST_TIMEOUT='soon' is not a number"),
        ({"MLFLOW_TRACKING_SERVER_CERT_PATH": "/no/ca.pem"}, "MLFLOW_TRACKING_SERVER_CERT_PATH='/no/ca.pem' does not"),
        (
            {"MLFLOW_TRACKING_INSECURE_TLS": "true", "MLFLOW_TRACKING_SERVER_CERT_PATH": __file__},
            "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_the_fix(
    environment: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if environment:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=re.escape(message)):
        MlflowRestClient.from_environment()


def test_another_store_is_read_with_mlflow_where_it_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local environment's embedded default: the server it starts reads SQLite through MLflow's client.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    assert isinstance(registry_from_environment(), MlflowRegistryReader)
