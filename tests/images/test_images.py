"""The images built for real (buildah on a local Debian base) and run as their pods run them: read-only root, /tmp
writable, UID/GID 10001, no network but loopback. The steps image runs the data steps, the train image trains one
batch, gradient-boosted trees and the worked example's trainer, the steps image then evaluates and registers the model
that the train image logged, and the serving image serves a real bundle, from a folder and from an MLflow server
behind the registry alias: its own health check passes, both protocols answer with the bundle's expected
probabilities, and it writes its prediction log. The Airflow image is not built here: conftest.BUILT_IN_TESTS says
why and how to build it by hand."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow_server import mlflow_server_command, running_mlflow_server

from mlsteps.evaluation.tasks import output_frame
from mlsteps.results import candidate_step, read_result

from .containers import (
    REPO_ROOT,
    RUN_AS,
    BuiltImages,
    ReadOnlyContainer,
    image_config,
    normalise,
    read_only_container,
    requirement_pins,
)

pytestmark = pytest.mark.images

MLFLOW = {"MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db"}  # in the shared /tmp, so both images see one registry
RUN_ROOT = "/tmp/runs/smoke"
# Packaging tools: checked like any other package where constraints.txt pins them (`make constraints` runs
# `pip freeze --all`, which keeps setuptools, the one of them torch needs).
PIP_FREEZE_LEAVES_OUT = {"pip", "setuptools", "wheel"}
SERVE_SMOKE = Path(__file__).with_name("serve_smoke.py")  # runs inside the serving image
SERVING_STACK = "onnxruntime, fastapi, uvicorn, uvloop, httptools, pandas, pyarrow, boto3, yaml, pydantic"
# The train image's requirements as CI builds it (TORCH_VARIANT=cpu), and what only it has.
TRAIN_REQUIREMENTS = ("steps.txt", "train.txt", "train-cpu.txt")
TRAIN_IMAGE_ONLY = {"torch", "xgboost", "xgboost-cpu", "onnx", "onnxscript", "onnxmltools", "skl2onnx"}
EXAMPLE_TRAINER = "examples.trainers.sklearn_gbt:GradientBoostingTrainer"  # examples/, copied into the train image
# The MLflow server beside the model server in its pod: on the pod's loopback, so any port.
POD_MLFLOW_PORT = 5000
# Registers the fake risk-score model with its serving bundle through the MLflow server at MLFLOW_TRACKING_URI, points
# the alias champion at it, downloads the bundle (its smoke rows and expected outputs) into argv[1] and prints where.
_REGISTER = """
import sys
from pathlib import Path

from fake_models import MODEL_NAME, register_with_bundle
from mlsteps import tracking
from mlsteps.serving_bundle import fetch_bundle

version = register_with_bundle()
client = tracking.client()
client.set_registered_model_alias(MODEL_NAME, "champion", str(version))
print(fetch_bundle(client, MODEL_NAME, version, Path(sys.argv[1])).folder)
"""


def _mlsteps(step: str, *args: str) -> list[str]:
    return ["python", "-m", "mlsteps", step, *args]


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The /tmp of every container of this module: the run folder and MLflow pass from one image to the next."""
    return tmp_path_factory.mktemp("pod-tmp")


@pytest.fixture(scope="module")
def containers(
    built: BuiltImages, buildah: Any, shared_tmp: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ReadOnlyContainer]]:
    """A mounted container of each image; steps and train share their /tmp, as the tasks of a run share storage."""
    tmps = {"steps": shared_tmp, "train": shared_tmp, "serve": tmp_path_factory.mktemp("serve-tmp")}
    with ExitStack() as stack:
        yield {
            image: stack.enter_context(read_only_container(buildah, built.references[image], tmp))
            for image, tmp in tmps.items()
        }


@pytest.fixture(scope="module")
def prepared_run(containers: dict[str, ReadOnlyContainer], shared_tmp: Path) -> Path:
    """make-dataset, snapshot, validate and preprocess in the steps image; the run root as the host sees it."""
    steps = containers["steps"]
    steps.check(_mlsteps("make-dataset", "--output-uri", "/tmp/data/churn.csv", "--rows", "2000", "--seed", "3"))
    snapshot_from = ["--input-uri", "/tmp/data/churn.csv", "--snapshot-store", "/tmp/snapshots"]
    steps.check(_mlsteps("snapshot", "--run-root", RUN_ROOT, *snapshot_from))
    steps.check(_mlsteps("validate", "--run-root", RUN_ROOT))
    steps.check(_mlsteps("preprocess", "--run-root", RUN_ROOT))
    return shared_tmp / RUN_ROOT.removeprefix("/tmp/")


