"""The prediction log: hour partitions, exact windows, pruning, concurrent writers, the server's buffered writer, and
the output columns of every task."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.errors import DataError
from mlsteps.inference import TaskInfo
from mlsteps.monitoring import prediction_log

MODEL = "churn-classifier"
ID_COLUMN = "customer_id"
NOT_FEATURES = [ID_COLUMN, "event_time", "churned"]
BINARY = TaskInfo(task="binary", classes=[0, 1], target="churned", family="mlp")
TIERS = TaskInfo(task="multiclass", classes=["bronze", "silver", "gold"], target="tier", family="gbdt")
CODES = TaskInfo(task="multiclass", classes=[3, 7, 9], target="code", family="gbdt")
SPEND = TaskInfo(task="regression", classes=[], target="spend", family="mlp")
RECORD_COLUMNS_AFTER_OUTPUTS = ["model_name", "model_version", "scored_at"]


def _scored(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Feature rows, predictions for them and their ids."""
    data = generate_churn(rows, seed=seed)
    features = data.drop(columns=NOT_FEATURES)
    probability = np.random.default_rng(seed).random(rows)
    predictions = pd.DataFrame({"probability": probability, "prediction": (probability >= 0.5).astype("int64")})
    return features, predictions, data[ID_COLUMN]


def _at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_round_trip_keeps_ids_features_and_predictions(tmp_path: Path) -> None:
    features, predictions, ids = _scored(300)
    scored_at = pd.date_range("2025-03-01T10:30Z", periods=300, freq="30s")  # 10:30 to 12:59:30

    files = prediction_log.append(str(tmp_path), features, predictions, BINARY, MODEL, 3, scored_at=scored_at, ids=ids)

    assert [Path(uri).relative_to(tmp_path).parent.as_posix() for uri in files] == [
        f"model={MODEL}/date=2025-03-01/hour={hour}" for hour in ("10", "11", "12")
    ]
    window = prediction_log.read_window(str(tmp_path), MODEL, "2025-03-01T00:00Z", "2025-03-02T00:00Z")
    assert list(window.columns) == [
        "request_id",
        *features.columns,
        "probability",
        "prediction",
        *RECORD_COLUMNS_AFTER_OUTPUTS,
    ]
    assert window["request_id"].tolist() == ids.tolist()
    pd.testing.assert_frame_equal(window[list(features.columns)], features, check_dtype=False)
    categorical = ["plan", "region", "payment_method", "contract_type", "acquisition_channel"]
    assert window[categorical].dtypes.eq("str").all()
    assert window[features.columns.drop(categorical)].dtypes.eq("float64").all()
    assert np.array_equal(window["probability"], predictions["probability"])
    assert window["prediction"].dtype == "int64" and window["prediction"].tolist() == predictions["prediction"].tolist()
    assert set(window["model_name"]) == {MODEL} and set(window["model_version"]) == {3}
    assert str(window["scored_at"].dtype) == "datetime64[us, UTC]"
    assert window["scored_at"].tolist() == list(scored_at)


def test_round_trip_on_s3(s3_bucket: str) -> None:
    store = f"{s3_bucket}/predictions"
    features, predictions, _ = _scored(50)
    first = prediction_log.append(store, features, predictions, BINARY, MODEL, 1, scored_at="2025-03-01T10:15:00Z")
    second = prediction_log.append(store, features, predictions, BINARY, MODEL, 2, scored_at="2025-03-01T11:15:00Z")

    assert first[0].startswith(f"{store}/model={MODEL}/date=2025-03-01/hour=10/") and first[0].endswith(".parquet")
    assert prediction_log.window_files(store, MODEL, "2025-03-01T10:00Z", "2025-03-01T12:00Z") == [*first, *second]
    window = prediction_log.read_window(store, MODEL, "2025-03-01T10:00Z", "2025-03-01T12:00Z")
    assert len(window) == 100 and window["model_version"].tolist() == [1] * 50 + [2] * 50
    assert window["request_id"].str.fullmatch(r"[0-9a-f]{32}").all() and window["request_id"].is_unique
    only_v2 = prediction_log.read_window(
        store, MODEL, "2025-03-01T10:00Z", "2025-03-01T12:00Z", columns=["plan", "probability"], model_version=2
    )
    assert list(only_v2.columns) == ["plan", "probability"] and len(only_v2) == 50
    assert only_v2["plan"].tolist() == features["plan"].tolist()


