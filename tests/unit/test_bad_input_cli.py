"""Bad input through the step CLIs: each case exits 2 (a retry cannot help) with one message that names the path,
option or setting and says what to do. The score step's cases are in test_score.py, next to its registered model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_name
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import DEFAULT_CONFIG_PATH, load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.snapshots import write_table
from mlsteps.errors import ConfigError

# Every variable boto3's credential chain reads besides the shared files (pointed at nothing in the test).
AWS_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _exit_2(*args: str) -> str:
    """Run ``python -m mlsteps <args>`` in-process, check it exits 2 and return its stderr as one line.

    typer draws its own errors in a box wrapped at the terminal width; the borders and line breaks are dropped.
    """
    outcome = CliRunner().invoke(app, list(args))
    assert outcome.exit_code == 2, outcome.output
    return " ".join(outcome.stderr.replace("│", " ").split())


@pytest.fixture
def churn_csv(tmp_path: Path) -> str:
    uri = str(tmp_path / "in" / "churn.csv")
    write_table(generate_churn(200, seed=1), uri)
    return uri


@pytest.mark.parametrize(
    ("option", "below_the_file"),
    [("--run-root", ""), ("--snapshot-store", ""), ("--snapshot-store", "/nested")],
)
def test_a_file_given_where_a_folder_belongs(tmp_path: Path, churn_csv: str, option: str, below_the_file: str) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    folders = {"--run-root": str(tmp_path / "run"), "--snapshot-store": str(tmp_path / "store")}
    folders[option] = f"{a_file}{below_the_file}"

    message = _exit_2("snapshot", "--input-uri", churn_csv, *(part for item in folders.items() for part in item))

    assert message.startswith(f"snapshot failed: cannot write {a_file}{below_the_file}/"), message
    assert message.endswith(
        f": {a_file} is a file, not a folder; give a folder path (new or existing), or move {a_file} away"
    )


def test_an_s3_input_without_credentials_says_what_to_set(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"{s3_bucket}/in/churn.csv"
    write_table(generate_churn(200, seed=1), uri)  # with the fixture's credentials: the object is there
    for name in AWS_CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # else boto3 asks 169.254.169.254, off this machine
    endpoint = os.environ[storage.S3_ENDPOINT_ENV_VAR]

    done = subprocess.run(
        [sys.executable, "-m", "mlsteps", "snapshot", "--run-root", str(tmp_path / "run"), "--input-uri", uri]
        + ["--snapshot-store", f"{s3_bucket}/snapshots"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"snapshot failed: no S3 credentials to access {uri} on S3_ENDPOINT_URL={endpoint}: set AWS_ACCESS_KEY_ID "
        "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the pod a workload identity (web identity token or "
        "instance profile); for an S3-compatible store (MinIO, Ceph) set S3_ENDPOINT_URL to its URL too"
    ]


def _pipeline_yaml(tmp_path: Path, registry: dict[str, str]) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["dataset"] = str(DEFAULT_CONFIG_PATH.parent / raw["dataset"])
    raw["registry"] |= registry
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_empty_registry_model_name_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    config = _pipeline_yaml(tmp_path, {"model_name": ""})

    message = _exit_2("register", "--run-root", str(tmp_path / "run"), "--config", str(config))

    assert message == (
        f"register failed: {config}: registry.model_name: Value error, '' is not a name MLflow accepts for a "
        "registered model: it must not be blank, contain '/' or ':', be '.' or start with '..'; set it to a name "
        "such as churn-classifier"
    )


@pytest.mark.parametrize("name", [" ", "team/churn", "churn:v2", ".", "..churn"])
def test_model_names_mlflow_refuses_are_refused_at_load(name: str) -> None:
    with pytest.raises(MlflowException):
        _validate_model_name(name)  # the rule we copy, so a change in MLflow shows up here
    with pytest.raises(ConfigError, match=rf"registry\.model_name: Value error, '{name}' is not a name MLflow accepts"):
        load_pipeline_config(overrides={"registry": {"model_name": name}})


@pytest.mark.parametrize("name", ["churn.v2", "Churn Classifier", "c"])
def test_model_names_mlflow_accepts_load(name: str) -> None:
    _validate_model_name(name)
    assert load_pipeline_config(overrides={"registry": {"model_name": name}}).registry.model_name == name


def test_an_empty_experiment_name_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"registry\.experiment_name: String should have at least 1 character"):
        load_pipeline_config(overrides={"registry": {"experiment_name": ""}})


def test_a_folder_given_as_the_input_file(tmp_path: Path, churn_csv: str) -> None:
    folder = str(Path(churn_csv).parent)
    empty = tmp_path / "data.csv"
    empty.mkdir()
    snapshot = ["snapshot", "--run-root", str(tmp_path / "run"), "--snapshot-store", str(tmp_path / "store")]

    assert _exit_2(*snapshot, "--input-uri", folder) == (
        f"snapshot failed: input {folder} is a folder, not a file: give the path of one CSV or Parquet file in it, "
        f"e.g. {churn_csv}"
    )
    assert _exit_2(*snapshot, "--input-uri", str(empty)) == (
        f"snapshot failed: input {empty} is a folder, not a file: give the path of one CSV or Parquet file "
        "(this folder holds none)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "-1"], "Invalid value for '--epochs': Input should be greater than or equal to 1"),
        (["train", "--epochs", "1001"], "Invalid value for '--epochs': Input should be less than or equal to 1000"),
        (["train", "--learning-rate", "0"], "Invalid value for '--learning-rate': 0.0 is not above 0"),
        (
            ["train", "--learning-rate", "2"],
            "Invalid value for '--learning-rate': Input should be less than or equal to 1",
        ),
        (
            ["train", "--batch-size", "0"],
            "Invalid value for '--batch-size': Input should be greater than or equal to 1",
        ),
        (
            ["evaluate", "--max-degradation", "-0.01"],
            "Invalid value for '--max-degradation': Input should be greater than or equal to 0",
        ),
        (
            ["evaluate", "--threshold", "1.5"],
            "evaluation.threshold 1.5 is outside the range of roc_auc [0.0, 1.0]",
        ),
        (
            ["evaluate", "--primary-metric", "rmse"],
            "evaluation.primary_metric: 'rmse' is not a binary metric",
        ),
        (
            ["train", "--model", "forest"],
            "'forest' is not a model family: use one of ['mlp', 'gbdt'] or your own trainer as module:Class",
        ),
        (
            ["train", "--model", "no_such_module:Trainer"],
            "training.model 'no_such_module:Trainer': cannot import module 'no_such_module'",
        ),
        (
            ["drift", "--prediction-store", "p", "--window-hours", "0"],
            "Invalid value for '--window-hours': Input should be greater than or equal to 1",
        ),
        (
            ["drift", "--prediction-store", "p", "--window-hours", "745"],
            "Invalid value for '--window-hours': Input should be less than or equal to 744",
        ),
        (
            ["drift", "--prediction-store", "p", "--min-rows", "0"],
            "Invalid value for '--min-rows': Input should be greater than or equal to 1",
        ),
        (["deploy", "--canary-share", "0"], "Invalid value for '--canary-share': 0.0 is not above 0"),
        (
            ["deploy", "--canary-share", "1.5"],
            "Invalid value for '--canary-share': Input should be less than or equal to 1",
        ),
        (
            ["score", "--input-uri", "in.csv", "--prediction-store", "p", "--batch-rows", "0"],
            "Invalid value for '--batch-rows': Input should be greater than or equal to 1",
        ),
        (
            ["score", "--input-uri", "in.csv", "--prediction-store", "p", "--model-version", "0"],
            "Invalid value for '--model-version': Input should be greater than or equal to 1",
        ),
    ],
)
def test_step_options_out_of_range_name_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    run_root = str(tmp_path / "run")

    assert message in _exit_2(args[0], "--run-root", run_root, *args[1:])
    assert storage.list_files(run_root) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "Invalid value for '--seed': Input should be greater than or equal to 0"),
        (["--days", "0"], "Invalid value for '--days': Input should be greater than or equal to 1"),
        (
            ["--covariate-drift", "-0.5"],
            "Invalid value for '--covariate-drift': Input should be greater than or equal to 0",
        ),
    ],
)
def test_make_dataset_options_out_of_range_name_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    output = str(tmp_path / "churn.csv")

    assert message in _exit_2("make-dataset", "--output-uri", output, *args)
    assert not storage.exists(output)
