"""The Dockerfiles and the build script without building: lint (hadolint, checkov), what every image must declare,
the pins of the serving image, and the build script's refusals of bad input, which come before any build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration.settings import load_settings

from .containers import BUILD_SCRIPT, REPO_ROOT, requirement_pins

pytestmark = pytest.mark.images

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))
# Breaks rules both linters check: untagged base, ADD of a URL, no USER (so root), no HEALTHCHECK.
CANARY_DOCKERFILE = "FROM debian\nADD https://example.com/tool.tar.gz /opt/\nRUN apt-get update\n"
# What the train image alone has (requirements/train*.txt), and what the serving image leaves out besides.
TRAIN_IMAGE_ONLY = {"torch", "xgboost", "xgboost-cpu", "onnx", "onnxscript", "onnxmltools", "skl2onnx"}
TRAINING_ONLY = TRAIN_IMAGE_ONLY | {"great-expectations", "scikit-learn", "scipy", "tqdm"}
AIRFLOW_VALUES = REPO_ROOT / "include" / "k8s" / "cluster" / "airflow-values.yaml"
# What the Airflow image runs from this repository: the DAGs, the plugins, and the packages and config they import.
AIRFLOW_CODE = {
    "dags": "/opt/airflow/dags",
    "plugins": "/opt/airflow/plugins",
    "include/orchestration": "/opt/airflow/include/orchestration",
    "include/mlsteps": "/opt/airflow/include/mlsteps",
    "include/config": "/opt/airflow/include/config",
}


def _build(*args: str, cwd: Path = REPO_ROOT, script: Path = BUILD_SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_there_is_one_dockerfile_per_image(build_script: Any) -> None:
    assert [path.name for path in DOCKERFILES] == sorted(f"{image}.Dockerfile" for image in build_script.IMAGES)


def test_hadolint_finds_nothing_in_the_dockerfiles_and_flags_a_broken_one(tools_venv: Path, tmp_path: Path) -> None:
    hadolint = str(tools_venv / "bin" / "hadolint")
    ours = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert (ours.returncode, ours.stdout) == (0, "")
    canary = tmp_path / "canary.Dockerfile"
    canary.write_text(CANARY_DOCKERFILE)
    flagged = subprocess.run([hadolint, "--no-color", str(canary)], capture_output=True, text=True)
    assert flagged.returncode == 1
    assert {"DL3006", "DL3009"} <= set(re.findall(r"DL\d{4}", flagged.stdout))


def test_checkov_dockerfile_checks_pass_with_the_skips_of_checkov_yaml(tmp_path: Path) -> None:
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make .venv-checkov`")
    for path in DOCKERFILES:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "canary.Dockerfile").write_text(CANARY_DOCKERFILE)
    command = [str(CHECKOV), "--directory", str(tmp_path), "--framework", "dockerfile", "--skip-download"]
    command += ["--config-file", str(REPO_ROOT / ".checkov.yaml"), "--output", "json"]
    scan = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert scan.returncode in (0, 1), scan.stderr
    results = json.loads(scan.stdout)["results"]
    failed = {(Path(check["file_path"]).name, check["check_id"]) for check in results["failed_checks"]}
    ours = sorted(failure for failure in failed if failure[0] != "canary.Dockerfile")
    assert ours == []
    # The canary proves that checkov read the folder: it fails checks our files pass.
    assert {("canary.Dockerfile", "CKV_DOCKER_2"), ("canary.Dockerfile", "CKV_DOCKER_3")} <= failed
    assert len(results["passed_checks"]) > 20 * len(DOCKERFILES)


def _airflow_pod_user() -> str:
    """UID:GID every Airflow container runs as: the chart's pod security context in our values."""
    pod = yaml.safe_load(AIRFLOW_VALUES.read_text())["securityContexts"]["pod"]
    return f"{pod['runAsUser']}:{pod['runAsGroup']}"


def test_every_image_builds_on_the_pinned_python_base_and_runs_as_the_pod_user(build_script: Any) -> None:
    kube = load_settings().runtime.kubernetes
    # The step pods and the model server run as 10001:10001; the Airflow chart runs its image as 50000 with group 0.
    pod_users = {"airflow": _airflow_pod_user()}
    for path in DOCKERFILES:
        instructions = build_script.instructions(path)
        assert build_script.build_arg_defaults(path)["BASE_IMAGE"] == "python:3.11-slim-bookworm", path.name
        bases = [
            i.arguments.split()[0] for i in instructions if i.keyword == "FROM" and i.arguments != "scratch AS wheels"
        ]
        assert set(bases) == {"${BASE_IMAGE}"}, path.name
        users = [i.arguments for i in instructions if i.keyword == "USER"]
        image = path.name.removesuffix(".Dockerfile")
        assert users[-1] == pod_users.get(image, f"{kube.run_as_user}:{kube.run_as_group}"), path.name
        # Only the virtualenv comes from the builder stage; code and config from the build context.
        copies = [i.arguments for i in instructions if i.keyword == "COPY" and "--from=" in i.arguments]
        assert copies == ["--from=builder /opt/venv /opt/venv"], path.name


