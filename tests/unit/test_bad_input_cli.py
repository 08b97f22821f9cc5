"""Bad input through the step CLIs: each case exits 2 (a retry cannot help) with one message that names the path,
option or setting and says what to do. The score step's cases are in test_score.py, next to its registered model;
options out of range, a folder as the input file and empty registry names are cases of the bad-input matrix
(tests/bad_input_cases.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_name
from typer.testing import CliRunner

from mlsteps.cli import app
from mlsteps.config import load_pipeline_config
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
