"""`make airflow` / `make airflow-stop` (python -m orchestration.services): the real API server, scheduler, DAG
processor and triggerer and the MLflow UI start with one command on 127.0.0.1, log in with the printed password,
refuse a port in use and a second start, and stop with one command leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ports import free_port

pytestmark = pytest.mark.e2e

START_TIMEOUT_SECONDS = 400


def _services(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.services", *args],
        env={**os.environ, "ML_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


def _request(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (``/proc/net/tcp``: hex address, state 0A)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def _processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment names this state folder."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("services")
    port, mlflow_port = free_port(), free_port()
    done = _services(state, "start", "--port", str(port), "--mlflow-port", str(mlflow_port))
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        yield {"state": state, "port": port, "mlflow_port": mlflow_port, "stdout": done.stdout}
    finally:
        _services(state, "stop")


def test_start_prints_where_and_the_login_and_everything_listens_on_localhost_only(started: dict[str, Any]) -> None:
    assert f"http://127.0.0.1:{started['port']}" in started["stdout"]
    assert f"http://127.0.0.1:{started['mlflow_port']}" in started["stdout"]
    assert _listening_addresses(started["port"]) == {"127.0.0.1"}
    assert _listening_addresses(started["mlflow_port"]) == {"127.0.0.1"}


def test_every_component_is_healthy_and_the_printed_password_logs_in(started: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{started['port']}"
    status, body = _request(f"{base}/api/v2/monitor/health")
    health = json.loads(body)
    assert status == 200
    assert {name: health[name]["status"] for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    password = re.search(r"user admin, password (\S+)\)", started["stdout"]).group(1)
    status, body = _request(f"{base}/auth/token", {"username": "admin", "password": password})
    assert status == 201, body
    token = json.loads(body)["access_token"]
    assert _request(f"{base}/api/v2/dags?limit=1", token=token)[0] == 200
    assert _request(f"{base}/api/v2/dags?limit=1")[0] == 401
    assert _request(f"http://127.0.0.1:{started['mlflow_port']}/health")[0] == 200


def test_the_models_page_is_mounted_and_refuses_anonymous_requests(started: dict[str, Any]) -> None:
    assert _request(f"http://127.0.0.1:{started['port']}/ml-models/api/models")[0] == 401


def test_a_second_start_and_a_port_in_use_are_refused_naming_them(started: dict[str, Any], tmp_path: Path) -> None:
    again = _services(started["state"], "start", "--port", str(free_port()), "--mlflow-port", str(free_port()))
    assert again.returncode == 2
    assert "already run" in again.stderr and "make airflow-stop" in again.stderr

    other_state = tmp_path / "other"
    taken = _services(other_state, "start", "--port", str(started["port"]), "--mlflow-port", str(free_port()))
    assert taken.returncode == 2
    assert f"port {started['port']} on 127.0.0.1 is in use" in taken.stderr and "AIRFLOW_PORT" in taken.stderr
    assert not _processes_with(str(other_state)), "a refused start started nothing"


def test_stop_leaves_no_process_behind(started: dict[str, Any]) -> None:
    """Last in this file: it stops the module's services."""
    state = started["state"]
    assert _processes_with(str(state))
    stopped = _services(state, "stop")
    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "stopped: api-server, dag-processor, mlflow, scheduler, triggerer"
    assert _processes_with(str(state)) == []
    assert _services(state, "stop").stdout.strip() == "no services were running"
