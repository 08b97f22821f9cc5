"""Fixtures of the image tests: the tools they need, and every image built once per session on a local base."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .containers import REPO_ROOT, BuiltImages, install_tools, load_build_script

TOOLS_VENV = REPO_ROOT / ".venv-images"
# The images these tests build and run. Not the Airflow image (docker/airflow.Dockerfile): pip installs Airflow, its
# providers and the models page's stack for about 5 minutes from an empty cache, past what the suite's time budget
# leaves; test_dockerfiles.py checks it statically (lint, base, user, name, what it copies and installs). Build and
# smoke-test it by hand (docker/README.md):
#   .venv/bin/python docker/build.py build --image airflow --base-image localhost/python-base:3.11
BUILT_IN_TESTS = ("steps", "train", "serve")


@pytest.fixture(scope="session")
def build_script() -> Any:
    """docker/build.py as a module."""
    return load_build_script()


@pytest.fixture(scope="session")
def tools_venv() -> Path:
    """.venv-images (hadolint, cyclonedx-py, pip-audit), made by its Makefile target when missing or stale."""
    made = subprocess.run(
        ["make", "--no-print-directory", ".venv-images"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert made.returncode == 0, f"make .venv-images failed:\n{made.stdout}\n{made.stderr}"
    return TOOLS_VENV


@pytest.fixture(scope="session")
def buildah(build_script: Any) -> Any:
    """buildah on its default storage, with debootstrap: apt-get installs them where missing; skipped without root."""
    if os.geteuid() != 0:
        pytest.skip("the image tests need root: buildah builds, and unshare/chroot run the images read-only")
    reason = install_tools()
    if reason:
        pytest.skip(reason)
    return build_script.Buildah()


@pytest.fixture(scope="session")
def base_image(build_script: Any, buildah: Any) -> str:
    """The local Debian base (docker/build.py base): made once, then kept in buildah's storage between runs."""
    made = subprocess.run([sys.executable, str(build_script.__file__), "base"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return build_script.LOCAL_BASE


def _local_torch_cpu_wheel() -> bool:
    folder = Path(os.environ.get("PIP_FIND_LINKS", "/nonexistent"))
    return folder.is_dir() and any(folder.glob("torch-*+cpu-*.whl"))


@pytest.fixture(scope="session")
def built(
    build_script: Any, buildah: Any, base_image: str, tools_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> BuiltImages:
    """The images of BUILT_IN_TESTS built as CI builds them: on the local base, the train image with torch's CPU build,
    with SBOMs.

    The build takes torch's CPU build from PyTorch's index, or from the wheel folder in $PIP_FIND_LINKS where that
    holds one (machines that cannot reach the index); the CA bundle in $PIP_CERT, if any.
    """
    output = tmp_path_factory.mktemp("images")
    command = [sys.executable, str(build_script.__file__), "build", "--base-image", base_image]
    command += [f"--image={image}" for image in BUILT_IN_TESTS]
    command += ["--torch-variant", "cpu", "--output", str(output)]
    if _local_torch_cpu_wheel():
        command += ["--torch-cpu-index-url", ""]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stdout[-5000:]}\n{done.stderr[-3000:]}"
    references = build_script.image_references()
    return BuiltImages(output, done.stdout, {image: references[image] for image in BUILT_IN_TESTS})
