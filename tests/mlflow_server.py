"""A real MLflow server for the tests that talk to one over HTTP, as the model server and the pods do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ports import free_port


def mlflow_server_command(registry: Path, port: int, artifacts: str | None = None) -> list[str]:
    """The host's full MLflow (requirements/dev.txt) serving the registry in a folder: SQLite, and the artifacts it
    serves itself (mlflow-artifacts:/), so that clients download them over HTTP as from the production server.

    Args:
        registry: the folder of the SQLite database (and of the artifacts, unless ``artifacts`` is given).
        port: the local port to listen on.
        artifacts: where the server keeps artifacts, e.g. ``s3://bucket/prefix`` (with ``MLFLOW_S3_ENDPOINT_URL`` in
            its environment for an S3-compatible store); default ``<registry>/artifacts``.
    """
    database, artifacts = f"sqlite:///{registry}/mlflow.db", artifacts or f"{registry}/artifacts"
    store = ["--backend-store-uri", database, "--artifacts-destination", artifacts]
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "-w", "1", *store]


def wait_until_answers(url: str, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    """Return once ``url`` answers; raises when ``server`` exits first or the time is up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {seconds:.0f} s (exit code {server.poll()})") from None
            time.sleep(0.5)


class MlflowServer:
    """An MLflow server process on a fixed local port, which a test can kill and start again on that port: the
    registry (SQLite) and the artifacts outlive the process, as they outlive a restart of the production server.

    The server runs in its own process group (``mlflow server`` starts uvicorn as a child), so that stopping it
    stops every process that holds the port.
    """

    def __init__(self, registry: Path, artifacts: str | None = None, env: dict[str, str] | None = None) -> None:
        """A server for the registry folder (log: ``server.log`` there), not started yet; see
        ``mlflow_server_command`` for ``artifacts``. ``env`` is added to this process's environment."""
        self.registry, self.artifacts, self.env = registry, artifacts, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        """Start the process and return at once; ``wait_until_ready`` waits for it to answer."""
        with (self.registry / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                mlflow_server_command(self.registry, self.port, self.artifacts),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        return self

    def wait_until_ready(self, seconds: float = 120) -> str:
        """Wait until the server answers its health check; returns its URL."""
        assert self.process is not None, "start() the server first"
        wait_until_answers(f"{self.url}/health", self.process, seconds)
        return self.url

    def _signal(self, signum: signal.Signals, seconds: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=seconds)

    def kill(self) -> None:
        """Kill the server at once, as a crash or a lost node would: clients see refused connections."""
        self._signal(signal.SIGKILL, 30)

    def stop(self) -> None:
        """Stop the server, killing it when it does not stop within 30 s."""
        self._signal(signal.SIGTERM, 30)


@contextmanager
def running_mlflow_server(
    registry: Path, artifacts: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """An MLflow server on a free local port for the registry in ``registry`` (log: ``server.log`` there); yields
    its URL and stops it on exit. ``artifacts`` and ``env`` as for ``MlflowServer``."""
    server = MlflowServer(registry, artifacts, env).start()
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()
