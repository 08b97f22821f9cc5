"""The Kubernetes manifests: the base in include/k8s (valid for every supported Kubernetes, built the same with or
without kubectl) and what ``make render`` writes from it, every model's own server and deploy identity among them:
least privilege for every identity, no object shared by two models, locked-down pods, and a clean checkov scan."""

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

from mlsteps.errors import ConfigError
from orchestration.models import load_models
from orchestration.render import MODEL_SERVER_TEMPLATE, MODEL_TEMPLATES, model_server_manifests

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
    load_documents,
    pod_security_violations,
    pod_spec,
    run_checkov,
    selects,
    validate_schema,
)

BASE = build_kustomization(K8S_DIR)
OPTIONAL = build_kustomization(K8S_DIR / "optional")
DOCUMENTS = [*BASE, *OPTIONAL]
MODELS = sorted(entry.name for entry in load_models() if entry.name)

PART_OF = {"app.kubernetes.io/part-of": "continuous-training"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


@pytest.fixture(scope="module")
def manifests(rendered: Path) -> list[dict[str, Any]]:
    """Everything ``kubectl apply -f build/k8s/manifests/`` applies, and the optional claim."""
    rendered_documents = [
        doc for path in sorted((rendered / "manifests").glob("*.yaml")) for doc in load_documents(path)
    ]
    return [*rendered_documents, *OPTIONAL]


def _of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for document in documents if document["kind"] == kind}


def _server(model: str) -> str:
    """The default name of a model's Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget."""
    return f"model-server-{model}"


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


def test_validate_schema_names_the_object_and_the_misspelt_field(manifests: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(_of_kind(manifests, "Deployment")[_server("churn-classifier")])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    expected = (
        f"Deployment/ml/model-server-churn-classifier is invalid for Kubernetes {K8S_VERSIONS[0]} at "
        "spec.template.spec.containers.0.securityContext: .*'readOnlyRootFileSystem' was unexpected"
    )
    with pytest.raises(ManifestError, match=expected):
        validate_schema(deployment, K8S_VERSIONS[0])


def test_validate_schema_rejects_a_kind_it_has_no_schema_for() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ManifestError, match="Widget/w: Couldn't find schema for kind Widget"):
        validate_schema(widget, K8S_VERSIONS[-1])


def test_base_lists_every_manifest_but_the_per_model_templates_and_the_optional_ones() -> None:
    listed = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(MODEL_TEMPLATES) <= on_disk
    assert sorted(listed) == sorted(on_disk - set(MODEL_TEMPLATES))
    assert [describe(document) for document in OPTIONAL] == ["PersistentVolumeClaim/ml/ml-data"]
    assert not [document for document in BASE if document["kind"] == "PersistentVolumeClaim"]


def test_a_template_placeholder_that_render_does_not_fill_is_refused(tmp_path: Path) -> None:
    template = (K8S_DIR / MODEL_SERVER_TEMPLATE).read_text()
    (tmp_path / MODEL_SERVER_TEMPLATE).write_text(template.replace("name: <deployment>", "name: <model-name>", 1))
    [model, *_] = [entry.settings for entry in load_models() if entry.settings]
    with pytest.raises(ConfigError, match=r"model-server\.yaml: unknown placeholders \['<model-name>'\]; known: "):
        model_server_manifests(model, tmp_path)


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


def test_every_object_is_labelled_and_namespaced(manifests: list[dict[str, Any]]) -> None:
    problems = []
    for document in manifests:
        labels = document["metadata"].get("labels") or {}
        if not PART_OF.items() <= labels.items() or not labels.get("app.kubernetes.io/component"):
            problems.append(f"{describe(document)}: labels {labels}")
        if document["kind"] not in CLUSTER_SCOPED_KINDS and document["metadata"].get("namespace") != "ml":
            problems.append(f"{describe(document)}: not in namespace ml")
    assert problems == []


