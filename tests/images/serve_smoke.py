"""The serving image's smoke run, executed inside the image by tests/images/test_images.py (standard library only).

    python serve_smoke.py <bundle folder> <the image's HEALTHCHECK command as a JSON list> [server option ...]

It starts ``python -m mlsteps.serve`` with the server options (default: ``--bundle <folder>``) on the image's defaults
(0.0.0.0:8080), waits until it is ready, runs the HEALTHCHECK command, sends the bundle's smoke rows once as an Open
Inference Protocol request and once in MLflow's scoring format, stops the server and prints one JSON object with
everything that came back. Server, health check and clients share the container's network namespace, as the
kubelet's probes share the pod's. Where ``MLFLOW_TRACKING_URI`` names an MLflow server (the registry the server loads
from), the server starts once that answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BASE_URL = "http://127.0.0.1:8080"
READY_TIMEOUT_SECONDS = 120
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL"}


def call(path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (or POST ``payload`` as JSON) and return the status, the model version header and the JSON body."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(BASE_URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, headers, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    return {"status": status, "model_version": headers.get("x-model-version"), "body": json.loads(body or b"null")}


def wait_until_ready(server: subprocess.Popen[bytes]) -> float:
    """Seconds until /v2/health/ready answered 200; raises when the server exits or the time is up."""
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_SECONDS:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready")
        try:
            if call("/v2/health/ready")["status"] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_SECONDS} s")


def wait_for_mlflow(tracking_uri: str) -> None:
    """Return once the MLflow server at ``tracking_uri`` answers /health; raises when the time is up."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{tracking_uri}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the MLflow server at {tracking_uri} did not answer within {READY_TIMEOUT_SECONDS} s")


def smoke_requests(bundle: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The model name, and the smoke rows as a v2 request and as a dataframe_split request."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    columns = json.loads((bundle / "signature.json").read_text())
    rows = json.loads((bundle / "smoke.json").read_text())["inputs"]
    v2 = {
        "inputs": [
            {
                "name": column["name"],
                "shape": [len(rows)],
                "datatype": V2_DATATYPES.get(column["type"], "BYTES"),
                "data": [row.get(column["name"]) for row in rows],
            }
            for column in columns
        ]
    }
    names = [column["name"] for column in columns]
    split = {"dataframe_split": {"columns": names, "data": [[row.get(name) for name in names] for row in rows]}}
    return manifest["model_name"], v2, split


def main() -> None:
    """Run the server, the health check and both requests; print the outcome as JSON."""
    bundle, health_check = Path(sys.argv[1]), json.loads(sys.argv[2])
    server_options = sys.argv[3:] or ["--bundle", str(bundle)]
    model_name, v2, split = smoke_requests(bundle)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri.startswith("http"):
        wait_for_mlflow(tracking_uri)
    log = Path("/tmp/serve.log")
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlsteps.serve", *server_options], stdout=output, stderr=subprocess.STDOUT
        )
    outcome: dict[str, Any] = {}
    try:
        outcome["ready_seconds"] = wait_until_ready(server)
        checked = subprocess.run(health_check, capture_output=True, text=True, timeout=10)
        outcome["health_check"] = {"returncode": checked.returncode, "stderr": checked.stderr[-2000:]}
        outcome["v2"] = call(f"/v2/models/{model_name}/infer", v2)
        outcome["invocations"] = call("/invocations", split)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        outcome["failure"] = str(exc)
    finally:
        server.terminate()
        outcome["server_exit"] = server.wait(timeout=30)
        outcome["server_log"] = log.read_text(errors="replace")[-4000:]
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