def _builder(build_script: Any, image: str) -> tuple[list[str], str]:
    """The requirement files the builder stage of an image copies, and its one RUN instruction."""
    path = REPO_ROOT / "docker" / f"{image}.Dockerfile"
    stages = " ".join(f"{i.keyword} {i.arguments}" for i in build_script.instructions(path)).split("FROM ")
    builder = next(stage for stage in stages if stage.startswith("${BASE_IMAGE} AS builder"))
    copied = [source for _, source in build_script.context_sources(path) if source.endswith(".txt")]
    return copied, builder[builder.index(" RUN ") :]


def test_only_the_train_image_installs_torch_and_xgboost_on_top_of_the_steps_requirements(build_script: Any) -> None:
    steps_copies, steps_run = _builder(build_script, "steps")
    train_copies, train_run = _builder(build_script, "train")
    folder = "/tmp/requirements"
    # Both install requirements/steps.txt with the same constraints; the steps image nothing else.
    steps_install = f"--constraint {folder}/constraints.txt --requirement {folder}/steps.txt"
    assert steps_install in steps_run and steps_install in train_run
    assert steps_copies == ["requirements/steps.txt", "constraints.txt"]
    steps_dockerfile = REPO_ROOT / "docker" / "steps.Dockerfile"
    assert "torch" not in steps_run.lower() and "TORCH_VARIANT" not in build_script.build_arg_defaults(steps_dockerfile)
    # The train image: torch alone first (the variant's build, from its index), then the steps' and training's
    # requirements with XGBoost's build of the same variant.
    train_files = ["steps.txt", "train.txt", "train-cuda.txt", "train-cpu.txt"]
    assert train_copies == [*(f"requirements/{name}" for name in train_files), "constraints.txt"]
    assert train_run.index(f"{folder}/constraints.txt torch ") < train_run.index(steps_install)
    assert f'--requirement {folder}/train.txt --requirement "{folder}/train-$TORCH_VARIANT.txt"' in train_run
    assert build_script.build_arg_defaults(REPO_ROOT / "docker" / "train.Dockerfile")["TORCH_VARIANT"] == "cuda"


def test_torch_and_xgboost_are_pinned_for_the_train_image_alone() -> None:
    requirements = REPO_ROOT / "requirements"
    steps = requirement_pins(requirements / "steps.txt")
    train = requirement_pins(requirements / "train.txt")
    cuda, cpu = requirement_pins(requirements / "train-cuda.txt"), requirement_pins(requirements / "train-cpu.txt")
    assert not TRAIN_IMAGE_ONLY & set(steps)
    assert {"torch", "onnx", "onnxscript", "onnxmltools", "skl2onnx", "tqdm"} <= set(train)
    assert not {"xgboost", "xgboost-cpu"} & set(train)
    # No image has full MLflow: they are clients of the MLflow server (mlflow-skinny, or its REST API for the model
    # server); the local tools have it.
    images = [steps, train, cuda, cpu, requirement_pins(requirements / "serve.txt")]
    assert [pins["mlflow"] for pins in images if "mlflow" in pins] == []
    assert "mlflow" in requirement_pins(requirements / "dev.txt")
    # One XGBoost release, the CUDA build for TORCH_VARIANT=cuda and the CPU build for cpu.
    assert (set(cuda), set(cpu)) == ({"xgboost"}, {"xgboost-cpu"}) and cuda["xgboost"] == cpu["xgboost-cpu"]
    # The local runtime (requirements.txt): the steps, training with the CPU builds, and the model server.
    included = re.findall(r"^-r (\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert included == [f"requirements/{name}.txt" for name in ("steps", "train", "train-cpu", "serve")]
    constraints = requirement_pins(REPO_ROOT / "constraints.txt")
    local = {**steps, **train, **cpu}
    assert {name: version for name, version in local.items() if constraints.get(name) != version} == {}


def test_images_are_named_as_the_pods_the_model_server_and_the_airflow_chart_run_them(build_script: Any) -> None:
    kube = load_settings().runtime.kubernetes
    manifest = (REPO_ROOT / "include" / "k8s" / "model-server.yaml").read_text()
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    assert build_script.image_references() == {
        "steps": kube.images["steps"],
        "train": kube.images["train"],
        "serve": re.search(r"image: (\S+mlsteps-serve\S*)", manifest).group(1),
        "airflow": f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}",
    }
    assert all(build_script.is_pinned(reference) for reference in build_script.image_references().values())


