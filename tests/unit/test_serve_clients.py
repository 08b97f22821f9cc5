"""The protocols' own client libraries, with their defaults, against a real server process (`python -m mlsteps.serve`).

``tritonclient[http]`` (the Open Inference Protocol client) sends binary tensors and asks for binary outputs by
default; MLflow's ``ScoringServerClient`` pings ``/ping`` first and sends whole DataFrames (``NaN`` for missing
values, extra columns). The README's client examples are extracted from README.md and run here, so they stay true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as v2
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from ports import free_port
from prediction_logs import logged_rows
from tritonclient.utils import InferenceServerException

from mlsteps.evaluation.tasks import output_frame
from mlsteps.serving_bundle import ServingBundle, read_bundle

README = Path(__file__).resolve().parents[2] / "README.md"
STARTUP_SECONDS = 60


class Server:
    """A server process on a free port, with its prediction log."""

    def __init__(self, bundle: Path, store: str) -> None:
        self.port, self.store = free_port(), store
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlsteps.serve", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--bundle", str(bundle), "--prediction-log", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}: {self.process.communicate()[1]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2):
                    return
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def logged(self, model_name: str, rows: int) -> pd.DataFrame:
        """The prediction log once it holds ``rows`` rows (the writer flushes every 10 s or at shutdown)."""
        return logged_rows(self.store, model_name, rows)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir: Path) -> ServingBundle:
    return read_bundle(serving_bundle_dir)


@pytest.fixture(scope="module")
def server(serving_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(serving_bundle_dir, str(tmp_path_factory.mktemp("log") / "predictions"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _v2_inputs(rows: list[dict[str, Any]], bundle: ServingBundle, binary: bool = True) -> list[v2.InferInput]:
    """One tensor per column, as a client builds them from numpy (None in a number column is NaN)."""
    inputs = []
    for column in bundle.columns:
        values = [row[column.name] for row in rows]
        if column.type == "string":
            array = np.array(["" if v is None else v for v in values], dtype=object)  # BYTES has no null
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        tensor = v2.InferInput(column.name, [len(rows)], "BYTES" if column.type == "string" else "FP64")
        inputs.append(tensor.set_data_from_numpy(array, binary_data=binary))
    return inputs


def test_tritonclient_with_its_defaults_gets_the_bundles_probabilities(server: Server, bundle: ServingBundle) -> None:
    client = v2.InferenceServerClient(f"127.0.0.1:{server.port}")
    rows = bundle.smoke_inputs  # includes a row of nulls (NaN and "" here) and one of unseen categories

    assert client.is_server_ready() and client.is_model_ready(bundle.model_name)
    binary = client.infer(bundle.model_name, _v2_inputs(rows, bundle), request_id="r-1")
    as_json = client.infer(
        bundle.model_name,
        _v2_inputs(rows, bundle, binary=False),
        outputs=[v2.InferRequestedOutput(name, binary_data=False) for name in ("probability", "prediction")],
    )

    assert binary.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(rows)
    np.testing.assert_allclose(binary.as_numpy("probability"), bundle.smoke_outputs[:, 1], atol=1e-4)
    np.testing.assert_array_equal(binary.as_numpy("probability"), as_json.as_numpy("probability"))
    assert binary.as_numpy("prediction").dtype == np.int64
    assert (binary.get_response()["id"], binary.get_response()["model_version"]) == ("r-1", "1")
    assert client.get_model_repository_index() == [
        {"name": bundle.model_name, "version": "1", "state": "READY", "reason": ""}
    ]


@pytest.fixture(scope="module")
def multiclass_server(task_bundle_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(task_bundle_dirs["multiclass"], str(tmp_path_factory.mktemp("log") / "predictions"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def test_tritonclient_reads_a_multiclass_models_metadata_probabilities_and_labels(
    multiclass_server: Server, task_bundle_dirs: dict[str, Path]
) -> None:
    bundle = read_bundle(task_bundle_dirs["multiclass"])
    client = v2.InferenceServerClient(f"127.0.0.1:{multiclass_server.port}")
    rows = bundle.smoke_inputs
    expected = output_frame("multiclass", bundle.info.classes, bundle.smoke_outputs)

    metadata = client.get_model_metadata(bundle.model_name)
    binary = client.infer(bundle.model_name, _v2_inputs(rows, bundle))
    as_json = client.infer(
        bundle.model_name,
        _v2_inputs(rows, bundle, binary=False),
        outputs=[v2.InferRequestedOutput(name, binary_data=False) for name in ("probabilities", "prediction")],
    )

    assert metadata["parameters"] == {"task": "multiclass", "classes": ["stay", "downgrade", "leave"]}
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP64", [-1, 3]),
        ("prediction", "BYTES", [-1]),
    ]
    for result in (binary, as_json):
        assert result.as_numpy("probabilities").shape == (len(rows), 3)
        np.testing.assert_allclose(result.as_numpy("probabilities"), bundle.smoke_outputs, rtol=1e-6)
    # tritonclient gives BYTES as bytes when they came as binary data, as text when they came as JSON
    assert [label.decode() for label in binary.as_numpy("prediction")] == expected["prediction"].tolist()
    assert as_json.as_numpy("prediction").tolist() == expected["prediction"].tolist()


def test_tritonclient_sees_why_an_input_is_refused(server: Server, bundle: ServingBundle) -> None:
    client = v2.InferenceServerClient(f"127.0.0.1:{server.port}")
    extra = v2.InferInput("customer_id", [1], "BYTES").set_data_from_numpy(np.array(["C-1"], dtype=object))
    huge = _v2_inputs([dict(bundle.smoke_inputs[0], plan="x" * 100_000)], bundle)

    with pytest.raises(InferenceServerException, match=r"unknown input\(s\) \['customer_id'\]"):
        client.infer(bundle.model_name, [*_v2_inputs(bundle.smoke_inputs[:1], bundle), extra])
    with pytest.raises(InferenceServerException, match="'plan' row 0 holds a string of 100000 characters"):
        client.infer(bundle.model_name, huge)


def test_mlflow_client_with_nan_extra_columns_and_ids(server: Server, bundle: ServingBundle) -> None:
    client = ScoringServerClient("127.0.0.1", server.port)
    frame = pd.DataFrame(bundle.smoke_inputs[:3]).astype({"age": "float64"})
    frame.loc[1, "age"] = np.nan  # a missing number, sent as NaN
    frame.loc[2, "plan"] = np.nan  # a missing category, sent as NaN
    frame.insert(0, "customer_id", ["M-1", "M-2", "M-3"])
    frame["event_time"] = pd.Timestamp("2026-11-25 12:00")

    client.wait_server_ready(timeout=30)
    predictions = client.invoke(frame).get_predictions()

    assert re.fullmatch(r'"\d+\.\d+\.\d+.*"', client.get_version())
    expected = client.invoke(pd.DataFrame(bundle.smoke_inputs[:1])).get_predictions()["probability"][0]
    assert predictions["probability"][0] == pytest.approx(expected)
    assert predictions["prediction"].tolist() == [int(p >= 0.5) for p in predictions["probability"]]
    logged = server.logged(bundle.model_name, 3)
    assert {"M-1", "M-2", "M-3"} <= set(logged["request_id"])


def _readme_examples() -> dict[str, str]:
    """The README's client examples: each fenced block that follows a ``<!-- serve-example: NAME -->`` line."""
    found = re.findall(r"<!-- serve-example: (\S+) -->\n```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    return dict(found)


def test_the_readme_client_examples_run_against_the_server(server: Server) -> None:
    examples = _readme_examples()
    assert set(examples) == {"curl", "v2", "mlflow"}

    def here(code: str) -> str:
        return code.replace("8081", str(server.port)).replace("localhost:", "127.0.0.1:")

    curl = subprocess.run(["bash", "-ec", here(examples["curl"])], capture_output=True, text=True, timeout=60)
    assert curl.returncode == 0 and '"predictions": [{"probability": ' in curl.stdout, curl.stderr
    python = subprocess.run(
        [sys.executable, "-c", here(examples["v2"]) + here(examples["mlflow"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert python.returncode == 0, python.stderr
    assert "probability" in python.stdout and "prediction" in python.stdout
