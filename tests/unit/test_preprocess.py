"""The preprocess step and the feature preprocessor: splits, train-only fitting, encoding, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlsteps import results
from mlsteps.cli import app
from mlsteps.config import PipelineConfig, load_dataset_config, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import BUILT_IN, generate_churn
from mlsteps.data.features import UNKNOWN_INDEX, TabularPreprocessor
from mlsteps.errors import ConfigError, DataError
from mlsteps.steps import preprocess

ROWS = 3000


def write_snapshot(root: str, frame: pd.DataFrame) -> None:
    """What the snapshot step leaves behind: the data as Parquet and its result.json."""
    uri = storage.join(root, "snapshot", "data.parquet")
    storage.write_parquet(frame, uri)
    results.write_result(
        root, "snapshot", {"snapshot_id": "abc", "snapshot_uri": uri, "dataset": "churn", "rows": len(frame)}
    )


def config_with(pipeline_config: PipelineConfig, split: dict[str, Any] | None = None, **dataset: Any) -> PipelineConfig:
    """The bundled config with some split settings and dataset fields replaced."""
    overrides: dict[str, Any] = {"split": split or {}}
    if dataset:
        overrides["dataset"] = {**pipeline_config.dataset.model_dump(), **dataset}
    return load_pipeline_config(overrides=overrides)


def config_for(task: str) -> PipelineConfig:
    """The bundled pipeline config on a built-in dataset of the task, gated by the task's default metric."""
    dataset = load_dataset_config(BUILT_IN[task].config_path).model_dump()
    return load_pipeline_config(
        overrides={"dataset": dataset, "evaluation": {"primary_metric": None, "threshold": None}}
    )


def read_splits(root: str) -> dict[str, pd.DataFrame]:
    result = results.read_result(root, "preprocess")
    return {name: storage.read_parquet(result[f"{name}_uri"]) for name in preprocess.SPLITS}


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return generate_churn(ROWS, seed=3)


@pytest.fixture(scope="module")
def fitted(churn: pd.DataFrame, pipeline_config: PipelineConfig) -> TabularPreprocessor:
    dataset = pipeline_config.dataset
    return TabularPreprocessor.fit(churn, dataset.numeric_features, dataset.categorical_features)


def test_time_split_puts_the_latest_rows_in_holdout(tmp_path: Path, churn: pd.DataFrame, pipeline_config) -> None:
    root = str(tmp_path)
    write_snapshot(root, churn.sample(frac=1.0, random_state=0))  # shuffled: the step must sort by time itself

    payload = preprocess.run(root, pipeline_config)

    splits = read_splits(root)
    times = {name: part["event_time"] for name, part in splits.items()}
    assert times["train"].max() <= times["validation"].min()
    assert times["validation"].max() <= times["holdout"].min()
    assert payload["rows"] == {"train": 2100, "validation": 450, "holdout": 450}
    assert pd.Timestamp(payload["split"]["holdout_start"]) == times["holdout"].min()
    assert payload["split"]["method"] == "time"
    assert payload["snapshot_id"] == "abc"
    assert results.read_result(root, "preprocess")["preprocessor_uri"] == payload["preprocessor_uri"]
    assert payload["class_counts"] == {
        name: {"0": int((part["churned"] == 0).sum()), "1": int((part["churned"] == 1).sum())}
        for name, part in splits.items()
    }
    assert "target_stats" not in payload


def test_multiclass_splits_count_every_class_in_config_order(tmp_path: Path) -> None:
    root = str(tmp_path)
    write_snapshot(root, BUILT_IN["multiclass"].generate(ROWS, seed=3))

    payload = preprocess.run(root, config_for("multiclass"))

    splits = read_splits(root)
    for name, part in splits.items():
        counts = payload["class_counts"][name]
        assert list(counts) == ["bronze", "silver", "gold", "platinum"]
        assert counts == part["next_tier"].value_counts().reindex(list(counts)).to_dict()
        assert all(count > 0 for count in counts.values())
    assert {key for key in payload if key.endswith("_uri")} >= {"train_uri", "validation_uri", "holdout_uri"}
    assert storage.exists(payload["preprocessor_uri"])


