"""The init-dataset command: a config inferred from a messy file loads, fits the file, and says what to check."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import DEFAULT_CONFIG_PATH, MAX_MODEL_NAME_LENGTH, DatasetConfig, load_dataset_config
from mlsteps.data import storage, validation
from mlsteps.data.datasets import generate_claims, generate_tiers
from mlsteps.data.snapshots import prepare, read_table, write_table
from mlsteps.errors import ConfigError, DataError
from mlsteps.steps import init_dataset
from orchestration.models import DEFAULT_MODELS_DIR, load_models

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


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config folder like include/config: the built-in churn and tiers models and their dataset configs. The model
    files extend the real defaults by absolute path: a copied pipeline.yaml would be a layer of the models' own, and
    the loader refuses the deployment-wide fields it sets."""
    config = tmp_path / "config"
    (config / "datasets").mkdir(parents=True)
    (config / "models").mkdir()
    for model in ("churn", "tiers"):
        shutil.copy(DEFAULT_CONFIG_PATH.parent / "datasets" / f"{model}.yaml", config / "datasets")
        _copy_model(DEFAULT_MODELS_DIR / f"{model}.yaml", config / "models")
    return config


def _copy_model(source: Path, models: Path) -> None:
    text = source.read_text()
    assert "extends: ../pipeline.yaml\n" in text
    (models / source.name).write_text(text.replace("extends: ../pipeline.yaml\n", f"extends: {DEFAULT_CONFIG_PATH}\n"))


def _data(tmp_path: Path, task: str) -> tuple[str, str]:
    """A data file of the task and its target column."""
    frames = {
        "binary": (messy_frame(), "renewed"),
        "multiclass": (generate_tiers(600, seed=3), "next_tier"),
        "regression": (generate_claims(600, seed=2), "claim_cost"),
    }
    frame, target = frames[task]
    source = str(tmp_path / f"{task}.csv")
    write_table(frame, source)
    return source, target


def _uncommented(text: str) -> str:
    """The model config with its commented examples turned into settings (the header comments stay comments)."""
    head, _, body = text.partition("\nextends:")
    return head + "\nextends:" + re.sub(r"^(\s*)# ", r"\1", body, flags=re.MULTILINE)


