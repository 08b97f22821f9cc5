"""The rendered pods and manifests, and one checkov scan of all of them, shared by the tests of this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from .policy import (
    CANARY_POD,
    K8S_DIR,
    CheckovReport,
    build_kustomization,
    load_documents,
    run_checkov,
    write_documents,
)
from .rendering import render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make render`` of the project's config: ``<folder>/pods/<dag>/<task>.yaml`` and ``<folder>/manifests/``."""
    tmp_path = tmp_path_factory.mktemp("render")
    done = render(tmp_path / "k8s", tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "k8s"


@pytest.fixture(scope="session")
def checkov_report(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> CheckovReport:
    """One checkov scan (seconds) of every rendered pod and manifest, the optional manifests, and the canary pod.

    Pods and manifests are scanned together because some checks (a NetworkPolicy covers every pod) span both.
    """
    documents = [document for path in sorted(rendered.rglob("*.yaml")) for document in load_documents(path)]
    folder = tmp_path_factory.mktemp("checkov")
    write_documents([*documents, *build_kustomization(K8S_DIR / "optional"), CANARY_POD], folder)
    return run_checkov(folder)