def test_window_is_half_open_across_hours_and_days(tmp_path: Path) -> None:
    times = [
        "2025-03-01T22:59:59.999999Z",
        "2025-03-01T23:00:00Z",  # the window's first instant: in
        "2025-03-01T23:59:59.999999Z",
        "2025-03-02T00:00:00Z",
        "2025-03-02T00:59:59.999999Z",
        "2025-03-02T01:00:00Z",  # the window's end: out
    ]
    features, predictions, ids = _scored(len(times))
    prediction_log.append(str(tmp_path), features, predictions, BINARY, MODEL, 1, scored_at=times, ids=ids)

    window = prediction_log.read_window(str(tmp_path), MODEL, "2025-03-01T23:00:00Z", "2025-03-02T01:00:00Z")

    assert window["scored_at"].tolist() == [_at(text) for text in times[1:5]]
    assert window["request_id"].tolist() == ids[1:5].tolist()
    # Bounds without an offset are UTC; other offsets are converted.
    in_berlin = prediction_log.read_window(str(tmp_path), MODEL, "2025-03-02T00:00+01:00", "2025-03-02T01:00:00")
    assert len(in_berlin) == 4


def test_a_window_reads_only_the_partitions_it_overlaps(tmp_path: Path) -> None:
    features, predictions, _ = _scored(24)
    store = str(tmp_path)
    every_hour = pd.date_range("2025-03-01T00:30Z", periods=24, freq="h")
    prediction_log.append(store, features, predictions, BINARY, MODEL, 1, scored_at=every_hour)
    prediction_log.append(store, features, predictions, BINARY, "other-model", 1, scored_at=every_hour)
    # Unreadable files outside the window prove that read_window never opens them.
    for hour in ("09", "13"):
        storage.write_bytes(f"{store}/model={MODEL}/date=2025-03-01/hour={hour}/broken.parquet", b"not parquet")
    storage.write_bytes(f"{store}/model={MODEL}/date=2025-03-02/hour=10/broken.parquet", b"not parquet")

    files = prediction_log.window_files(store, MODEL, "2025-03-01T10:00Z", "2025-03-01T12:30Z")

    assert [Path(uri).parent.name for uri in files] == ["hour=10", "hour=11", "hour=12"]
    assert all(f"model={MODEL}/date=2025-03-01/" in uri for uri in files)
    window = prediction_log.read_window(store, MODEL, "2025-03-01T10:00Z", "2025-03-01T12:30Z")
    assert window["scored_at"].tolist() == [_at(f"2025-03-01T{hour}:30Z") for hour in (10, 11)]
    assert window["plan"].tolist() == features["plan"].iloc[10:12].tolist()


def test_an_empty_window_gives_the_columns_and_no_rows(tmp_path: Path) -> None:
    nothing = prediction_log.read_window(str(tmp_path / "never-written"), MODEL, "2025-03-01", "2025-03-02")
    assert nothing.empty
    assert list(nothing.columns) == ["request_id", *RECORD_COLUMNS_AFTER_OUTPUTS]
    assert str(nothing["scored_at"].dtype) == "datetime64[us, UTC]" and nothing["model_version"].dtype == "int64"

    features, predictions, _ = _scored(5)
    prediction_log.append(str(tmp_path), features, predictions, BINARY, MODEL, 1, scored_at="2025-03-01T10:00Z")
    later = prediction_log.read_window(
        str(tmp_path), MODEL, "2025-03-01T11:00Z", "2025-03-01T12:00Z", columns=["age", "probability"]
    )
    assert later.empty and list(later.columns) == ["age", "probability"]
    with pytest.raises(ValueError, match="start 2025-03-02T00:00:00\\+00:00 is not before end"):
        prediction_log.read_window(str(tmp_path), MODEL, "2025-03-02", "2025-03-01")
    with pytest.raises(ValueError, match="'yesterday' is not a date-time"):
        prediction_log.read_window(str(tmp_path), MODEL, "yesterday", "2025-03-01")