@pytest.mark.parametrize(("task", "metric"), [("binary", "roc_auc"), ("multiclass", "roc_auc"), ("regression", "rmse")])
def test_the_model_config_loads_beside_the_other_models_with_its_task_metric_and_a_free_port(
    tmp_path: Path, config_dir: Path, task: str, metric: str
) -> None:
    source, target = _data(tmp_path, task)
    models = config_dir / "models"
    written = models / "new.yaml"

    code, printed = run_cli(
        "--input-uri", source, "--target", target, "--output-uri", str(config_dir / "datasets" / "new.yaml"),
        "--model-config", str(written), "--model-name", "new-model",
    )  # fmt: skip

    assert code == 0, printed
    assert f"wrote {written}: model 'new-model' ({task}, gate {metric}, local port 8083)" in printed
    entries = {entry.name: entry for entry in load_models(models)}
    assert {name: entry.error for name, entry in entries.items()} == {
        "churn-classifier": None,
        "new-model": None,
        "tier-classifier": None,
    }
    pipeline = entries["new-model"].settings.pipeline
    assert (pipeline.dataset.name, pipeline.dataset.target.task) == (task, task)
    assert (pipeline.primary_metric, pipeline.evaluation.primary_metric) == (metric, metric)
    assert pipeline.serving.local.port == 8083  # churn serves on the defaults' 8081, tiers on 8082
    assert pipeline.registry.experiment_name == "new-model-retraining"
    text = written.read_text()
    raw = yaml.safe_load(text)
    assert raw["dataset"] == "../datasets/new.yaml"
    assert (models / raw["extends"]).resolve() == DEFAULT_CONFIG_PATH
    assert re.search(r"\n    port: 8083 +# free in this folder \(taken: 8081, 8082\)\n", text)
    if task == "regression":  # the defaults' bar is a ROC AUC: the gate is relative to the champion's RMSE instead
        evaluation = pipeline.evaluation
        assert (evaluation.threshold, evaluation.degradation, evaluation.max_degradation) == (None, "relative", 0.02)
    else:
        assert pipeline.evaluation.threshold == 0.7 and re.search(r"\n  # threshold: 0\.7 +# check: ", text)

    # The commented examples are settings a model may have: uncommented, the config still loads.
    written.write_text(_uncommented(text))
    entry = next(entry for entry in load_models(models) if entry.config_path == written)
    assert entry.error is None, entry.error
    runtime = entry.settings.runtime
    assert entry.settings.dataset_uri == source
    assert (runtime.retrain_cron, runtime.monitor_cron, runtime.kubernetes.labels["team"]) == (
        "0 3 * * 1",
        "0 * * * *",
        "ml-platform",
    )
    assert entry.settings.pipeline.training.candidate_families == ["mlp", "gbdt"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            ["--model-config", "{models}/payments.yaml", "--model-name", "Payments_Fraud"],
            r"--model-name 'Payments_Fraud' is not a valid model name: lowercase letters, digits and '-', starting "
            rf"and ending with a letter or digit, at most {MAX_MODEL_NAME_LENGTH} characters .*; "
            r"e\.g\. 'payments-fraud'",
            id="invalid-name",
        ),
        pytest.param(
            ["--model-config", "{models}/payments.yaml", "--model-name", "a" * (MAX_MODEL_NAME_LENGTH + 1)],
            rf"--model-name 'a{{{MAX_MODEL_NAME_LENGTH + 1}}}' is not a valid model name: .* "
            rf"model-server-<model>-canary\); e\.g\. 'a{{{MAX_MODEL_NAME_LENGTH}}}'$",
            id="name-too-long",
        ),
        pytest.param(
            ["--model-config", "{models}/payments.yaml", "--model-name", "tier-classifier"],
            r"--model-name 'tier-classifier' is already registry\.model_name of {models}/tiers\.yaml: choose another "
            r"name .*or pass that file as --model-config with --force to replace it",
            id="name-taken",
        ),
        pytest.param(
            ["--model-config", "{models}/churn.yaml", "--model-name", "payments-fraud"],
            r"--model-config {models}/churn\.yaml exists: pass --force to overwrite it, or choose another path",
            id="model-config-exists",
        ),
        pytest.param(
            ["--model-name", "payments-fraud"],
            r"--model-name needs --model-config: pass both to write a model config",
            id="name-alone",
        ),
        pytest.param(
            ["--model-config", "{models}/payments.yaml"],
            r"--model-config needs --model-name: pass both",
            id="path-alone",
        ),
        pytest.param(
            ["--model-config", "s3://bucket/models/payments.yaml", "--model-name", "payments-fraud"],
            r"--model-config s3://bucket/models/payments\.yaml: must be a local path; the DAG files read model "
            r"configs from a local folder",
            id="model-config-on-s3",
        ),
    ],
)
def test_a_model_config_that_would_not_load_is_refused_before_anything_is_written(
    messy_csv: str, config_dir: Path, options: list[str], message: str
) -> None:
    models = config_dir / "models"
    before = {path.name: path.read_text() for path in models.iterdir()}
    output = config_dir / "datasets" / "payments.yaml"

    code, printed = run_cli(
        "--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(output),
        *(option.format(models=models) for option in options),
    )  # fmt: skip

    assert code == 2
    assert printed.startswith("init-dataset failed: ")
    assert re.search(message.replace("{models}", re.escape(str(models))), printed.strip()), printed
    assert not output.exists()
    assert {path.name: path.read_text() for path in models.iterdir()} == before


