"""Build the container images of docker/: `docker build` where a Docker engine answers, else `buildah bud`.

    python docker/build.py build [--image steps] [--base-image REF] ...   # make images
    python docker/build.py base                                            # a local Python base from Debian
    python docker/build.py audit                                           # pip-audit the pinned requirements

`build` checks its input before building anything: every file a Dockerfile copies, the optional wheel folder and CA
bundle, and the base image (pinned, present or pullable, with Python 3.11). It tags each image with the name that the
step pods (include/config/pipeline.yaml), the model server (include/k8s/model-server.yaml) and the Airflow chart
(include/k8s/cluster/airflow-values.yaml) run, writes the SBOM of
the image's Python environment to build/images/<image>.cdx.json and its size, largest layers and largest packages to
build/images/<image>.json, and prints them. Bad input exits with code 2 and one message that says what to change.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
OUTPUT_DIR = REPO_ROOT / "build" / "images"
TOOLS_VENV = REPO_ROOT / ".venv-images"
AIRFLOW_VALUES = REPO_ROOT / "include" / "k8s" / "cluster" / "airflow-values.yaml"  # names the Airflow image
IMAGES = ("steps", "train", "serve", "airflow")
PYTHON_VERSION = "3.11"  # constraints.txt pins the packages of a Python 3.11 environment
LOCAL_BASE = f"localhost/python-base:{PYTHON_VERSION}"
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, like python:3.11-slim-bookworm
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_CACHE_DIR = Path("/var/tmp/mlsteps-images")
TOP = 5  # layers and packages listed per image
EXIT_BAD_INPUT = 2
EXIT_NOT_AUDITED = 3


class BuildError(Exception):
    """A failure with one message that says what is wrong and what to do; ``exit_code`` 2 is bad input."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Layer:
    """One layer of a built image and the instruction that made it."""

    size: int
    created_by: str


# The OCI labels that change with every build, by the build argument that sets them in the Dockerfiles. buildah
# reuses a cached LABEL layer when only a build argument changed, so build() also sets them on the command line,
# which both engines apply on top of the Dockerfile's labels.
PER_BUILD_LABELS = {"VERSION": "org.opencontainers.image.version", "REVISION": "org.opencontainers.image.revision"}


@dataclass(frozen=True)
class BuildSpec:
    """One image build: what docker build and buildah bud take alike."""

    dockerfile: Path
    tag: str
    args: dict[str, str]
    secrets: dict[str, Path]  # build secrets by id, mounted only into the RUN instructions that ask for them
    contexts: dict[str, Path]  # named build contexts: folders that replace a Dockerfile stage of the same name
    no_cache: bool = False

    def flags(self) -> list[str]:
        """The command-line flags both engines share; the build context (the repository root) goes last."""
        flags = ["--file", str(self.dockerfile), "--tag", self.tag, *(["--no-cache"] if self.no_cache else [])]
        flags += [f"--build-arg={name}={value}" for name, value in self.args.items()]
        flags += [f"--label={label}={self.args[arg]}" for arg, label in PER_BUILD_LABELS.items() if arg in self.args]
        flags += [f"--secret=id={name},src={file}" for name, file in self.secrets.items()]
        flags += [f"--build-context={name}={folder}" for name, folder in self.contexts.items()]
        return [*flags, str(REPO_ROOT)]


def dockerfile(image: str) -> Path:
    """The Dockerfile of an image (``docker/<image>.Dockerfile``)."""
    return DOCKER_DIR / f"{image}.Dockerfile"


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, with the line each starts on."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(text.removesuffix("\\").strip())
        if not text.endswith("\\"):
            keyword, _, arguments = " ".join(pending).partition(" ")
            found.append(Instruction(start, keyword.upper(), arguments.strip()))
            pending = []
    return found


def context_sources(path: Path) -> list[tuple[int, str]]:
    """(line, path) of every file or folder that a COPY or ADD takes from the build context."""
    sources = []
    for instruction in instructions(path):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        arguments = instruction.arguments
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend((instruction.line, source) for source in paths[:-1])
    return sources


def build_arg_defaults(path: Path) -> dict[str, str]:
    """The build arguments a Dockerfile declares, with their defaults ('' when it gives none).

    A stage's ``ARG NAME`` without a value takes the default of the ``ARG`` before the first ``FROM``, so it keeps
    the default found first.
    """
    declared: dict[str, str] = {}
    for instruction in instructions(path):
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            if default or name not in declared:
                declared[name] = default
    return declared