def test_files_with_differing_column_types_read_as_one_table(tmp_path: Path) -> None:
    hour = "2025-03-01T10:00Z"
    predictions = pd.DataFrame({"probability": [0.2, 0.7], "prediction": [0, 1]})
    # JSON requests: a column that is null in a whole batch, integers that are floats elsewhere, mixed codes.
    first = pd.DataFrame({"age": [None, None], "plan": [1, "basic"], "region": ["north", None]})
    second = pd.DataFrame({"age": [31, 40], "plan": ["premium", None], "region": [None, None]})
    third = pd.DataFrame({"age": [52.5, None], "plan": ["basic", "basic"], "region": ["south", "east"]})
    for features in (first, second, third):
        prediction_log.append(str(tmp_path), features, predictions, BINARY, MODEL, 1, scored_at=hour)

    window = prediction_log.read_window(str(tmp_path), MODEL, hour, "2025-03-01T11:00Z")

    assert window["age"].dtype == "float64"
    assert sorted(window["age"].dropna()) == [31.0, 40.0, 52.5]
    assert sorted(window["plan"].dropna()) == ["1", "basic", "basic", "basic", "premium"]
    assert sorted(window["region"].dropna()) == ["east", "north", "south"]
    text_ages = pd.DataFrame({"age": ["old", "young"], "plan": ["basic", "basic"], "region": ["east", "east"]})
    prediction_log.append(str(tmp_path), text_ages, predictions, BINARY, MODEL, 1, scored_at=hour)
    with pytest.raises(DataError, match=r"store a column with types that do not merge .*age"):
        prediction_log.read_window(str(tmp_path), MODEL, hour, "2025-03-01T11:00Z")


