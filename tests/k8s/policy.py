"""Checks on Kubernetes documents that need no cluster: strict schemas, the pod security rules, kustomize builds
and checkov's policy scan.

The manifest tests (include/k8s) and the pod-spec tests (rendered KubernetesPodOperator pods) share them, so
every helper takes plain documents: dicts as ``kubectl apply`` would read them (for a ``V1Pod``, use
``ApiClient().sanitize_for_serialization(pod)``, which also drops unset fields).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError

from orchestration.render import CLUSTER_SCOPED_KINDS

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "include" / "k8s"
CHECKOV_VENV = REPO_ROOT / ".venv-checkov"
CHECKOV_CONFIG = REPO_ROOT / ".checkov.yaml"

# The oldest and the newest Kubernetes we support (docs/cluster.md says the same). 1.37 is the newest that
# kubernetes-validate 1.37 ships strict schemas for; 1.33, four minors back, covers clusters that are on the
# managed clouds' extended support. Move both when bumping kubernetes-validate. The manifests need >= 1.30
# (preStop sleep action).
K8S_VERSIONS = ("1.33.0", "1.37.0")

# The user and group every container runs as (the images create them; the manifests and pod specs set them).
RUN_AS_ID = 10001


# Where the pod spec sits in each kind of workload.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

# Container securityContext settings every container must end up with (the pod's context fills in what the
# container's leaves out, as the kubelet does).
REQUIRED_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_ID,
    "runAsGroup": RUN_AS_ID,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}

# The kustomization keys build_kustomization understands; anything else must be built by kubectl.
SUPPORTED_KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "namespace", "resources"})


# A pod that breaks an unskipped checkov check, scanned along with the manifests: proves in the same (slow) run
# that checkov reads the files and reports failures, so a clean result means something.
CANARY_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "checkov-canary", "namespace": "ml"},
    "spec": {"containers": [{"name": "canary", "image": "busybox:1.37", "securityContext": {"privileged": True}}]},
}
CANARY_FILE = "pod-checkov-canary.yaml"


class ManifestError(Exception):
    """A document or a kustomization that does not hold up; the message names it and says what is wrong."""


def describe(document: dict[str, Any]) -> str:
    """``Kind/namespace/name`` (or ``Kind/name`` for cluster-scoped objects), to name a document in messages."""
    metadata = document.get("metadata") or {}
    parts = [document.get("kind", "<no kind>"), metadata.get("namespace"), metadata.get("name", "<no name>")]
    return "/".join(str(part) for part in parts if part)


def validate_schema(document: dict[str, Any], version: str) -> None:
    """Validate one document against the strict OpenAPI schema of a Kubernetes version.

    Strict schemas reject unknown fields, so a misspelt key (``readOnlyRootFileSystem``) fails here rather than
    being dropped by a cluster with no more than a warning.

    Args:
        document: the object as a dict (apiVersion, kind, metadata, ...).
        version: a Kubernetes version such as ``"1.33.0"`` (see ``K8S_VERSIONS``).

    Raises:
        ManifestError: naming the document, the version, the path of the bad field and the schema's complaint; or
            that there is no schema for its kind and apiVersion in that version.
    """
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path) or "<top level>"
        raise ManifestError(
            f"{describe(document)} is invalid for Kubernetes {version} at {path}: {exc.message}"
        ) from None
    except (SchemaNotFoundError, VersionNotSupportedError) as exc:
        raise ManifestError(f"{describe(document)}: {exc.message}; fix apiVersion/kind or K8S_VERSIONS") from None


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def build_kustomization(folder: Path) -> list[dict[str, Any]]:
    """Build a kustomization the way ``kubectl kustomize`` does, for machines without kubectl.

    Supports what the folders in include/k8s use: ``resources`` (files, or folders with their own kustomization)
    and ``namespace``. Anything else raises, so the result never silently differs from kubectl's.

    Args:
        folder: a folder with a kustomization.yaml.

    Returns:
        The documents in the order of ``resources``.

    Raises:
        ManifestError: the kustomization uses a key this builder does not implement, or lists a missing resource.
    """
    kustomization_file = folder / "kustomization.yaml"
    kustomization = yaml.safe_load(kustomization_file.read_text())
    unsupported = sorted(set(kustomization) - SUPPORTED_KUSTOMIZATION_KEYS)
    if unsupported:
        raise ManifestError(
            f"{kustomization_file} uses {unsupported}, which build_kustomization does not implement; "
            f"implement them in tests/k8s/policy.py or keep to {sorted(SUPPORTED_KUSTOMIZATION_KEYS)}"
        )
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            documents.extend(build_kustomization(path))
        elif path.is_file():
            documents.extend(load_documents(path))
        else:
            raise ManifestError(f"{kustomization_file} lists resource {resource!r}, but {path} does not exist")
    namespace = kustomization.get("namespace")
    if namespace:
        for document in documents:
            if document["kind"] not in CLUSTER_SCOPED_KINDS:
                document.setdefault("metadata", {})["namespace"] = namespace
    return documents


def kubectl_kustomize(folder: Path) -> list[dict[str, Any]] | None:
    """``kubectl kustomize folder`` as documents, or None where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    built = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True)
    return [document for document in yaml.safe_load_all(built.stdout) if document]