@pytest.fixture(scope="module")
def trained_run(containers: dict[str, ReadOnlyContainer], prepared_run: Path) -> Path:
    """The network, one epoch of one batch (2,000 rows, batch size 4,096), in the train image, logged to MLflow in
    /tmp."""
    containers["train"].check(
        _mlsteps("train", "--run-root", RUN_ROOT, "--model", "mlp", "--epochs", "1", "--batch-size", "4096"), MLFLOW
    )
    return prepared_run


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder (MLflow's SQLite store and artifacts) whose model has a version with its serving bundle
    behind the alias champion, registered through the host's MLflow server; the bundle also downloaded to
    ``bundle/``."""
    folder = tmp_path_factory.mktemp("registry")
    with running_mlflow_server(folder) as url:
        environment = {
            **os.environ,
            "MLFLOW_TRACKING_URI": url,
            "PYTHONPATH": os.pathsep.join(str(REPO_ROOT / part) for part in ("include", "tests")),
        }
        registered = subprocess.run(
            [sys.executable, "-c", _REGISTER, str(folder / "download")], env=environment, capture_output=True, text=True
        )
        assert registered.returncode == 0, registered.stderr[-4000:]
    shutil.move(registered.stdout.strip().splitlines()[-1], folder / "bundle")
    return folder


def test_build_prints_each_images_size_largest_layers_and_packages(built: BuiltImages) -> None:
    for image, reference in built.references.items():
        report = built.report(image)
        assert report["reference"] == reference
        assert report["size_bytes"] == sum(layer["bytes"] for layer in report["layers"])
        assert re.search(rf"^{image}: {re.escape(reference)}  [\d.]+ [kMG]?B  built in \d+ s$", built.log, re.M)
        largest = report["packages"][0]
        assert re.search(rf"^  package +[\d.]+ [kMG]?B  {re.escape(largest['name'])} ", built.log, re.M)
    # torch is the train image's largest package; the steps and serving images have neither torch nor XGBoost.
    assert built.report("train")["packages"][0]["name"] == "torch"
    installed = {image: {normalise(p["name"]) for p in built.report(image)["packages"]} for image in built.references}
    assert {"torch", "xgboost-cpu", "onnx", "onnxscript", "onnxmltools", "skl2onnx"} <= installed["train"]
    assert not TRAIN_IMAGE_ONLY & (installed["steps"] | installed["serve"])
    # The step images are clients of the MLflow server through mlflow-skinny, never the server; the serving image
    # reads the registry over MLflow's REST API and has no MLflow package at all.
    assert all("mlflow-skinny" in installed[image] and "mlflow" not in installed[image] for image in ("steps", "train"))
    assert not {"mlflow", "mlflow-skinny", "databricks-sdk", "gitpython", "opentelemetry-sdk"} & installed["serve"]
    sizes = {image: built.report(image)["size_bytes"] for image in built.references}
    assert sizes["serve"] < sizes["steps"] < sizes["train"]


def test_images_carry_the_pod_user_the_oci_labels_and_a_read_only_friendly_environment(
    built: BuiltImages, buildah: Any, build_script: Any
) -> None:
    for image, reference in built.references.items():
        config = image_config(buildah, reference)
        assert config["User"] == RUN_AS, image
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == build_script.tag_of(reference)
        assert labels["org.opencontainers.image.revision"] == build_script.source_revision()
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert labels["org.opencontainers.image.title"] == reference.rsplit("/", 1)[1].split(":")[0]
        environment = dict(entry.split("=", 1) for entry in config["Env"])
        assert environment["HOME"] == "/tmp"
        assert environment["XDG_CACHE_HOME"].startswith("/tmp/")
        assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
        assert environment["PATH"].startswith("/opt/venv/bin:")
    train = image_config(buildah, built.references["train"])["Labels"]["org.opencontainers.image.description"]
    assert "(torch cpu build)" in train


def test_only_the_serving_image_has_a_health_check_and_it_calls_the_liveness_endpoint(
    built: BuiltImages, buildah: Any
) -> None:
    serve = image_config(buildah, built.references["serve"])
    check = serve["Healthcheck"]["Test"]
    assert check[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8080/v2/health/live" in check[3]
    assert serve["ExposedPorts"] == {"8080/tcp": {}}
    assert serve["Cmd"] == ["python", "-m", "mlsteps.serve"]
    for image in ("steps", "train"):
        assert image_config(buildah, built.references[image])["Healthcheck"]["Test"] == ["NONE"]


def test_the_runtime_images_hold_the_venv_and_the_code_and_no_pip_compiler_cache_or_secret(
    containers: dict[str, ReadOnlyContainer],
) -> None:
    for container in containers.values():
        root = container.root
        assert (root / "opt/venv/bin/python").exists() and (root / "opt/app/mlsteps/__init__.py").is_file()
        assert (root / "opt/app/config/pipeline.yaml").is_file()
        left_over = ["opt/venv/bin/pip", "usr/bin/gcc", "usr/bin/cc", "root/.cache", "run/secrets", "tmp/requirements"]
        assert [path for path in left_over if (root / path).exists()] == []
        assert list((root / "tmp").iterdir()) == []
        assert not list((root / "opt").rglob("*.whl"))
    # The steps and serving images leave out the packages' own test suites.
    for image in ("steps", "serve"):
        venv = containers[image].root / "opt/venv"
        assert [path for path in venv.rglob("tests") if path.is_dir()] == [], image


def test_every_package_in_an_image_is_pinned_by_its_requirements(built: BuiltImages) -> None:
    requirements = REPO_ROOT / "requirements"
    pins = {
        "steps": requirement_pins(REPO_ROOT / "constraints.txt", requirements / "steps.txt"),
        "train": requirement_pins(REPO_ROOT / "constraints.txt", *(requirements / name for name in TRAIN_REQUIREMENTS)),
        "serve": requirement_pins(REPO_ROOT / "constraints.txt", requirements / "serve.txt"),
    }
    for image, pinned in pins.items():
        installed = {normalise(package["name"]): package["version"] for package in built.report(image)["packages"]}
        # torch 2.13.0+cpu satisfies the pin torch==2.13.0: a local version label names the build.
        unpinned = {name for name, version in installed.items() if pinned.get(name) != version.split("+")[0]}
        assert unpinned - (PIP_FREEZE_LEAVES_OUT - set(pinned)) == set(), image


def test_each_sbom_lists_exactly_its_images_python_environment(built: BuiltImages) -> None:
    for image, reference in built.references.items():
        sbom = built.sbom(image)
        assert sbom["bomFormat"] == "CycloneDX"
        name, _, version = reference.rpartition(":")
        component = sbom["metadata"]["component"]
        assert (component["type"], component["name"], component["version"]) == ("container", name, version)
        components = {(component["name"], component["version"]) for component in sbom["components"]}
        packages = {(package["name"], package["version"]) for package in built.report(image)["packages"]}
        assert components == packages, image
        assert all(component["purl"].startswith("pkg:pypi/") for component in sbom["components"])
    for image in ("steps", "serve"):
        assert not TRAIN_IMAGE_ONLY & {normalise(component["name"]) for component in built.sbom(image)["components"]}


def test_steps_image_runs_the_data_steps_read_only_as_the_pod_user(
    containers: dict[str, ReadOnlyContainer], prepared_run: Path
) -> None:
    steps = containers["steps"]
    assert steps.check(["id", "-u"]).strip() == RUN_AS.split(":")[0]
    refused = steps.run(["python", "-c", "open('/opt/app/written', 'w')"])
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert read_result(str(prepared_run), "snapshot")["rows"] == 2000
    assert read_result(str(prepared_run), "validate")["success"] is True
    assert set(read_result(str(prepared_run), "preprocess")["rows"]) == {"train", "validation", "holdout"}


def test_train_image_imports_the_cpu_builds_of_torch_and_xgboost_and_trains_one_batch(
    containers: dict[str, ReadOnlyContainer], trained_run: Path, shared_tmp: Path
) -> None:
    probe = "import torch, xgboost; print(torch.__version__, torch.version.cuda, xgboost.__version__)"
    torch_version, cuda, xgboost_version = containers["train"].check(["python", "-c", probe]).split()
    assert torch_version.startswith("2.13.0") and cuda == "None"  # CI builds TORCH_VARIANT=cpu
    builds = "import xgboost; print(xgboost.build_info()['USE_CUDA'])"
    assert xgboost_version == "3.2.0" and containers["train"].check(["python", "-c", builds]).strip() == "False"
    result = read_result(str(trained_run), candidate_step("mlp"))
    assert result["metrics"]["epochs_run"] == 1
    assert result["model_uri"].startswith("models:/")
    # The logged model asks for the MLflow the image has: mlflow-skinny, at the pinned version.
    model_id = result["model_uri"].removeprefix("models:/")
    requirements = next(shared_tmp.rglob(f"models/{model_id}/artifacts/requirements.txt")).read_text().split()
    skinny = requirement_pins(REPO_ROOT / "constraints.txt")["mlflow-skinny"]
    assert f"mlflow-skinny=={skinny}" in requirements
    assert not [line for line in requirements if line.startswith("mlflow==")]


def test_steps_image_evaluates_and_registers_the_model_the_train_image_logged(
    containers: dict[str, ReadOnlyContainer], trained_run: Path
) -> None:
    steps = containers["steps"]
    steps.check(_mlsteps("evaluate", "--run-root", RUN_ROOT), MLFLOW)
    steps.check(_mlsteps("register", "--run-root", RUN_ROOT), MLFLOW)
    trained = read_result(str(trained_run), candidate_step("mlp"))
    assert read_result(str(trained_run), "evaluate")["challenger"]["model_uri"] == trained["model_uri"]
    registered = read_result(str(trained_run), "register")
    assert (registered["version"], registered["aliases"]) == (1, ["challenger"])


def test_train_image_trains_and_exports_gradient_boosted_trees(
    containers: dict[str, ReadOnlyContainer], trained_run: Path, shared_tmp: Path
) -> None:
    # After evaluate and register: a second family in the same run folder is another candidate, not the challenger.
    containers["train"].check(_mlsteps("train", "--run-root", RUN_ROOT, "--model", "gbdt"), MLFLOW)
    result = read_result(str(trained_run), candidate_step("gbdt"))
    assert result["family"] == "gbdt" and result["model_uri"].startswith("models:/")
    # The booster itself, beside its ONNX export, in the run's native_model/ artifacts.
    assert list(shared_tmp.rglob(f"{result['mlflow_run_id']}/artifacts/native_model/xgboost_model.json"))


def test_train_image_trains_the_worked_example_trainer(
    containers: dict[str, ReadOnlyContainer], trained_run: Path
) -> None:
    containers["train"].check(_mlsteps("train", "--run-root", RUN_ROOT, "--model", EXAMPLE_TRAINER), MLFLOW)
    result = read_result(str(trained_run), candidate_step(EXAMPLE_TRAINER))
    assert result["family"] == EXAMPLE_TRAINER and result["model_uri"].startswith("models:/")
    check = result["export_check"]
    assert check["rows"] > 0 and check["max_abs_difference"] <= check["tolerance"]


def test_serving_image_imports_its_stack_without_the_training_one(containers: dict[str, ReadOnlyContainer]) -> None:
    serve = containers["serve"]
    serve.check(["python", "-c", f"import {SERVING_STACK}; import mlsteps.config, mlsteps.data.storage"])
    training = ["torch", "great_expectations", "sklearn", "scipy", "pip", "mlflow"]
    present = serve.check(
        ["python", "-c", f"import importlib.util as u; print(*[m for m in {training} if u.find_spec(m)])"]
    )
    assert present.strip() == ""


def test_serving_health_check_fails_while_no_server_listens(containers: dict[str, ReadOnlyContainer]) -> None:
    serve = containers["serve"]
    # A real check, not one that always passes: without a server in the container it fails.
    check = serve.config["Healthcheck"]["Test"][1:]
    failed = serve.run(check)
    assert failed.returncode == 1 and "URLError" in failed.stderr


def _serve_smoke(serve: ReadOnlyContainer, bundle: Path, *server_options: str, **run: Any) -> dict[str, Any]:
    """Run serve_smoke.py in the serving image on a copy of ``bundle`` in its /tmp; what came back, checked to hold
    the answers of a healthy server: its own health check passed and both protocols answered with the predict
    contract of the bundle's task on the model outputs that registration recorded."""
    shutil.copytree(bundle, serve.tmp / "bundle")
    shutil.copy(SERVE_SMOKE, serve.tmp / SERVE_SMOKE.name)
    health_check = json.dumps(serve.config["Healthcheck"]["Test"][1:])
    command = ["python", f"/tmp/{SERVE_SMOKE.name}", "/tmp/bundle", health_check, *server_options]
    outcome = json.loads(serve.check(command, **run))
    log = outcome["server_log"]
    assert "failure" not in outcome, f"{outcome['failure']}\n{log}"
    assert outcome["health_check"] == {"returncode": 0, "stderr": ""}, log

    manifest = json.loads((bundle / "manifest.json").read_text())
    smoke = json.loads((bundle / "smoke.json").read_text())
    expected = output_frame(manifest["task"], manifest["classes"], np.asarray(smoke["outputs"]))
    expected_probability = pytest.approx(expected["probability"].tolist(), abs=1e-4)
    expected_prediction = expected["prediction"].tolist()
    version = str(manifest["model_version"])
    v2, invocations = outcome["v2"], outcome["invocations"]
    assert (v2["status"], v2["model_version"]) == (200, version), f"{v2}\n{log}"
    outputs = {output["name"]: output for output in v2["body"]["outputs"]}
    assert outputs["probability"]["datatype"] == "FP64" and outputs["prediction"]["datatype"] == "INT64"
    assert outputs["probability"]["data"] == expected_probability
    assert outputs["prediction"]["data"] == expected_prediction
    assert (invocations["status"], invocations["model_version"]) == (200, version), f"{invocations}\n{log}"
    predictions = invocations["body"]["predictions"]
    assert [row["probability"] for row in predictions] == expected_probability
    assert [row["prediction"] for row in predictions] == expected_prediction
    return outcome


def test_serving_image_serves_a_bundle_read_only_and_passes_its_own_health_check(
    containers: dict[str, ReadOnlyContainer], serving_bundle_dir: Path
) -> None:
    _serve_smoke(containers["serve"], serving_bundle_dir)


def test_serving_image_serves_the_version_behind_the_registry_alias_and_logs_its_predictions(
    built: BuiltImages, buildah: Any, registry: Path, tmp_path: Path
) -> None:
    # The model server as in its Deployment: it asks the MLflow server for the version behind champion and downloads
    # its bundle over HTTP (MLflow's REST API, no MLflow package), and appends every scored row to the prediction log.
    manifest = json.loads((registry / "bundle" / "manifest.json").read_text())
    options = ["--model-name", manifest["model_name"], "--prediction-log", "/tmp/predictions"]
    mlflow = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{POD_MLFLOW_PORT}"}
    with read_only_container(buildah, built.references["serve"], tmp_path) as serve:
        sidecar = mlflow_server_command(registry, POD_MLFLOW_PORT)
        outcome = _serve_smoke(serve, registry / "bundle", *options, env=mlflow, sidecar=sidecar)
    fetched = f"{manifest['model_name']} v{manifest['model_version']} (champion) from the registry"
    assert fetched in outcome["server_log"]

    files = sorted((tmp_path / "predictions").rglob("*.parquet"))
    assert files, outcome["server_log"]
    logged = pd.concat([pd.read_parquet(path) for path in files])
    smoke_rows = len(json.loads((registry / "bundle" / "smoke.json").read_text())["inputs"])
    assert len(logged) == 2 * smoke_rows  # one v2 request and one /invocations call
    assert set(logged["model_version"]) == {manifest["model_version"]}


def test_a_second_build_reuses_every_layer(built: BuiltImages, build_script: Any, base_image: str) -> None:
    command = [sys.executable, str(build_script.__file__), "build", "--image", "serve", "--base-image", base_image]
    again = subprocess.run(
        [*command, "--no-sbom", "--output", str(built.output / "again")], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    steps = re.findall(r"^\[\d/\d\] STEP \d+/\d+: (RUN|COPY) ", again.stdout, re.M)
    assert len(steps) >= 4 and again.stdout.count("Using cache") >= len(steps)
    assert "Collecting " not in again.stdout


def test_build_refuses_a_base_image_it_cannot_pull_or_without_python(
    buildah: Any, base_image: str, tmp_path: Path
) -> None:
    build = [sys.executable, str(REPO_ROOT / "docker" / "build.py"), "build", "--no-sbom", "--base-image"]
    missing = subprocess.run([*build, "localhost/no-such-base:1"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "base image localhost/no-such-base:1 is not on this machine and cannot be pulled" in missing.stderr
    assert "python docker/build.py base" in missing.stderr
    empty = "localhost/no-python:1"
    with buildah.container("scratch") as container:
        subprocess.run(buildah.command("commit", "--quiet", container, empty), check=True, capture_output=True)
    try:
        no_python = subprocess.run([*build, empty], capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(buildah.command("rmi", empty), capture_output=True)
    assert no_python.returncode == 2
    assert f"base image {empty} has no working python3" in no_python.stderr
