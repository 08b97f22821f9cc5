"""Transient and permanent faults of the object store and the MLflow server, against real servers.

Transient faults (a store that restarts) are ridden out by the clients' own retries, configured through the
environment variables that ``mlsteps.data.storage`` and ``mlsteps.tracking`` document; the tests shorten the waits
through those variables only. Permanent refusals fail at the first answer, naming the store and the fix.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import pytest
from fake_models import GOOD, MODEL_NAME, PIPELINE, log_model
from mlflow_server import MlflowServer
from ports import free_port
from typer.testing import CliRunner

from mlsteps import registry, results, serving_bundle, tracking
from mlsteps.cli import app
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.snapshots import snapshot_id, write_table
from mlsteps.errors import RegistryError, StepError, StorageError, StoreUnavailable
from mlsteps.steps import register

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
FAMILY = PIPELINE.training.model

# A restarted store keeps its content, as a real store keeps it on disk; moto keeps it in memory only. So each of
# our moto servers records every request it gets (moto's recorder: MOTO_ENABLE_RECORDING, appended to one file as
# requests arrive), and a new server replays that file into its own memory, through a throw-away server on another
# port, before it opens the shared port. Replaying after the port is open (/moto-api/recorder/replay-recording)
# would race with the step, whose first retry could find no bucket and fail for good; re-creating the bucket and
# re-uploading only the inputs would lose what the step wrote before the outage.
_MOTO_LAUNCHER = """
import sys
from moto.moto_api import recorder
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.server import main

staging = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
staging.start()
host, port = staging.get_host_and_port()
recorder.replay_recording(target_host=f"http://{host}:{port}")
staging.stop()
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


def _wait_for(condition: object, what: str, seconds: float = 60) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)


