"""pip-audit of the pinned requirements the images install (docker/build.py audit). Where pip-audit's vulnerability
service cannot answer, pip-audit itself still prints "No known vulnerabilities found": the audit says NOT audited and
exits 3, and these tests skip with that message rather than pass. The SBOMs are checked with the built images
(test_images.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .containers import BUILD_SCRIPT

pytestmark = pytest.mark.images


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), "audit", *args], capture_output=True, text=True)


def _skip_unless_audited(audited: subprocess.CompletedProcess[str], build_script: Any) -> None:
    if audited.returncode == build_script.EXIT_NOT_AUDITED:
        pytest.skip(audited.stderr.strip())


def test_no_pinned_requirement_of_the_images_has_a_known_vulnerability(tools_venv: Path, build_script: Any) -> None:
    audited = _audit()
    _skip_unless_audited(audited, build_script)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "no known vulnerabilities in" in audited.stdout


def test_the_audit_reports_a_known_vulnerable_pin(tools_venv: Path, build_script: Any, tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    old.write_text("requests==2.19.0\n")  # CVE-2018-18074, fixed in 2.20.0
    audited = _audit("--requirement", str(old))
    _skip_unless_audited(audited, build_script)
    assert audited.returncode == 1
    assert re.search(r"^requests 2\.19\.0: .*\(fixed in [\d.]+", audited.stdout, re.M)


def test_a_package_the_service_cannot_look_up_is_not_counted_as_audited(
    tools_venv: Path, build_script: Any, tmp_path: Path
) -> None:
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("mlsteps-no-such-package==0.0.1\n")
    audited = _audit("--requirement", str(unknown))
    assert audited.returncode == build_script.EXIT_NOT_AUDITED
    assert (
        "NOT audited" in audited.stderr and "could not look up 1 of 1 pinned packages (unknown.txt)" in audited.stderr
    )
    assert "Traceback" not in audited.stderr
