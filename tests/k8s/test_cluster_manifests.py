"""The services around the pipeline (include/k8s/cluster): the MLflow server's manifests pass the same strict schemas,
pod rules and checkov scan as the base, and fit the pipeline's network policies; the Airflow chart's values run the
executor, worker identity, remote logs and environment the pipeline depends on, name every credential by Secret only
and pin their image. With a ``helm`` binary and the chart at hand, helm renders the values too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .policy import (
    CANARY_FILE,
    CANARY_POD,
    K8S_DIR,
    K8S_VERSIONS,
    REPO_ROOT,
    CheckovReport,
    allowed_ports,
    describe,
    load_documents,
    pod_security_violations,
    pod_spec,
    run_checkov,
    selects,
    validate_schema,
    write_documents,
)
from .rendering import CLUSTER_ENV

CLUSTER_DIR = K8S_DIR / "cluster"
MLFLOW = load_documents(CLUSTER_DIR / "mlflow.yaml")
VALUES_FILE = CLUSTER_DIR / "airflow-values.yaml"
VALUES: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text())
CLUSTER_DOC = REPO_ROOT / "docs" / "cluster.md"
HELM_INSTALL = (
    "helm upgrade --install airflow apache-airflow/airflow -n airflow -f include/k8s/cluster/airflow-values.yaml"
)

# Keys (lower case) whose value is a credential, as the chart names them: fernetKey, apiSecretKey, jwtSecret,
# webserverSecretKey, data.metadataConnection.pass, redis.password, dags.gitSync.sshKey, kerberos.keytabBase64Content.
# The chart's references to Secrets end in ...SecretName instead.
CREDENTIAL_KEY = re.compile(r"(password|pass|secret|secretkey|fernetkey|token|sshkey|base64content)$")
CREDENTIAL_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# user:password@ in a URL (a connection string with its password in it).
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# The executor's and Celery's workers, the scheduler and the services around them: each gets requests and limits.
AIRFLOW_COMPONENTS = ("scheduler", "apiServer", "dagProcessor", "triggerer", "workers", "statsd", "migrateDatabaseJob")


def _of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for document in documents if document["kind"] == kind}


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) pair of a YAML tree, containers included; list items are numbered."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _walk(child, (*path, str(key)))


def plaintext_credentials(tree: Any) -> list[str]:
    """Where a values file or manifest holds a credential itself rather than naming the Secret that holds it.

    Looks for keys that carry credentials in the Airflow chart, environment variables named like credentials with a
    literal value, and URLs with a password. The chart's ``secret`` list only names Secrets and keys in them.

    Returns:
        One ``path: why`` line per finding; empty when there is none.
    """
    found = []
    for path, value in _walk(tree):
        where = ".".join(path) or "<top level>"
        if path[:1] == ("secret",):
            continue
        if isinstance(value, str) and value and path and CREDENTIAL_KEY.search(path[-1].lower()):
            found.append(f"{where}: a credential in the file; name a Secret instead")
        if isinstance(value, str) and URL_WITH_PASSWORD.search(value):
            found.append(f"{where}: a URL with a password; read it from a Secret")
        if isinstance(value, dict) and value.get("value") and CREDENTIAL_ENV.search(str(value.get("name", ""))):
            found.append(f"{where}: {value['name']} has a literal value; use valueFrom.secretKeyRef")
    return found


def _unpinned(image: str | None) -> bool:
    """True for an image without a tag or digest, or with the moving tag ``latest``."""
    if not image:
        return True
    if "@sha256:" in image:
        return False
    name, _, tag = image.rpartition(":")
    return not name or "/" in tag or tag == "latest"


def _containers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [spec for spec in map(pod_spec, documents) if spec is not None]
    return [container for spec in specs for container in [*spec.get("initContainers", []), *spec["containers"]]]


def _pinned_version(requirements: Path, package: str) -> str:
    [version] = re.findall(rf"^{re.escape(package)}==(\S+)", requirements.read_text(), re.MULTILINE)
    return version


def _mlflow_url() -> str:
    service = _of_kind(MLFLOW, "Service")["mlflow"]
    [port] = service["spec"]["ports"]
    return f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port['port']}"


# MLflow: the same checks as the base manifests.


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("document", MLFLOW, ids=describe)
def test_every_mlflow_document_validates_strictly(document: dict[str, Any], version: str) -> None:
    validate_schema(document, version)


def test_the_mlflow_server_is_locked_down() -> None:
    workloads = [document for document in MLFLOW if pod_spec(document) is not None]
    assert [describe(workload) for workload in workloads] == ["Deployment/mlflow/mlflow"]
    assert [violation for workload in workloads for violation in pod_security_violations(workload)] == []
    # The read-only root filesystem leaves /tmp (and HOME) as the only place to write.
    [container] = _containers(workloads)
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
    assert {item["name"]: item.get("value") for item in container["env"]}["HOME"] == "/tmp"


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> CheckovReport:
    """One checkov scan of the MLflow manifests, with the privileged canary pod that proves the scan reports."""
    folder = tmp_path_factory.mktemp("checkov-cluster")
    write_documents([*MLFLOW, CANARY_POD], folder)
    return run_checkov(folder)


def test_checkov_finds_nothing_in_the_mlflow_manifests(checkov_report: CheckovReport) -> None:
    assert [str(failed) for failed in checkov_report.failed if failed.file != CANARY_FILE] == []
    assert "CKV_K8S_16" in {failed.check_id for failed in checkov_report.failed if failed.file == CANARY_FILE}
    assert checkov_report.passed > len(MLFLOW)


def test_mlflow_objects_fit_together() -> None:
    deployment = _of_kind(MLFLOW, "Deployment")["mlflow"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    service = _of_kind(MLFLOW, "Service")["mlflow"]
    pdb = _of_kind(MLFLOW, "PodDisruptionBudget")["mlflow"]

    assert selects(deployment["spec"]["selector"], labels)
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert selects(pdb["spec"]["selector"], labels)
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"], "a node drain can evict a pod"
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {"http": 5000}
    assert service["spec"]["ports"] == [{"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP"}]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {(probe["path"], probe["port"]) for probe in probes.values()} == {("/health", "http")}
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] < spec["terminationGracePeriodSeconds"]
    account = _of_kind(MLFLOW, "ServiceAccount")[spec["serviceAccountName"]]
    assert account["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False

    # The server runs the MLflow release the clients pin, with the drivers for Postgres and S3 (the -full image).
    assert (
        container["image"] == f"ghcr.io/mlflow/mlflow:v{_pinned_version(REPO_ROOT / 'constraints.txt', 'mlflow')}-full"
    )
    assert container["command"] == ["mlflow", "server"]
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in container["args"])
    assert "serve-artifacts" in args and args["artifacts-destination"].startswith("s3://")
    # Clients call it by the Service's name; MLflow answers only the Host headers it is told about.
    assert _mlflow_url().removeprefix("http://") in args["allowed-hosts"].split(",")
    # The database URL (with its password) comes from a Secret, read by `mlflow server` as --backend-store-uri.
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert "backend-store-uri" not in args
    assert plaintext_credentials(MLFLOW) == []


def test_the_pipeline_and_airflow_reach_mlflow_and_nothing_else_does() -> None:
    server = _of_kind(MLFLOW, "Deployment")["mlflow"]["spec"]["template"]["metadata"]["labels"]
    policies = list(_of_kind(MLFLOW, "NetworkPolicy").values())
    namespace = _of_kind(MLFLOW, "Namespace")["mlflow"]["metadata"]["name"]

    # The steps and model servers in ml may call pods with these labels in this namespace on the Service's port.
    pipeline_policy = _of_kind(load_documents(K8S_DIR / "networkpolicies.yaml"), "NetworkPolicy")
    rules = pipeline_policy["egress-dns-mlflow-storage"]["spec"]["egress"]
    to_mlflow = [
        rule
        for rule in rules
        for peer in rule["to"]
        if peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": namespace}
        and selects(peer.get("podSelector", {}), server)
    ]
    assert [rule["ports"] for rule in to_mlflow] == [[{"protocol": "TCP", "port": 5000}]]
    assert _mlflow_url() == CLUSTER_ENV["MLFLOW_TRACKING_URI"], "the address make render gives the pods"

    assert allowed_ports(policies, server, "Ingress") == {("TCP", 5000)}
    [ingress] = _of_kind(MLFLOW, "NetworkPolicy")["mlflow-ingress"]["spec"]["ingress"]
    callers = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in ingress["from"]}
    assert callers == {"ml", "airflow"} and all(set(peer) == {"namespaceSelector"} for peer in ingress["from"])
    assert allowed_ports(policies, server, "Egress") == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 443)}
    default_deny = [
        policy["metadata"]["name"]
        for policy in policies
        if policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ]
    assert default_deny == ["default-deny-all"]


# The Airflow chart's values: what the pipeline depends on.


def test_airflow_runs_the_kubernetes_executor_and_the_pinned_airflow() -> None:
    assert VALUES["executor"] == "KubernetesExecutor"
    assert VALUES["airflowVersion"] == _pinned_version(REPO_ROOT / "requirements.txt", "apache-airflow")
    # An external Postgres, its URL in a Secret.
    assert VALUES["postgresql"] == {"enabled": False} and list(VALUES["data"]) == ["metadataSecretName"]
    assert not VALUES["dags"]["gitSync"]["enabled"], "the DAGs are baked into the image"


def test_airflow_workers_run_as_the_account_the_rbac_binds() -> None:
    [binding] = _of_kind(load_documents(K8S_DIR / "rbac-airflow-worker.yaml"), "RoleBinding").values()
    [subject] = binding["subjects"]
    account = VALUES["workers"]["serviceAccount"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account["name"])
    # The KubernetesPodOperator starts the step pods with the worker pod's own token.
    assert account["create"] is True and account["automountServiceAccountToken"] is True
    # The release goes into the subject's namespace.
    assert subject["namespace"] == "airflow" and HELM_INSTALL in CLUSTER_DOC.read_text()


def test_airflow_gives_the_dags_the_cluster_environment() -> None:
    env = {item["name"]: item["value"] for item in VALUES["env"]}
    assert {name: env.get(name) for name in CLUSTER_ENV} == CLUSTER_ENV
    assert env["MLFLOW_TRACKING_URI"] == _mlflow_url()
    connection = yaml.safe_load(env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    assert connection == {"conn_type": "kubernetes", "extra": {"in_cluster": True}}


def test_task_logs_go_to_s3_through_a_connection_from_a_secret() -> None:
    logging = VALUES["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"].startswith("s3://")
    conn_id = logging["remote_log_conn_id"]
    from_secrets = {entry["envName"]: entry for entry in VALUES["secret"]}
    assert f"AIRFLOW_CONN_{conn_id.upper()}" in from_secrets
    assert conn_id in CLUSTER_DOC.read_text(), "docs/cluster.md says what the connection holds"


def test_every_secret_the_values_and_mlflow_name_is_in_the_docs() -> None:
    airflow = {VALUES[key] for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName")}
    airflow |= {VALUES["data"]["metadataSecretName"]} | {entry["secretName"] for entry in VALUES["secret"]}
    mlflow = {value["name"] for path, value in _walk(MLFLOW) if path[-1:] in (("secretKeyRef",), ("secretRef",))}
    assert mlflow == {"mlflow-db", "mlflow-object-storage"}
    doc = CLUSTER_DOC.read_text()
    missing = [name for name in airflow | mlflow if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", doc)]
    assert sorted(missing) == [], "docs/cluster.md says which Secrets to create"


def test_the_values_name_credentials_but_hold_none() -> None:
    assert plaintext_credentials(VALUES) == []
    # The chart would make the first admin with its default password.
    assert VALUES["createUserJob"]["enabled"] is False


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"fernetKey": "Zm9v"}, "fernetKey: a credential"),
        ({"webserver": {"defaultUser": {"password": "admin"}}}, "webserver.defaultUser.password: a credential"),
        ({"data": {"metadataConnection": {"pass": "x"}}}, "data.metadataConnection.pass: a credential"),
        ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "env.0: AWS_SECRET_ACCESS_KEY has a literal"),
        ({"config": {"database": {"sql_alchemy_conn": "postgresql://u:p@db/a"}}}, "sql_alchemy_conn: a URL with a"),
    ],
)
def test_a_credential_in_the_values_would_be_found(values: dict[str, Any], expected: str) -> None:
    assert [finding for finding in plaintext_credentials(values) if expected in finding] != []


def test_references_to_secrets_are_not_credentials() -> None:
    references = {
        "fernetKeySecretName": "airflow-fernet-key",
        "apiSecretKey": None,
        "secret": [{"envName": "AIRFLOW_CONN_X", "secretName": "x", "secretKey": "connection"}],
        "env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}],
    }
    assert plaintext_credentials(references) == []


def test_images_are_pinned_by_tag() -> None:
    airflow = f"{VALUES['defaultAirflowRepository']}:{VALUES['defaultAirflowTag']}"
    images = [airflow, *(container["image"] for container in _containers(MLFLOW))]
    # Any image the values override (images.<name>: repository with tag or digest) is pinned too.
    for image in VALUES.get("images", {}).values():
        if isinstance(image, dict) and image.get("repository"):
            pin = f"@{image['digest']}" if image.get("digest") else f":{image.get('tag') or ''}"
            images.append(f"{image['repository']}{pin}")
    assert [image for image in images if _unpinned(image)] == []
    assert _unpinned("apache/airflow:latest") and _unpinned("apache/airflow") and not _unpinned("registry:5000/a:1")


@pytest.mark.parametrize("component", AIRFLOW_COMPONENTS)
def test_every_airflow_component_has_requests_and_limits(component: str) -> None:
    resources = VALUES[component]["resources"]
    assert {kind: sorted(resources.get(kind, {})) for kind in ("requests", "limits")} == {
        "requests": ["cpu", "memory"],
        "limits": ["cpu", "memory"],
    }


def test_airflow_containers_run_without_root_or_privileges() -> None:
    contexts = VALUES["securityContexts"]
    for pod in (contexts["pod"], VALUES["statsd"]["securityContexts"]["pod"]):
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (contexts["containers"], VALUES["statsd"]["securityContexts"]["container"]):
        assert container["allowPrivilegeEscalation"] is False and container["capabilities"] == {"drop": ["ALL"]}


def test_helm_renders_the_values_with_the_chart() -> None:
    """``helm template`` checks the values against the chart's own values.schema.json and renders every object.

    Needs ``helm`` and the chart: ``helm repo add apache-airflow https://airflow.apache.org``, or ``AIRFLOW_CHART``
    naming an unpacked chart or another chart reference.
    """
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (no Debian or PyPI package ships it); the checks above cover the values")
    chart = os.environ.get("AIRFLOW_CHART", "apache-airflow/airflow")
    if subprocess.run([helm, "show", "chart", chart], capture_output=True).returncode != 0:
        pytest.skip(
            f"chart {chart!r} not found: `helm repo add apache-airflow https://airflow.apache.org` or AIRFLOW_CHART"
        )
    command = [helm, "template", "airflow", chart, "--namespace", "airflow", "--values", str(VALUES_FILE)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rendered = [document for document in yaml.safe_load_all(done.stdout) if document]
    accounts = {document["metadata"]["name"] for document in rendered if document["kind"] == "ServiceAccount"}
    assert VALUES["workers"]["serviceAccount"]["name"] in accounts
