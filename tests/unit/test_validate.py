"""The validate step: the GX suite built from the dataset config, its failure messages, reports and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlsteps.config import DatasetConfig, load_dataset_config
from mlsteps.data import storage, validation
from mlsteps.data.datasets import BUILT_IN, generate_churn
from mlsteps.errors import DataError, StepError, ValidationFailed
from mlsteps.results import read_result, result_uri, step_dir, write_result
from mlsteps.steps import validate

SNAPSHOT_ID = "snap-test-0001"
EXISTS = "expect_column_to_exist"
ROW_COUNT = "expect_table_row_count_to_be_between"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
TYPE_LIST = "expect_column_values_to_be_in_type_list"
UNIQUE = "expect_column_values_to_be_unique"
CONTAIN_SET = "expect_column_distinct_values_to_contain_set"


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    """Clean generated data, 1000 rows; the mutators below return broken copies and leave it intact."""
    return generate_churn(1000, seed=11)


@pytest.fixture
def suite_size(dataset: DatasetConfig) -> int:
    """How many checks validate runs on churn: the suite's expectations, a leakage check per feature, one on the
    timestamp column's future values."""
    return len(validation.build_suite(dataset).expectations) + len(dataset.features) + 1


def _with_feature(dataset: DatasetConfig, name: str, **changes: Any) -> DatasetConfig:
    """The dataset config with one feature's fields changed."""
    raw = dataset.model_dump()
    raw["features"] = [{**f, **changes} if f["name"] == name else f for f in raw["features"]]
    return DatasetConfig.model_validate(raw)


def _write_snapshot(run_root: str, frame: pd.DataFrame) -> None:
    """Stand in for the snapshot step: a Parquet file and its result.json."""
    uri = storage.join(step_dir(run_root, "snapshot"), "data.parquet")
    storage.write_parquet(frame, uri)
    write_result(
        run_root,
        "snapshot",
        {
            "snapshot_id": SNAPSHOT_ID,
            "snapshot_uri": uri,
            "dataset": "churn",
            "rows": len(frame),
            "columns": list(frame.columns),
        },
    )


def _drop_region(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["region"])


def _age_as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """What a CSV reader gives for a numeric column with one word in it: a str column."""
    age = frame["age"].astype(int).astype(str)
    age.iloc[7] = "unknown"
    return frame.assign(age=age)


def _age_with_text(frame: pd.DataFrame) -> pd.DataFrame:
    age = frame["age"].astype(object)
    age.iloc[3] = "n/a"
    return frame.assign(age=age)


