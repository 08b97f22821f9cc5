"""The model server on inputs at the edges: every answer is valid JSON, and what is odd is refused or counted.

Cases: an extreme but finite input, MLflow's NaN and extra columns, the repository index and MLflow's health
endpoints. A real bundle, through the ASGI app. What is refused outright (a 3 MB string, a text/plain body, infinity,
a body over the limit) is in the bad-input matrix, tests/bad_input_cases.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from prediction_logs import logged_rows
from starlette.testclient import TestClient

from mlsteps.serve.app import MLFLOW_SCORING_VERSION, create_app
from mlsteps.serve.cli import policy_from_config
from mlsteps.serve.model import ModelHandle, load_model
from mlsteps.serving_bundle import ServingBundle, read_bundle


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir: Path) -> ServingBundle:
    return read_bundle(serving_bundle_dir)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "predictions")


@pytest.fixture
def client(bundle: ServingBundle, store: str) -> Iterator[TestClient]:
    model = load_model(bundle, prediction_log=store, log_flush_seconds=0.05, policy=policy_from_config(None, None))
    with TestClient(create_app(ModelHandle(model))) as test_client:
        yield test_client


def _strict_json(response: Any) -> Any:
    """The body as JSON, refusing NaN and Infinity as a strict parser (a browser's, Go's) would."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the response body: not valid JSON")

    return json.loads(response.content, parse_constant=refuse)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _logged(store: str, bundle: ServingBundle, rows: int) -> Any:
    """The prediction log once it holds ``rows`` rows (the writer flushes every 50 ms)."""
    return logged_rows(store, bundle.model_name, rows, timeout=10)


def test_an_extreme_input_that_breaks_the_model_is_a_422_naming_the_row_and_input(
    client: TestClient, bundle: ServingBundle, store: str
) -> None:
    rows = [bundle.smoke_inputs[0], dict(bundle.smoke_inputs[0], age=1e300)]

    answer = client.post("/invocations", json={"dataframe_records": rows})
    metrics = client.get("/metrics").text

    age = bundle.preprocessor.numeric["age"]  # the range the train split had, recorded in the package
    assert answer.status_code == 422
    assert _strict_json(answer)["error"].startswith(
        "the model gave no finite probability for 1 row(s) [1]: row 1 has inputs outside the range seen in training: "
        f"age=1e+300 (training range {age.minimum:g} to {age.maximum:g}). Send values within the range seen in training"
    )
    assert _metric(metrics, 'mlsteps_serve_out_of_range_values_total{column="age"}') == 1
    assert _metric(metrics, 'mlsteps_serve_errors_total{endpoint="invocations",reason="non_finite_output"}') == 1
    assert client.post("/invocations", json={"dataframe_records": rows[:1]}).status_code == 200
    assert len(_logged(store, bundle, 1)) == 1  # the scored request's row only


def test_values_outside_the_training_range_are_scored_and_counted(client: TestClient, bundle: ServingBundle) -> None:
    row = dict(bundle.smoke_inputs[0], tenure_months=500, num_devices=-1)

    answer = client.post("/invocations", json={"dataframe_records": [row]})
    metrics = client.get("/metrics").text

    assert answer.status_code == 200 and 0 <= _strict_json(answer)["predictions"][0]["probability"] <= 1
    assert _metric(metrics, 'mlsteps_serve_out_of_range_values_total{column="tenure_months"}') == 1
    assert _metric(metrics, 'mlsteps_serve_out_of_range_values_total{column="num_devices"}') == 1


def test_mlflow_rows_with_nan_and_extra_columns_are_scored_under_their_id(
    client: TestClient, bundle: ServingBundle, store: str
) -> None:
    row = dict(bundle.smoke_inputs[0], customer_id="C-17", event_time="2026-01-01T00:00:00")
    body = json.dumps({"dataframe_records": [row]})[:-2] + ', {"age": NaN, "plan": NaN, "customer_id": "C-18"}]}'

    answer = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    metrics = client.get("/metrics").text

    assert answer.status_code == 200, answer.text
    assert len(_strict_json(answer)["predictions"]) == 2
    assert _metric(metrics, 'mlsteps_serve_ignored_columns_total{endpoint="invocations"}') == 1  # event_time
    logged = _logged(store, bundle, 2).sort_values("request_id")
    assert sorted(logged["request_id"]) == ["C-17", "C-18"]
    assert logged["plan"].isna().tolist() == [False, True]


def test_repository_index_and_mlflow_health_endpoints(client: TestClient, bundle: ServingBundle) -> None:
    index = client.post("/v2/repository/index")
    ready_only = client.post("/v2/repository/index", json={"ready": True})

    expected = [{"name": bundle.model_name, "version": "1", "state": "READY", "reason": ""}]
    assert (index.status_code, _strict_json(index), _strict_json(ready_only)) == (200, expected, expected)
    for path in ("/ping", "/health"):
        assert (client.get(path).status_code, _strict_json(client.get(path))) == (200, {"status": "ok"})
    assert _strict_json(client.get("/version")) == MLFLOW_SCORING_VERSION


def test_version_names_the_pinned_mlflow_whose_scoring_protocol_the_server_speaks() -> None:
    # The serving image has no MLflow to ask; the version is the pin, which the scoring-client tests run against.
    constraints = Path(__file__).resolve().parents[2] / "constraints.txt"
    pins = dict(line.split("==") for line in constraints.read_text().split() if "==" in line)
    assert MLFLOW_SCORING_VERSION == pins["mlflow"] == pins["mlflow-skinny"] == version("mlflow")


def test_an_empty_server_says_it_is_not_ready_in_json() -> None:
    with TestClient(create_app(ModelHandle())) as client:
        assert (client.get("/ping").status_code, _strict_json(client.get("/ping"))) == (503, {"status": "loading"})
        assert _strict_json(client.post("/v2/repository/index")) == []


def test_the_policy_comes_from_the_pipeline_config() -> None:
    policy = policy_from_config(None, None)

    assert (policy.strict_columns, policy.id_column, policy.max_string_length) == (False, "customer_id", None)
    assert policy.bounds["age"] == (18, 100)
    assert policy_from_config(None, True).strict_columns


def test_a_client_that_stalls_mid_body_gets_408_and_frees_its_connection(bundle: ServingBundle, store: str) -> None:
    """The body's first bytes come, then nothing: refused once the body timeout passes, and the server says why.
    Driven through the ASGI interface, where the stall is a receive() that does not return."""
    model = load_model(bundle, prediction_log=store, policy=policy_from_config(None, None))
    app = create_app(ModelHandle(model), body_timeout_seconds=0.2)
    headers = [(b"content-type", b"application/json")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http"}
    scope |= {"path": "/invocations", "raw_path": b"/invocations", "query_string": b"", "headers": headers}
    parts = [{"type": "http.request", "body": b'{"dataframe_records": [', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop()
        await asyncio.sleep(60)  # the client stalls
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    assert sent[0]["status"] == 408
    error = json.loads(sent[1]["body"])["error"]
    assert "request body not received within 0.2 s (23 bytes came): send the whole body at once" in error