def image_references() -> dict[str, str]:
    """The name each image is tagged with: the one its pods (pipeline.yaml), the model server's Deployment or the
    Airflow chart's values (``defaultAirflowRepository`` and ``defaultAirflowTag``, which every Airflow pod runs)."""
    pipeline = yaml.safe_load((REPO_ROOT / "include" / "config" / "pipeline.yaml").read_text())
    references = dict(pipeline["runtime"]["kubernetes"]["images"])
    for document in yaml.safe_load_all((REPO_ROOT / "include" / "k8s" / "model-server.yaml").read_text()):
        if document and document.get("kind") == "Deployment":
            references["serve"] = document["spec"]["template"]["spec"]["containers"][0]["image"]
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    references["airflow"] = f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}"
    return references


def is_pinned(reference: str) -> bool:
    """Whether an image reference names a digest or a tag other than ``latest``."""
    name = reference.rsplit("/", 1)[-1]
    return "@sha256:" in reference or (":" in name and not name.endswith(":latest"))


def tag_of(reference: str) -> str:
    """The tag of a pinned reference (``0.1.0`` of ``ghcr.io/example/mlsteps:0.1.0``)."""
    return reference.rsplit("/", 1)[-1].partition("@")[0].rpartition(":")[2]


def human(size: float) -> str:
    """A byte count in the decimal units that docker and buildah print."""
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command that must succeed: a failure raises BuildError with its last line of output."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"`{shlex.join(command)}` failed: {_last_line(result.stderr or result.stdout)}", 1)
    return result


class Engine:
    """What the build needs from a container engine."""

    name = ""

    def build(self, spec: BuildSpec) -> int:
        """Build an image; returns the engine's exit code (its log streams to the console)."""
        raise NotImplementedError

    def has_image(self, reference: str) -> bool:
        """Whether the image is in the local store."""
        raise NotImplementedError

    def pull(self, reference: str) -> None:
        """Pull an image; BuildError with the engine's reason when that fails."""
        raise NotImplementedError

    def run(self, reference: str, command: Sequence[str], volumes: dict[Path, str]) -> subprocess.CompletedProcess:
        """Run a command in a throw-away container of the image, host folders mounted read-only."""
        raise NotImplementedError

    def layers(self, reference: str) -> list[Layer]:
        """The image's layers, base image included."""
        raise NotImplementedError


class Docker(Engine):
    """A Docker engine with BuildKit (Docker 23 or later), which --secret and --build-context need."""

    name = "docker"

    def build(self, spec: BuildSpec) -> int:
        return subprocess.run(["docker", "build", *spec.flags()], env={**os.environ, "DOCKER_BUILDKIT": "1"}).returncode

    def has_image(self, reference: str) -> bool:
        return subprocess.run(["docker", "image", "inspect", reference], capture_output=True).returncode == 0

    def pull(self, reference: str) -> None:
        _run(["docker", "pull", "--quiet", reference])

    def run(self, reference: str, command: Sequence[str], volumes: dict[Path, str]) -> subprocess.CompletedProcess:
        mounts = [f"--volume={host}:{target}:ro" for host, target in volumes.items()]
        docker_run = ["docker", "run", "--rm", "--network=none", *mounts, "--entrypoint", command[0], reference]
        return subprocess.run([*docker_run, *command[1:]], capture_output=True, text=True)

    def layers(self, reference: str) -> list[Layer]:
        history = ["docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}"]
        lines = _run([*history, reference]).stdout.splitlines()
        return [Layer(int(size), created_by) for size, _, created_by in (line.partition("\t") for line in lines)]