def test_regression_splits_report_the_target_mean_and_std(tmp_path: Path) -> None:
    root = str(tmp_path)
    write_snapshot(root, BUILT_IN["regression"].generate(ROWS, seed=3))

    payload = preprocess.run(root, config_for("regression"))

    assert "class_counts" not in payload
    for name, part in read_splits(root).items():
        stats = payload["target_stats"][name]
        assert stats["mean"] == pytest.approx(part["claim_cost"].mean())
        assert stats["std"] == pytest.approx(part["claim_cost"].std(ddof=0))
    assert payload["rows"] == {"train": 2100, "validation": 450, "holdout": 450}


def test_a_split_without_a_class_fails_naming_it_and_its_counts(tmp_path: Path) -> None:
    root = str(tmp_path)
    tiers = BUILT_IN["multiclass"].generate(ROWS, seed=3)
    latest = tiers["reviewed_at"] >= tiers["reviewed_at"].quantile(0.85)
    write_snapshot(
        root, tiers.assign(next_tier=tiers["next_tier"].where(~latest | (tiers["next_tier"] != "platinum"), "gold"))
    )

    with pytest.raises(DataError) as failure:
        preprocess.run(root, config_for("multiclass"))

    message = str(failure.value)
    assert "every split needs every class of 'next_tier' ['bronze', 'silver', 'gold', 'platinum']" in message
    assert re.search(
        r"\n- holdout: 450 rows, \d+ of 'bronze', \d+ of 'silver', \d+ of 'gold', 0 of 'platinum'", message
    )
    assert "train:" not in message
    assert storage.list_files(results.step_dir(root, "preprocess")) == []


def test_a_regression_split_with_a_constant_target_fails(tmp_path: Path) -> None:
    root = str(tmp_path)
    claims = BUILT_IN["regression"].generate(ROWS, seed=3)
    latest = claims["reported_at"] >= claims["reported_at"].quantile(0.85)
    write_snapshot(root, claims.assign(claim_cost=claims["claim_cost"].where(~latest, 1000.0)))

    with pytest.raises(
        DataError, match=r"at least two distinct values of 'claim_cost':\n- holdout: 450 rows, 1 distinct"
    ):
        preprocess.run(root, config_for("regression"))


def test_a_regression_target_that_is_not_numbers_is_a_data_error(tmp_path: Path) -> None:
    claims = BUILT_IN["regression"].generate(ROWS, seed=3).astype({"claim_cost": "str"})  # a CSV read as text
    claims.loc[[4, 9], "claim_cost"] = ["n/a", None]
    write_snapshot(str(tmp_path), claims)

    with pytest.raises(DataError, match=r"regression target column 'claim_cost' has 2 value\(s\) that are not finite"):
        preprocess.run(str(tmp_path), config_for("regression"))


def test_hash_split_is_stable_and_ignores_row_order(tmp_path: Path, churn: pd.DataFrame, pipeline_config) -> None:
    config = config_with(pipeline_config, split={"method": "hash"})
    assignments = []
    for name, frame in {
        "sorted": churn,
        "shuffled": churn.sample(frac=1.0, random_state=1),
        "subset": churn.iloc[::2],  # other rows around an id must not move it
    }.items():
        root = str(tmp_path / name)
        write_snapshot(root, frame)
        preprocess.run(root, config)
        assignments.append(
            {customer: split for split, part in read_splits(root).items() for customer in part["customer_id"]}
        )

    sorted_run, shuffled_run, subset_run = assignments
    assert shuffled_run == sorted_run
    assert all(sorted_run[customer] == split for customer, split in subset_run.items())
    shares = pd.Series(sorted_run).value_counts(normalize=True)
    assert shares["holdout"] == pytest.approx(0.15, abs=0.03)
    assert shares["validation"] == pytest.approx(0.15, abs=0.03)


