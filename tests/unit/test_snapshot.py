"""The snapshot step: content-addressed ids, reuse, the stored files and result, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlsteps import results
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.snapshots import read_columns, snapshot_id, write_table
from mlsteps.errors import DataError
from mlsteps.steps import snapshot


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return generate_churn(1500, seed=7)


def run_snapshot(run_root: str, input_uri: str, store: str) -> dict[str, Any]:
    """Run the step in-process with the bundled config and return its result.json."""
    snapshot.main(run_root=run_root, input_uri=input_uri, snapshot_store=store, config=None)
    return results.read_result(run_root, "snapshot")


def snapshot_file(tmp_path: Path, frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """Write ``frame`` as ``name`` (CSV or Parquet by extension) and snapshot it into ``tmp_path/store``."""
    uri = str(tmp_path / "in" / name)
    write_table(frame, uri)
    return run_snapshot(str(tmp_path / "runs" / name), uri, str(tmp_path / "store"))


def test_same_data_gives_the_same_id_from_csv_or_parquet_local_or_s3(
    churn: pd.DataFrame, tmp_path: Path, s3_bucket: str
) -> None:
    store = f"{s3_bucket}/snapshots"
    sources = [
        str(tmp_path / "churn.csv"),
        (tmp_path / "churn.parquet").as_uri(),
        f"{s3_bucket}/in/churn.pq",
        f"{s3_bucket}/in/churn.csv",
    ]
    for uri in sources:
        write_table(churn, uri)

    outcomes = [run_snapshot(f"{s3_bucket}/runs/{i}", uri, store) for i, uri in enumerate(sources)]

    assert {o["snapshot_id"] for o in outcomes} == {snapshot_id(churn)}
    assert [o["reused"] for o in outcomes] == [False, True, True, True]
    assert [o["source_uri"] for o in outcomes] == sources


def test_snapshotting_a_stored_snapshot_gives_its_own_id(churn: pd.DataFrame, tmp_path: Path) -> None:
    first = snapshot_file(tmp_path, churn, "churn.csv")

    again = run_snapshot(str(tmp_path / "runs" / "again"), first["snapshot_uri"], str(tmp_path / "store"))

    assert again["snapshot_id"] == first["snapshot_id"]
    assert again["reused"] is True


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f: f.assign(monthly_charges=f["monthly_charges"].where(f.index != 5, 1.0)), id="one-value"),
        pytest.param(lambda f: f.iloc[:-1], id="one-row-less"),
        pytest.param(lambda f: f.iloc[::-1], id="row-order"),
        pytest.param(lambda f: f.rename(columns={"age": "customer_age"}), id="column-name"),
        pytest.param(lambda f: f.astype({"churned": "float64"}), id="dtype"),
    ],
)
def test_different_data_gives_a_different_id(churn: pd.DataFrame, change: Any) -> None:
    assert snapshot_id(change(churn)) != snapshot_id(churn)


def test_result_and_stored_files(churn: pd.DataFrame, tmp_path: Path) -> None:
    outcome = snapshot_file(tmp_path, churn, "churn.csv")

    folder = tmp_path / "store" / "churn" / outcome["snapshot_id"]
    assert len(outcome["snapshot_id"]) == 16
    assert outcome == {
        "step": "snapshot",
        "snapshot_id": outcome["snapshot_id"],
        "snapshot_uri": str(folder / "data.parquet"),
        "schema_uri": str(folder / "schema.json"),
        "dataset": "churn",
        "rows": 1500,
        "columns": list(churn.columns),
        "source_uri": str(tmp_path / "in" / "churn.csv"),
        "reused": False,
        "champion_version": None,  # no registry (MLFLOW_TRACKING_URI unset): nothing known
        "champion_trained_on_snapshot": None,
    }
    pd.testing.assert_frame_equal(storage.read_parquet(outcome["snapshot_uri"]), churn)
    schema = storage.read_json(outcome["schema_uri"])
    assert schema["snapshot_id"] == outcome["snapshot_id"]
    assert schema["rows"] == 1500
    assert schema["source_uri"] == outcome["source_uri"]
    assert {"name": "event_time", "dtype": "datetime64[us, UTC]"} in schema["columns"]
    assert {"name": "plan", "dtype": "str"} in schema["columns"]
    assert pd.Timestamp(schema["created_at"]).tzinfo is not None


def test_an_existing_snapshot_is_reused_not_rewritten(churn: pd.DataFrame, tmp_path: Path) -> None:
    first = snapshot_file(tmp_path, churn, "churn.parquet")
    data_file = Path(first["snapshot_uri"])
    written = (data_file.stat().st_mtime_ns, storage.read_bytes(first["schema_uri"]))

    second = run_snapshot(
        str(tmp_path / "runs" / "second"), str(tmp_path / "in" / "churn.parquet"), str(tmp_path / "store")
    )

    assert second["reused"] is True
    assert second["snapshot_uri"] == first["snapshot_uri"]
    assert (data_file.stat().st_mtime_ns, storage.read_bytes(first["schema_uri"])) == written


def test_a_snapshot_without_its_schema_is_written_again(churn: pd.DataFrame, tmp_path: Path) -> None:
    first = snapshot_file(tmp_path, churn, "churn.csv")
    Path(first["schema_uri"]).unlink()  # as if the step died between data.parquet and schema.json

    again = run_snapshot(str(tmp_path / "runs" / "again"), str(tmp_path / "in" / "churn.csv"), str(tmp_path / "store"))

    assert again["reused"] is False
    assert storage.read_json(again["schema_uri"])["snapshot_id"] == first["snapshot_id"]


def test_rerunning_for_the_same_run_root_is_safe(churn: pd.DataFrame, tmp_path: Path) -> None:
    first = snapshot_file(tmp_path, churn, "churn.csv")
    again = snapshot_file(tmp_path, churn, "churn.csv")

    assert again == {**first, "reused": True}


def test_timestamps_are_parsed_to_utc(churn: pd.DataFrame, tmp_path: Path) -> None:
    frame = churn.head(3).astype({"event_time": "str"})
    frame["event_time"] = ["2025-03-01T12:00:00+02:00", "2025-03-01 10:00:00", "2025-03-01T10:00:00Z"]

    outcome = snapshot_file(tmp_path, frame, "times.csv")

    stored = storage.read_parquet(outcome["snapshot_uri"])["event_time"]
    assert str(stored.dtype) == "datetime64[us, UTC]"
    assert stored.tolist() == [pd.Timestamp("2025-03-01 10:00", tz="UTC")] * 3


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda t: t.dt.tz_localize(None), id="naive-means-utc"),
        pytest.param(lambda t: t.dt.tz_convert("Europe/Berlin"), id="other-zone"),
        pytest.param(lambda t: t.dt.as_unit("ns"), id="nanoseconds"),
    ],
)
def test_parquet_timestamps_are_normalised_to_utc_microseconds(
    churn: pd.DataFrame, tmp_path: Path, convert: Any
) -> None:
    outcome = snapshot_file(tmp_path, churn.assign(event_time=convert(churn["event_time"])), "times.parquet")

    assert outcome["snapshot_id"] == snapshot_id(churn)


def test_categorical_codes_stay_strings_and_other_values_stay_as_read(churn: pd.DataFrame, tmp_path: Path) -> None:
    frame = churn.head(4).copy()
    frame["plan"] = ["007", "1", None, "2"]  # all digits: pandas would read numbers
    frame["tenure_months"] = ["12", "unknown", "3", None]  # a broken numeric column is not coerced here

    csv_outcome = snapshot_file(tmp_path, frame, "codes.csv")
    parquet_outcome = snapshot_file(tmp_path, frame.assign(plan=[7.0, 1.0, None, 2.0]), "codes.parquet")

    from_csv = storage.read_parquet(csv_outcome["snapshot_uri"])
    assert from_csv["plan"].dropna().tolist() == ["007", "1", "2"]
    assert from_csv["plan"].isna().tolist() == [False, False, True, False]
    assert from_csv["tenure_months"].tolist()[:3] == ["12", "unknown", "3"]
    from_parquet = storage.read_parquet(parquet_outcome["snapshot_uri"])
    assert str(from_parquet["plan"].dtype) == "str"
    assert from_parquet["plan"].isna().tolist() == [False, False, True, False]
    assert from_parquet["plan"].dropna().tolist() == ["7", "1", "2"]


def test_missing_columns_are_only_a_warning(
    churn: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = snapshot_file(tmp_path, churn.drop(columns=["region", "churned"]), "partial.csv")

    assert "region" not in outcome["columns"]
    assert "lacks columns ['region', 'churned'] of dataset 'churn'" in caplog.text


def _header_only_csv(path: Path) -> None:
    path.write_text("customer_id,event_time,churned\n")


def _empty_parquet(path: Path) -> None:
    storage.write_parquet(generate_churn(5, seed=1).head(0), str(path))


def _truncated_parquet(path: Path) -> None:
    storage.write_parquet(generate_churn(50, seed=1), str(path))
    path.write_bytes(path.read_bytes()[:-100])


def _bad_timestamps(path: Path) -> None:
    frame = generate_churn(6, seed=1).astype({"event_time": "str"})
    frame.loc[[1, 4], "event_time"] = ["yesterday", "2025-13-45"]
    write_table(frame, str(path))


@pytest.mark.parametrize(
    ("name", "make_file", "message"),
    [
        ("missing.csv", None, r"input file not found: no such file: .*missing\.csv; check the input URI"),
        ("empty.csv", lambda p: p.write_bytes(b""), r"input file .*empty\.csv is empty \(0 bytes\)"),
        (
            "header.csv",
            _header_only_csv,
            r"header\.csv has no rows \(columns: \['customer_id', 'event_time', 'churned'\]\)",
        ),
        ("empty.parquet", _empty_parquet, r"empty\.parquet has no rows"),
        (
            "cut.parquet",
            _truncated_parquet,
            r"cannot read .*cut\.parquet as PARQUET: .*; check that it is a complete Parquet file",
        ),
        (
            "binary.csv",
            lambda p: p.write_bytes(b"\xff\xfe\x00\x81"),
            r"cannot read .*binary\.csv as CSV: .*utf-8.*; check that it is a complete, UTF-8 encoded CSV",
        ),
        ("data.xlsx", lambda p: p.write_bytes(b"PK"), r"unknown file extension '\.xlsx'; .* \.csv, \.parquet or \.pq"),
        (
            "times.csv",
            _bad_timestamps,
            r"times\.csv: timestamp column 'event_time' has 2 values that are not ISO 8601 date-times, "
            r"e\.g\. \['yesterday', '2025-13-45'\]",
        ),
    ],
)
def test_bad_input_raises_a_data_error_naming_the_file(tmp_path: Path, name: str, make_file: Any, message: str) -> None:
    path = tmp_path / name
    if make_file is not None:
        make_file(path)
    run_root = str(tmp_path / "run")

    with pytest.raises(DataError, match=message):
        run_snapshot(run_root, str(path), str(tmp_path / "store"))
    assert not storage.exists(results.result_uri(run_root, "snapshot"))
    assert storage.list_files(str(tmp_path / "store")) == []


# What read_columns (the check before a run starts) can tell from a file's header line or Parquet footer alone.
HEADER_CASES = ("missing.csv", "empty.csv", "cut.parquet", "binary.csv", "data.xlsx")


@pytest.mark.parametrize(
    ("name", "make_file", "message"),
    [
        case
        for case in test_bad_input_raises_a_data_error_naming_the_file.pytestmark[0].args[1]
        if case[0] in HEADER_CASES
    ],
)
def test_reading_the_columns_refuses_what_the_snapshot_refuses_from_the_header_alone(
    tmp_path: Path, name: str, make_file: Any, message: str
) -> None:
    path = tmp_path / name
    if make_file is not None:
        make_file(path)
    with pytest.raises(DataError, match=message):
        read_columns(str(path))


@pytest.mark.parametrize("name", ["churn.csv", "churn.parquet"])
def test_reading_the_columns_of_a_file_local_or_on_s3(
    churn: pd.DataFrame, tmp_path: Path, s3_bucket: str, name: str
) -> None:
    for uri in (str(tmp_path / name), f"{s3_bucket}/in/{name}"):
        write_table(churn, uri)
        assert read_columns(uri) == list(churn.columns)


def test_missing_s3_object_names_the_uri(tmp_path: Path, s3_bucket: str) -> None:
    with pytest.raises(DataError, match=f"input file not found: no such object: {s3_bucket}/in/none.parquet"):
        run_snapshot(str(tmp_path / "run"), f"{s3_bucket}/in/none.parquet", f"{s3_bucket}/snapshots")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlsteps", "snapshot", *args],
        cwd=cwd,
        env={**os.environ, "MLSTEPS_RUN_ROOT": str(cwd / "run")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_exits_2_with_one_line_for_bad_input_and_0_for_good_input(churn: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    write_table(churn, str(tmp_path / "churn.csv"))

    bad = _cli("--input-uri", "empty.csv", "--snapshot-store", "store", cwd=tmp_path)
    good = _cli("--input-uri", "churn.csv", "--snapshot-store", "store", cwd=tmp_path)

    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "snapshot failed: input file empty.csv is empty (0 bytes); export the data again"
    ]
    assert good.returncode == 0, good.stderr
    assert f"wrote snapshot {snapshot_id(churn)}" in good.stdout
    assert results.read_result(str(tmp_path / "run"), "snapshot")["snapshot_id"] == snapshot_id(churn)


def test_the_result_says_whether_the_champion_was_trained_on_this_snapshot(
    churn: pd.DataFrame, tmp_path: Path, mlflow_tracking: str
) -> None:
    from mlflow import MlflowClient

    from mlsteps import registry

    first = snapshot_file(tmp_path, churn, "churn.csv")
    assert (first["champion_version"], first["champion_trained_on_snapshot"]) == (None, False), "no champion yet"
    client = MlflowClient()
    client.create_registered_model("churn-classifier")
    version = client.create_model_version("churn-classifier", str(tmp_path), tags={"snapshot_id": first["snapshot_id"]})
    client.set_registered_model_alias("churn-classifier", registry.CHAMPION, version.version)

    again = snapshot_file(tmp_path, churn, "churn.csv")
    assert (again["champion_version"], again["champion_trained_on_snapshot"]) == (1, True)
    changed = snapshot_file(tmp_path, churn.head(1000), "churn.csv")
    assert (changed["champion_version"], changed["champion_trained_on_snapshot"]) == (1, False)