class Buildah(Engine):
    """buildah: builds without a daemon, also as root inside a container (chroot isolation)."""

    name = "buildah"

    def __init__(self, storage_driver: str | None = None) -> None:
        self.storage_driver = storage_driver

    def command(self, *args: str) -> list[str]:
        """A buildah command line on this engine's storage."""
        driver = ["--storage-driver", self.storage_driver] if self.storage_driver else []
        return ["buildah", *driver, *args]

    def build(self, spec: BuildSpec) -> int:
        # docker format: OCI image configs have no HEALTHCHECK. --layers keeps every step's layer for the next build.
        bud = self.command("bud", "--isolation", "chroot", "--format", "docker", "--layers", "--pull=never")
        return subprocess.run([*bud, *spec.flags()]).returncode

    def has_image(self, reference: str) -> bool:
        inspect = self.command("inspect", "--type", "image", reference)
        return subprocess.run(inspect, capture_output=True).returncode == 0

    def pull(self, reference: str) -> None:
        _run(self.command("pull", "--quiet", "--retry", "1", reference))

    @contextmanager
    def container(self, reference: str) -> Iterator[str]:
        """A working container of the image, removed afterwards."""
        name = _run(self.command("from", "--quiet", "--pull=never", reference)).stdout.strip()
        try:
            yield name
        finally:
            removed = subprocess.run(self.command("rm", name), capture_output=True, text=True)
            if removed.returncode != 0:
                print(f"warning: could not remove container {name}: {_last_line(removed.stderr)}", file=sys.stderr)

    def run(self, reference: str, command: Sequence[str], volumes: dict[Path, str]) -> subprocess.CompletedProcess:
        mounts = [f"--volume={host}:{target}:ro" for host, target in volumes.items()]
        with self.container(reference) as name:
            # chroot isolation shares the host's network: buildah refuses --network none with it.
            buildah_run = self.command("run", "--isolation", "chroot", *mounts, name, "--")
            return subprocess.run([*buildah_run, *command], capture_output=True, text=True)

    def layers(self, reference: str) -> list[Layer]:
        inspect = json.loads(_run(self.command("inspect", "--type", "image", reference)).stdout)
        sizes = [layer["size"] for layer in json.loads(inspect["Manifest"])["layers"]]
        steps = [entry["created_by"] for entry in inspect["Docker"]["history"] if not entry.get("empty_layer")]
        return [Layer(size, created_by) for size, created_by in zip(sizes, steps, strict=True)]


def docker_engine_answers() -> bool:
    """Whether a Docker engine answers (the docker CLI alone is not enough)."""
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def select_engine(choice: str, storage_driver: str | None) -> Engine:
    """docker when asked for or when auto finds an engine that answers, else buildah."""
    if choice in ("auto", "docker") and docker_engine_answers():
        return Docker()
    if choice == "docker":
        raise BuildError("--engine docker: no Docker engine answers (`docker info` fails): start it, or use buildah")
    if shutil.which("buildah"):
        return Buildah(storage_driver)
    raise BuildError(
        "no container engine: no Docker engine answers and buildah is not installed; install buildah "
        "(apt-get install buildah) or start Docker"
    )


def source_revision() -> str:
    """The commit the images are built from, marked -dirty when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT)
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO_ROOT)
    except FileNotFoundError:
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def check_inputs(images: Sequence[str], options: argparse.Namespace, base_image: str) -> None:
    """Everything that can be checked without an engine, all at once: raises one BuildError listing every problem."""
    problems = []
    for image in images:
        path = dockerfile(image)
        if not path.is_file():
            problems.append(f"{path.relative_to(REPO_ROOT)} is missing: restore it from version control")
            continue
        for line, source in context_sources(path):
            if not list(REPO_ROOT.glob(source)):
                problems.append(
                    f"{path.relative_to(REPO_ROOT)} line {line} copies {source}, which is not in {REPO_ROOT}: "
                    "restore the file, or change the COPY line and the requirements it names"
                )
    if options.wheels and not Path(options.wheels).is_dir():
        problems.append(f"--wheels {options.wheels}: not a folder; give the folder of wheels pip may install from")
    if options.ca_bundle:
        bundle = Path(options.ca_bundle)
        if not bundle.is_file() or "BEGIN CERTIFICATE" not in bundle.read_text(errors="replace"):
            problems.append(f"--ca-bundle {bundle}: not a PEM file of certificates; give the proxy's CA bundle")
    if not is_pinned(base_image):
        problems.append(
            f"--base-image {base_image}: pin it by a tag other than latest or by a digest, e.g. "
            f"python:{PYTHON_VERSION}-slim-bookworm, so that a rebuild gets the same base"
        )
    if not options.no_sbom and not (TOOLS_VENV / "bin" / "cyclonedx-py").is_file():
        problems.append(f"the SBOM tool is missing from {TOOLS_VENV}: run `make .venv-images` (or pass --no-sbom)")
    if problems:
        raise BuildError("cannot build the images:\n- " + "\n- ".join(problems))


def check_base_image(engine: Engine, base_image: str) -> None:
    """The base image is here (pulled if need be) and its python3 is the version the pins are for."""
    if not engine.has_image(base_image):
        print(f"pulling base image {base_image}", flush=True)
        try:
            engine.pull(base_image)
        except BuildError as error:
            raise BuildError(
                f"base image {base_image} is not on this machine and cannot be pulled ({error}). Pull it, or give "
                f"one this machine has with --base-image, e.g. a local Debian base: `python docker/build.py base`, "
                f"then --base-image {LOCAL_BASE}"
            ) from None
    probe = engine.run(base_image, ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], {})
    if probe.returncode != 0:
        raise BuildError(
            f"base image {base_image} has no working python3 ({_last_line(probe.stderr)}): the Dockerfiles make the "
            f"virtualenv with it; give a Python {PYTHON_VERSION} image such as python:{PYTHON_VERSION}-slim-bookworm"
        )
    version = probe.stdout.strip()
    if version != PYTHON_VERSION:
        raise BuildError(
            f"base image {base_image} has Python {version}, but constraints.txt pins packages for Python "
            f"{PYTHON_VERSION}: give a Python {PYTHON_VERSION} image such as python:{PYTHON_VERSION}-slim-bookworm"
        )


def build_args(image: str, options: argparse.Namespace, base_image: str, reference: str) -> dict[str, str]:
    """The build arguments the image's Dockerfile declares, from the options that set them."""
    wanted = {
        "BASE_IMAGE": base_image,
        "VERSION": tag_of(reference),
        "REVISION": source_revision(),
        "TORCH_VARIANT": options.torch_variant,  # declared by train.Dockerfile alone: the other images have no torch
        "TORCH_CPU_INDEX_URL": options.torch_cpu_index_url,
    }
    declared = build_arg_defaults(dockerfile(image))
    return {name: value for name, value in wanted.items() if name in declared and value is not None}