def test_preprocessor_is_fitted_on_train_rows_only(tmp_path: Path, churn: pd.DataFrame, pipeline_config) -> None:
    original, changed = str(tmp_path / "original"), str(tmp_path / "changed")
    write_snapshot(original, churn)
    later = churn["event_time"] >= churn["event_time"].quantile(0.7)  # validation and holdout of the time split
    altered = churn.copy()
    altered.loc[later, "monthly_charges"] *= 10
    altered.loc[later, "plan"] = "platinum"
    write_snapshot(changed, altered)

    preprocess.run(original, pipeline_config)
    preprocess.run(changed, pipeline_config)

    fitted = [
        storage.read_json(results.read_result(root, "preprocess")["preprocessor_uri"]) for root in (original, changed)
    ]
    assert fitted[0] == fitted[1]
    train = read_splits(original)["train"]
    assert fitted[0]["numeric"]["monthly_charges"]["median"] == pytest.approx(train["monthly_charges"].median())
    assert fitted[0]["numeric"]["monthly_charges"]["median"] != pytest.approx(churn["monthly_charges"].median())
    assert "platinum" not in fitted[1]["vocabularies"]["plan"]


def test_categories_get_sorted_indices_and_unknown_or_missing_get_zero(fitted: TabularPreprocessor) -> None:
    rows = pd.DataFrame(
        {column: [np.nan] * 4 for column in fitted.numeric_columns}
        | {column: ["x"] * 4 for column in fitted.categorical_columns}
    )
    rows["plan"] = ["basic", "standard", "platinum", None]

    numeric, categories = fitted.transform(rows)

    plan = categories[:, fitted.categorical_columns.index("plan")]
    assert fitted.vocabularies["plan"] == ["basic", "enterprise", "premium", "standard"]
    assert plan.tolist() == [1, 4, UNKNOWN_INDEX, UNKNOWN_INDEX]
    assert (categories[:, fitted.categorical_columns.index("region")] == UNKNOWN_INDEX).all()
    assert categories.dtype == np.int64


def test_nulls_are_imputed_with_the_train_median_and_inputs_standardised(
    fitted: TabularPreprocessor, churn: pd.DataFrame
) -> None:
    numeric, _ = fitted.transform(churn)
    nulls = churn["satisfaction_score"].isna().to_numpy()
    stats = fitted.numeric["satisfaction_score"]
    position = fitted.numeric_columns.index("satisfaction_score")

    assert nulls.any()
    assert numeric.dtype == np.float32
    assert not np.isnan(numeric).any()
    assert numeric[nulls, position] == pytest.approx((stats.median - stats.mean) / stats.std)
    assert numeric.mean(axis=0) == pytest.approx(np.zeros(numeric.shape[1]), abs=1e-4)
    assert numeric.std(axis=0) == pytest.approx(np.ones(numeric.shape[1]), abs=1e-3)


def test_constant_column_keeps_a_unit_scale() -> None:
    frame = pd.DataFrame({"flat": [5.0, 5.0, 5.0], "kind": ["a", "b", "a"]})

    preprocessor = TabularPreprocessor.fit(frame, ["flat"], ["kind"])

    assert preprocessor.numeric["flat"].std == 1.0
    assert preprocessor.transform(frame)[0][:, 0].tolist() == [0.0, 0.0, 0.0]


def test_the_range_seen_in_training_is_recorded_and_older_packages_still_load() -> None:
    frame = pd.DataFrame({"age": [18.0, None, 64.0], "empty": [None, None, None], "kind": ["a", "b", "a"]})

    preprocessor = TabularPreprocessor.fit(frame, ["age", "empty"], ["kind"])
    older = preprocessor.to_dict()
    for stats in older["numeric"].values():  # a package written before the range was recorded
        del stats["minimum"], stats["maximum"]

    assert (preprocessor.numeric["age"].minimum, preprocessor.numeric["age"].maximum) == (18.0, 64.0)
    assert preprocessor.numeric["empty"].minimum is None
    assert TabularPreprocessor.from_dict(older).numeric["age"].minimum is None