def test_only_each_models_deploy_step_gets_an_api_token(manifests: list[dict[str, Any]]) -> None:
    accounts = _of_kind(manifests, "ServiceAccount")
    automount = {name: account.get("automountServiceAccountToken") for name, account in accounts.items()}
    deploy_accounts = {f"ml-deploy-{model}": True for model in MODELS}
    assert automount == {"ml-steps": False, "ml-train": False, "model-server": False, **deploy_accounts}


def test_no_two_manifests_name_one_object(manifests: list[dict[str, Any]]) -> None:
    names = [(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in manifests]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_its_own_server_and_deploy_identity(manifests: list[dict[str, Any]], model: str) -> None:
    own = [doc for doc in manifests if doc["metadata"]["labels"].get("continuous-training/model") == model]
    server, account = _server(model), f"ml-deploy-{model}"
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in own} == {
        ("Deployment", server),
        ("Service", server),
        ("HorizontalPodAutoscaler", server),
        ("PodDisruptionBudget", server),
        ("ServiceAccount", account),
        ("Role", account),
        ("RoleBinding", account),
    }
    serving = [doc for doc in own if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"]
    assert {doc["metadata"]["labels"]["app.kubernetes.io/instance"] for doc in serving} == {model}
    [container] = _of_kind(manifests, "Deployment")[server]["spec"]["template"]["spec"]["containers"]
    assert {item["name"]: item["value"] for item in container["env"]}["MODEL_NAME"] == model


def test_no_cluster_wide_or_wildcard_permissions(manifests: list[dict[str, Any]]) -> None:
    assert not _of_kind(manifests, "ClusterRole") and not _of_kind(manifests, "ClusterRoleBinding")
    for role in _of_kind(manifests, "Role").values():
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], describe(role)


def test_airflow_worker_manages_pods_in_ml_and_nothing_else(manifests: list[dict[str, Any]]) -> None:
    worker = _service_account("airflow-worker", "airflow")
    bindings = [binding for binding in _of_kind(manifests, "RoleBinding").values() if worker in binding["subjects"]]
    assert [(binding["metadata"]["namespace"], binding["roleRef"]["kind"]) for binding in bindings] == [("ml", "Role")]
    role = _of_kind(manifests, "Role")[bindings[0]["roleRef"]["name"]]
    assert role["metadata"]["namespace"] == "ml"
    assert _grants(role) == {
        ("", "pods"): {"create", "get", "list", "watch", "delete", "patch"},
        ("", "pods/log"): {"get", "list"},
        ("", "events"): {"get", "list", "watch"},
    }


@pytest.mark.parametrize("model", MODELS)
def test_a_models_deploy_step_changes_its_own_model_servers_deployments_only(
    manifests: list[dict[str, Any]], model: str
) -> None:
    """A model's deploy step patches its serving Deployment and runs its canary; it only reads pods (canary metrics)."""
    account = f"ml-deploy-{model}"
    binding = _of_kind(manifests, "RoleBinding")[account]
    assert binding["subjects"] == [_service_account(account, "ml")]
    bound = [
        other for other in _of_kind(manifests, "RoleBinding").values() if binding["subjects"][0] in other["subjects"]
    ]
    assert bound == [binding], "no other Role is bound to the account"
    role = _of_kind(manifests, "Role")[binding["roleRef"]["name"]]
    assert _grants(role) == {
        ("apps", "deployments"): {"get", "patch", "update", "create", "delete"},
        ("", "pods"): {"get", "list"},
    }
    by_name = {
        tuple(rule.get("resourceNames", [])): set(rule["verbs"])
        for rule in role["rules"]
        if "deployments" in rule["resources"]
    }
    # create cannot be limited to a name in Kubernetes RBAC; every other write names this model's Deployments
    assert by_name == {
        (_server(model),): {"get", "patch", "update"},
        (): {"create"},
        (f"{_server(model)}-canary",): {"get", "patch", "update", "delete"},
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


def test_every_container_is_locked_down(manifests: list[dict[str, Any]]) -> None:
    workloads = [document for document in manifests if pod_spec(document) is not None]
    assert [describe(workload) for workload in workloads] == [f"Deployment/ml/{_server(model)}" for model in MODELS]
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
        for policy in _of_kind(BASE, "NetworkPolicy").values()
        if policy["spec"]["podSelector"] == {}
        and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    ]
    assert [policy["metadata"]["name"] for policy in default_deny] == ["default-deny-all"]


