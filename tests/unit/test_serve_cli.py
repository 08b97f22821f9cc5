"""`python -m mlsteps.serve` as a real process: uvicorn on a free port, readiness, inference, SIGTERM, failed loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fake_models import break_bundle
from ports import free_port

from mlsteps.monitoring import prediction_log
from mlsteps.serving_bundle import read_bundle

STARTUP_SECONDS = 60


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlsteps.serve", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _post(url: str, payload: Any) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, dict(answer.headers), json.loads(answer.read())


def _wait_ready(process: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.communicate()[1]}")
        try:
            if _get(f"{base}/v2/health/ready") == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_serves_a_bundle_and_exits_cleanly_on_sigterm(serving_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = read_bundle(serving_bundle_dir)
    port, store = free_port(), str(tmp_path / "predictions")
    base = f"http://127.0.0.1:{port}"
    process = _serve("--bundle", str(serving_bundle_dir), "--port", str(port), "--prediction-log", store)
    try:
        _wait_ready(process, base)
        status, headers, answer = _post(f"{base}/invocations", {"dataframe_records": bundle.smoke_inputs[:2]})
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert (status, headers["x-model-version"]) == (200, "1")
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(bundle.smoke_outputs[:2, 1], abs=1e-4)
    assert process.returncode == 0, stderr
    logged = prediction_log.read_window(store, bundle.model_name, "2000-01-01", "2100-01-01")
    assert len(logged) == 2  # the writer flushed at shutdown


def test_a_bundle_that_fails_its_smoke_check_stops_the_server_with_the_reason(
    serving_bundle_dir: Path, tmp_path: Path
) -> None:
    broken = break_bundle(Path(shutil.copytree(serving_bundle_dir, tmp_path / "broken")))
    process = _serve("--bundle", str(broken), "--port", str(free_port()))
    _, stderr = process.communicate(timeout=STARTUP_SECONDS)

    assert process.returncode == 2
    assert "serve failed: churn-classifier v1" in stderr and "fails its smoke check" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the model to serve: --model-name"),
        (["--model-name", "churn-classifier"], "MLFLOW_TRACKING_URI is not set"),
        (["--model-name", "m", "--allow-reload", "--workers", "2"], "--allow-reload with --workers 2"),
    ],
)
def test_a_server_without_a_usable_model_source_exits_with_the_reason(args: list[str], message: str) -> None:
    process = _serve(*args, "--port", str(free_port()))
    _, stderr = process.communicate(timeout=STARTUP_SECONDS)

    assert process.returncode == 2
    assert message in stderr