def test_airflow_image_bakes_in_dags_plugins_and_include_and_installs_no_torch_or_xgboost(build_script: Any) -> None:
    path = REPO_ROOT / "docker" / "airflow.Dockerfile"
    copies = [i.arguments.split() for i in build_script.instructions(path) if i.keyword == "COPY"]
    code = {words[0]: words[1] for words in copies if len(words) == 2 and words[0] in AIRFLOW_CODE}
    assert code == AIRFLOW_CODE
    copied, builder_run = _builder(build_script, "airflow")
    assert copied == ["requirements/airflow.txt", "constraints.txt"]
    assert "--requirement /tmp/requirements/airflow.txt" in builder_run and "torch" not in builder_run.lower()
    # The .dockerignore lets every copied folder into the build context.
    allowed = [line.rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().split() if line.startswith("!")]
    assert {f"!{source}" for source in AIRFLOW_CODE} <= set(allowed)
    # Airflow and its providers, as the local runtime pins them; the steps' heavy stack stays in the step images.
    airflow = requirement_pins(REPO_ROOT / "requirements" / "airflow.txt")
    local = requirement_pins(REPO_ROOT / "requirements.txt")
    assert {name: airflow.get(name) for name in local if name.startswith("apache-airflow")} == {
        name: version for name, version in local.items() if name.startswith("apache-airflow")
    }
    assert "apache-airflow-providers-fab" in airflow
    assert not (TRAINING_ONLY | {"onnxruntime", "fastapi", "uvicorn"}) & set(airflow)
    constraints = requirement_pins(REPO_ROOT / "constraints.txt")
    assert {name: version for name, version in airflow.items() if constraints.get(name, version) != version} == {}
    # The chart's user and home: runAsUser/runAsGroup of the values, AIRFLOW_HOME its default airflowHome.
    environment = " ".join(i.arguments for i in build_script.instructions(path) if i.keyword == "ENV")
    assert "AIRFLOW_HOME=/opt/airflow " in environment and "PYTHONPATH=/opt/airflow/include " in environment
    assert _airflow_pod_user() == "50000:0"


def test_serving_requirements_leave_training_out_and_agree_with_the_constraints() -> None:
    path = REPO_ROOT / "requirements" / "serve.txt"
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    assert [line for line in lines if line and "==" not in line] == []
    serve = requirement_pins(path)
    constraints = requirement_pins(REPO_ROOT / "constraints.txt")
    assert not TRAINING_ONLY & set(serve)
    assert {"onnxruntime", "fastapi", "uvicorn", "pandas", "pyarrow", "boto3"} <= set(serve)
    # The server reads the registry over MLflow's REST API (mlsteps.serve.registry_client): no MLflow package.
    assert not {"mlflow", "mlflow-skinny"} & set(serve)
    assert {name: version for name, version in serve.items() if constraints.get(name, version) != version} == {}


def test_build_names_every_missing_copied_file_before_building(tmp_path: Path) -> None:
    # A copy of what the build reads, less the serving requirements.
    for folder in ("docker", "requirements", "include/config", "include/mlsteps"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "constraints.txt", tmp_path)
    (tmp_path / "requirements" / "serve.txt").unlink()
    (tmp_path / "constraints.txt").unlink()
    refused = _build("build", script=tmp_path / "docker" / "build.py")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert re.search(
        r"docker/serve\.Dockerfile line \d+ copies requirements/serve\.txt, which is not in", refused.stderr
    )
    for image in ("steps", "train", "serve"):
        assert re.search(rf"docker/{image}\.Dockerfile line \d+ copies constraints\.txt", refused.stderr)
    assert "restore the file" in refused.stderr


@pytest.mark.parametrize("base_image", ["python", "python:latest", "registry.example/python:latest"])
def test_build_refuses_a_base_image_without_a_pinned_tag(base_image: str) -> None:
    refused = _build("build", "--no-sbom", "--base-image", base_image)
    assert refused.returncode == 2
    assert f"--base-image {base_image}: pin it by a tag other than latest or by a digest" in refused.stderr


def test_build_lists_every_bad_option_at_once(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("no certificates here\n")
    refused = _build("build", "--wheels", str(tmp_path / "missing"), "--ca-bundle", str(not_pem), "--base-image", "x")
    assert refused.returncode == 2
    assert f"--wheels {tmp_path / 'missing'}: not a folder" in refused.stderr
    assert f"--ca-bundle {not_pem}: not a PEM file of certificates" in refused.stderr
    assert "--base-image x: pin it" in refused.stderr