def _empty(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def _devices_all_null(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(num_devices=np.nan)


def _one_class(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(churned=0)


def _unknown_plans(share: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        plan = frame["plan"].copy()
        plan.iloc[: int(len(frame) * share)] = "platinum"
        return frame.assign(plan=plan)

    return mutate


def _age_out_of_range(frame: pd.DataFrame) -> pd.DataFrame:
    age = frame["age"].copy()
    age.iloc[[0, 1, 2]] = [-5, 130, 17]
    return frame.assign(age=age)


def _duplicate_ids(frame: pd.DataFrame) -> pd.DataFrame:
    ids = frame["customer_id"].copy()
    ids.iloc[1:4] = ids.iloc[0]
    return frame.assign(customer_id=ids)


@pytest.mark.parametrize(
    ("seed", "covariate_drift", "concept_drift"),
    [pytest.param(1, 0.0, 0.0, id="reference"), pytest.param(2, 1.0, 1.0, id="drifted")],
)
def test_generated_data_passes(
    dataset: DatasetConfig, suite_size: int, seed: int, covariate_drift: float, concept_drift: float
) -> None:
    # Drift changes distributions, not data quality: drifted data must pass too, or retraining on drift stalls.
    frame = generate_churn(2000, seed=seed, covariate_drift=covariate_drift, concept_drift=concept_drift)
    report = validation.validate_frame(frame, dataset)
    assert report.success, [f.line() for f in report.failures]
    assert report.failures == []
    assert report.statistics == {"evaluated": suite_size, "successful": suite_size, "unsuccessful": 0}
    assert json.loads(json.dumps(report.gx_result))["success"] is True


@pytest.mark.parametrize(
    ("mutate", "expected_failures", "detail_pattern"),
    [
        pytest.param(
            _drop_region,
            {("region", EXISTS), ("region", NOT_NULL), ("region", IN_SET)},
            r"^region: expect_column_to_exist: column is missing$",
            id="missing-column",
        ),
        pytest.param(
            _age_as_strings,
            {("age", TYPE_LIST), ("age", BETWEEN)},
            r"^age: expect_column_values_to_be_in_type_list: dtype str; expected a numeric dtype \(int or float\); "
            r"1 of 1000 non-null values \(0\.1%\) are not numbers, e\.g\. 'unknown'$",
            id="numeric-as-strings",
        ),
        pytest.param(
            _age_with_text,
            {("age", TYPE_LIST), ("age", BETWEEN)},
            r"^age: expect_column_values_to_be_in_type_list: 1 of 1000 values \(0\.1%\) are not numbers, "
            r"e\.g\. 'n/a'$",
            id="numeric-with-text",
        ),
        pytest.param(
            _empty,
            {(None, ROW_COUNT), ("churned", CONTAIN_SET)},
            r"^\(table\): expect_table_row_count_to_be_between: 0 rows; expected at least 500$",
            id="empty-frame",
        ),
        pytest.param(
            _devices_all_null,
            {("num_devices", NOT_NULL)},
            r"^num_devices: expect_column_values_to_not_be_null: 1000 of 1000 values \(100%\) are null$",
            id="all-null-column",
        ),
        pytest.param(
            _one_class,
            {("churned", CONTAIN_SET)},
            r"^churned: expect_column_distinct_values_to_contain_set: observed \[0\], missing \[1\]",
            id="one-target-class",
        ),
        pytest.param(
            _unknown_plans(0.05),
            {("plan", IN_SET)},
            r"^plan: expect_column_values_to_be_in_set: 50 of 1000 values \(5%\) not in \['basic', .*\], "
            r"e\.g\. 'platinum' \(at most 1% allowed\)$",
            id="unknown-categories-over-limit",
        ),
        pytest.param(
            _age_out_of_range,
            {("age", BETWEEN)},
            r"^age: expect_column_values_to_be_between: 3 of 1000 values \(0\.3%\) outside \[18, 100\], "
            r"e\.g\. -5, 130, 17$",
            id="out-of-range",
        ),
        pytest.param(
            _duplicate_ids,
            {("customer_id", UNIQUE)},
            r"^customer_id: expect_column_values_to_be_unique: 4 of 1000 values \(0\.4%\) are duplicates, "
            r"e\.g\. 'cus_0011_000000000'$",
            id="duplicate-ids",
        ),
    ],
)
def test_bad_input_fails_naming_the_problem(
    churn: pd.DataFrame,
    dataset: DatasetConfig,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    expected_failures: set[tuple[str | None, str]],
    detail_pattern: str,
) -> None:
    report = validation.validate_frame(mutate(churn), dataset)
    assert not report.success
    assert {(f.column, f.expectation) for f in report.failures} == expected_failures
    assert report.statistics["unsuccessful"] == len(expected_failures)
    lines = [f.line() for f in report.failures]
    assert any(re.search(detail_pattern, line) for line in lines), lines


def _built_in(task: str) -> DatasetConfig:
    """The dataset config of a built-in dataset: tiers (multiclass) or claims (regression), churn (binary)."""
    return load_dataset_config(BUILT_IN[task].config_path)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("drift", [0.0, 1.0], ids=["reference", "drifted"])
def test_generated_data_of_the_other_tasks_passes(task: str, drift: float) -> None:
    frame = BUILT_IN[task].generate(2000, seed=4, covariate_drift=drift, concept_drift=drift)
    report = validation.validate_frame(frame, _built_in(task))
    assert report.success, [f.line() for f in report.failures]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("binary", {EXISTS, NOT_NULL, IN_SET, CONTAIN_SET}),
        ("multiclass", {EXISTS, NOT_NULL, IN_SET, CONTAIN_SET}),
        ("regression", {EXISTS, NOT_NULL, TYPE_LIST, BETWEEN}),
    ],
)
def test_the_target_is_checked_by_its_task(task: str, expected: set[str]) -> None:
    dataset = _built_in(task)
    suite = validation.build_suite(dataset)
    on_target = [e for e in suite.expectations if getattr(e, "column", None) == dataset.target.name]
    assert {e.expectation_type for e in on_target} == expected
    assert len(on_target) == len(expected)


def test_a_regression_target_without_bounds_gets_no_range_check() -> None:
    raw = _built_in("regression").model_dump()
    raw["target"] |= {"min": None, "max": None}
    suite = validation.build_suite(DatasetConfig.model_validate(raw))
    assert {e.expectation_type for e in suite.expectations if getattr(e, "column", None) == "claim_cost"} == {
        EXISTS,
        NOT_NULL,
        TYPE_LIST,
    }


def _target_rows(column: str, rows: list[int], values: list[Any]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        target = frame[column].astype(object)
        target.iloc[rows] = values
        return frame.assign(**{column: target.infer_objects()})

    return mutate


def _no_platinum(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(next_tier=frame["next_tier"].replace("platinum", "gold"))


def _costs_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Costs exported with a currency symbol and thousands separators: text, not numbers."""
    return frame.assign(claim_cost=[f"${cost:,.2f}" for cost in frame["claim_cost"]])


@pytest.mark.parametrize(
    ("task", "mutate", "expected_failures", "detail_pattern"),
    [
        pytest.param(
            "multiclass",
            _target_rows("next_tier", [0, 1, 2], ["diamond", "diamond", "Gold"]),
            {("next_tier", IN_SET)},
            r"^next_tier: expect_column_values_to_be_in_set: 3 of 1000 values \(0\.3%\) not in "
            r"\['bronze', 'silver', 'gold', 'platinum'\], e\.g\. 'diamond', 'Gold'$",
            id="undeclared-class",
        ),
        pytest.param(
            "multiclass",
            _no_platinum,
            {("next_tier", CONTAIN_SET)},
            r"^next_tier: expect_column_distinct_values_to_contain_set: observed \['bronze', 'gold', 'silver'\], "
            r"missing \['platinum'\]; every one of \['bronze', 'silver', 'gold', 'platinum'\] must occur$",
            id="missing-class",
        ),
        pytest.param(
            "regression",
            _target_rows("claim_cost", [5, 6], [None, np.nan]),
            {("claim_cost", NOT_NULL)},
            r"^claim_cost: expect_column_values_to_not_be_null: 2 of 1000 values \(0\.2%\) are null$",
            id="regression-nulls",
        ),
        pytest.param(
            "regression",
            _target_rows("claim_cost", [0, 1], [-5.0, 900_000.0]),
            {("claim_cost", BETWEEN)},
            r"^claim_cost: expect_column_values_to_be_between: 2 of 1000 values \(0\.2%\) outside \[0, 500000\], "
            r"e\.g\. -5, 900000$",
            id="regression-out-of-range",
        ),
        pytest.param(
            "regression",
            _costs_as_text,
            {("claim_cost", TYPE_LIST), ("claim_cost", BETWEEN)},
            r"^claim_cost: expect_column_values_to_be_in_type_list: dtype str; expected a numeric dtype "
            r"\(int or float\); 1000 of 1000 non-null values \(100%\) are not numbers, e\.g\. '\$[\d,]+\.\d\d'",
            id="regression-text",
        ),
    ],
)
def test_bad_targets_fail_naming_the_column(
    task: str,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    expected_failures: set[tuple[str, str]],
    detail_pattern: str,
) -> None:
    frame = BUILT_IN[task].generate(1000, seed=6)
    report = validation.validate_frame(mutate(frame), _built_in(task))
    assert {(f.column, f.expectation) for f in report.failures} == expected_failures
    lines = [f.line() for f in report.failures]
    assert any(re.search(detail_pattern, line) for line in lines), lines


def test_missing_column_skips_its_other_expectations(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    report = validation.validate_frame(_drop_region(churn), dataset)
    assert {f.expectation: f.detail for f in report.failures} == {
        EXISTS: "column is missing",
        NOT_NULL: "skipped: column is missing",
        IN_SET: "skipped: column is missing",
    }


def test_range_check_on_strings_names_the_dtype(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    report = validation.validate_frame(_age_as_strings(churn), dataset)
    range_check = next(f for f in report.failures if f.expectation == BETWEEN)
    assert range_check.detail == "skipped: dtype str is not numeric"


def test_unknown_categories_below_the_limit_pass(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    report = validation.validate_frame(_unknown_plans(0.005)(churn), dataset)
    assert report.success, [f.line() for f in report.failures]
    plan_check = next(o for o in report.outcomes if (o.column, o.expectation) == ("plan", IN_SET))
    assert re.search(r"5 of 1000 values \(0\.5%\) not in .*'platinum' \(at most 1% allowed\)$", plan_check.detail)


def test_all_null_column_passes_when_the_config_allows_it(churn: pd.DataFrame, dataset: DatasetConfig) -> None:
    lenient = _with_feature(dataset, "num_devices", max_null_fraction=1.0)
    assert validation.validate_frame(_devices_all_null(churn), lenient).success


def test_report_lists_failures_first_and_escapes_values(
    churn: pd.DataFrame, dataset: DatasetConfig, suite_size: int
) -> None:
    plan = churn["plan"].copy()
    plan.iloc[:100] = "<script>alert(1)</script>"
    report = validation.validate_frame(_age_out_of_range(churn).assign(plan=plan), dataset)
    assert [o.success for o in report.outcomes] == sorted(o.success for o in report.outcomes)

    page = validation.render_html(report, "churn snapshot <s1>")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "churn snapshot &lt;s1&gt;" in page
    assert f"2 of {suite_size} expectations failed" in page
    assert page.count('<tr class="failed">') == 2
    assert page.count("<tr class=") == suite_size
    # Failures come first: the failing plan row precedes the passing row of the first column.
    assert page.index("<td>plan</td>") < page.index("<td>customer_id</td>")
    assert "http" not in page  # self-contained: no external assets


def test_step_passes_and_records_result(tmp_path: Path, churn: pd.DataFrame) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, churn)
    validate.main(run_root=run_root, config=None)

    result = read_result(run_root, "validate")
    assert result["success"] is True
    assert result["snapshot_id"] == SNAPSHOT_ID
    assert result["failures"] == []
    assert result["statistics"]["unsuccessful"] == 0
    assert result["report_json_uri"] == storage.join(step_dir(run_root, "validate"), "gx_result.json")
    assert storage.read_json(result["report_json_uri"])["success"] is True
    assert "PASSED" in storage.read_text(result["report_html_uri"])


def test_step_failure_writes_reports_then_raises(tmp_path: Path, churn: pd.DataFrame, suite_size: int) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, _drop_region(_age_out_of_range(churn)))
    with pytest.raises(ValidationFailed, match=rf"snapshot {SNAPSHOT_ID} failed 4 of {suite_size} expectations"):
        validate.main(run_root=run_root, config=None)

    result = read_result(run_root, "validate")
    assert result["success"] is False
    assert result["statistics"] == {"evaluated": suite_size, "successful": suite_size - 4, "unsuccessful": 4}
    assert [(f["column"], f["expectation"]) for f in result["failures"]] == [
        ("age", BETWEEN),
        ("region", EXISTS),
        ("region", NOT_NULL),
        ("region", IN_SET),
    ]
    assert storage.read_json(result["report_json_uri"])["success"] is False
    page = storage.read_text(result["report_html_uri"])
    assert "FAILED" in page
    assert "<td>age</td>" in page
    assert "<td>region</td>" in page


def test_failure_message_lists_every_failure_and_the_report(tmp_path: Path, churn: pd.DataFrame) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, _drop_region(_age_out_of_range(churn)))
    with pytest.raises(ValidationFailed) as failure:
        validate.main(run_root=run_root, config=None)

    message = str(failure.value)
    assert "\n- age: expect_column_values_to_be_between: 3 of 1000 values (0.3%) outside [18, 100]" in message
    assert "\n- region: expect_column_to_exist: column is missing" in message
    assert "\n- region: expect_column_values_to_be_in_set: skipped: column is missing" in message
    assert f"Report: {storage.join(step_dir(run_root, 'validate'), 'report.html')}" in message
    assert "adjust the limits in the dataset config of 'churn'" in message


def test_step_rerun_gives_the_same_result(tmp_path: Path, churn: pd.DataFrame) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, churn)
    validate.main(run_root=run_root, config=None)
    first = storage.read_text(result_uri(run_root, "validate"))
    validate.main(run_root=run_root, config=None)
    assert storage.read_text(result_uri(run_root, "validate")) == first


def test_step_on_s3(s3_bucket: str, churn: pd.DataFrame) -> None:
    run_root = f"{s3_bucket}/runs/ml_retrain/manual-1"
    _write_snapshot(run_root, _one_class(churn))
    with pytest.raises(ValidationFailed, match=r"- churned: expect_column_distinct_values_to_contain_set"):
        validate.main(run_root=run_root, config=None)
    result = read_result(run_root, "validate")
    assert result["report_html_uri"] == f"{run_root}/validate/report.html"
    assert "<td>churned</td>" in storage.read_text(result["report_html_uri"])
    assert storage.read_json(result["report_json_uri"])["success"] is False


def test_step_needs_the_snapshot_result(tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"no result of step 'snapshot' .* run `snapshot` for this --run-root first"):
        validate.main(run_root=str(tmp_path), config=None)


def test_step_reports_a_missing_snapshot_file(tmp_path: Path) -> None:
    run_root = str(tmp_path)
    gone = str(tmp_path / "gone.parquet")
    write_result(run_root, "snapshot", {"snapshot_id": SNAPSHOT_ID, "snapshot_uri": gone})
    with pytest.raises(DataError, match=rf"snapshot file {re.escape(gone)} does not exist: re-run `snapshot`"):
        validate.main(run_root=run_root, config=None)


def test_cli_exits_2_with_the_failures(tmp_path: Path, churn: pd.DataFrame, suite_size: int) -> None:
    run_root = str(tmp_path / "run")
    _write_snapshot(run_root, _devices_all_null(churn))
    completed = subprocess.run(
        [sys.executable, "-m", "mlsteps", "validate", "--run-root", run_root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"validate failed: snapshot {SNAPSHOT_ID} failed 1 of {suite_size} expectations")
    assert "- num_devices: expect_column_values_to_not_be_null: 1000 of 1000 values (100%) are null" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert f"validation failed: {suite_size - 1} of {suite_size} expectations met" in completed.stdout