@pytest.mark.parametrize("model", MODELS)
def test_network_policies_open_what_each_pod_needs_and_no_more(manifests: list[dict[str, Any]], model: str) -> None:
    policies = list(_of_kind(manifests, "NetworkPolicy").values())
    server = _of_kind(manifests, "Deployment")[_server(model)]["spec"]["template"]["metadata"]["labels"]
    canary = {**server, "track": "canary"}
    step = {**PART_OF, "app.kubernetes.io/component": "step", "continuous-training/step": "train"}
    deploy_step = {**step, "continuous-training/step": "deploy", "continuous-training/model": model}
    dns_mlflow_storage = {("UDP", 53), ("TCP", 53), ("TCP", 5000), ("TCP", 443)}
    assert allowed_ports(policies, step, "Egress") == dns_mlflow_storage
    assert allowed_ports(policies, deploy_step, "Egress") == dns_mlflow_storage | {("TCP", 6443), ("TCP", 8080)}
    for pod in (server, canary):
        assert allowed_ports(policies, pod, "Egress") == dns_mlflow_storage
        assert allowed_ports(policies, pod, "Ingress") == {("TCP", 8080)}
    assert allowed_ports(policies, step, "Ingress") == set()
    assert allowed_ports(policies, {"app": "other"}, "Egress") == set()
    # The deploy step's egress on 8080 leads to this model's server pods (stable and canary): selected by component.
    [to_servers] = _of_kind(manifests, "NetworkPolicy")["deploy-step-egress-model-server"]["spec"]["egress"]
    assert all(selects(peer["podSelector"], pod) for peer in to_servers["to"] for pod in (server, canary))


@pytest.mark.parametrize("model", MODELS)
def test_model_server_objects_fit_together(manifests: list[dict[str, Any]], model: str) -> None:
    name = _server(model)
    deployment = _of_kind(manifests, "Deployment")[name]
    pod = deployment["spec"]["template"]
    labels, spec = pod["metadata"]["labels"], pod["spec"]
    container = spec["containers"][0]
    service = _of_kind(manifests, "Service")[name]
    hpa = _of_kind(manifests, "HorizontalPodAutoscaler")[name]
    pdb = _of_kind(manifests, "PodDisruptionBudget")[name]

    assert selects(deployment["spec"]["selector"], labels)
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert selects({"matchLabels": service["spec"]["selector"]}, {**labels, "track": "canary"})
    assert selects(pdb["spec"]["selector"], labels)
    # No selector of this model's objects selects another model's server pods.
    for other in MODELS:
        if other != model:
            theirs = _of_kind(manifests, "Deployment")[_server(other)]["spec"]["template"]["metadata"]["labels"]
            selectors = [deployment["spec"]["selector"], {"matchLabels": service["spec"]["selector"]}]
            assert not any(selects(selector, theirs) for selector in [*selectors, pdb["spec"]["selector"]])
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == model
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
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
    accounts = _of_kind(manifests, "ServiceAccount")
    assert spec["serviceAccountName"] in accounts and spec["automountServiceAccountToken"] is False
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["ml-object-storage", "ml-mlflow"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert (env["MODEL_NAME"], env["MODEL_ALIAS"]) == (model, "champion")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc.cluster.local:5000", "the steps' MLflow server"
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}


def test_checkov_finds_nothing_in_the_manifests_and_pods(
    checkov_report: CheckovReport, manifests: list[dict[str, Any]]
) -> None:
    assert [str(failed) for failed in checkov_report.failed if failed.file != CANARY_FILE] == []
    assert checkov_report.passed > len(manifests)


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
