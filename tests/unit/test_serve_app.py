"""The model server's HTTP API on a real exported bundle: answers, validation, readiness, metrics, logging, reloads."""

from __future__ import annotations

import json
import re
import shutil
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fake_models import break_bundle
from starlette.testclient import TestClient

from mlsteps.errors import StepError
from mlsteps.evaluation.tasks import output_columns, output_frame
from mlsteps.monitoring import prediction_log
from mlsteps.serve.app import create_app
from mlsteps.serve.model import ModelHandle, ServedModel, load_model
from mlsteps.serving_bundle import MANIFEST_FILE, BundleError, ServingBundle, read_bundle

JSON_TYPES = {"double": "FP64", "string": "BYTES"}


@pytest.fixture(scope="module")
def bundle(serving_bundle_dir: Path) -> ServingBundle:
    return read_bundle(serving_bundle_dir)


@pytest.fixture(scope="module")
def model(bundle: ServingBundle) -> ServedModel:
    return load_model(bundle)


@pytest.fixture
def client(model: ServedModel) -> Iterator[TestClient]:
    with TestClient(create_app(ModelHandle(model))) as test_client:
        yield test_client


def v2_body(bundle: ServingBundle, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """An inference request with one tensor per column, typed as the signature says."""
    tensors = [
        {"name": c.name, "datatype": JSON_TYPES[c.type], "shape": [len(rows)], "data": [row[c.name] for row in rows]}
        for c in bundle.columns
    ]
    return {"inputs": tensors, **extra}


def infer_path(bundle: ServingBundle) -> str:
    return f"/v2/models/{bundle.model_name}/infer"


def version_copy(source: Path, folder: Path, version: int) -> Path:
    """The same model under another version number (its manifest says so; checksums of the files still hold)."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["model_version"] = version
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def test_both_formats_answer_the_probabilities_the_trained_model_gave(
    client: TestClient, bundle: ServingBundle
) -> None:
    rows = bundle.smoke_inputs  # includes a row of nulls and one of unseen categories
    expected = bundle.smoke_outputs[:, 1]
    names = [c.name for c in bundle.columns]

    v2 = client.post(infer_path(bundle), json=v2_body(bundle, rows, id="req-1"))
    split = client.post(
        "/invocations", json={"dataframe_split": {"columns": names, "data": [[r[n] for n in names] for r in rows]}}
    )
    records = client.post("/invocations", json={"dataframe_records": rows})
    pinned = client.post(f"/v2/models/{bundle.model_name}/versions/1/infer", json=v2_body(bundle, rows[:1]))

    assert [r.status_code for r in (v2, split, records, pinned)] == [200] * 4
    answer = v2.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (bundle.model_name, "1", "req-1")
    probability, prediction = (output["data"] for output in answer["outputs"])
    np.testing.assert_allclose(probability, expected, atol=1e-4)
    assert prediction == (expected >= 0.5).astype(int).tolist()
    assert [o["shape"] for o in answer["outputs"]] == [[len(rows)], [len(rows)]]
    mlflow_rows = [{"probability": p, "prediction": c} for p, c in zip(probability, prediction, strict=True)]
    assert split.json() == records.json() == {"predictions": mlflow_rows}
    assert {r.headers["x-model-version"] for r in (v2, split, records, pinned)} == {"1"}


def v2_binary_body(bundle: ServingBundle, rows: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """An inference request with every column as binary tensor data, asking for binary outputs; (body, headers).

    A missing category is sent as an empty string (BYTES has no null), which the model reads as unseen, as null.
    """
    tensors, chunks = [], []
    for column in bundle.columns:
        values = [row[column.name] for row in rows]
        if column.type == "string":
            encoded = [("" if value is None else value).encode() for value in values]
            chunk = b"".join(struct.pack("<I", len(value)) + value for value in encoded)
        else:
            chunk = np.array([np.nan if value is None else value for value in values], "<f8").tobytes()
        tensors.append(
            {
                "name": column.name,
                "datatype": JSON_TYPES[column.type],
                "shape": [len(rows)],
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(chunks), headers


def answer_outputs(response: Any) -> dict[str, np.ndarray]:
    """The outputs of a v2 answer by name, shaped as the answer says: JSON data, or binary data after the header."""
    length = response.headers.get("inference-header-content-length")
    header = json.loads(response.content[: int(length)] if length else response.content)
    data, offset, outputs = response.content[int(length or 0) :], 0, {}
    for tensor in header["outputs"]:
        if "data" in tensor:
            outputs[tensor["name"]] = np.array(tensor["data"]).reshape(tensor["shape"])
            continue
        chunk = data[offset : offset + tensor["parameters"]["binary_data_size"]]
        offset += len(chunk)
        if tensor["datatype"] == "BYTES":
            values, at = [], 0
            while at < len(chunk):
                (size,) = struct.unpack_from("<I", chunk, at)
                values.append(chunk[at + 4 : at + 4 + size].decode())
                at += 4 + size
            array = np.array(values)
        else:
            array = np.frombuffer(chunk, {"FP64": "<f8", "INT64": "<i8"}[tensor["datatype"]])
        outputs[tensor["name"]] = array.reshape(tensor["shape"])
    return outputs


TASK_OUTPUTS = {
    "multiclass": [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "prediction", "datatype": "BYTES", "shape": [-1]},
    ],
    "regression": [{"name": "prediction", "datatype": "FP64", "shape": [-1]}],
}


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_each_task_answers_its_outputs_in_both_formats_as_json_and_as_binary_data(
    task: str, task_bundle_dirs: dict[str, Path]
) -> None:
    bundle = read_bundle(task_bundle_dirs[task])
    rows = bundle.smoke_inputs  # includes a row of nulls and one of unseen categories
    contract = output_frame(task, bundle.info.classes, bundle.smoke_outputs)  # the model package's predict output
    body, binary_headers = v2_binary_body(bundle, rows)
    with TestClient(create_app(ModelHandle(load_model(bundle)))) as client:
        as_json = client.post(infer_path(bundle), json=v2_body(bundle, rows))
        as_binary = client.post(infer_path(bundle), content=body, headers=binary_headers)
        records = client.post("/invocations", json={"dataframe_records": rows})
        metadata = client.get(f"/v2/models/{bundle.model_name}").json()

    assert [r.status_code for r in (as_json, as_binary, records)] == [200] * 3
    assert metadata["outputs"] == TASK_OUTPUTS[task]
    assert metadata["parameters"] == {"task": task, "classes": bundle.info.classes}
    assert [o["name"] for o in as_json.json()["outputs"]] == [o["name"] for o in TASK_OUTPUTS[task]]
    assert as_binary.headers["content-type"] == "application/octet-stream"
    for outputs in (answer_outputs(as_json), answer_outputs(as_binary)):
        assert outputs["prediction"].shape == (len(rows),)
        if task == "multiclass":
            np.testing.assert_allclose(outputs["probabilities"], bundle.smoke_outputs, rtol=1e-6)
            assert outputs["prediction"].tolist() == contract["prediction"].tolist()
        else:
            np.testing.assert_allclose(outputs["prediction"], bundle.smoke_outputs, rtol=1e-6)
    predictions = records.json()["predictions"]
    assert [list(record) for record in predictions] == [output_columns(task, bundle.info.classes)] * len(rows)
    pd.testing.assert_frame_equal(pd.DataFrame(predictions), contract, check_dtype=False, rtol=1e-6)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_each_task_logs_its_predict_contract_columns(task: str, task_bundle_dirs: dict[str, Path], tmp_path: Path):
    bundle = read_bundle(task_bundle_dirs[task])
    store = str(tmp_path / "predictions")
    rows = bundle.smoke_inputs[:3]
    with TestClient(create_app(ModelHandle(load_model(bundle, prediction_log=store)))) as client:
        answer = client.post(infer_path(bundle), json=v2_body(bundle, rows, id="batch"))
    logged = prediction_log.read_window(store, bundle.model_name, "2000-01-01", "2100-01-01")

    assert answer.status_code == 200
    columns = output_columns(task, bundle.info.classes)
    expected = output_frame(task, bundle.info.classes, bundle.smoke_outputs[:3])
    logged = logged.sort_values("request_id").reset_index(drop=True)
    assert logged["request_id"].tolist() == ["batch-0", "batch-1", "batch-2"]
    pd.testing.assert_frame_equal(logged[columns], expected, check_dtype=False, rtol=1e-6)


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_stays_up(
    model: ServedModel, bundle: ServingBundle
) -> None:
    row = bundle.smoke_inputs[0]
    renamed = v2_body(bundle, [row])
    renamed["inputs"][0]["name"] = "tenure"
    retyped = v2_body(bundle, [row])
    retyped["inputs"][0]["datatype"] = "BYTES"
    cases = [
        (infer_path(bundle), json.dumps(renamed), 400, r"unknown input\(s\) \['tenure'\] and missing input\(s\)"),
        (infer_path(bundle), json.dumps(retyped), 400, "input 'tenure_months' has datatype 'BYTES'"),
        (infer_path(bundle), "{", 400, "not valid JSON"),
        ("/v2/models/fraud/infer", json.dumps(v2_body(bundle, [row])), 404, "unknown model 'fraud'"),
        (f"/v2/models/{bundle.model_name}/versions/9/infer", "{}", 404, "version 9"),
        (infer_path(bundle), json.dumps(v2_body(bundle, [row] * 40)), 413, "over the limit of 4096 bytes"),
    ]
    with TestClient(create_app(ModelHandle(model), max_body_bytes=4096)) as client:
        for path, body, status, message in cases:
            answer = client.post(path, content=body)
            assert answer.status_code == status, answer.text
            assert re.search(message, answer.json()["error"]), answer.json()
        streamed = client.post(infer_path(bundle), content=iter([b"x" * 3000, b"x" * 3000]))  # no Content-Length
        good = client.post(infer_path(bundle), json=v2_body(bundle, [row]))
        metrics = client.get("/metrics").text

    assert streamed.status_code == 413
    assert good.status_code == 200
    assert 'mlsteps_serve_errors_total{endpoint="infer",reason="body_too_large"} 2.0' in metrics
    assert 'mlsteps_serve_requests_total{code="400",endpoint="infer"} 3.0' in metrics


def test_readiness_answers_503_until_a_model_is_loaded(model: ServedModel, bundle: ServingBundle) -> None:
    handle = ModelHandle()
    with TestClient(create_app(handle)) as client:
        before = [client.get(path).status_code for path in ("/v2/health/live", "/v2/health/ready")]
        early = client.post(infer_path(bundle), json=v2_body(bundle, bundle.smoke_inputs[:1]))
        handle.swap(model)
        after = client.get("/v2/health/ready").status_code
        model_ready = client.get(f"/v2/models/{bundle.model_name}/ready").status_code

    assert before == [200, 503]
    assert (early.status_code, early.json()["error"]) == (503, "no model is loaded yet: wait for /v2/health/ready")
    assert (after, model_ready) == (200, 200)


def test_metadata_and_metrics_describe_the_served_model(client: TestClient, bundle: ServingBundle) -> None:
    client.post(infer_path(bundle), json=v2_body(bundle, bundle.smoke_inputs[:3]))

    server = client.get("/v2").json()
    metadata = client.get(f"/v2/models/{bundle.model_name}").json()
    metrics = client.get("/metrics").text

    extensions = ["model_repository", "binary_tensor_data"]
    assert server == {"name": "mlsteps-serve", "version": "0.1.0", "extensions": extensions}
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"][0] == {"name": "tenure_months", "datatype": "FP64", "shape": [-1]}
    assert {i["name"] for i in metadata["inputs"]} == {c.name for c in bundle.columns}
    assert metadata["outputs"] == [
        {"name": "probability", "datatype": "FP64", "shape": [-1]},
        {"name": "prediction", "datatype": "INT64", "shape": [-1]},
    ]
    assert metadata["parameters"] == {"task": "binary", "classes": [0, 1]}
    assert client.get("/v2/models/fraud").status_code == 404
    assert f'model_name="{bundle.model_name}",model_version="1"' in metrics
    assert 'mlsteps_serve_requests_total{code="200",endpoint="infer"} 1.0' in metrics
    assert "mlsteps_serve_predicted_rows_total 3.0" in metrics
    assert 'mlsteps_serve_request_duration_seconds_count{endpoint="infer"} 1.0' in metrics


def test_predictions_are_logged_with_their_request_ids_and_flushed_at_shutdown(
    bundle: ServingBundle, tmp_path: Path
) -> None:
    store = str(tmp_path / "predictions")
    model = load_model(bundle, prediction_log=store, log_flush_seconds=3600)  # only shutdown flushes
    rows = bundle.smoke_inputs[:3]
    with TestClient(create_app(ModelHandle(model))) as client:
        by_header = client.post(infer_path(bundle), json=v2_body(bundle, rows[:1]), headers={"x-request-id": "abc"})
        by_body = client.post(infer_path(bundle), json=v2_body(bundle, rows, id="batch-9"))
        generated = client.post("/invocations", json={"dataframe_records": rows[:1]})
        smoke = client.post(
            infer_path(bundle), json=v2_body(bundle, rows, id=f"{prediction_log.SMOKE_REQUEST_PREFIX}v1")
        )
    logged = prediction_log.read_window(store, bundle.model_name, "2000-01-01", "2100-01-01")

    assert (by_header.headers["x-request-id"], by_body.headers["x-request-id"]) == ("abc", "batch-9")
    assert smoke.status_code == 200  # answered, but not logged: smoke tests are not production traffic
    generated_id = generated.headers["x-request-id"]
    assert set(logged["request_id"]) == {"abc", "batch-9-0", "batch-9-1", "batch-9-2", generated_id}
    assert len(logged) == 5 and set(logged["model_version"]) == {1}
    first = logged.set_index("request_id").loc["batch-9-0"]
    assert first["plan"] == rows[0]["plan"]
    assert first["probability"] == pytest.approx(bundle.smoke_outputs[0, 1], abs=1e-4)
    assert (model.log_writer.written, model.log_writer.failed) == (5, 0)


def test_a_prediction_store_that_fails_never_fails_a_request(bundle: ServingBundle, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = load_model(bundle, prediction_log=str(blocker / "predictions"), log_flush_seconds=0.01)
    with TestClient(create_app(ModelHandle(model))) as client:
        answers = [client.post(infer_path(bundle), json=v2_body(bundle, bundle.smoke_inputs[:2])) for _ in range(20)]
        time.sleep(0.1)  # let some writes fail while serving goes on
        later = client.post(infer_path(bundle), json=v2_body(bundle, bundle.smoke_inputs[:2]))

    assert [a.status_code for a in answers] == [200] * 20 and later.status_code == 200
    assert (model.log_writer.written, model.log_writer.failed) == (0, 42)


@pytest.fixture(scope="module")
def bundles(serving_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Loadable bundle folders by selector: versions 1 and 2 (same model) and a broken one."""
    root = tmp_path_factory.mktemp("bundles")
    broken = break_bundle(version_copy(serving_bundle_dir, root / "broken", 3))
    return {"1": serving_bundle_dir, "2": version_copy(serving_bundle_dir, root / "v2", 2), "broken": broken}


def folder_loader(bundles: dict[str, Path]) -> Any:
    def load(selector: str) -> ServedModel:
        if selector not in bundles:
            raise StepError(f"model churn-classifier has no version {selector}")
        return load_model(read_bundle(bundles[selector]))

    return load


def test_reloads_under_concurrent_load_fail_no_request(model: ServedModel, bundle: ServingBundle, bundles) -> None:
    body = v2_body(bundle, bundle.smoke_inputs[:2])
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            answer = client.post(infer_path(bundle), json=body)
            seen.append((answer.status_code, answer.headers.get("x-model-version", "")))

    with TestClient(create_app(ModelHandle(model), loader=folder_loader(bundles))) as client:
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        loads = []
        for version in ("2", "1"):
            loads.append(
                client.post(
                    f"/v2/repository/models/{bundle.model_name}/load", json={"parameters": {"version": version}}
                )
            )
            time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        after = client.post(infer_path(bundle), json=body)
        metrics = client.get("/metrics").text

    assert [(a.status_code, a.json()) for a in loads] == [
        (200, {"name": bundle.model_name, "version": v}) for v in ("2", "1")
    ]
    by_outcome = Counter(seen)
    assert set(by_outcome) == {(200, "1"), (200, "2")}, by_outcome
    assert after.headers["x-model-version"] == "1"
    assert 'mlsteps_serve_model_loads_total{outcome="ok"} 3.0' in metrics
    assert 'model_version="2"' not in metrics  # the info gauge follows the swaps


def test_a_failed_reload_answers_the_reason_and_the_old_model_keeps_serving(
    model: ServedModel, bundle: ServingBundle, bundles
) -> None:
    load_path = f"/v2/repository/models/{bundle.model_name}/load"
    with TestClient(create_app(ModelHandle(model), loader=folder_loader(bundles))) as client:
        broken = client.post(load_path, json={"parameters": {"version": "broken"}})
        missing = client.post(load_path, json={"parameters": {"alias": "gold"}})
        unclear = client.post(load_path, json={"parameters": {"version": "2", "alias": "champion"}})
        other = client.post("/v2/repository/models/fraud/load", json={"parameters": {"version": "2"}})
        still = client.post(infer_path(bundle), json=v2_body(bundle, bundle.smoke_inputs[:1]))

    assert broken.status_code == 422
    assert (
        "fails its smoke check" in broken.json()["error"]
        and "still serving churn-classifier v1" in broken.json()["error"]
    )
    assert (missing.status_code, missing.json()["error"]) == (
        404,
        "could not load 'gold': model churn-classifier has no version gold; still serving churn-classifier v1",
    )
    assert unclear.status_code == 400 and "one of the two" in unclear.json()["error"]
    assert other.status_code == 404
    assert (still.status_code, still.headers["x-model-version"]) == (200, "1")


def test_reloads_are_off_unless_allowed(client: TestClient, bundle: ServingBundle) -> None:
    answer = client.post(f"/v2/repository/models/{bundle.model_name}/load", json={"parameters": {"version": "2"}})

    assert answer.status_code == 403 and "--allow-reload" in answer.json()["error"]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("multiclass", r"gives probabilities \[[\d., ]+\], smoke.json expects .*absolute probability difference"),
        ("regression", r"gives prediction [\d.]+, smoke.json expects [\d.]+ \(relative prediction difference"),
    ],
)
def test_a_bundle_of_any_task_whose_smoke_outputs_do_not_match_is_refused(
    task: str, message: str, task_bundle_dirs: dict[str, Path], tmp_path: Path
) -> None:
    broken = break_bundle(Path(shutil.copytree(task_bundle_dirs[task], tmp_path / "broken")))

    with pytest.raises(BundleError, match=rf"churn-classifier v1 .* fails its smoke check: row \d+ {message}"):
        load_model(read_bundle(broken))


def test_a_model_that_fails_its_smoke_check_is_never_loaded(bundles: dict[str, Path]) -> None:
    with pytest.raises(
        BundleError, match=r"churn-classifier v3 .* fails its smoke check: row \d+ gives probabilities \[[\d., ]+\]"
    ):
        load_model(read_bundle(bundles["broken"]))


def test_the_registry_loader_serves_the_version_behind_an_alias(mlflow_tracking: str) -> None:
    from fake_models import MODEL_NAME, register_with_bundle

    from mlsteps import tracking
    from mlsteps.serve.model import registry_loader

    good, broken = register_with_bundle(), register_with_bundle(broken=True)
    tracking.client().set_registered_model_alias(MODEL_NAME, "champion", str(good))
    load = registry_loader(MODEL_NAME)

    served = load("champion")

    assert (served.name, served.version) == (MODEL_NAME, str(good))
    with pytest.raises(BundleError, match=f"{MODEL_NAME} v{broken} .* fails its smoke check"):
        load(str(broken))
    with pytest.raises(StepError, match=f"model {MODEL_NAME} has no alias 'gold'"):
        load("gold")