def write_documents(documents: Iterable[dict[str, Any]], folder: Path) -> list[Path]:
    """Write each document to its own ``<kind>-<name>.yaml`` in folder, so a scan's findings name the object.

    Raises:
        ManifestError: two documents would share a file (same kind and name), which would hide one from a scan.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for document in documents:
        path = folder / f"{document['kind'].lower()}-{document['metadata']['name']}.yaml"
        if path.exists():
            raise ManifestError(f"{describe(document)}: {path} is already written; give the objects distinct names")
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        paths.append(path)
    return paths


def pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Pod or of a workload's pod template; None for other kinds."""
    path = POD_SPEC_PATHS.get(document.get("kind", ""))
    if path is None:
        return None
    spec: Any = document
    for key in path:
        spec = spec.get(key) or {}
    return spec


def pod_security_violations(document: dict[str, Any]) -> list[str]:
    """What a pod (or a workload's pod template) breaks of the rules every pod in namespace ``ml`` follows.

    The rules: cpu and memory requests and limits on every container; non-root as ``RUN_AS_ID``; read-only root
    filesystem; no privilege escalation, no privileged mode, all capabilities dropped and none added; seccomp
    ``RuntimeDefault``; no host network, PID or IPC namespace.

    Args:
        document: any Kubernetes object; kinds without a pod spec have no violations.

    Returns:
        One line per broken rule, naming the object and the container; empty when all hold.
    """
    spec = pod_spec(document)
    if spec is None:
        return []
    name = describe(document)
    violations = [f"{name}: {key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    pod_context = spec.get("securityContext") or {}
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        where = f"{name} container {container.get('name')}"
        violations.extend(f"{where}: {problem}" for problem in _container_violations(container, pod_context))
    return violations


def _container_violations(container: dict[str, Any], pod_context: dict[str, Any]) -> Iterator[str]:
    context = {**pod_context, **(container.get("securityContext") or {})}
    for key, expected in REQUIRED_SECURITY_CONTEXT.items():
        if context.get(key) != expected:
            yield f"securityContext.{key} is {context.get(key)!r}, expected {expected!r}"
    if context.get("privileged"):
        yield "securityContext.privileged is true"
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        yield f"securityContext.capabilities.drop is {capabilities.get('drop')!r}, expected to contain 'ALL'"
    if capabilities.get("add"):
        yield f"securityContext.capabilities.add is {capabilities['add']!r}, expected none"
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        yield f"seccompProfile.type is {seccomp!r}, expected 'RuntimeDefault'"
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        missing = [resource for resource in ("cpu", "memory") if resource not in (resources.get(kind) or {})]
        if missing:
            yield f"resources.{kind} has no {' or '.join(missing)}"


@dataclass(frozen=True)
class FailedCheck:
    """One checkov finding."""

    check_id: str
    name: str
    resource: str
    file: str

    def __str__(self) -> str:
        return f"{self.check_id} ({self.name}): {self.resource} in {self.file}"


@dataclass(frozen=True)
class CheckovReport:
    """The outcome of a checkov scan, less the checks that .checkov.yaml skips."""

    passed: int
    failed: tuple[FailedCheck, ...]


def run_checkov(folder: Path, venv: Path = CHECKOV_VENV) -> CheckovReport:
    """Scan a folder of Kubernetes YAML files with checkov's Kubernetes checks, skipping those in .checkov.yaml.

    checkov pins old boto3 and packaging releases, so it runs from its own virtualenv (``make .venv-checkov``)
    rather than the project's. It takes seconds: scan everything in one call, pods together with the manifests,
    since graph checks look across documents (CKV2_K8S_6 fails a pod that no NetworkPolicy in the scan selects).

    Args:
        folder: the YAML files to scan (e.g. from ``write_documents``).
        venv: the virtualenv that has checkov.

    Returns:
        How many checks passed and every failed one.

    Raises:
        ManifestError: checkov is not installed (with the command that installs it), could not parse a file, or
            failed itself.
    """
    checkov = venv / "bin" / "checkov"
    if not checkov.is_file():
        raise ManifestError(
            f"checkov is not installed at {checkov}: run `make .venv-checkov` in {REPO_ROOT} to create its "
            "virtualenv (it cannot go into .venv: checkov pins old boto3/packaging releases)"
        )
    command = [
        str(checkov),
        *("--directory", str(folder)),
        *("--framework", "kubernetes"),
        *("--config-file", str(CHECKOV_CONFIG)),
        # The checks ship with checkov; without this it also asks its vendor's platform for guidelines.
        "--skip-download",
        *("--output", "json"),
    ]
    scan = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    # Exit code 1 means failed checks, which the report carries; anything else is checkov itself failing.
    if scan.returncode not in (0, 1):
        raise ManifestError(f"checkov exited with {scan.returncode}: {scan.stderr.strip()[-2000:]}")
    results = json.loads(scan.stdout).get("results", {})
    if results.get("parsing_errors"):
        raise ManifestError(f"checkov could not parse {results['parsing_errors']} in {folder}")
    failed = tuple(
        FailedCheck(
            check_id=finding["check_id"],
            name=finding["check_name"],
            resource=finding["resource"],
            file=finding["file_path"].lstrip("/"),
        )
        for finding in results.get("failed_checks", [])
    )
    return CheckovReport(passed=len(results.get("passed_checks", [])), failed=failed)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``) selects an object with these labels."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        present = expression["key"] in labels
        in_values = labels.get(expression["key"]) in (expression.get("values") or [])
        matched = {
            "In": present and in_values,
            "NotIn": not in_values,
            "Exists": present,
            "DoesNotExist": not present,
        }[expression["operator"]]
        if not matched:
            return False
    return True


def allowed_ports(
    policies: Iterable[dict[str, Any]], labels: dict[str, str], direction: str
) -> set[tuple[str, int | str]]:
    """The (protocol, port) pairs the NetworkPolicies open for a pod with these labels, to or from any peer.

    A rule without ``ports`` opens every port; it shows up as ``("*", "*")``.

    Args:
        policies: NetworkPolicy documents of the pod's namespace.
        labels: the pod's labels.
        direction: ``"Ingress"`` or ``"Egress"``.

    Returns:
        The union over every rule of every policy that selects the pod in that direction; empty means denied.
    """
    rules_key = "ingress" if direction == "Ingress" else "egress"
    ports: set[tuple[str, int | str]] = set()
    for policy in policies:
        spec = policy["spec"]
        if direction in spec.get("policyTypes", []) and selects(spec["podSelector"], labels):
            for rule in spec.get(rules_key) or []:
                rule_ports = rule.get("ports") or [{"protocol": "*", "port": "*"}]
                ports.update((port.get("protocol", "TCP"), port.get("port", "*")) for port in rule_ports)
    return ports
