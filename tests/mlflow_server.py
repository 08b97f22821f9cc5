"""A real MLflow server for the tests that talk to one over HTTP, as the model server and the pods do."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ports import free_port


def mlflow_server_command(registry: Path, port: int) -> list[str]:
    """The host's full MLflow (requirements/dev.txt) serving the registry in a folder: SQLite, and the artifacts it
    serves itself (mlflow-artifacts:/), so that clients download them over HTTP as from the production server."""
    database, artifacts = f"sqlite:///{registry}/mlflow.db", f"{registry}/artifacts"
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


@contextmanager
def running_mlflow_server(registry: Path) -> Iterator[str]:
    """An MLflow server on a free local port for the registry in ``registry`` (log: ``server.log`` there); yields
    its URL and stops it on exit."""
    port = free_port()
    with (registry / "server.log").open("wb") as log:
        server = subprocess.Popen(mlflow_server_command(registry, port), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/health", server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=60)