class RestartableMoto:
    """A moto server of our own on a fixed port, killed and started again by the tests (the shared ``moto_server``
    fixture serves other tests and must keep running)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = folder / "moto-recording.jsonl"
        self.recording.touch()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        command = [sys.executable, "-c", _MOTO_LAUNCHER, str(self.port)]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
        except OSError:
            return False
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def recorded(self) -> list[dict]:
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def own_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableMoto]:
    moto = RestartableMoto(tmp_path_factory.mktemp("own-moto"))
    moto.start()
    try:
        _wait_for(moto.answers, "moto answering")
        yield moto
    finally:
        moto.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Credentials for moto, and an S3 client made afresh from the environment the test sets."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    storage.s3_client.cache_clear()
    yield monkeypatch
    storage.s3_client.cache_clear()


def _use_store(monkeypatch: pytest.MonkeyPatch, endpoint: str, **settings: str) -> None:
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV_VAR, endpoint)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    storage.s3_client.cache_clear()


# Object store: transient faults.


def test_a_step_rides_out_a_store_restart_in_the_middle_of_its_run(
    own_moto: RestartableMoto, s3_env: pytest.MonkeyPatch
) -> None:
    _use_store(s3_env, own_moto.endpoint)
    bucket = "restart"
    storage.s3_client().create_bucket(Bucket=bucket)
    churn = generate_churn(300, seed=5)
    input_uri, store, run_root = f"s3://{bucket}/in/churn.csv", f"s3://{bucket}/snapshots", f"s3://{bucket}/runs/r1"
    write_table(churn, input_uri)
    # Enough attempts to outlast the restart (the waits are botocore's: 0.05 s doubling, at most 20 s each).
    env = {**os.environ, storage.S3_MAX_ATTEMPTS_ENV_VAR: "30"}
    command = ["snapshot", "--run-root", run_root, "--input-uri", input_uri, "--snapshot-store", store]
    step = subprocess.Popen(
        [sys.executable, "-m", "mlsteps", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        assert step.stdout is not None
        for line in step.stdout:  # the step has read its input: stop the store before it writes anything
            output.append(line)
            if line.startswith("snapshot: read 300 rows"):
                break
        # Paused while the store goes down, so that the outage falls between the read and the writes.
        step.send_signal(signal.SIGSTOP)
        own_moto.kill()
        requests_before_restart = len(own_moto.recorded())
        own_moto.start()
        step.send_signal(signal.SIGCONT)
        rest, _ = step.communicate(timeout=120)
    finally:
        step.kill()
    output.append(rest)
    assert step.returncode == 0, "".join(output)

    written_after = [r["url"] for r in own_moto.recorded()[requests_before_restart:] if r["method"] == "PUT"]
    assert any(url.endswith("/runs/r1/snapshot/result.json") for url in written_after), written_after
    result = results.read_result(run_root, "snapshot")
    assert result["snapshot_id"] == snapshot_id(churn) and result["rows"] == 300
    assert storage.read_parquet(result["snapshot_uri"]).shape == (300, len(churn.columns))
    assert storage.exists(result["schema_uri"])


def test_a_store_down_longer_than_the_retries_is_a_retryable_failure_naming_it(s3_env: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _use_store(s3_env, endpoint, **{storage.S3_MAX_ATTEMPTS_ENV_VAR: "3"})
    unreachable = rf"^S3 store {endpoint}, bucket gone was unreachable after 3 attempts for s3://gone/in/x.csv "

    with pytest.raises(StoreUnavailable, match=unreachable):
        storage.read_bytes("s3://gone/in/x.csv")
    with pytest.raises(StoreUnavailable, match="was unreachable after 3 attempts"):
        storage.upload_file(Path(__file__), "s3://gone/code.py")
    # Through the CLI: not a user error (exit 2) but a failure the orchestrator retries.
    command = ["snapshot", "--run-root", "s3://gone/runs/r1", "--input-uri", "s3://gone/in/x.csv"]
    outcome = CliRunner().invoke(app, [*command, "--snapshot-store", "s3://gone/snapshots"])
    assert outcome.exit_code == 1 and isinstance(outcome.exception, StoreUnavailable), outcome.output
    assert not isinstance(outcome.exception, StepError)


# Object store: permanent refusals fail at the first answer (botocore made no retry: RetryAttempts 0).


def _attempts_made(error: BaseException) -> int:
    """How many retries botocore made before the answer that ``error`` (a ``StorageError``) reports."""
    return error.__context__.response["ResponseMetadata"]["RetryAttempts"]  # type: ignore[union-attr]


def test_a_missing_bucket_fails_at_once_naming_the_store_and_the_fix(s3_bucket: str, moto_server: str) -> None:
    uri = "s3://no-such-bucket-here/runs/r1/snapshot/result.json"
    with pytest.raises(StorageError) as refused:
        storage.write_json(uri, {"a": 1})
    assert str(refused.value) == (
        f"S3 store {moto_server}, bucket no-such-bucket-here refused {uri} (NoSuchBucket): bucket no-such-bucket-here "
        f"does not exist: create it (aws s3 mb s3://no-such-bucket-here) or fix the URI {uri}"
    )
    assert _attempts_made(refused.value) == 0
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.list_files("s3://no-such-bucket-here/runs")


def _reset_auth(moto: RestartableMoto, free_requests: str) -> str:
    """Make moto check credentials and IAM policies after ``free_requests`` more requests; returns the old count."""
    request = urllib.request.Request(
        f"{moto.endpoint}/moto-api/reset-auth", data=free_requests.encode(), headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


def test_denied_access_and_unknown_keys_fail_at_once_naming_the_fix(
    own_moto: RestartableMoto, s3_env: pytest.MonkeyPatch
) -> None:
    _use_store(s3_env, own_moto.endpoint, **{storage.S3_MAX_ATTEMPTS_ENV_VAR: "12"})
    storage.s3_client().create_bucket(Bucket="locked")
    iam = boto3.client("iam", endpoint_url=own_moto.endpoint)
    # moto checks credentials and IAM policies from the third request on: the first two make a user without any.
    previous = _reset_auth(own_moto, "2")
    try:
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        s3_env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        s3_env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        storage.s3_client.cache_clear()
        with pytest.raises(StorageError, match=r"refused s3://locked/a.json \(AccessDenied\): access denied") as denied:
            storage.write_json("s3://locked/a.json", {})
        assert str(denied.value).startswith(f"S3 store {own_moto.endpoint}, bucket locked ")
        assert "s3:PutObject" in str(denied.value) and _attempts_made(denied.value) == 0
        with pytest.raises(StorageError, match=r"\(403\): access denied to s3://locked/a.json"):
            storage.exists("s3://locked/a.json")

        s3_env.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
        storage.s3_client.cache_clear()
        with pytest.raises(StorageError, match=r"\(InvalidAccessKeyId\): .* set AWS_ACCESS_KEY_ID") as unknown:
            storage.read_bytes("s3://locked/a.json")
        assert _attempts_made(unknown.value) == 0
    finally:
        _reset_auth(own_moto, previous)


# MLflow: a server restarted in the middle of a registration; refusals.


@pytest.fixture(scope="module", autouse=True)
def mlflow_on_s3(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[MlflowServer]:
    """A real MLflow server (SQLite) keeping its artifacts in a bucket of the shared moto server. Started with the
    module's first test and not waited for, so that it boots while the object-store tests run."""
    bucket = f"mlflow-{free_port()}"
    boto3.client("s3", endpoint_url=moto_server, **_boto_credentials()).create_bucket(Bucket=bucket)
    env = {"MLFLOW_S3_ENDPOINT_URL": moto_server, **CREDENTIALS}
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-on-s3"), f"s3://{bucket}/mlartifacts", env).start()
    try:
        yield server
    finally:
        server.kill()  # its registry is thrown away: no need to wait for a graceful shutdown


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def tracking_server(mlflow_on_s3: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """MLflow pointed at the server, with retries short enough for a test (MLflow's own variables)."""
    mlflow_on_s3.wait_until_ready()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_on_s3.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")  # waits 0, 2, 4 and 8 s: 14 s in all
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(mlflow_on_s3.url)
    yield mlflow_on_s3
    mlflow.set_tracking_uri(None)


def _version_tags(server: MlflowServer, key: str) -> list[tuple[str, str]]:
    """(version, value) of a tag of every version, read from the server's database, not through the server."""
    with sqlite3.connect(f"file:{server.registry / 'mlflow.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT version, value FROM model_version_tags WHERE key = ?", (key,)).fetchall()
    return [(str(version), value) for version, value in rows]


def _write_upstream(run_root: str) -> None:
    """The results register reads: a snapshot, a passed evaluation and the challenger's train result."""
    run_id, model_uri = log_model(GOOD)
    results.write_result(run_root, "snapshot", {"snapshot_id": "snap-7", "dataset": "churn"})
    train = {"mlflow_run_id": run_id, "model_uri": model_uri, "family": FAMILY, "task": "binary"}
    results.write_result(run_root, results.candidate_step(FAMILY), train)
    challenger = {"family": FAMILY, "model_uri": model_uri, "metrics": {"roc_auc": 0.74}}
    gate = {"passed": True, "primary_metric": "roc_auc"}
    results.write_result(run_root, "evaluate", {"challenger": challenger, "gate": gate})


def test_register_survives_a_registry_restart_and_leaves_no_version_without_its_bundle(
    tracking_server: MlflowServer, tmp_path: Path
) -> None:
    run_root = str(tmp_path / "run")
    _write_upstream(run_root)
    outcome: dict[str, object] = {}

    def register_in_background() -> None:
        try:
            outcome["result"] = register.run(run_root, PIPELINE)
        except Exception as exc:  # reported to the test below
            outcome["error"] = exc

    worker = threading.Thread(target=register_in_background)
    worker.start()
    # Killed once the version exists and its tags are being set: before its bundle, the half-written moment.
    _wait_for(lambda: _version_tags(tracking_server, "snapshot_id") or not worker.is_alive(), "registration")
    tracking_server.kill()
    tracking_server.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    if "error" in outcome:  # the restart outlasted the retries: a retryable failure naming the server, then a rerun
        message = (
            f"MLflow tracking server {tracking_server.url} was unreachable or broke off its answer, with each request "
            "tried up to 5 times"
        )
        assert isinstance(outcome["error"], StoreUnavailable) and str(outcome["error"]).startswith(message)
        tracking_server.wait_until_ready()
        outcome["result"] = register.run(run_root, PIPELINE)
    tracking_server.wait_until_ready()

    result = outcome["result"]
    assert isinstance(result, dict) and results.read_result(run_root, "register")["version"] == result["version"]
    assert [version for version, _ in _version_tags(tracking_server, registry.RUN_ROOT_TAG)] == ["1"]
    assert _version_tags(tracking_server, serving_bundle.BUNDLE_SHA256_TAG) == [("1", result["serving_bundle_sha256"])]
    assert result["version"] == 1 and result["aliases"] == [registry.CHALLENGER]
    bundle = serving_bundle.fetch_bundle(tracking.client(), MODEL_NAME, 1, tmp_path / "fetched")
    assert bundle.sha256 == result["serving_bundle_sha256"]


def test_an_unknown_model_fails_at_once_naming_the_server_and_the_fix(tracking_server: MlflowServer) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(RegistryError) as refused:
        tracking.client().get_model_version("no-such-model", "3")
    message = str(refused.value)
    assert message.startswith(f"MLflow at {tracking_server.url} refused a request (RESOURCE_DOES_NOT_EXIST: ")
    assert "check registry.model_name in the pipeline config" in message
    # Still what MLflow raised, so code that takes a missing model for "not registered yet" keeps working.
    assert isinstance(refused.value, MlflowException) and registry.is_missing(refused.value)
    assert registry.alias_version(tracking.client(), "no-such-model", registry.CHAMPION) is None


def test_a_registry_down_longer_than_the_retries_is_a_retryable_failure_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with (
        _tracking_at(monkeypatch, url),
        pytest.raises(
            StoreUnavailable,
            match=f"^MLflow tracking server {url} was unreachable or broke off its answer, with each request tried "
            "up to 2 times",
        ),
    ):
        tracking.client().get_registered_model(MODEL_NAME)


@contextlib.contextmanager
def _tracking_at(monkeypatch: pytest.MonkeyPatch, url: str) -> Iterator[None]:
    """MLflow pointed at ``url`` (the variable steps read, and the fluent API's own), then back to unset."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the start of a chunked body, then drops the connection: a server going down."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"20\r\n{")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads the client's error, not the server's log."""


def test_an_answer_broken_off_mid_body_is_a_retryable_failure_naming_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutShortHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        with (
            _tracking_at(monkeypatch, url),
            pytest.raises(
                StoreUnavailable,
                match=f"^MLflow tracking server {url} was unreachable or broke off its answer, with each request "
                "tried up to 1 times",
            ),
        ):
            tracking.client().get_registered_model(MODEL_NAME)
    finally:
        server.shutdown()
        server.server_close()