def inspect_image(engine: Engine, reference: str) -> dict[str, Any]:
    """The image's installed packages with their sizes and the SBOM of its Python environment, from inside it."""
    site_packages = next((TOOLS_VENV / "lib").glob("python3*/site-packages"))
    volumes = {
        DOCKER_DIR / "image_report.py": "/opt/image-tools/image_report.py",
        site_packages: "/opt/image-tools/sbom",
    }
    report = engine.run(reference, ["python", "/opt/image-tools/image_report.py", "/opt/image-tools/sbom"], volumes)
    if report.returncode != 0:
        raise BuildError(f"could not inspect {reference}: {_last_line(report.stderr)}", 1)
    return json.loads(report.stdout)


def write_report(image: str, reference: str, engine: Engine, seconds: float, options: argparse.Namespace) -> dict:
    """Size, largest layers and (unless --no-sbom) packages and SBOM of a built image, written to the output folder."""
    layers = engine.layers(reference)
    report: dict[str, Any] = {
        "image": image,
        "reference": reference,
        "engine": engine.name,
        "build_seconds": round(seconds, 1),
        "size_bytes": sum(layer.size for layer in layers),
        "layers": [{"bytes": layer.size, "created_by": layer.created_by} for layer in layers],
    }
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    if not options.no_sbom:
        inside = inspect_image(engine, reference)
        report["python"] = inside["python"]
        report["packages"] = inside["packages"]
        sbom = inside["sbom"]
        name, _, version = reference.rpartition(":")
        sbom.setdefault("metadata", {})["component"] = {
            "type": "container",
            "bom-ref": reference,
            "name": name,
            "version": version,
        }
        (output / f"{image}.cdx.json").write_text(json.dumps(sbom, indent=2) + "\n")
    (output / f"{image}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict[str, Any]) -> None:
    """What makes up an image: size, largest layers, largest packages."""
    print(
        f"{report['image']}: {report['reference']}  {human(report['size_bytes'])}  "
        f"built in {report['build_seconds']:.0f} s"
    )
    for layer in sorted(report["layers"], key=lambda layer: -layer["bytes"])[:TOP]:
        step = layer["created_by"].removeprefix("/bin/sh -c ").removeprefix("#(nop) ").strip()
        print(f"  layer    {human(layer['bytes']):>10}  {step[:100]}")
    for package in report.get("packages", [])[:TOP]:
        print(f"  package  {human(package['bytes']):>10}  {package['name']} {package['version']}")


def build(options: argparse.Namespace) -> None:
    """Check the input, then build, tag, inspect and report every requested image."""
    images = options.image or list(IMAGES)
    defaults = build_arg_defaults(dockerfile(images[0])) if dockerfile(images[0]).is_file() else {}
    base_image = options.base_image or defaults.get("BASE_IMAGE", "")
    check_inputs(images, options, base_image)
    references = image_references()
    engine = select_engine(options.engine, options.storage_driver)
    print(f"engine {engine.name}, base image {base_image}", flush=True)
    check_base_image(engine, base_image)
    secrets = {"ca": Path(options.ca_bundle)} if options.ca_bundle else {}
    contexts = {"wheels": Path(options.wheels).resolve()} if options.wheels else {}
    reports = []
    for image in images:
        reference = references[image]
        print(f"== {image}: {reference} from {dockerfile(image).relative_to(REPO_ROOT)}", flush=True)
        started = time.perf_counter()
        args = build_args(image, options, base_image, reference)
        exit_code = engine.build(BuildSpec(dockerfile(image), reference, args, secrets, contexts, options.no_cache))
        if exit_code != 0:
            raise BuildError(
                f"{engine.name} could not build {image} (exit code {exit_code}): the log above shows "
                "the failing instruction",
                1,
            )
        reports.append(write_report(image, reference, engine, time.perf_counter() - started, options))
    print(f"\nimages ({engine.name}; sizes uncompressed; reports and SBOMs in {options.output}):")
    for report in reports:
        print_report(report)


def build_base(options: argparse.Namespace) -> None:
    """A minimal Debian with its Python 3.11 (debootstrap), committed as a local base image for buildah."""
    missing = [tool for tool in ("buildah", "debootstrap") if not shutil.which(tool)]
    if missing:
        raise BuildError(f"{' and '.join(missing)} not installed: apt-get install {' '.join(missing)}")
    engine = Buildah(options.storage_driver)
    if engine.has_image(LOCAL_BASE) and not options.rebuild:
        print(f"{LOCAL_BASE} is there already (--rebuild makes it again)")
        return
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root: run `python docker/build.py base` as root")
    cache = Path(options.cache_dir) / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with engine.container("scratch") as container:
        rootfs = Path(_run(engine.command("mount", container)).stdout.strip())
        debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}"]
        debootstrap += [f"--cache-dir={cache}", DEBIAN_SUITE, str(rootfs), options.mirror]
        print(f"$ {shlex.join(debootstrap)}", flush=True)
        if subprocess.run(debootstrap, stdout=subprocess.DEVNULL).returncode != 0:
            raise BuildError(f"debootstrap failed: see its log in {rootfs}/debootstrap/debootstrap.log", 1)
        for leftover in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        created_by = f"debootstrap --variant=minbase {DEBIAN_SUITE} + {' '.join(DEBIAN_PACKAGES)} (build.py base)"
        _run(
            engine.command(
                "config",
                "--env",
                "LANG=C.UTF-8",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                "python3",
                "--created-by",
                created_by,
                "--label",
                f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} with its Python "
                f"{PYTHON_VERSION}, a local stand-in for python:{PYTHON_VERSION}-slim-{DEBIAN_SUITE}",
                container,
            )
        )
        _run(engine.command("commit", "--quiet", container, LOCAL_BASE))
    size = sum(layer.size for layer in engine.layers(LOCAL_BASE))
    print(f"{LOCAL_BASE}: {human(size)}, made in {time.perf_counter() - started:.0f} s")


