"""Helpers of the image tests: the build script as a module, the tools it needs, and running a built image the way its
pods do.

``buildah run`` takes ``--user`` but cannot make the root filesystem read-only (buildah 1.28 has no ``--read-only``),
and the pods run with ``readOnlyRootFilesystem``. So ``ReadOnlyContainer`` mounts the image (``buildah mount``) and
runs each command in its own mount, PID and network namespaces (``unshare``): the image's root remounted read-only, a
host folder on /tmp (the pods' emptyDir), /proc and /dev, then ``chroot`` as UID/GID 10001 with the image's
environment and working directory. No network but the namespace's own loopback (where the model server and its
clients meet): a step that reaches out at run time fails here. A sidecar, a host command started in the same
namespaces before the image's command, shares that loopback as a pod's containers share theirs (the MLflow server
that the model server loads from).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "docker" / "build.py"
RUN_AS = "10001:10001"  # tests/k8s/policy.py RUN_AS_ID, the user and group every pod runs as
# The host tools the image tests run, and the Debian package of each.
TOOL_PACKAGES = {
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "unshare": "util-linux",
    "chroot": "coreutils",
}

# Namespaced, so nothing leaks to the host: the root read-only, the emptyDir stand-in on /tmp, then the image's user.
# A new network namespace starts with its loopback down; up, it reaches nothing outside the namespace. The sidecar, if
# any, runs on the host's files; it ends with the PID namespace, when the image's command exits.
_READ_ONLY_ROOT = """set -eu
root=$1 tmp=$2 user=$3 sidecar=$4 sidecar_log=$5
shift 5
ip link set lo up
if [ -n "$sidecar" ]; then sh -c "$sidecar" >"$sidecar_log" 2>&1 & fi
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$tmp" "$root/tmp"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot --userspec="$user" "$root" "$@"
"""


def load_build_script() -> ModuleType:
    """docker/build.py as a module, for its helpers (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("image_build", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def missing_tools() -> list[str]:
    """The system tools the image tests need that are not installed."""
    return [tool for tool in TOOL_PACKAGES if not shutil.which(tool)]


def install_tools() -> str | None:
    """Install the missing tools' packages with apt-get; returns why not when that cannot be."""
    if not missing_tools():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{', '.join(missing_tools())} missing and not root on a Debian-like system to apt-get them"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = sorted({TOOL_PACKAGES[tool] for tool in missing_tools()})
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        subprocess.run(command, check=True, capture_output=True, env=environment)
    return f"{', '.join(missing_tools())} still missing after apt-get" if missing_tools() else None


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(*paths: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of requirement files, names normalised."""
    pins = {}
    for path in paths:
        for line in path.read_text().splitlines():
            name, separator, version = line.split("#", 1)[0].strip().partition("==")
            if separator:
                pins[normalise(name.split("[")[0])] = version.strip()
    return pins


def image_config(buildah: Any, reference: str) -> dict[str, Any]:
    """The image's Docker config (Env, User, WorkingDir, Labels, Healthcheck, Cmd, ExposedPorts)."""
    inspect = subprocess.run(buildah.command("inspect", "--type", "image", reference), capture_output=True, text=True)
    inspect.check_returncode()
    return json.loads(inspect.stdout)["Docker"]["config"]


class ReadOnlyContainer:
    """A mounted image whose commands run as the pods run them: read-only root, writable /tmp, UID/GID 10001."""

    def __init__(self, root: Path, config: dict[str, Any], tmp: Path) -> None:
        self.root = root
        self.config = config
        self.tmp = tmp

    def run(
        self, command: Sequence[str], env: dict[str, str] | None = None, sidecar: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with the image's environment plus ``env``, in its working directory.

        ``sidecar``: a host command to start first in the same namespaces, as root; its output goes to
        ``sidecar_log``.
        """
        environment = [*self.config.get("Env", []), *(f"{name}={value}" for name, value in (env or {}).items())]
        workdir = self.config.get("WorkingDir") or "/"
        inside = ["/usr/bin/env", "-i", f"--chdir={workdir}", *environment, *command]
        namespaces = ["unshare", "--mount", "--pid", "--fork", "--net"]
        script = ["sh", "-c", _READ_ONLY_ROOT, "read-only-root", str(self.root), str(self.tmp), RUN_AS]
        script += [shlex.join(sidecar), str(self.sidecar_log)]
        return subprocess.run([*namespaces, *script, *inside], capture_output=True, text=True, timeout=600)

    @property
    def sidecar_log(self) -> Path:
        """Where the output of the last sidecar went (beside the container's /tmp, not in it)."""
        return self.tmp.with_name(f"{self.tmp.name}-sidecar.log")

    def check(self, command: Sequence[str], env: dict[str, str] | None = None, sidecar: Sequence[str] = ()) -> str:
        """Run a command that must succeed; its stdout. A failure shows the command's output."""
        result = self.run(command, env, sidecar)
        assert result.returncode == 0, (
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout


@contextmanager
def read_only_container(buildah: Any, reference: str, tmp: Path) -> Iterator[ReadOnlyContainer]:
    """A container of the image, mounted for ReadOnlyContainer; ``tmp`` becomes its /tmp, owned by UID/GID 10001."""
    uid, gid = (int(part) for part in RUN_AS.split(":"))
    os.chown(tmp, uid, gid)
    with buildah.container(reference) as name:
        mounted = subprocess.run(buildah.command("mount", name), capture_output=True, text=True)
        mounted.check_returncode()
        yield ReadOnlyContainer(Path(mounted.stdout.strip()), image_config(buildah, reference), tmp)


class BuiltImages:
    """What one run of docker/build.py build left: its output, and the report and SBOM of each image."""

    def __init__(self, output: Path, log: str, references: dict[str, str]) -> None:
        self.output = output
        self.log = log
        self.references = references

    def report(self, image: str) -> dict[str, Any]:
        """Size, layers and packages of an image (build/images/<image>.json)."""
        return json.loads((self.output / f"{image}.json").read_text())

    def sbom(self, image: str) -> dict[str, Any]:
        """The CycloneDX SBOM of the image's Python environment (build/images/<image>.cdx.json)."""
        return json.loads((self.output / f"{image}.cdx.json").read_text())
