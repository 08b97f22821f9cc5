"""The images built for real (buildah on a local Debian base) and run as their pods run them: read-only root, /tmp
writable, UID/GID 10001, no network but loopback. The steps image runs the data steps, the train image trains one
batch, the steps image then evaluates and registers the model that the train image logged, and the serving image
serves a real bundle: its own health check passes and both protocols answer with the bundle's expected
probabilities."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mlsteps.results import read_result

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
SERVING_STACK = "onnxruntime, fastapi, uvicorn, uvloop, httptools, pandas, pyarrow, boto3, mlflow, yaml, pydantic"


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
    """One epoch of one batch (2,000 rows, batch size 4,096) in the train image, logged to MLflow in /tmp."""
    containers["train"].check(
        _mlsteps("train", "--run-root", RUN_ROOT, "--epochs", "1", "--batch-size", "4096"), MLFLOW
    )
    return prepared_run


def test_build_prints_each_images_size_largest_layers_and_packages(built: BuiltImages) -> None:
    for image, reference in built.references.items():
        report = built.report(image)
        assert report["reference"] == reference
        assert report["size_bytes"] == sum(layer["bytes"] for layer in report["layers"])
        assert re.search(rf"^{image}: {re.escape(reference)}  [\d.]+ [kMG]?B  built in \d+ s$", built.log, re.M)
        largest = report["packages"][0]
        assert re.search(rf"^  package +[\d.]+ [kMG]?B  {re.escape(largest['name'])} ", built.log, re.M)
    # torch is most of the steps image, and the serving image is far smaller without it.
    assert built.report("steps")["packages"][0]["name"] == "torch"
    assert built.report("serve")["size_bytes"] < built.report("steps")["size_bytes"] / 2


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


def test_every_package_in_an_image_is_pinned_by_its_requirements(built: BuiltImages) -> None:
    requirements = REPO_ROOT / "requirements"
    pins = {
        "steps": requirement_pins(REPO_ROOT / "constraints.txt", requirements / "steps.txt"),
        "train": requirement_pins(REPO_ROOT / "constraints.txt", requirements / "steps.txt"),
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
    assert "torch" not in {component["name"] for component in built.sbom("serve")["components"]}


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


def test_train_image_imports_torch_and_trains_one_batch(
    containers: dict[str, ReadOnlyContainer], trained_run: Path
) -> None:
    version, cuda = (
        containers["train"]
        .check(["python", "-c", "import torch; print(torch.__version__, torch.version.cuda)"])
        .split()
    )
    assert version.startswith("2.13.0") and cuda == "None"  # CI builds TORCH_VARIANT=cpu
    result = read_result(str(trained_run), "train")
    assert result["epochs_run"] == 1
    assert result["model_uri"].startswith("models:/")


def test_steps_image_evaluates_and_registers_the_model_the_train_image_logged(
    containers: dict[str, ReadOnlyContainer], trained_run: Path
) -> None:
    steps = containers["steps"]
    steps.check(_mlsteps("evaluate", "--run-root", RUN_ROOT), MLFLOW)
    steps.check(_mlsteps("register", "--run-root", RUN_ROOT), MLFLOW)
    trained = read_result(str(trained_run), "train")
    assert read_result(str(trained_run), "evaluate")["challenger"]["model_uri"] == trained["model_uri"]
    registered = read_result(str(trained_run), "register")
    assert (registered["version"], registered["aliases"]) == (1, ["challenger"])


def test_serving_image_imports_its_stack_without_the_training_one(containers: dict[str, ReadOnlyContainer]) -> None:
    serve = containers["serve"]
    serve.check(["python", "-c", f"import {SERVING_STACK}; import mlsteps.config, mlsteps.data.storage"])
    training = ["torch", "great_expectations", "sklearn", "scipy", "pip"]
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


def test_serving_image_serves_a_bundle_read_only_and_passes_its_own_health_check(
    containers: dict[str, ReadOnlyContainer], serving_bundle_dir: Path
) -> None:
    serve = containers["serve"]
    shutil.copytree(serving_bundle_dir, serve.tmp / "bundle")
    shutil.copy(SERVE_SMOKE, serve.tmp / SERVE_SMOKE.name)
    health_check = json.dumps(serve.config["Healthcheck"]["Test"][1:])
    outcome = json.loads(serve.check(["python", f"/tmp/{SERVE_SMOKE.name}", "/tmp/bundle", health_check]))
    log = outcome["server_log"]
    assert "failure" not in outcome, f"{outcome['failure']}\n{log}"
    assert outcome["health_check"] == {"returncode": 0, "stderr": ""}, log

    smoke = json.loads((serving_bundle_dir / "smoke.json").read_text())
    threshold = json.loads((serving_bundle_dir / "manifest.json").read_text())["decision_threshold"]
    expected_probability = pytest.approx(smoke["probability"], abs=1e-4)
    expected_prediction = [int(probability >= threshold) for probability in smoke["probability"]]
    v2, invocations = outcome["v2"], outcome["invocations"]
    assert (v2["status"], v2["model_version"]) == (200, "1"), f"{v2}\n{log}"
    outputs = {output["name"]: output for output in v2["body"]["outputs"]}
    assert outputs["probability"]["datatype"] == "FP64" and outputs["prediction"]["datatype"] == "INT64"
    assert outputs["probability"]["data"] == expected_probability
    assert outputs["prediction"]["data"] == expected_prediction
    assert (invocations["status"], invocations["model_version"]) == (200, "1"), f"{invocations}\n{log}"
    predictions = invocations["body"]["predictions"]
    assert [row["probability"] for row in predictions] == expected_probability
    assert [row["prediction"] for row in predictions] == expected_prediction


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
