"""The init-dataset command: a config inferred from a messy file loads, fits the file, and says what to check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import DatasetConfig, load_dataset_config
from mlsteps.data import storage, validation
from mlsteps.data.datasets import generate_claims
from mlsteps.data.snapshots import prepare, read_table, write_table
from mlsteps.errors import ConfigError, DataError
from mlsteps.steps import init_dataset

ROWS = 300


def messy_frame() -> pd.DataFrame:
    """A file as people export them: ids, ISO and local dates as text, booleans with gaps, numbers with symbols,
    free text, a constant and an empty column, and a yes/no target."""
    rng = np.random.default_rng(7)
    age = rng.integers(18, 80, ROWS).astype(float)
    age[rng.random(ROWS) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "order_id": [f"ord-{i:05d}" for i in range(ROWS)],
            "created_at": pd.date_range("2025-01-01", periods=ROWS, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "signup_date": pd.date_range("2024-01-01", periods=ROWS, freq="D").strftime("%m/%d/%Y"),
            "amount": np.round(rng.uniform(5, 105, ROWS), 2),
            "balance": np.round(rng.uniform(-50, 150, ROWS), 2),
            "price": [f"${value:,}" for value in rng.integers(100, 5000, ROWS)],
            "discount": [f"{value}%" for value in rng.integers(0, 5, ROWS)],
            "is_member": np.where(rng.random(ROWS) < 0.05, None, np.where(rng.random(ROWS) < 0.5, "true", "false")),
            "country": rng.choice(["DE", "FR", "NO", "US"], ROWS),
            "notes": [f"called about order {rng.integers(10**6)} on day {i}" for i in range(ROWS)],
            "plan_version": "v2",
            "legacy_code": None,
            "age": age,
            "renewed": rng.choice(["no", "yes"], ROWS),
        }
    )


@pytest.fixture
def messy_csv(tmp_path: Path) -> str:
    uri = str(tmp_path / "Customer Orders.csv")
    write_table(messy_frame(), uri)
    return uri


def run_cli(*args: str) -> tuple[int, str]:
    outcome = CliRunner().invoke(app, ["init-dataset", *args])
    return outcome.exit_code, outcome.output


def features_of(dataset: DatasetConfig) -> dict[str, dict]:
    return {spec.name: spec.model_dump(exclude_defaults=True, exclude={"name"}) for spec in dataset.features}


def test_a_messy_csv_gives_a_config_that_loads_and_that_the_file_passes(messy_csv: str, tmp_path: Path) -> None:
    output = str(tmp_path / "orders.yaml")

    code, printed = run_cli("--input-uri", messy_csv, "--target", "renewed", "--output-uri", output)

    assert code == 0, printed
    dataset = load_dataset_config(output)
    assert dataset.name == "customer_orders"
    assert (dataset.target.task, dataset.target.classes) == ("binary", ["no", "yes"])
    assert (dataset.id_column, dataset.timestamp_column) == ("order_id", "created_at")
    features = features_of(dataset)
    assert features == {
        "amount": {"type": "numeric", "min": 0, "max": features["amount"]["max"]},
        "balance": {"type": "numeric", "min": features["balance"]["min"], "max": features["balance"]["max"]},
        "price": {"type": "categorical"},
        "discount": {"type": "categorical", "categories": ["0%", "1%", "2%", "3%", "4%"]},
        "is_member": {
            "type": "categorical",
            "categories": ["false", "true"],
            "max_null_fraction": features["is_member"]["max_null_fraction"],
        },
        "country": {"type": "categorical", "categories": ["DE", "FR", "NO", "US"]},
        "age": {"type": "numeric", "min": 11, "max": 86, "max_null_fraction": features["age"]["max_null_fraction"]},
    }
    frame = messy_frame()
    assert (frame["age"].min(), frame["age"].max()) == (18, 79)  # 18 - 6.1 rounds down to 11, 79 + 6.1 up to 86
    # Ranges widen the observed span by a tenth; a column with no negative values keeps its floor at 0.
    assert 105 <= features["amount"]["max"] <= 105 + 0.1 * 100 + 1
    assert features["balance"]["min"] <= frame["balance"].min() - 0.09 * 200 < 0
    assert frame["is_member"].isna().mean() < features["is_member"]["max_null_fraction"] <= 0.15
    assert frame["age"].isna().mean() < features["age"]["max_null_fraction"] <= 0.2
    assert dataset.slice_columns == ["discount", "is_member"]
    assert "wrote " + output in printed and "binary target 'renewed', 7 features (3 numeric, 4 categorical)" in printed

    as_snapshot = prepare(read_table(messy_csv, text_columns=dataset.categorical_features), dataset, messy_csv)
    report = validation.validate_frame(as_snapshot, dataset)
    assert report.success, [failure.line() for failure in report.failures]


def test_the_comments_say_what_to_check_and_why_columns_are_left_out(messy_csv: str, tmp_path: Path) -> None:
    output = tmp_path / "orders.yaml"
    run_cli("--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(output))
    text = output.read_text()

    assert "# check: the positive class is the second, 'yes'; swap the two if it is the other" in text
    assert re.search(r"# check: numbers written with symbols, e\.g\. '\$[\d,]+'.*kept categorical", text)
    assert "# booleans: categorical, spelled as the snapshot reads them" in text
    prices = messy_frame()["price"].nunique()
    assert f"# {prices} distinct values, more than --max-categories 50: no category list" in text
    left_out = dict(re.findall(r"^# (\w+): (.*)$", text.split("# Left out (not features):")[1], re.MULTILINE))
    assert set(left_out) == {"signup_date", "notes", "plan_version", "legacy_code"}
    assert left_out["signup_date"].startswith("dates, but not ISO 8601")
    assert left_out["notes"].startswith("free text or an id (every value differs)")
    assert left_out["plan_version"] == "constant: 'v2' on every non-null row"
    assert left_out["legacy_code"] == "every value is null"


def test_parquet_types_booleans_date_times_and_a_multiclass_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    source = str(tmp_path / "visits.parquet")
    frame = pd.DataFrame(
        {
            "visitId": np.arange(200),
            "visited": pd.date_range("2025-03-01", periods=200, freq="min", tz="UTC"),
            "returning": rng.random(200) < 0.4,
            "pages": rng.integers(1, 40, 200),
            "rating": rng.choice([1, 2, 3], 200),
        }
    )
    write_table(frame, source)

    inferred = init_dataset.infer(source, "rating")

    config = inferred.config
    assert config["target"] == {"name": "rating", "task": "multiclass", "classes": [1, 2, 3]}
    assert (config["id_column"], config["timestamp_column"]) == ("visitId", "visited")
    assert config["features"] == [
        {"name": "returning", "type": "categorical", "categories": ["False", "True"]},
        {"name": "pages", "type": "numeric", "min": 0, "max": 43},
    ]
    assert any("whole numbers taken as classes" in note for note in inferred.notes["target"])
    written = tmp_path / "visits.yaml"
    written.write_text(init_dataset.render(inferred))
    assert load_dataset_config(str(written)) == DatasetConfig.model_validate(config)


def test_a_numeric_target_with_many_values_is_regression_with_a_range(tmp_path: Path) -> None:
    source = str(tmp_path / "claims.parquet")
    claims = generate_claims(600, seed=2)
    write_table(claims, source)

    inferred = init_dataset.infer(source, "claim_cost", name="my-claims", max_categories=4)

    target = inferred.config["target"]
    assert (target["task"], target["min"]) == ("regression", 0)
    assert target["max"] >= claims["claim_cost"].max() * 1.1 - 1
    assert inferred.config["name"] == "my-claims"
    specs = {spec["name"]: spec for spec in inferred.config["features"]}
    assert "categories" not in specs["claim_type"]  # 5 types, above --max-categories 4
    assert specs["police_report"]["categories"] == ["no", "yes"]
    assert inferred.config["slice_columns"] == ["report_channel", "police_report"]


def test_an_explicit_task_wins_when_the_values_allow_it(tmp_path: Path) -> None:
    source = str(tmp_path / "scores.csv")
    write_table(pd.DataFrame({"x": np.arange(150) % 7, "score": np.arange(150) % 3}), source)

    assert init_dataset.infer(source, "score").config["target"]["task"] == "multiclass"
    regression = init_dataset.infer(source, "score", task="regression").config["target"]
    assert regression == {"name": "score", "task": "regression", "min": 0, "max": 3}


@pytest.mark.parametrize(
    ("target", "values", "options", "error", "message"),
    [
        pytest.param(
            "label",
            None,
            [],
            ConfigError,
            r"--target 'label' is not a column of .*; its columns are \['x', 'y'\]",
            id="missing",
        ),
        pytest.param("y", ["a"] * 150, [], DataError, r"target column 'y' is constant \('a' on every", id="constant"),
        pytest.param("y", [None] * 150, [], DataError, r"target column 'y' has no values \(all 150 rows", id="null"),
        pytest.param(
            "y",
            [f"the customer wrote {i}" for i in range(150)],
            [],
            DataError,
            r"target column 'y' is text with 150 distinct values .*map it to at most 50 classes",
            id="free-text",
        ),
        pytest.param(
            "y",
            [f"${i},000" for i in range(150)],
            [],
            DataError,
            r"is text with 150 distinct values .*strip the symbols at the source",
            id="numbers-with-symbols",
        ),
        pytest.param(
            "y",
            [i % 3 for i in range(150)],
            ["--task", "binary"],
            ConfigError,
            r"--task binary needs exactly two distinct target values; .* has 3",
            id="binary-with-three",
        ),
        pytest.param(
            "y",
            ["a", "b"] * 75,
            ["--task", "regression"],
            ConfigError,
            r"--task regression needs numbers; .*target column 'y' holds str values \(e\.g\. 'a', 'b'\)",
            id="regression-on-text",
        ),
    ],
)
def test_unusable_targets_are_refused_with_exit_2(
    tmp_path: Path, target: str, values: list | None, options: list[str], error: type, message: str
) -> None:
    source = str(tmp_path / "data.csv")
    write_table(pd.DataFrame({"x": np.arange(150.0), "y": values if values is not None else 1}), source)
    output = tmp_path / "out.yaml"

    code, printed = run_cli("--input-uri", source, "--target", target, "--output-uri", str(output), *options)

    assert code == 2
    assert printed.startswith("init-dataset failed: ")
    assert re.search(message, printed.replace("\n", " ")), printed
    assert not output.exists()
    with pytest.raises(error):
        init_dataset.infer(source, target, task=options[1] if options else "auto")


def test_an_existing_output_is_kept_unless_forced(messy_csv: str, tmp_path: Path) -> None:
    output = tmp_path / "orders.yaml"
    output.write_text("name: mine\n")

    code, printed = run_cli("--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(output))
    assert code == 2
    assert f"--output-uri {output} exists: pass --force to overwrite it" in printed
    assert output.read_text() == "name: mine\n"

    code, printed = run_cli("--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(output), "--force")
    assert code == 0, printed
    assert load_dataset_config(str(output)).target.name == "renewed"
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


def test_a_file_without_usable_features_is_refused(tmp_path: Path) -> None:
    source = str(tmp_path / "thin.csv")
    write_table(pd.DataFrame({"row_id": range(120), "const": 1, "y": [0, 1] * 60}), source)

    with pytest.raises(DataError, match=r"no column can be a feature besides the target 'y': const: constant"):
        init_dataset.infer(source, "y")


def test_reads_and_writes_s3(s3_bucket: str, tmp_path: Path) -> None:
    source, output = f"{s3_bucket}/in/orders.csv", f"{s3_bucket}/config/orders.yaml"
    write_table(messy_frame(), source)

    code, printed = run_cli("--input-uri", source, "--target", "renewed", "--output-uri", output)

    assert code == 0, printed
    assert load_dataset_config(output).id_column == "order_id"
    assert storage.exists(output)