def test_a_batch_that_does_not_fit_is_refused_with_the_reason() -> None:
    features, predictions, ids = _scored(4)
    with pytest.raises(ValueError, match=r"row counts differ: \{'features': 4, 'predictions': 3\}"):
        prediction_log.build_records(features, predictions.head(3), BINARY, MODEL, 1)
    with pytest.raises(
        ValueError, match=r"predictions lack column\(s\) \['prediction'\] of the binary predict contract"
    ):
        prediction_log.build_records(features, predictions[["probability"]], BINARY, MODEL, 1)
    with pytest.raises(ValueError, match=r"feature column\(s\) \['model_version'\] clash"):
        prediction_log.build_records(features.assign(model_version=1), predictions, BINARY, MODEL, 1, ids=ids)
    with pytest.raises(ValueError, match="scored_at has 2 time"):
        prediction_log.build_records(features, predictions, BINARY, MODEL, 1, scored_at=["2025-03-01", "2025-03-02"])


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    features, predictions, _ = _scored(40)
    start = threading.Barrier(8)

    def write(worker: int) -> None:
        start.wait()
        for batch in range(5):
            ids = [f"w{worker}-b{batch}-r{row}" for row in range(40)]
            prediction_log.append(str(tmp_path), features, predictions, BINARY, MODEL, 1, "2025-03-01T10:20Z", ids)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(prediction_log.window_files(str(tmp_path), MODEL, "2025-03-01T10:00Z", "2025-03-01T11:00Z")) == 40
    window = prediction_log.read_window(str(tmp_path), MODEL, "2025-03-01T10:00Z", "2025-03-01T11:00Z")
    assert len(window) == 8 * 5 * 40 and window["request_id"].is_unique


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_writer_flushes_at_the_row_threshold_and_on_close(tmp_path: Path) -> None:
    features, predictions, ids = _scored(10)
    writer = prediction_log.PredictionLogWriter(str(tmp_path), MODEL, 4, BINARY, flush_seconds=60, flush_rows=25)
    callers = [
        threading.Thread(target=lambda: [writer.log(features, predictions, ids) for _ in range(3)]) for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    _wait_for(lambda: writer.written >= 30)  # written long before flush_seconds: the row threshold woke the thread
    writer.log(features.head(2), predictions.head(2))
    writer.close()

    assert (writer.written, writer.dropped, writer.failed) == (122, 0, 0)
    now = pd.Timestamp.now(tz="UTC")
    window = prediction_log.read_window(str(tmp_path), MODEL, now - pd.Timedelta(hours=1), now)
    assert len(window) == 122 and set(window["model_version"]) == {4}
    assert window["request_id"].value_counts()[ids[0]] == 12
    assert not writer.log(features, predictions)  # closed: refused and counted
    assert writer.dropped == 10


def test_writer_drops_and_counts_what_does_not_fit(tmp_path: Path) -> None:
    features, predictions, _ = _scored(4)
    with prediction_log.PredictionLogWriter(
        str(tmp_path), MODEL, 1, BINARY, flush_seconds=60, flush_rows=100, max_pending_rows=10
    ) as writer:
        accepted = [writer.log(features, predictions) for _ in range(3)]
        assert not writer.log(features, predictions.head(3))  # not a pair: counted as failed, never raised
    assert accepted == [True, True, False]
    assert (writer.written, writer.dropped, writer.failed) == (8, 4, 4)


@pytest.fixture
def refusing_s3(monkeypatch: pytest.MonkeyPatch) -> str:
    """An S3 endpoint where nothing listens: every request is refused at once (no retries)."""
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV_VAR, "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage.s3_client.cache_clear()
    yield "s3://down/predictions"
    storage.s3_client.cache_clear()


def test_writer_counts_what_a_store_that_is_down_refuses(refusing_s3: str, caplog: pytest.LogCaptureFixture) -> None:
    features, predictions, _ = _scored(20)
    writer = prediction_log.PredictionLogWriter(refusing_s3, MODEL, 1, BINARY, flush_seconds=0.05, flush_rows=20)
    for _ in range(50):
        assert writer.log(features, predictions)
        time.sleep(0.002)
    writer.close(timeout=30)

    assert (writer.written, writer.dropped, writer.failed) == (0, 0, 1000)
    assert "prediction log: could not write" in caplog.text and refusing_s3 in caplog.text


def test_log_returns_while_the_store_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that never finishes (a store that hangs) holds the writer thread, never the caller."""
    store_answers = threading.Event()
    writes_started = threading.Event()
    real_append = prediction_log.append

    def hanging_append(*args: object, **kwargs: object) -> list[str]:
        writes_started.set()
        store_answers.wait()
        return real_append(*args, **kwargs)

    monkeypatch.setattr(prediction_log, "append", hanging_append)
    features, predictions, _ = _scored(20)
    writer = prediction_log.PredictionLogWriter(str(tmp_path), MODEL, 1, BINARY, flush_seconds=0.01, flush_rows=20)
    queued: list[bool] = []
    assert writer.log(features, predictions)
    assert writes_started.wait(30), "the writer thread did not start writing"
    caller = threading.Thread(target=lambda: queued.extend(writer.log(features, predictions) for _ in range(50)))
    caller.start()
    caller.join(30)  # a deadlock guard, not a timing: log() must not wait for the hung write at all

    assert not caller.is_alive() and queued == [True] * 50, "log() waited for the store"
    store_answers.set()
    writer.close(timeout=30)
    assert (writer.written, writer.dropped, writer.failed) == (1020, 0, 0)


def test_column_batches_are_checked_like_frames_and_written_alike(tmp_path: Path) -> None:
    features, predictions, ids = _scored(3)
    columns = {name: features[name].to_numpy() for name in features.columns}
    outputs = {name: predictions[name].to_numpy() for name in predictions.columns}
    store = str(tmp_path)
    with prediction_log.PredictionLogWriter(store, MODEL, 1, BINARY, flush_seconds=3600) as writer:
        assert writer.log_columns(columns, outputs, list(ids))
        assert not writer.log_columns(columns, {name: values[:2] for name, values in outputs.items()})  # 3 vs 2 rows
        assert not writer.log_columns({**columns, "model_version": outputs["probability"]}, outputs)
        assert not writer.log_columns(columns, {"probability": outputs["probability"]})  # no prediction
    logged = prediction_log.read_window(store, MODEL, "2000-01-01", "2100-01-01")

    assert (writer.written, writer.failed) == (3, 5)
    probability = outputs["probability"]
    assert sorted(logged["request_id"]) == sorted(map(str, ids))
    np.testing.assert_allclose(logged.set_index("request_id").loc[list(map(str, ids)), "probability"], probability)


def _outputs(info: TaskInfo, rows: int, seed: int = 0) -> pd.DataFrame:
    """A predict-contract frame of the task, as ``mlsteps.evaluation.tasks.output_frame`` makes it."""
    from mlsteps.evaluation.tasks import output_frame

    rng = np.random.default_rng(seed)
    raw = rng.normal(50.0, 10.0, rows) if info.task == "regression" else rng.dirichlet(np.ones(len(info.classes)), rows)
    return output_frame(info.task, info.classes, raw)


@pytest.mark.parametrize(
    ("info", "outputs", "label_dtype"),
    [
        (BINARY, ["probability", "prediction"], "int64"),
        (TIERS, ["probability_bronze", "probability_silver", "probability_gold", "prediction"], "str"),
        (CODES, ["probability_3", "probability_7", "probability_9", "prediction"], "int64"),
        (SPEND, ["prediction"], "float64"),
    ],
    ids=["binary", "multiclass-text-labels", "multiclass-integer-labels", "regression"],
)
def test_each_task_logs_its_outputs_typed_and_a_window_reads_them(
    tmp_path: Path, info: TaskInfo, outputs: list[str], label_dtype: str
) -> None:
    features, _, ids = _scored(40)
    predictions = _outputs(info, 40)

    records = prediction_log.build_records(features, predictions, info, MODEL, 2, "2025-03-01T10:00Z", ids)
    assert list(records.columns) == ["request_id", *features.columns, *outputs, *RECORD_COLUMNS_AFTER_OUTPUTS]
    assert prediction_log.output_schema(info).names == outputs
    prediction_log.write_records(str(tmp_path), records)

    window = prediction_log.read_window(str(tmp_path), MODEL, "2025-03-01T10:00Z", "2025-03-01T11:00Z")
    assert list(window.columns) == list(records.columns)
    assert window[outputs[:-1]].dtypes.eq("float64").all()  # the probabilities
    assert window["prediction"].dtype == label_dtype
    assert window["prediction"].tolist() == predictions["prediction"].tolist()
    np.testing.assert_array_equal(window[outputs[:-1]], predictions[outputs[:-1]])
    only_outputs = prediction_log.read_window(
        str(tmp_path), MODEL, "2025-03-01T10:00Z", "2025-03-01T11:00Z", columns=outputs, model_version=2
    )
    assert list(only_outputs.columns) == outputs and len(only_outputs) == 40


def test_the_writer_logs_the_outputs_of_its_models_task(tmp_path: Path) -> None:
    features, _, ids = _scored(6)
    predictions = _outputs(TIERS, 6)
    columns = {name: features[name].to_numpy() for name in features.columns}
    outputs = {name: predictions[name].to_numpy() for name in predictions.columns}
    with prediction_log.PredictionLogWriter(str(tmp_path), MODEL, 5, TIERS, flush_seconds=3600) as writer:
        assert writer.log_columns(columns, {**outputs, "latency_ms": np.ones(6)}, list(ids))  # extras are not logged
        assert writer.log(features, predictions, ids)
        assert not writer.log_columns(columns, {"probability": np.ones(6), "prediction": outputs["prediction"]})
    logged = prediction_log.read_window(str(tmp_path), MODEL, "2000-01-01", "2100-01-01")

    assert (writer.written, writer.failed) == (12, 6)
    assert "latency_ms" not in logged.columns
    assert logged["prediction"].tolist() == predictions["prediction"].tolist() * 2
    np.testing.assert_allclose(logged["probability_gold"], np.tile(outputs["probability_gold"], 2))


def test_a_batch_that_does_not_fit_the_task_is_refused() -> None:
    features, _, _ = _scored(4)
    tiers = _outputs(TIERS, 4)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['probability_gold'\] of the multiclass predict contract"):
        prediction_log.build_records(features, tiers.drop(columns=["probability_gold"]), TIERS, MODEL, 1)
    with pytest.raises(ValueError, match=r"feature column\(s\) \['probability_silver'\] clash"):
        prediction_log.build_records(features.assign(probability_silver=1.0), tiers, TIERS, MODEL, 1)
    with pytest.raises(ValueError, match=r"predictions column 'prediction' is not int64"):
        prediction_log.build_records(features, _outputs(CODES, 4).assign(prediction="three"), CODES, MODEL, 1)