def test_json_round_trip_gives_an_equal_preprocessor(fitted: TabularPreprocessor, churn: pd.DataFrame) -> None:
    restored = TabularPreprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))

    assert restored == fitted
    for before, after in zip(fitted.transform(churn), restored.transform(churn), strict=True):
        np.testing.assert_array_equal(before, after)


def test_bad_input_columns_raise_data_errors_naming_them(fitted: TabularPreprocessor, churn: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=r"lacks column\(s\) \['age', 'plan'\]"):
        fitted.transform(churn.drop(columns=["age", "plan"]))
    text_in_numbers = churn.head(3).astype({"age": object})
    text_in_numbers.loc[0, "age"] = "forty"
    with pytest.raises(DataError, match="age: e.g. \\['forty'\\]"):
        fitted.transform(text_in_numbers)


@pytest.mark.parametrize(
    ("method", "field"), [("time", "timestamp_column"), ("hash", "id_column")], ids=["time", "hash"]
)
def test_split_method_without_its_column_is_a_config_error(
    tmp_path: Path, churn: pd.DataFrame, pipeline_config, method: str, field: str
) -> None:
    config = config_with(pipeline_config, split={"method": method}, **{field: None})
    write_snapshot(str(tmp_path), churn)

    with pytest.raises(ConfigError, match=f"split.method is '{method}' but dataset 'churn' has no {field}"):
        preprocess.run(str(tmp_path), config)


@pytest.mark.parametrize(
    ("method", "column", "bad_value", "message"),
    [
        (
            "time",
            "churned",
            2,
            r"binary target column 'churned' has 1 value\(s\) outside the declared classes \[0, 1\], e.g. \[2\]",
        ),
        ("time", "event_time", None, "timestamp column 'event_time' has 1 missing or unparseable value"),
        ("hash", "customer_id", None, "id column 'customer_id' has 1 missing value"),
    ],
    ids=["target", "timestamp", "id"],
)
def test_bad_values_in_split_columns_are_data_errors(
    tmp_path: Path, churn: pd.DataFrame, pipeline_config, method: str, column: str, bad_value: Any, message: str
) -> None:
    broken = churn.astype({column: object})
    broken.loc[7, column] = bad_value
    write_snapshot(str(tmp_path), broken)

    with pytest.raises(DataError, match=message):
        preprocess.run(str(tmp_path), config_with(pipeline_config, split={"method": method}))


def test_split_without_both_classes_fails_and_writes_nothing(
    tmp_path: Path, churn: pd.DataFrame, pipeline_config
) -> None:
    root = str(tmp_path)
    latest = churn["event_time"] >= churn["event_time"].quantile(0.85)
    write_snapshot(root, churn.assign(churned=np.where(latest, 0, churn["churned"])))

    with pytest.raises(DataError, match=r"holdout: 450 rows, 450 of 0, 0 of 1"):
        preprocess.run(root, pipeline_config)
    assert storage.list_files(results.step_dir(root, "preprocess")) == []


def test_cli_runs_the_step_and_reports_a_missing_snapshot(tmp_path: Path, churn: pd.DataFrame) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["preprocess", "--run-root", str(tmp_path / "empty")])
    assert missing.exit_code == 2
    assert "no result of step 'snapshot'" in missing.output

    write_snapshot(str(tmp_path / "run"), churn)
    done = runner.invoke(app, ["preprocess", "--run-root", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    assert results.read_result(str(tmp_path / "run"), "preprocess")["rows"]["holdout"] == 450


def test_splits_on_s3_run_root(s3_bucket: str, churn: pd.DataFrame, pipeline_config) -> None:
    root = f"{s3_bucket}/runs/ml_retrain/manual-1"
    write_snapshot(root, churn)

    payload = preprocess.run(root, pipeline_config)

    assert payload["train_uri"] == f"{root}/preprocess/train.parquet"
    assert len(storage.read_parquet(payload["holdout_uri"])) == 450
    assert storage.exists(payload["preprocessor_uri"])
