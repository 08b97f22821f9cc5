"""The make-dataset command and the built-in generators: files, determinism, drift knobs, and data that fits (and
passes validation with) each task's dataset config."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlsteps import results
from mlsteps.cli import app
from mlsteps.config import DEFAULT_CONFIG_PATH, DatasetConfig, load_dataset_config
from mlsteps.data import storage
from mlsteps.data.datasets import BUILT_IN, TIERS, generate_churn, generate_claims, generate_tiers
from mlsteps.data.snapshots import read_table

ROWS = 3000
TASKS = list(BUILT_IN)


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
    shares = expected["churned"].value_counts(normalize=True)
    assert f"wrote {ROWS} rows of churn (binary; churned: 0 {shares[0]:.1%}, 1 {shares[1]:.1%}) to {csv_uri}" in printed


def test_the_print_line_reports_class_shares_or_the_target_mean(tmp_path: Path) -> None:
    tiers = make_dataset(str(tmp_path / "tiers.parquet"), "--task", "multiclass")
    claims = make_dataset(str(tmp_path / "claims.parquet"), "--task", "regression")

    bronze = (generate_tiers(ROWS)["next_tier"] == "bronze").mean()
    assert re.search(rf"wrote {ROWS} rows of tiers \(multiclass; next_tier: bronze {bronze:.1%}, silver ", tiers)
    mean = generate_claims(ROWS)["claim_cost"].mean()
    assert f"wrote {ROWS} rows of claims (regression; claim_cost: mean {mean:,.2f}, min " in claims


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


def _dataset(task: str) -> DatasetConfig:
    return load_dataset_config(BUILT_IN[task].config_path)


@pytest.mark.parametrize("task", TASKS)
def test_each_generator_is_deterministic_per_seed(task: str) -> None:
    generate = BUILT_IN[task].generate
    options = {"covariate_drift": 0.5, "concept_drift": 0.5}
    first, again, other = (generate(500, seed=seed, **options) for seed in (4, 4, 5))

    pd.testing.assert_frame_equal(first, again)
    features = _dataset(task).numeric_features
    assert not first[features].equals(other[features])
    with pytest.raises(ValueError, match="rows must be positive, got 0"):
        generate(0)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("drift", ["0", "1"])
def test_generated_data_fits_its_dataset_config(tmp_path: Path, task: str, drift: str) -> None:
    uri = str(tmp_path / f"{task}.parquet")
    make_dataset(uri, "--task", task, "--seed", "3", "--covariate-drift", drift, "--concept-drift", drift)
    frame = read_table(uri)
    dataset = _dataset(task)

    assert list(frame.columns) == dataset.required_columns
    assert dataset.target.task == BUILT_IN[task].task == task
    assert dataset.target.name == BUILT_IN[task].target
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
    target = frame[dataset.target.name]
    if task == "regression":
        assert target.between(dataset.target.min, dataset.target.max).all()
        assert target.min() > 0
        assert target.mean() > 1.3 * target.median()  # right-skewed, as claim costs are
    else:
        assert sorted(target.unique(), key=str) == sorted(dataset.target.classes, key=str)
    assert frame[dataset.id_column].is_unique
    assert frame[dataset.timestamp_column].is_monotonic_increasing
    assert dataset.min_rows <= len(frame)
    assert any(frame[column.name].isna().any() for column in dataset.features)
    assert set(dataset.slice_columns) <= set(dataset.categorical_features)


def _pipeline_config_for(task: str, folder: Path) -> str:
    """The bundled pipeline config pointed at a built-in dataset, with the task's default gate metric."""
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["dataset"] = BUILT_IN[task].config_path
    raw["evaluation"] |= {"primary_metric": None, "threshold": None}
    path = folder / f"pipeline-{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("task", TASKS)
def test_a_generated_csv_passes_snapshot_and_validate_with_its_dataset_config(tmp_path: Path, task: str) -> None:
    data_uri, run_root = str(tmp_path / "input.csv"), str(tmp_path / "run")
    config = _pipeline_config_for(task, tmp_path)
    make_dataset(data_uri, "--task", task, "--seed", "8", "--covariate-drift", "1", "--concept-drift", "1")
    runner = CliRunner()

    snapshot = runner.invoke(
        app,
        [
            "snapshot",
            "--run-root",
            run_root,
            "--input-uri",
            data_uri,
            "--snapshot-store",
            str(tmp_path / "snapshots"),
            "--config",
            config,
        ],
    )
    validate = runner.invoke(app, ["validate", "--run-root", run_root, "--config", config])

    assert snapshot.exit_code == 0, snapshot.output
    assert validate.exit_code == 0, validate.output
    result = results.read_result(run_root, "validate")
    assert result["success"] is True
    assert result["failures"] == []


def test_tiers_covariate_drift_brings_android_members_who_order_less() -> None:
    reference, drifted = generate_tiers(ROWS, seed=1), generate_tiers(ROWS, seed=1, covariate_drift=1)

    assert (drifted["device"] == "android").mean() > (reference["device"] == "android").mean() + 0.15
    assert drifted["orders_12m"].mean() < 0.75 * reference["orders_12m"].mean()
    assert drifted["discount_share"].mean() > reference["discount_share"].mean() + 0.08


def _tier_correlation(frame: pd.DataFrame, column: str) -> float:
    """Rank correlation of a feature with the next tier (bronze 0 ... platinum 3)."""
    return frame[column].corr(frame["next_tier"].map(TIERS.index), method="spearman")


def test_tiers_concept_drift_rewards_engagement_over_spend_and_leaves_the_features() -> None:
    reference, drifted = generate_tiers(ROWS, seed=2), generate_tiers(ROWS, seed=2, concept_drift=1)

    pd.testing.assert_frame_equal(reference.drop(columns="next_tier"), drifted.drop(columns="next_tier"))
    assert _tier_correlation(reference, "spend_12m") > _tier_correlation(drifted, "spend_12m") + 0.15
    assert _tier_correlation(drifted, "app_sessions_30d") > _tier_correlation(reference, "app_sessions_30d") + 0.1


def test_claims_covariate_drift_brings_more_weather_claims_on_pricier_cars() -> None:
    reference, drifted = generate_claims(ROWS, seed=1), generate_claims(ROWS, seed=1, covariate_drift=1)

    assert (drifted["claim_type"] == "weather").mean() > (reference["claim_type"] == "weather").mean() + 0.1
    assert drifted["vehicle_value"].median() > 1.1 * reference["vehicle_value"].median()
    assert drifted["days_to_report"].mean() > 1.5 * reference["days_to_report"].mean()


def test_claims_concept_drift_makes_storms_dearer_and_injuries_cheaper_and_leaves_the_features() -> None:
    reference, drifted = generate_claims(ROWS, seed=2), generate_claims(ROWS, seed=2, concept_drift=1)

    pd.testing.assert_frame_equal(reference.drop(columns="claim_cost"), drifted.drop(columns="claim_cost"))
    by_type = {
        claim_type: drifted.loc[rows, "claim_cost"].median() / reference.loc[rows, "claim_cost"].median()
        for claim_type, rows in reference.groupby("claim_type").groups.items()
    }
    assert by_type["weather"] > 1.6, by_type
    assert by_type["injury"] < 0.9, by_type


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
        (["--output-uri", "churn.csv", "--task", "ranking"], r"Invalid value for '--task'"),
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
