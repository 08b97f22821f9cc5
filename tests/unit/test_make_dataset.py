"""The make-dataset command: files it writes, its drift knobs, and data that fits the churn dataset config."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import PipelineConfig
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.snapshots import read_table

ROWS = 3000


def make_dataset(output_uri: str, *options: str) -> str:
    """Run ``mlsteps make-dataset`` in-process and return its output; fails the test on a non-zero exit."""
    outcome = CliRunner().invoke(app, ["make-dataset", "--output-uri", output_uri, "--rows", str(ROWS), *options])
    assert outcome.exit_code == 0, outcome.output
    return outcome.output


def test_writes_csv_and_parquet_holding_the_generated_rows(tmp_path: Path) -> None:
    csv_uri, parquet_uri = str(tmp_path / "churn.csv"), (tmp_path / "churn.parquet").as_uri()

    printed = make_dataset(csv_uri, "--seed", "5", "--start", "2024-06-01", "--days", "30")
    make_dataset(parquet_uri, "--seed", "5", "--start", "2024-06-01", "--days", "30")

    expected = generate_churn(ROWS, seed=5, start="2024-06-01", days=30)
    pd.testing.assert_frame_equal(read_table(parquet_uri), expected)
    from_csv = read_table(csv_uri)
    pd.testing.assert_frame_equal(
        from_csv.assign(event_time=pd.to_datetime(from_csv["event_time"], format="ISO8601")), expected
    )
    assert expected["event_time"].between("2024-06-01", "2024-07-01").all()
    assert f"wrote {ROWS} rows (churn rate {expected['churned'].mean():.1%}) to {csv_uri}" in printed


def test_writes_to_s3(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/in/churn.parquet"

    make_dataset(uri, "--seed", "2")

    pd.testing.assert_frame_equal(read_table(uri), generate_churn(ROWS, seed=2))


def test_the_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    for name, seed in [("a.csv", "11"), ("b.csv", "11"), ("c.csv", "12")]:
        make_dataset(str(tmp_path / name), "--seed", seed, "--covariate-drift", "0.5", "--concept-drift", "0.5")

    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()


def test_covariate_drift_moves_bills_and_the_plan_and_contract_mix(tmp_path: Path) -> None:
    make_dataset(str(tmp_path / "reference.parquet"))
    make_dataset(str(tmp_path / "drifted.parquet"), "--covariate-drift", "1")
    reference, drifted = read_table(str(tmp_path / "reference.parquet")), read_table(str(tmp_path / "drifted.parquet"))

    # Bills rise within each plan; the overall mean need not, as the mix leans to cheap plans.
    bill_ratio = drifted.groupby("plan")["monthly_charges"].mean() / reference.groupby("plan")["monthly_charges"].mean()
    assert (bill_ratio > 1.15).all(), bill_ratio.to_dict()
    assert (drifted["plan"] == "basic").mean() > (reference["plan"] == "basic").mean() + 0.1
    monthly_share = {
        name: (frame["contract_type"] == "monthly").mean() for name, frame in [("ref", reference), ("drift", drifted)]
    }
    assert monthly_share["drift"] > monthly_share["ref"] + 0.2, monthly_share


def _south_churn_lift(frame: pd.DataFrame) -> float:
    """Churn rate in the south minus elsewhere: near 0 in the reference relationship, large after concept drift."""
    south = frame["region"] == "south"
    return frame.loc[south, "churned"].mean() - frame.loc[~south, "churned"].mean()


def test_concept_drift_changes_churn_but_not_the_features(tmp_path: Path) -> None:
    make_dataset(str(tmp_path / "reference.parquet"))
    make_dataset(str(tmp_path / "drifted.parquet"), "--concept-drift", "1")
    reference, drifted = read_table(str(tmp_path / "reference.parquet")), read_table(str(tmp_path / "drifted.parquet"))

    pd.testing.assert_frame_equal(reference.drop(columns="churned"), drifted.drop(columns="churned"))
    assert abs(_south_churn_lift(reference)) < 0.05
    assert _south_churn_lift(drifted) > 0.1


@pytest.mark.parametrize("drift", ["0", "1"])
def test_generated_data_fits_the_churn_config(tmp_path: Path, pipeline_config: PipelineConfig, drift: str) -> None:
    uri = str(tmp_path / "churn.parquet")
    make_dataset(uri, "--seed", "3", "--covariate-drift", drift, "--concept-drift", drift)
    frame = read_table(uri)
    dataset = pipeline_config.dataset

    assert set(dataset.required_columns) <= set(frame.columns)
    problems = []
    for column in dataset.features:
        values = frame[column.name]
        if values.isna().mean() > column.max_null_fraction:
            problems.append(f"{column.name}: null share {values.isna().mean():.3f} > {column.max_null_fraction}")
        present = values.dropna()
        if column.type == "numeric" and not present.between(column.min, column.max).all():
            problems.append(f"{column.name}: values outside [{column.min}, {column.max}]")
        if column.type == "categorical" and not present.isin(column.categories).all():
            problems.append(f"{column.name}: unknown categories {sorted(set(present) - set(column.categories))}")
    assert problems == []
    assert sorted(frame[dataset.target.name].unique()) == list(dataset.target.classes)
    assert frame[dataset.id_column].is_unique
    assert dataset.min_rows <= len(frame)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--output-uri", "churn.json"],
            r"make-dataset failed: --output-uri churn\.json: unknown file extension '\.json'",
        ),
        (
            ["--output-uri", "churn.csv", "--start", "someday"],
            r"--start 'someday' is not a date; give one like 2025-01-01",
        ),
        (["--output-uri", "churn.csv", "--rows", "0"], r"Invalid value for '--rows'"),
        (["--output-uri", "churn.csv", "--concept-drift", "1.5"], r"Invalid value for '--concept-drift'"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)

    outcome = CliRunner().invoke(app, ["make-dataset", *options])

    assert outcome.exit_code == 2
    assert re.search(message, outcome.output), outcome.output
    assert storage.list_files(str(tmp_path)) == []