def test_every_problem_is_named_at_once(messy_csv: str, config_dir: Path) -> None:
    output = config_dir / "datasets" / "churn.yaml"
    tiers = config_dir / "models" / "tiers.yaml"

    code, printed = run_cli(
        "--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(output),
        "--model-config", str(tiers), "--model-name", "churn-classifier",
    )  # fmt: skip

    assert code == 2
    assert printed.startswith("init-dataset failed: nothing written:\n- ")
    problems = printed.strip().split("\n- ")[1:]
    assert [problem.split(" ", 2)[:2] for problem in problems] == [
        ["--output-uri", str(output)],
        ["--model-config", str(tiers)],
        ["--model-name", "'churn-classifier'"],
    ]


def test_force_replaces_a_model_config_whose_own_name_and_port_then_do_not_count(
    messy_csv: str, config_dir: Path
) -> None:
    tiers = config_dir / "models" / "tiers.yaml"
    options = ["--input-uri", messy_csv, "--target", "renewed", "--output-uri", str(config_dir / "datasets" / "o.yaml")]
    options += ["--model-config", str(tiers), "--model-name", "tier-classifier", "--force"]

    code, printed = run_cli(*options)

    assert code == 0, printed
    entries = {entry.name: entry.settings for entry in load_models(tiers.parent)}
    assert entries["tier-classifier"].pipeline.dataset.name == "customer_orders"
    assert entries["tier-classifier"].pipeline.serving.local.port == 8082  # its old port, free once it is replaced
    code, printed = run_cli(*options)
    assert code == 0 and "local port 8082" in printed, printed


def test_the_port_skips_every_port_the_folder_claims_and_unreadable_files_are_named(config_dir: Path) -> None:
    models = config_dir / "models"
    shutil.copy(DEFAULT_CONFIG_PATH.parent / "datasets" / "claims.yaml", config_dir / "datasets")
    _copy_model(DEFAULT_CONFIG_PATH.parent / "examples" / "claims.yaml", models)
    (models / "tiers-fast.yaml").write_text("extends: tiers.yaml\nregistry: {model_name: tier-fast}\n")
    (models / "broken.yaml").write_text("registry: {model_name: [\n")
    new = str(models / "new.yaml")

    plan, problems = init_dataset.plan_model(new, "new-model", "datasets/new.yaml", force=False)

    assert problems == []
    # churn: the defaults' 8081; tiers and tiers-fast (through extends): 8082; the regression example: 8083
    assert (plan.port, plan.taken_ports, plan.unread) == (8084, (8081, 8082, 8083), (str(models / "broken.yaml"),))
    plan, problems = init_dataset.plan_model(new, "tier-fast", "datasets/new.yaml", force=False)
    assert plan is None and problems == [
        f"--model-name 'tier-fast' is already registry.model_name of {models / 'tiers-fast.yaml'}: choose another "
        "name (each model of a folder has its own), or pass that file as --model-config with --force to replace it"
    ]


def test_a_model_config_needs_its_dataset_config_on_a_local_path(messy_csv: str, config_dir: Path) -> None:
    output = "s3://configs/datasets/payments.yaml"  # no S3 here: refused before anything asks S3

    code, printed = run_cli(
        "--input-uri", messy_csv, "--target", "renewed", "--output-uri", output,
        "--model-config", str(config_dir / "models" / "payments.yaml"), "--model-name", "payments-fraud",
    )  # fmt: skip

    assert code == 2
    assert f"--output-uri {output}: a model config names its dataset config by a path relative to itself" in printed
    assert not (config_dir / "models" / "payments.yaml").exists()


def test_in_the_project_layout_the_paths_read_like_the_built_in_models(messy_csv: str) -> None:
    plan, problems = init_dataset.plan_model(
        str(DEFAULT_MODELS_DIR / "payments.yaml"), "payments-fraud", "unused.yaml", force=False
    )
    dataset = DEFAULT_CONFIG_PATH.parent / "datasets" / "payments.yaml"

    text = init_dataset.render_model_config(plan, init_dataset.infer(messy_csv, "renewed"), dataset)

    assert problems == [] and plan.port not in plan.taken_ports
    assert "\nextends: ../pipeline.yaml\ndataset: ../datasets/payments.yaml\n" in text
