"""What validation and snapshot refuse beyond column limits: target leakage, cut CSV files, event times in the
future, and splitting a snapshot whose validation failed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import DatasetConfig, load_dataset_config
from mlsteps.data import storage, validation
from mlsteps.data.datasets import BUILT_IN, generate_churn
from mlsteps.data.snapshots import read_table, write_table
from mlsteps.errors import ConfigError, ValidationFailed
from mlsteps.results import read_result, result_uri, step_dir, write_result
from mlsteps.steps import preprocess, validate

LEAKAGE = validation.LEAKAGE
FUTURE = validation.FUTURE


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    """Clean generated churn data, 1000 rows; tests change copies."""
    return generate_churn(1000, seed=5)


def _with(dataset: DatasetConfig, **changes: Any) -> DatasetConfig:
    return DatasetConfig.model_validate({**dataset.model_dump(), **changes})


def _failures(outcomes: list[validation.Outcome]) -> dict[str, str]:
    return {o.column or "": o.detail for o in outcomes if not o.success}


# --- target leakage ---


def test_built_in_datasets_score_below_the_default_limit() -> None:
    for built_in in BUILT_IN.values():
        frame = built_in.generate(3000, seed=9, covariate_drift=1.0, concept_drift=1.0)
        outcomes = validation.leakage_outcomes(frame, load_dataset_config(built_in.config_path))
        assert _failures(outcomes) == {}, built_in.config_path
        assert all("alone scores" in o.detail for o in outcomes), [o.line() for o in outcomes]


@pytest.mark.parametrize(
    ("column", "leak"),
    [
        pytest.param("late_payments_12m", lambda y: y, id="numeric-copy"),
        pytest.param("support_calls_90d", lambda y: 50 - 7 * y, id="numeric-rescaled-reversed"),
        pytest.param("plan", lambda y: np.where(y == 1, "basic", "premium"), id="categorical-recoded"),
    ],
)
def test_a_feature_that_predicts_the_target_alone_fails_naming_it_and_its_score(
    churn: pd.DataFrame, dataset: DatasetConfig, column: str, leak: Any
) -> None:
    leaky = churn.assign(**{column: leak(churn["churned"].to_numpy())})
    failures = _failures(validation.leakage_outcomes(leaky, dataset))
    assert list(failures) == [column]
    assert re.match(
        r"alone scores 1\.0000 \(ROC AUC for 'churned' = [01] vs the rest\); at most 0\.99 allowed: "
        r"it likely holds the target \(leakage\)",
        failures[column],
    ), failures[column]


def test_a_regression_target_copy_fails_by_its_rank_correlation() -> None:
    claims = BUILT_IN["regression"]
    frame = claims.generate(1000, seed=3)
    dataset = load_dataset_config(claims.config_path)
    leaky = frame.assign(vehicle_value=np.log1p(frame[dataset.target.name]))
    failures = _failures(validation.leakage_outcomes(leaky, dataset))
    assert failures.keys() == {"vehicle_value"}
    assert "alone scores 1.0000 (|Spearman correlation| with 'claim_cost')" in failures["vehicle_value"]


def test_an_allowed_column_or_a_higher_limit_passes_with_its_score(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    leaky = churn.assign(late_payments_12m=churn["churned"])
    allowed = _with(dataset, leakage={"allowed_columns": ["late_payments_12m"]})
    [outcome] = [o for o in validation.leakage_outcomes(leaky, allowed) if o.column == "late_payments_12m"]
    assert outcome.success
    assert outcome.detail.endswith(
        "scores 1.0000 (ROC AUC for 'churned' = 1 vs the rest); at most 0.99 allowed, "
        "but the column is in leakage.allowed_columns"
    )
    assert _failures(validation.leakage_outcomes(leaky, _with(dataset, leakage={"max_single_feature_score": 1}))) == {}


def test_a_unique_category_per_row_is_not_taken_for_leakage(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    # Scored on the other half of the rows, a category seen once predicts nothing.
    unique = churn.assign(region=[f"r{i}" for i in range(len(churn))])
    [outcome] = [o for o in validation.leakage_outcomes(unique, dataset) if o.column == "region"]
    assert outcome.success
    assert outcome.detail.startswith("not checked: fewer than 50 rows")


def test_leakage_settings_are_checked_at_load(dataset: DatasetConfig, tmp_path: Path) -> None:
    raw = dataset.model_dump()
    path = tmp_path / "churn.yaml"
    storage.write_json(str(path), {**raw, "leakage": {"allowed_columns": ["churned", "age"]}})
    with pytest.raises(ConfigError, match=r"leakage.allowed_columns \['churned'\] are not features"):
        load_dataset_config(str(path))
    storage.write_json(str(path), {**raw, "leakage": {"max_single_feature_score": 1.5}})
    with pytest.raises(ConfigError, match=r"leakage.max_single_feature_score"):
        load_dataset_config(str(path))
    storage.write_json(str(path), {**raw, "leakage": {"max_score": 0.9}})
    with pytest.raises(ConfigError, match=r"leakage.max_score"):
        load_dataset_config(str(path))


# --- event times in the future ---


def test_event_times_after_now_plus_the_tolerance_fail_with_count_latest_and_tolerance(
    churn: pd.DataFrame, dataset: DatasetConfig
) -> None:
    now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    times = churn["event_time"].copy()
    times.iloc[:3] = pd.Timestamp("2026-01-12T08:00:00Z")
    times.iloc[3] = pd.Timestamp(now + timedelta(minutes=59))  # within the 1 hour tolerance
    [outcome] = validation.future_outcomes(churn.assign(event_time=times), dataset, now)
    assert not outcome.success
    assert outcome.line() == (
        "event_time: expect_column_values_to_not_be_in_the_future: 3 of 1000 values (0.3%) are after the validation "
        "time 2026-01-10T12:00:00+00:00 plus the tolerance of 1:00:00 (future_tolerance_seconds: 3600), latest "
        "2026-01-12T08:00:00+00:00; fix the clock or time zone at the source, or raise future_tolerance_seconds"
    )
    wider = _with(dataset, future_tolerance_seconds=3 * 86400)
    assert validation.future_outcomes(churn.assign(event_time=times), wider, now)[0].success


def test_future_rows_and_leakage_fail_the_step_beside_the_suite(
    tmp_path: Path, churn: pd.DataFrame, dataset: DatasetConfig
) -> None:
    run_root = str(tmp_path / "run")
    times = churn["event_time"].copy()
    times.iloc[-2:] = pd.Timestamp(datetime.now(UTC) + timedelta(days=30))
    _write_snapshot(run_root, churn.assign(event_time=times, late_payments_12m=churn["churned"]))
    with pytest.raises(ValidationFailed) as failure:
        validate.main(run_root=run_root, config=None)
    message = str(failure.value)
    evaluated = len(validation.build_suite(dataset).expectations) + len(dataset.features) + 1
    assert f"failed 2 of {evaluated} expectations" in message
    assert "\n- event_time: expect_column_values_to_not_be_in_the_future: 2 of 1000 values (0.2%) are after" in message
    assert "\n- late_payments_12m: expect_column_to_not_predict_the_target_alone: alone scores 1.0000" in message
    assert "leakage, future_tolerance_seconds" in message
    page = storage.read_text(read_result(run_root, "validate")["report_html_uri"])
    assert "expect_column_to_not_predict_the_target_alone" in page


# --- a cut CSV file ---


def test_a_csv_without_a_final_newline_or_with_quoted_line_breaks_is_read(churn: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    rows = churn.head(20).assign(region="north\nwest")
    write_table(rows, str(path))
    path.write_text(path.read_text().rstrip("\n"))
    frame = read_table(str(path))
    assert len(frame) == 20
    assert frame["region"].iloc[-1] == "north\nwest"


# --- a failed validation stops the steps after it ---


def _write_snapshot(run_root: str, frame: pd.DataFrame, snapshot_id: str = "snap-1") -> None:
    """Stand in for the snapshot step: a Parquet file and its result.json."""
    uri = storage.join(step_dir(run_root, "snapshot"), "data.parquet")
    storage.write_parquet(frame, uri)
    write_result(run_root, "snapshot", {"snapshot_id": snapshot_id, "snapshot_uri": uri, "rows": len(frame)})


def test_preprocess_refuses_a_run_whose_validation_failed(tmp_path: Path, churn: pd.DataFrame) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, churn.assign(age=-1))
    with pytest.raises(ValidationFailed):
        validate.main(run_root=run_root, config=None)

    result = CliRunner().invoke(app, ["preprocess", "--run-root", run_root])
    assert result.exit_code == 2, result.output
    report = storage.join(step_dir(run_root, "validate"), "report.html")
    assert f"run {run_root}: snapshot snap-1 failed validation (1 failed expectation(s))" in result.output
    assert f"{result_uri(run_root, 'validate')} (report: {report})" in result.output
    assert not storage.exists(result_uri(run_root, "preprocess"))


def test_preprocess_refuses_a_validation_of_another_snapshot(tmp_path: Path, churn: pd.DataFrame) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, churn, snapshot_id="snap-2")
    write_result(run_root, "validate", {"success": True, "snapshot_id": "snap-1"})
    with pytest.raises(
        ValidationFailed, match=r"is of snapshot snap-1, but the snapshot is now snap-2: run `validate`"
    ):
        preprocess.refuse_unvalidated(run_root, read_result(run_root, "snapshot"))
    write_result(run_root, "validate", {"success": True, "snapshot_id": "snap-2"})
    preprocess.refuse_unvalidated(run_root, read_result(run_root, "snapshot"))
