"""The score step end to end against a real MLflow registry on SQLite, with the prediction log it appends to, for
models of every task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fake_models import GOOD, MODEL_NAME, TASK, WEAK, log_package, risk_score_model, task_model
from typer.testing import CliRunner

from mlsteps import registry, results, tracking
from mlsteps.cli import app
from mlsteps.config import load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import TabularPreprocessor
from mlsteps.data.snapshots import write_table
from mlsteps.errors import ConfigError, DataError, StepError
from mlsteps.evaluation.tasks import output_columns
from mlsteps.inference import TaskInfo, onnx_session, predict_frame
from mlsteps.monitoring import prediction_log
from mlsteps.steps import score

HOUR = "2025-03-01T14:00:00Z"
NEXT_HOUR = "2025-03-01T15:00:00Z"


def register_package(
    info: TaskInfo, preprocessor: TabularPreprocessor, model: onnx.ModelProto, alias: str | None = None
) -> int:
    """Log a model package of any task (``fake_models.log_package``) and register it as a new version of the
    configured model, optionally behind an alias."""
    _, model_uri = log_package(info, preprocessor, model)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    if alias:
        tracking.client().set_registered_model_alias(MODEL_NAME, alias, str(version))
    return version


def _register(weights: dict[str, float], alias: str | None = None) -> int:
    """Register a risk-score model (binary) as a new version of the configured model, optionally behind an alias."""
    return register_package(TASK, *risk_score_model(weights), alias)


@pytest.fixture
def champion(mlflow_tracking: str) -> int:
    return _register(GOOD, registry.CHAMPION)


@pytest.fixture
def input_csv(tmp_path: Path) -> str:
    uri = str(tmp_path / "incoming.csv")
    write_table(generate_churn(1200, seed=5).drop(columns=["churned"]), uri)
    return uri


def _score(run_root: str, input_uri: str, store: str, **options: object) -> dict:
    score.main(run_root=run_root, input_uri=input_uri, prediction_store=store, **options)
    return results.read_result(run_root, "score")


def test_score_logs_every_row_with_the_champion_version(champion: int, input_csv: str, tmp_path: Path) -> None:
    store, run_root, copy_uri = str(tmp_path / "predictions"), str(tmp_path / "runs" / "s1"), str(tmp_path / "out.csv")

    result = _score(
        run_root, input_csv, store, scored_at="2025-03-01T14:25:00+01:00", batch_rows=500, output_uri=copy_uri
    )

    assert result["model_name"] == MODEL_NAME and result["model_version"] == champion == 1
    assert result["model_alias"] == "champion" and result["model_uri"] == f"models:/{MODEL_NAME}/1"
    assert result["input_uri"] == input_csv and result["prediction_store"] == store and result["rows"] == 1200
    assert result["scored_at"] == "2025-03-01T13:25:00+00:00"
    assert len(result["log_files"]) == 1
    assert f"model={MODEL_NAME}/date=2025-03-01/hour=13/score-" in result["log_files"][0]
    logged = prediction_log.read_window(store, MODEL_NAME, "2025-03-01T13:00Z", "2025-03-01T14:00Z")
    incoming = pd.read_csv(input_csv)
    assert logged["request_id"].tolist() == incoming["customer_id"].tolist()
    assert set(logged["model_version"]) == {1} and logged["plan"].tolist() == incoming["plan"].tolist()
    assert "event_time" not in logged.columns  # features only, besides the record columns
    assert list(logged.columns[-5:-3]) == ["probability", "prediction"] and logged["prediction"].dtype == "int64"
    assert result["task"] == "binary" and result["positive_rate"] == pytest.approx(logged["prediction"].mean())
    assert result["class_shares"] == {"0": pytest.approx(1 - result["positive_rate"]), "1": result["positive_rate"]}
    assert 0.02 < result["positive_rate"] < 0.5  # the GOOD risk score flags a minority, as churn is
    scored_rows = storage.read_parquet(result["predictions_uri"])
    assert result["predictions_uri"] == f"{run_root}/score/predictions.parquet"
    pd.testing.assert_frame_equal(scored_rows, logged)
    assert result["output_uri"] == copy_uri and len(pd.read_csv(copy_uri)) == 1200


def test_a_rerun_never_logs_the_same_rows_twice(
    champion: int, input_csv: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_root = str(tmp_path / "predictions"), str(tmp_path / "runs" / "again")
    first = _score(run_root, input_csv, store, scored_at=HOUR)
    capsys.readouterr()

    assert _score(run_root, input_csv, store) == first  # completed: skipped
    assert "already scored by churn-classifier v1 for this run root" in capsys.readouterr().out

    # Interrupted after appending (no result.json): the retry rewrites its own log file at the same scored_at.
    Path(results.result_uri(run_root, "score")).unlink()
    retried = _score(run_root, input_csv, store)
    assert retried["scored_at"] == first["scored_at"] and retried["log_files"] == first["log_files"]
    assert len(prediction_log.read_window(store, MODEL_NAME, HOUR, NEXT_HOUR)) == 1200


def test_model_version_replaces_the_alias_and_is_logged(champion: int, input_csv: str, tmp_path: Path) -> None:
    weak = _register(WEAK)
    store = str(tmp_path / "predictions")
    result = _score(str(tmp_path / "runs" / "v2"), input_csv, store, model_version=weak, scored_at=HOUR)
    assert result["model_version"] == weak == 2 and result["model_alias"] is None
    # Another run root scores the same file with the champion: both versions are in the log, told apart.
    _score(str(tmp_path / "runs" / "v1"), input_csv, store, scored_at=HOUR)
    only_weak = prediction_log.read_window(store, MODEL_NAME, HOUR, NEXT_HOUR, model_version=2)
    assert len(only_weak) == 1200
    assert len(prediction_log.read_window(store, MODEL_NAME, HOUR, NEXT_HOUR)) == 2400


def test_score_reads_parquet_from_s3_and_logs_to_s3(champion: int, s3_bucket: str) -> None:
    input_uri = f"{s3_bucket}/in/batch.parquet"
    storage.write_parquet(generate_churn(300, seed=8).drop(columns=["customer_id"]), input_uri)
    store = f"{s3_bucket}/predictions"

    result = _score(f"{s3_bucket}/runs/s3", input_uri, store, scored_at=HOUR)

    assert result["log_files"][0].startswith(f"{store}/model={MODEL_NAME}/date=2025-03-01/hour=14/")
    logged = prediction_log.read_window(store, MODEL_NAME, HOUR, NEXT_HOUR)
    assert len(logged) == 300 and logged["request_id"].is_unique  # no id column: generated ids


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_score_writes_and_logs_the_outputs_of_each_task(
    mlflow_tracking: str, input_csv: str, tmp_path: Path, task: str
) -> None:
    info, preprocessor, model = task_model(task)
    register_package(info, preprocessor, model, registry.CHAMPION)
    store, run_root = str(tmp_path / "predictions"), str(tmp_path / "runs" / task)

    result = _score(run_root, input_csv, store, scored_at=HOUR, batch_rows=500)

    outputs = output_columns(info.task, info.classes)
    logged = prediction_log.read_window(store, MODEL_NAME, HOUR, NEXT_HOUR)
    assert len(logged) == 1200 and list(logged.columns[-3 - len(outputs) : -3]) == outputs
    pd.testing.assert_frame_equal(storage.read_parquet(result["predictions_uri"]), logged)
    session = onnx_session(model.SerializeToString())
    expected = predict_frame(preprocessor, session, info, pd.read_csv(input_csv, dtype={"plan": "str"}))
    numbers = [column for column in outputs if column != "prediction" or task == "regression"]
    np.testing.assert_allclose(logged[numbers], expected[numbers], rtol=1e-6)
    assert result["task"] == task
    if task == "multiclass":
        assert logged["prediction"].dtype == "str" and logged["prediction"].tolist() == expected["prediction"].tolist()
        shares = logged["prediction"].value_counts(normalize=True)
        assert result["class_shares"] == {label: pytest.approx(shares.get(label, 0.0)) for label in info.classes}
        assert len(shares) > 1  # the plan-change model predicts more than one class on this data
    else:
        assert logged["prediction"].dtype == "float64"
        assert result["mean_prediction"] == pytest.approx(logged["prediction"].mean())


def _input_without(tmp_path: Path, *columns: str) -> str:
    uri = str(tmp_path / "partial.csv")
    write_table(generate_churn(100, seed=2).drop(columns=list(columns)), uri)
    return uri


def test_bad_input_names_what_is_wrong(champion: int, tmp_path: Path) -> None:
    store, run_root = str(tmp_path / "predictions"), str(tmp_path / "runs" / "bad")
    partial = _input_without(tmp_path, "tenure_months", "plan")
    with pytest.raises(DataError, match=r"input \S*partial.csv lacks column\(s\) \['tenure_months', 'plan'\]"):
        _score(run_root, partial, store)
    empty = tmp_path / "empty.csv"
    empty.write_text("customer_id,tenure_months\n")
    with pytest.raises(DataError, match=r"input file \S*empty.csv has no rows"):
        _score(run_root, str(empty), store)
    texty = generate_churn(50, seed=2)
    texty["age"] = texty["age"].astype("str").where(texty.index != 3, "forty")
    write_table(texty, str(tmp_path / "texty.csv"))
    with pytest.raises(DataError, match=r"texty.csv: numeric feature column\(s\) hold values .*age: e.g. \['forty'\]"):
        _score(run_root, str(tmp_path / "texty.csv"), store)
    with pytest.raises(ConfigError, match=r"--scored-at 'noon' is not a date-time"):
        _score(run_root, _input_without(tmp_path), store, scored_at="noon")
    with pytest.raises(ConfigError, match=r"--output-uri \S*out.txt: unknown file extension '.txt'"):
        _score(run_root, _input_without(tmp_path), store, output_uri=str(tmp_path / "out.txt"))
    assert prediction_log.window_files(store, MODEL_NAME, "2000-01-01", "2100-01-01") == []
    assert not storage.exists(results.result_uri(run_root, "score"))


def _score_cli(run_root: str, input_uri: str, store: str) -> list[str]:
    """Run ``python -m mlsteps score`` in-process; it must exit 2. Returns the lines of its stderr."""
    outcome = CliRunner().invoke(
        app, ["score", "--run-root", run_root, "--input-uri", input_uri, "--prediction-store", store]
    )
    assert outcome.exit_code == 2, outcome.output
    return outcome.stderr.splitlines()


def test_infinite_values_are_named_by_column_and_row_not_blamed_on_the_model(champion: int, tmp_path: Path) -> None:
    frame = generate_churn(50, seed=2)
    frame.loc[[3, 17], "tenure_months"] = np.inf
    frame.loc[5, "age"] = -np.inf
    input_uri = str(tmp_path / "inf.csv")
    write_table(frame, input_uri)
    store, run_root = str(tmp_path / "predictions"), str(tmp_path / "runs" / "inf")

    assert _score_cli(run_root, input_uri, store) == [
        f"score failed: input {input_uri}: numeric feature column(s) hold infinite values (tenure_months: 2 row(s), "
        "e.g. rows [3, 17]; age: 1 row(s), e.g. rows [5]; rows count from 0, header excluded). Replace them with "
        "numbers, or leave them empty to have them imputed like other nulls."
    ]
    assert prediction_log.window_files(store, MODEL_NAME, "2000-01-01", "2100-01-01") == []


def test_a_folder_as_input_says_which_file_to_give(champion: int, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    write_table(generate_churn(20, seed=3), str(folder / "week10.parquet"))

    lines = _score_cli(str(tmp_path / "runs" / "folder"), str(folder), str(tmp_path / "predictions"))

    assert lines == [
        f"score failed: input {folder} is a folder, not a file: give the path of one CSV or Parquet file in it, "
        f"e.g. {folder / 'week10.parquet'}"
    ]


def test_a_missing_alias_or_version_says_what_to_do(mlflow_tracking: str, tmp_path: Path) -> None:
    store, run_root, input_uri = (
        str(tmp_path / "predictions"),
        str(tmp_path / "runs" / "none"),
        _input_without(tmp_path),
    )
    with pytest.raises(StepError, match="'churn-classifier' has no alias 'champion'.*promote a version first"):
        _score(run_root, input_uri, store)
    _register(GOOD)
    with pytest.raises(StepError, match="'churn-classifier' has no version 7 in the MLflow registry"):
        _score(run_root, input_uri, store, model_version=7)

    outcome = CliRunner().invoke(
        app, ["score", "--run-root", run_root, "--input-uri", input_uri, "--prediction-store", store]
    )
    assert outcome.exit_code == 2
    assert "score failed: registered model 'churn-classifier' has no alias 'champion'" in outcome.output


def test_help_shows_examples() -> None:
    done = subprocess.run([sys.executable, "-m", "mlsteps", "score", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Examples" in done.stdout and "--scored-at" in done.stdout


def _score_in_batches(run_root: str, input_uri: str, store: str, batch_rows: int, **options: object) -> dict:
    """Score with ``processing.batch_rows`` set, so the input is read that many rows at a time."""
    config = load_pipeline_config(overrides={"processing": {"batch_rows": batch_rows}})
    return score.run(run_root, config, input_uri, store, scored_at=HOUR, **options)


def test_small_batches_score_as_one_batch(champion: int, tmp_path: Path) -> None:
    input_uri = str(tmp_path / "many.csv")
    write_table(generate_churn(3500, seed=11).drop(columns=["churned"]), input_uri)
    runs = {}
    for batch_rows in (1000, 100_000):
        folder = tmp_path / str(batch_rows)
        output_uri = str(folder / "out.csv")
        result = _score_in_batches(
            str(folder / "run"), input_uri, str(folder / "log"), batch_rows, output_uri=output_uri
        )
        runs[batch_rows] = result, prediction_log.read_window(result["prediction_store"], MODEL_NAME, HOUR, NEXT_HOUR)

    (batched, batched_log), (whole, whole_log) = runs[1000], runs[100_000]
    assert pq.ParquetFile(batched["predictions_uri"]).num_row_groups > 1  # it did stream
    assert batched["rows"] == whole["rows"] == len(batched_log) == 3500
    assert batched["class_shares"] == whole["class_shares"] and batched["positive_rate"] == whole["positive_rate"]
    assert len(batched["log_files"]) == 1 and Path(batched["log_files"][0]).name.startswith("score-")
    pd.testing.assert_frame_equal(storage.read_parquet(batched["predictions_uri"]), batched_log)
    pd.testing.assert_frame_equal(batched_log, whole_log)
    assert Path(batched["output_uri"]).read_bytes() == Path(whole["output_uri"]).read_bytes()
    written = pd.read_csv(batched["output_uri"], dtype={"request_id": "str"})
    assert written["request_id"].tolist() == batched_log["request_id"].tolist()


def test_a_bad_value_in_the_last_batch_leaves_no_output_and_no_log_rows(champion: int, tmp_path: Path) -> None:
    frame = generate_churn(3500, seed=12)
    frame.loc[[2400, 3499], "tenure_months"] = np.inf
    input_uri, output_uri = str(tmp_path / "late.parquet"), tmp_path / "out" / "scored.parquet"
    write_table(frame, input_uri)
    output_uri.parent.mkdir()
    output_uri.write_bytes(b"an earlier copy")
    store, run_root = str(tmp_path / "predictions"), str(tmp_path / "runs" / "late")

    message = (
        rf"input {input_uri}: numeric feature column\(s\) hold infinite values \(tenure_months: 2 row\(s\), "
        r"e.g. rows \[2400, 3499\]; rows count from 0"
    )
    with pytest.raises(DataError, match=message):
        _score_in_batches(run_root, input_uri, store, 1000, output_uri=str(output_uri))

    assert prediction_log.window_files(store, MODEL_NAME, "2000-01-01", "2100-01-01") == []
    assert output_uri.read_bytes() == b"an earlier copy"
    # nor predictions.parquet, attempt.json or part files of the batches scored before the bad one
    assert storage.list_files(store) == storage.list_files(run_root) == []
    assert storage.list_files(str(output_uri.parent)) == [str(output_uri)]
