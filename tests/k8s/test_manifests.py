"""The Kubernetes manifests in include/k8s: valid for every supported Kubernetes, built the same with or without
kubectl, least privilege for every identity, locked-down pods, and a clean checkov scan."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import all_versions

from .policy import (
    CANARY_FILE,
    CHECKOV_CONFIG,
    CLUSTER_SCOPED_KINDS,
    K8S_DIR,
    K8S_VERSIONS,
    REPO_ROOT,
    CheckovReport,
    ManifestError,
    allowed_ports,
    build_kustomization,
    describe,
    kubectl_kustomize,
    pod_security_violations,
    pod_spec,
    run_checkov,
    selects,
    validate_schema,
)

BASE = build_kustomization(K8S_DIR)
OPTIONAL = build_kustomization(K8S_DIR / "optional")
DOCUMENTS = [*BASE, *OPTIONAL]

PART_OF = {"app.kubernetes.io/part-of": "continuous-training"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for document in DOCUMENTS if document["kind"] == kind}


def _grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of a Role."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def _service_account(name: str, namespace: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("document", DOCUMENTS, ids=describe)
def test_every_document_validates_strictly(document: dict[str, Any], version: str) -> None:
    validate_schema(document, version)


def test_supported_versions_have_strict_schemas_and_span_two_minors() -> None:
    oldest, newest = K8S_VERSIONS
    assert {oldest, newest} <= set(all_versions())
    assert int(newest.split(".")[1]) - int(oldest.split(".")[1]) >= 2


def test_validate_schema_names_the_object_and_the_misspelt_field() -> None:
    deployment = copy.deepcopy(_of_kind("Deployment")["model-server"])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    expected = (
        f"Deployment/ml/model-server is invalid for Kubernetes {K8S_VERSIONS[0]} at "
        "spec.template.spec.containers.0.securityContext: .*'readOnlyRootFileSystem' was unexpected"
    )
    with pytest.raises(ManifestError, match=expected):
        validate_schema(deployment, K8S_VERSIONS[0])


def test_validate_schema_rejects_a_kind_it_has_no_schema_for() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ManifestError, match="Widget/w: Couldn't find schema for kind Widget"):
        validate_schema(widget, K8S_VERSIONS[-1])


def test_base_lists_every_manifest_and_leaves_the_optional_ones_out() -> None:
    listed = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)
    assert [describe(document) for document in OPTIONAL] == ["PersistentVolumeClaim/ml/ml-data"]
    assert not [document for document in BASE if document["kind"] == "PersistentVolumeClaim"]


@pytest.mark.parametrize("folder", [K8S_DIR, K8S_DIR / "optional"], ids=lambda folder: folder.name)
def test_kubectl_kustomize_builds_the_same_documents(folder: Path) -> None:
    built = kubectl_kustomize(folder)
    if built is None:
        pytest.skip("kubectl is not installed; build_kustomization stands in for it in the other tests")

    def canonical(documents: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(document, sort_keys=True) for document in documents)

    assert canonical(built) == canonical(build_kustomization(folder))


def test_build_kustomization_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: []\n")
    with pytest.raises(ManifestError, match=r"uses \['patches'\], which build_kustomization does not implement"):
        build_kustomization(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [gone.yaml]\n")
    with pytest.raises(ManifestError, match=r"lists resource 'gone.yaml', but .*gone.yaml does not exist"):
        build_kustomization(tmp_path)


def test_every_object_is_labelled_and_namespaced() -> None:
    problems = []
    for document in DOCUMENTS:
        labels = document["metadata"].get("labels") or {}
        if not PART_OF.items() <= labels.items() or not labels.get("app.kubernetes.io/component"):
            problems.append(f"{describe(document)}: labels {labels}")
        if document["kind"] not in CLUSTER_SCOPED_KINDS and document["metadata"].get("namespace") != "ml":
            problems.append(f"{describe(document)}: not in namespace ml")
    assert problems == []


def test_only_the_deploy_step_gets_an_api_token() -> None:
    automount = {
        name: account.get("automountServiceAccountToken") for name, account in _of_kind("ServiceAccount").items()
    }
    assert automount == {"ml-steps": False, "ml-train": False, "ml-deploy": True, "model-server": False}


def test_no_cluster_wide_or_wildcard_permissions() -> None:
    assert not _of_kind("ClusterRole") and not _of_kind("ClusterRoleBinding")
    for role in _of_kind("Role").values():
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], describe(role)


def test_airflow_worker_manages_pods_in_ml_and_nothing_else() -> None:
    worker = _service_account("airflow-worker", "airflow")
    bindings = [binding for binding in _of_kind("RoleBinding").values() if worker in binding["subjects"]]
    assert [(binding["metadata"]["namespace"], binding["roleRef"]["kind"]) for binding in bindings] == [("ml", "Role")]
    role = _of_kind("Role")[bindings[0]["roleRef"]["name"]]
    assert role["metadata"]["namespace"] == "ml"
    assert _grants(role) == {
        ("", "pods"): {"create", "get", "list", "watch", "delete", "patch"},
        ("", "pods/log"): {"get", "list"},
        ("", "events"): {"get", "list", "watch"},
    }


def test_ml_deploy_changes_the_model_server_deployments_only() -> None:
    """The deploy step patches the serving Deployment and runs its canary; it only reads pods (canary metrics)."""
    binding = _of_kind("RoleBinding")["ml-deploy"]
    assert binding["subjects"] == [_service_account("ml-deploy", "ml")]
    role = _of_kind("Role")[binding["roleRef"]["name"]]
    assert _grants(role) == {
        ("apps", "deployments"): {"get", "patch", "update", "create", "delete"},
        ("", "pods"): {"get", "list"},
    }
    by_name = {
        tuple(rule.get("resourceNames", [])): set(rule["verbs"])
        for rule in role["rules"]
        if "deployments" in rule["resources"]
    }
    # create cannot be limited to a name in Kubernetes RBAC; every other write names its Deployment
    assert by_name == {
        ("model-server",): {"get", "patch", "update"},
        (): {"create"},
        ("model-server-canary",): {"get", "patch", "update", "delete"},
    }


def _secrets_with_values(path: Path) -> list[dict[str, Any]]:
    """Secrets with data in a YAML file; a file that declares no Secret is not parsed (not all YAML is Kubernetes)."""
    text = path.read_text(errors="replace")
    if not re.search(r"^kind:\s*Secret\s*$", text, re.MULTILINE):
        return []
    return [
        document
        for document in yaml.safe_load_all(text)
        if isinstance(document, dict)
        and document.get("kind") == "Secret"
        and (document.get("data") or document.get("stringData"))
    ]


def test_no_secret_with_values_is_in_the_repository() -> None:
    # Secrets are created in the cluster (include/k8s/README.md); a committed one would leak its values.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.yaml", "*.yml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "include/k8s/model-server.yaml" in listed
    paths = [REPO_ROOT / relative for relative in listed if (REPO_ROOT / relative).is_file()]
    assert [f"{path}: {describe(secret)}" for path in paths for secret in _secrets_with_values(path)] == []


def test_a_committed_secret_would_be_found(tmp_path: Path) -> None:
    leaked = tmp_path / "leak.yaml"
    leaked.write_text(
        "kind: ConfigMap\nmetadata: {name: fine}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: leak}\nstringData: {AWS_SECRET_ACCESS_KEY: x}\n"
    )
    assert [describe(secret) for secret in _secrets_with_values(leaked)] == ["Secret/leak"]


def test_every_container_is_locked_down() -> None:
    workloads = [document for document in DOCUMENTS if pod_spec(document) is not None]
    assert [describe(workload) for workload in workloads] == ["Deployment/ml/model-server"]
    assert [violation for workload in workloads for violation in pod_security_violations(workload)] == []


def test_pod_security_violations_names_every_broken_rule() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "ml"},
        "spec": {
            "hostNetwork": True,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}},
                    "resources": {"requests": {"cpu": "1"}},
                }
            ],
        },
    }
    container = "Pod/ml/bad container app"
    assert pod_security_violations(pod) == [
        "Pod/ml/bad: hostNetwork is true",
        f"{container}: securityContext.runAsUser is 0, expected 10001",
        f"{container}: securityContext.runAsGroup is None, expected 10001",
        f"{container}: securityContext.readOnlyRootFilesystem is None, expected True",
        f"{container}: securityContext.allowPrivilegeEscalation is None, expected False",
        f"{container}: securityContext.capabilities.drop is None, expected to contain 'ALL'",
        f"{container}: securityContext.capabilities.add is ['NET_ADMIN'], expected none",
        f"{container}: resources.requests has no memory",
        f"{container}: resources.limits has no cpu or memory",
    ]


def test_everything_is_denied_unless_a_policy_allows_it() -> None:
    default_deny = [
        policy
        for policy in _of_kind("NetworkPolicy").values()
        if policy["spec"]["podSelector"] == {}
        and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    ]
    assert [policy["metadata"]["name"] for policy in default_deny] == ["default-deny-all"]


def test_network_policies_open_what_each_pod_needs_and_no_more() -> None:
    policies = list(_of_kind("NetworkPolicy").values())
    server = _of_kind("Deployment")["model-server"]["spec"]["template"]["metadata"]["labels"]
    step = {**PART_OF, "app.kubernetes.io/component": "step", "continuous-training/step": "train"}
    deploy_step = {**step, "continuous-training/step": "deploy"}
    dns_mlflow_storage = {("UDP", 53), ("TCP", 53), ("TCP", 5000), ("TCP", 443)}
    assert allowed_ports(policies, step, "Egress") == dns_mlflow_storage
    assert allowed_ports(policies, deploy_step, "Egress") == dns_mlflow_storage | {("TCP", 6443), ("TCP", 8080)}
    assert allowed_ports(policies, server, "Egress") == dns_mlflow_storage
    assert allowed_ports(policies, server, "Ingress") == {("TCP", 8080)}
    assert allowed_ports(policies, step, "Ingress") == set()
    assert allowed_ports(policies, {"app": "other"}, "Egress") == set()


def test_model_server_objects_fit_together() -> None:
    deployment = _of_kind("Deployment")["model-server"]
    pod = deployment["spec"]["template"]
    labels, spec = pod["metadata"]["labels"], pod["spec"]
    container = spec["containers"][0]
    service = _of_kind("Service")["model-server"]
    hpa = _of_kind("HorizontalPodAutoscaler")["model-server"]
    pdb = _of_kind("PodDisruptionBudget")["model-server"]

    assert selects(deployment["spec"]["selector"], labels)
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert selects(pdb["spec"]["selector"], labels)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-server"}
    # The HPA owns the replica count; it keeps more pods than the PDB must leave, so node drains can proceed.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    # The Service and the probes use the container's named port.
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert port_names == {"http": 8080}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (probe["path"], probe["port"]) for kind, probe in probes.items()} == {
        "startupProbe": ("/v2/health/live", "http"),
        "livenessProbe": ("/v2/health/live", "http"),
        "readinessProbe": ("/v2/health/ready", "http"),
    }
    # Endpoints drain during the preStop sleep, inside the grace period.
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] < spec["terminationGracePeriodSeconds"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["serviceAccountName"] in _of_kind("ServiceAccount") and spec["automountServiceAccountToken"] is False
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["ml-object-storage", "ml-mlflow"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert (env["MODEL_NAME"], env["MODEL_ALIAS"]) == ("churn-classifier", "champion")
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}


def test_checkov_finds_nothing_in_the_manifests_and_pods(checkov_report: CheckovReport) -> None:
    assert [str(failed) for failed in checkov_report.failed if failed.file != CANARY_FILE] == []
    assert checkov_report.passed > len(DOCUMENTS)


def test_checkov_reports_the_privileged_canary(checkov_report: CheckovReport) -> None:
    canary_checks = {failed.check_id for failed in checkov_report.failed if failed.file == CANARY_FILE}
    assert "CKV_K8S_16" in canary_checks  # "Container should not be privileged"


def test_every_skipped_check_says_why() -> None:
    skipped = yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]
    lines = CHECKOV_CONFIG.read_text().splitlines()
    for check_id in skipped:
        [line] = [line for line in lines if re.match(rf"\s*- {check_id}\s", line)]
        assert re.search(r"#\s*\S.{20,}", line), f"{CHECKOV_CONFIG.name}: {check_id} has no justification comment"


def test_run_checkov_without_its_virtualenv_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"checkov is not installed at .*: run `make \.venv-checkov`"):
        run_checkov(tmp_path, venv=tmp_path / "missing")
