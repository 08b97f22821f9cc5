"""What a built image's Python environment holds, printed as one JSON object by the image's own Python.

docker/build.py runs it in each image it builds, with this file and the SBOM tool's packages (cyclonedx-bom, from
.venv-images) mounted read-only: ``python image_report.py <folder of the SBOM tool's packages>``. It prints the
Python version, every installed distribution with its size on disk (largest first) and the CycloneDX SBOM of the
environment. The image needs nothing installed for it.
"""

from __future__ import annotations

import json
import runpy
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any


def package_sizes() -> list[dict[str, Any]]:
    """Every distribution of the environment's site-packages with the bytes of its files, largest first."""
    site_packages = sysconfig.get_paths()["purelib"]
    packages = []
    for distribution in metadata.distributions(path=[site_packages]):
        files = (distribution.locate_file(file) for file in distribution.files or ())
        size = sum(path.stat().st_size for path in files if path.is_file())
        packages.append({"name": distribution.metadata["Name"], "version": distribution.version, "bytes": size})
    return sorted(packages, key=lambda package: -package["bytes"])


def sbom(tool_packages: str) -> dict[str, Any]:
    """The CycloneDX SBOM of this interpreter's environment, made by cyclonedx-py run from the mounted packages.

    The tool runs in this process with its packages put first on sys.path; the interpreter it asks for its path is
    a fresh one, so the tool's own packages stay out of the SBOM.
    """
    output = Path(tempfile.mkdtemp()) / "sbom.cdx.json"
    sys.path.insert(0, tool_packages)
    sys.argv = ["cyclonedx-py", "environment", "--output-reproducible", "--output-file", str(output), sys.executable]
    try:
        runpy.run_module("cyclonedx_py", run_name="__main__")
    except SystemExit as exit_status:
        if exit_status.code:
            raise
    return json.loads(output.read_text())


if __name__ == "__main__":
    packages = package_sizes()
    print(json.dumps({"python": sys.version.split()[0], "packages": packages, "sbom": sbom(sys.argv[1])}))