def requirement_files(images: Sequence[str] = IMAGES) -> list[Path]:
    """The pinned requirement files the images install from (what their Dockerfiles copy), constraints included."""
    files = {REPO_ROOT / source for image in images for _, source in context_sources(dockerfile(image))}
    return sorted(path for path in files if path.suffix == ".txt")


def audit(options: argparse.Namespace) -> None:
    """pip-audit every pinned requirement of the images; a package the service could not look up is not audited."""
    pip_audit = TOOLS_VENV / "bin" / "pip-audit"
    if not pip_audit.is_file():
        raise BuildError(f"pip-audit is missing from {TOOLS_VENV}: run `make .venv-images`")
    files = [Path(path).resolve() for path in options.requirement] if options.requirement else requirement_files()
    # Every file pins exact versions (constraints.txt pins the whole environment): audit them as they are,
    # without letting pip resolve or install anything.
    command = [
        str(pip_audit),
        "--disable-pip",
        "--no-deps",
        "--format",
        "json",
        "--vulnerability-service",
        options.service,
        "--progress-spinner",
        "off",
    ]
    for path in files:
        command += ["--requirement", str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        findings = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BuildError(
            f"pip-audit could not audit (its {options.service} service is unreachable?): "
            f"{_last_line(result.stderr)}. NOT audited.",
            EXIT_NOT_AUDITED,
        ) from None
    dependencies = findings["dependencies"]
    skipped = [entry for entry in dependencies if entry.get("skip_reason")]
    vulnerable = [entry for entry in dependencies if entry.get("vulns")]
    names = ", ".join(path.name for path in files)
    for entry in vulnerable:
        ids = ", ".join(
            vuln["id"] + (f" (fixed in {', '.join(vuln['fix_versions'])})" if vuln["fix_versions"] else "")
            for vuln in entry["vulns"]
        )
        print(f"{entry['name']} {entry['version']}: {ids}")
    if vulnerable:
        raise BuildError(
            f"{len(vulnerable)} of {len(dependencies)} pinned packages ({names}) have known "
            "vulnerabilities (listed above): bump them in the requirement files",
            1,
        )
    if skipped:
        raise BuildError(
            f"NOT audited: pip-audit's {options.service} service could not look up {len(skipped)} of "
            f"{len(dependencies)} pinned packages ({names}), e.g. {skipped[0]['skip_reason']!r}. pip-audit still "
            "says 'No known vulnerabilities found'; this is not a pass: run it where the service is reachable",
            EXIT_NOT_AUDITED,
        )
    print(f"pip-audit ({options.service}): no known vulnerabilities in {len(dependencies)} pinned packages ({names})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: build (the images), base (a local base image), audit (the pinned requirements)."""
    parser = argparse.ArgumentParser(prog="docker/build.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    images = commands.add_parser("build", help="check the input, build the images, write SBOMs and print sizes")
    images.add_argument("--image", action="append", choices=IMAGES, help="an image to build (repeatable); default all")
    images.add_argument(
        "--engine",
        choices=("auto", "docker", "buildah"),
        default="auto",
        help="auto: docker when a Docker engine answers, else buildah",
    )
    images.add_argument("--base-image", help="the BASE_IMAGE of every Dockerfile; default: the Dockerfiles' default")
    images.add_argument(
        "--torch-variant",
        choices=("cuda", "cpu"),
        default="cuda",
        help="build of the train image: cuda (torch and XGBoost with CUDA) or cpu (their CPU builds), where the CUDA "
        "wheels cannot be had (CI); the steps, serving and Airflow images have neither",
    )
    images.add_argument(
        "--torch-cpu-index-url",
        help="index of torch's CPU build (default: the Dockerfiles' PyTorch index); '' for PyPI and --wheels only",
    )
    images.add_argument(
        "--wheels",
        default=_folder_or_none(os.environ.get("PIP_FIND_LINKS")),
        help="a folder of wheels pip may install from (build context `wheels`); default: "
        "$PIP_FIND_LINKS when it is a folder",
    )
    images.add_argument(
        "--ca-bundle",
        default=os.environ.get("PIP_CERT"),
        help="the CA bundle pip trusts instead of its own, for a TLS-intercepting proxy (e.g. the system bundle with "
        "the proxy's CA): build secret `ca`, never stored in a layer; default: $PIP_CERT",
    )
    images.add_argument("--no-cache", action="store_true", help="rebuild every layer (a clean build's time)")
    images.add_argument("--no-sbom", action="store_true", help="skip the SBOM and the package sizes")
    images.add_argument("--output", default=str(OUTPUT_DIR), help="folder of the SBOMs and reports")

    base = commands.add_parser("base", help=f"build {LOCAL_BASE} from Debian {DEBIAN_SUITE} (buildah, root)")
    base.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    base.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where debootstrap keeps downloaded .debs")
    base.add_argument("--rebuild", action="store_true", help="make it again even when it exists")

    for command in (images, base):
        command.add_argument(
            "--storage-driver",
            help="buildah's storage driver; default: buildah's choice, overlay where the kernel allows it, else vfs "
            "(which works everywhere but copies every layer)",
        )

    audited = commands.add_parser("audit", help="pip-audit the pinned requirements the images install")
    audited.add_argument("--service", choices=("pypi", "osv"), default="pypi", help="pip-audit's vulnerability service")
    audited.add_argument(
        "--requirement",
        action="append",
        help="a pinned requirements file to audit (repeatable); default: those the Dockerfiles copy",
    )
    return parser.parse_args(argv)


def _folder_or_none(value: str | None) -> str | None:
    return value if value and Path(value).is_dir() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a BuildError prints its message on stderr and sets the exit code."""
    options = parse_args(argv)
    command = {"build": build, "base": build_base, "audit": audit}[options.command]
    try:
        command(options)
    except BuildError as error:
        print(f"docker/build.py {options.command}: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
