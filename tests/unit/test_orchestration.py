"""The Airflow-side helpers: settings, the pod-task factory and its two runtimes, the gate branch, the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from mlsteps import results
from mlsteps.data import storage
from mlsteps.errors import ConfigError
from mlsteps.steps import STEPS
from orchestration.contracts import PROMOTE_TASK, REJECT_TASK
from orchestration.embedded import SETTINGS_FILE, settings_files
from orchestration.failures import close_run
from orchestration.local_step import LocalStepOperator
from orchestration.models import PURPOSES
from orchestration.pod_task import attach_params, pod_task
from orchestration.retrain import format_summary, model_families, promotion_branch, summarize
from orchestration.settings import load_settings, parse_quantity
from orchestration.templates import RUN_ROOT_TEMPLATE

CONFIG = Path(__file__).resolve().parents[2] / "include" / "config" / "pipeline.yaml"


def _config_with_runtime(tmp_path: Path, runtime: dict) -> str:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["dataset"] = str(CONFIG.parent / raw["dataset"])
    raw["runtime"] = {**raw["runtime"], **runtime}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"steps": {"trian": {"timeout_minutes": 5}}}, r"runtime\.steps.*unknown steps \['trian'\]"),
        ({"steps": {"train": {"timeout_minutes": -1}}}, r"runtime\.steps\.train\.timeout_minutes"),
        (
            {"kubernetes": {"images": {"steps": "ghcr.io/example/mlsteps", "train": "t:1"}}},
            r"kubernetes\.images.*pinned",
        ),
        (
            {"kubernetes": {"images": {"steps": "a:1", "train": "ghcr.io/x/t:latest"}}},
            r"pinned by a tag \(not latest\)",
        ),
        ({"kubernetes": {"images": {"steps": "a:1"}}}, r"kubernetes\.images.*\['train'\] missing"),
        ({"mode": "docker"}, r"runtime\.mode"),
        (
            {"steps": {"validate": {"resources": {"requests": {"cpu": "-2"}}}}},
            r"runtime\.steps\.validate\.resources\.requests\.cpu: Value error, '-2' must be positive",
        ),
        (
            {"steps": {"train": {"resources": {"requests": {"memory": "16GB"}}}}},
            r"steps\.train\.resources\.requests\.memory.*'16GB' is not a Kubernetes quantity",
        ),
        (
            {"steps": {"train": {"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}}}},
            r"steps\.train\.resources.*limits\.cpu=2 is below requests\.cpu=4",
        ),
        ({"steps": {"train": {"gpus": 16}}}, r"\{'train': 16\} ask for more GPUs than a node has.*per_node=8"),
        ({"steps": {"train": {"gpus": -1}}}, r"runtime\.steps\.train\.gpus"),
        ({"steps": {"evaluate": {"gpus": 2}}}, r"\['evaluate'\] ask for several GPUs; only train"),
        (
            {"steps": {"train": {"nodes": 0}}},
            r"runtime\.steps\.train\.nodes: Input should be greater than or equal to 1",
        ),
        (
            {"steps": {"train": {"nodes": 33}}},
            r"runtime\.steps\.train\.nodes: Input should be less than or equal to 32",
        ),
        ({"steps": {"evaluate": {"nodes": 2}}}, r"\{'evaluate': 2\} ask for several nodes; only train runs on several"),
        ({"steps": {"train": {"image": "cuda"}}}, r"runtime\.steps\.train\.image"),
    ],
)
def test_bad_runtime_config_names_the_field(tmp_path: Path, runtime: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_config_with_runtime(tmp_path, runtime))


def test_training_on_several_nodes_needs_a_family_that_trains_data_parallel(tmp_path: Path) -> None:
    raw = yaml.safe_load(
        Path(_config_with_runtime(tmp_path, {"steps": {"train": {"nodes": 4, "gpus": 8}}})).read_text()
    )
    raw["training"]["candidates"] = ["mlp", "gbdt"]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))

    with pytest.raises(ConfigError) as raised:
        load_settings(str(tmp_path / "pipeline.yaml"))

    assert str(raised.value) == (
        f"{tmp_path / 'pipeline.yaml'}: runtime.steps.train.nodes=4 trains one model data-parallel over 4 pods, which "
        "only the ['mlp'] family does; training.model/candidates ['mlp', 'gbdt'] include ['gbdt'], which train in one "
        "process on one node: set runtime.steps.train.nodes to 1 for this model, or train only ['mlp']"
    )
    raw["training"]["candidates"] = ["mlp"]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    settings = load_settings(str(tmp_path / "pipeline.yaml"))
    assert settings.step("train").nodes == 4
    # The retrain DAG's trigger form offers only the families that can run on the model's nodes.
    assert model_families(settings.pipeline.training, settings.step("train").nodes) == ["mlp"]
    assert model_families(settings.pipeline.training) == ["mlp", "gbdt"]
    # The local runtime trains in one process, whatever nodes and gpus say.
    local = pod_task("train", settings=settings)
    assert isinstance(local, LocalStepOperator) and local.cmds == ["python", "-m", "mlsteps", "train"]


def test_kubernetes_runtime_needs_storage_and_mlflow_that_pods_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_RUNTIME", "kubernetes")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    for field in ("runtime.dataset_uri", "runtime.artifact_root", "runtime.mlflow_tracking_uri"):
        assert field in str(caught.value)
    monkeypatch.setenv("ML_ARTIFACT_ROOT", "s3://ml-artifacts/prod")
    monkeypatch.setenv("ML_DATASET_URI", "s3://ml-datasets/churn.parquet")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    assert load_settings().runtime.mode == "kubernetes"
    monkeypatch.setenv("ML_RUNTIME", "podman")
    with pytest.raises(ConfigError, match="ML_RUNTIME='podman'"):
        load_settings()


def test_image_pinned_by_digest_is_accepted(tmp_path: Path) -> None:
    image = "registry.example.com/ml/mlsteps@sha256:" + "a" * 64
    runtime = {"kubernetes": {"images": {"steps": image, "train": image}}}
    assert load_settings(_config_with_runtime(tmp_path, runtime)).runtime.kubernetes.images["train"] == image


@pytest.mark.parametrize("quantity", ["500m", "2", "0.5", ".5", "16Gi", "1.5Gi", "100M", "3k", "1e3", "1E-2", "10n"])
def test_quantities_are_read_as_kubernetes_reads_them(quantity: str) -> None:
    from kubernetes.utils import parse_quantity as kubernetes_parse_quantity

    assert parse_quantity(quantity) == kubernetes_parse_quantity(quantity)


@pytest.mark.parametrize("step", STEPS)
def test_both_runtimes_run_the_identical_command_and_environment(step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_ARTIFACT_ROOT", "s3://ml-artifacts/prod")
    monkeypatch.setenv("ML_DATASET_URI", "s3://ml-datasets/churn.parquet")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000")
    local_settings = load_settings()
    monkeypatch.setenv("ML_RUNTIME", "kubernetes")
    k8s_settings = load_settings()
    args = ["--epochs", "{{ params.epochs }}"]

    local = pod_task(step, args=args, settings=local_settings)
    pod = pod_task(step, args=args, settings=k8s_settings)

    assert isinstance(local, LocalStepOperator)
    assert isinstance(pod, KubernetesPodOperator)
    assert local.cmds == pod.cmds == ["python", "-m", "mlsteps", step]
    assert local.arguments == pod.arguments == ["--run-root", RUN_ROOT_TEMPLATE, *args]
    # A pod adds only what its container needs: the config's mount path, a thread count, a writable home.
    pod_env = pod.env_vars if isinstance(pod.env_vars, dict) else {var.name: var.value for var in pod.env_vars}
    assert set(local.env_vars) <= set(pod_env)
    differs = {name for name, value in pod_env.items() if local.env_vars.get(name) != value}
    assert differs == {"MLSTEPS_CONFIG", "OMP_NUM_THREADS", "HOME", "XDG_CACHE_HOME", "STEP_IMAGE"}
    limits = local_settings.step(step)
    for task in (local, pod):
        assert task.execution_timeout == limits.execution_timeout
        assert task.retries == limits.retries
        assert task.priority_weight == limits.priority_weight
        assert task.pool == ("gpu" if limits.gpus else "default_pool")


def test_a_mapped_step_appends_each_instances_arguments_on_both_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_ARTIFACT_ROOT", "s3://ml-artifacts/prod")
    monkeypatch.setenv("ML_DATASET_URI", "s3://ml-datasets/churn.parquet")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000")
    local_settings = load_settings()
    monkeypatch.setenv("ML_RUNTIME", "kubernetes")
    k8s_settings = load_settings()
    candidates = [["--model", "mlp"], ["--model", "gbdt"]]

    for settings in (local_settings, k8s_settings):
        mapped = pod_task("train", args=["--epochs", "3"], settings=settings, expand_over=candidates)
        assert mapped.expand_input.value == {"extra_arguments": candidates}
        assert mapped.partial_kwargs["arguments"] == ["--run-root", RUN_ROOT_TEMPLATE, "--epochs", "3"]
        gbdt = mapped.unmap({"extra_arguments": candidates[1]})
        if isinstance(gbdt, LocalStepOperator):
            assert gbdt.command()[-2:] == ["--model", "gbdt"]
        else:
            pod = gbdt.build_pod_request_obj(None, dry_run=True)
            assert pod.spec.containers[0].args[-4:] == ["--epochs", "3", "--model", "gbdt"]


def test_a_models_priority_weight_offset_raises_every_task_of_its_dags(tmp_path: Path) -> None:
    # Two models alike but for the offset, parsed in a fresh process as the dag-processor parses the DAG files.
    config = CONFIG.parent
    for name, port, runtime in (("plain", 9201, "{}"), ("urgent", 9202, "{priority_weight_offset: 5}")):
        (tmp_path / f"{name}.yaml").write_text(
            f"extends: {config / 'pipeline.yaml'}\ndataset: {config / 'datasets' / 'churn.yaml'}\n"
            f"registry: {{model_name: {name}}}\nserving: {{local: {{port: {port}}}}}\nruntime: {runtime}\n"
        )
    probe = (
        "import sys, json; from airflow.dag_processing.dagbag import DagBag; bag = DagBag(sys.argv[1]); "
        "print(json.dumps({dag_id: {task.task_id: task.priority_weight for task in dag.tasks} "
        "for dag_id, dag in bag.dags.items()}))"
    )
    dags = Path(__file__).resolve().parents[2] / "dags"
    env = {**os.environ, "ML_MODELS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe, str(dags)], capture_output=True, text=True, env=env)
    weights = json.loads(done.stdout.strip().splitlines()[-1])

    assert sorted(weights) == sorted(f"{name}.{purpose}" for name in ("plain", "urgent") for purpose in PURPOSES)
    for purpose in PURPOSES:
        plain, urgent = weights[f"plain.{purpose}"], weights[f"urgent.{purpose}"]
        assert urgent == {task_id: weight + 5 for task_id, weight in plain.items()}, purpose
    # The base is each step's own priority_weight (train's is 10 in pipeline.yaml), else Airflow's default of 1.
    assert (weights["plain.retrain"]["train"], weights["plain.retrain"]["gate"]) == (10, 1)
    assert load_settings().runtime.priority_weight_offset == 0, "no offset unless a model config sets one"


def test_run_params_are_validated_when_attached_after_the_tasks() -> None:
    import pendulum
    from airflow.sdk import DAG, Param
    from airflow.sdk.definitions.param import process_params

    with DAG("probe", schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        task = _operator("pass")
    attach_params(dag, {"epochs": Param(3, type="integer", minimum=1)})
    assert dag.params.validate() == {"epochs": 3}
    # A task holds no copy of the DAG's params: what a run of it sees is the DAG's, with the run's conf on top.
    assert not task.params
    assert process_params(dag, task, None, suppress_exception=False) == {"epochs": 3}
    assert process_params(dag, task, {"epochs": 7}, suppress_exception=False) == {"epochs": 7}
    with pytest.raises(ValueError, match="not allowed to define a Schedule"):
        attach_params(dag, {"epochs": Param(0, type="integer", minimum=1)})


def _operator(code: str) -> LocalStepOperator:
    return LocalStepOperator(
        task_id="probe", step="probe", cmds=["python", "-c", code], arguments=[], env_vars={"PROBE": "42"}
    )


def test_local_step_passes_environment_and_streams_output(capfd: pytest.CaptureFixture[str]) -> None:
    _operator("import os; print('value', os.environ['PROBE'])").execute(context={})
    captured = capfd.readouterr()
    assert "value 42" in captured.out + captured.err


def test_local_step_exit_code_2_fails_without_retry() -> None:
    code = "import sys; print('validate failed: column age missing', file=sys.stderr); sys.exit(2)"
    with pytest.raises(AirflowFailException, match="column age missing"):
        _operator(code).execute(context={})


def test_local_step_other_failures_are_retried() -> None:
    with pytest.raises(AirflowException, match="exited with code 3") as caught:
        _operator("import sys; sys.exit(3)").execute(context={})
    assert not isinstance(caught.value, AirflowFailException)


def test_killing_the_task_terminates_the_step_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    operator = _operator(code)
    runner = threading.Thread(target=lambda: pytest.raises(AirflowException, operator.execute, context={}))
    runner.start()
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "step did not start"
        time.sleep(0.1)
    operator.on_kill()
    runner.join(timeout=20)
    assert not runner.is_alive()
    child = int(pid_file.read_text())
    alive = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout.strip()
    assert alive in ("", "Z"), f"grandchild {child} survived: {alive}"


def _write_evaluation(root: str, passed: bool) -> None:
    results.write_result(
        root,
        "evaluate",
        {
            "candidates": [
                {"family": "mlp", "metrics": {"roc_auc": 0.79}},
                {"family": "gbdt", "metrics": {"roc_auc": 0.81}},
            ],
            "challenger": {"family": "gbdt", "metrics": {"roc_auc": 0.81, "log_loss": 0.4}},
            "champion": {"version": "3", "metrics": {"roc_auc": 0.84, "log_loss": 0.38}},
            "gate": {
                "passed": passed,
                "primary_metric": "roc_auc",
                "reasons": ["challenger roc_auc=0.810 vs champion 0.840: drop 0.030 > 0.010"],
            },
            "report_uri": f"{root}/evaluate/report.json",
            "report_html_uri": f"{root}/evaluate/report.html",
        },
    )


@pytest.mark.parametrize(
    ("passed", "force", "branch"),
    [(True, False, PROMOTE_TASK), (False, False, REJECT_TASK), (False, True, PROMOTE_TASK)],
)
def test_gate_branch_follows_the_evaluation(tmp_path: Path, passed: bool, force: bool, branch: str) -> None:
    _write_evaluation(str(tmp_path), passed)
    assert promotion_branch(str(tmp_path), force=force) == branch


def test_summary_collects_results_and_is_stored(tmp_path: Path) -> None:
    root = str(tmp_path)
    results.write_result(root, "snapshot", {"snapshot_id": "0123abcd", "rows": 5000})
    results.write_result(
        root,
        "validate",
        {
            "success": True,
            "statistics": {"evaluated": 40, "successful": 40, "unsuccessful": 0},
            "report_html_uri": f"{root}/validate/report.html",
        },
    )
    _write_evaluation(root, passed=False)
    results.write_result(root, "register", {"model_name": "churn-classifier", "version": "4"})

    summary = close_run(root, summarize(root, "manual__1"), "report")

    assert storage.read_json(f"{root}/summary.json") == summary
    assert summary["outcome"] == "rejected"
    assert summary["promoted"] is False and summary["aliases"] == ["challenger"]
    text = format_summary(summary)
    for expected in (
        "manual__1",
        "0123abcd",
        "40/40",
        "roc_auc=0.8100",
        "mlp roc_auc=0.79\n",
        "gbdt roc_auc=0.81 (challenger)",
        "champion v3",
        "roc_auc=0.8400",
        "REJECTED",
        "drop 0.030",
        "churn-classifier version 4",
        "validate/report.html",
    ):
        assert expected in text


def test_airflow_settings_yaml_becomes_import_files(tmp_path: Path) -> None:
    files = settings_files(SETTINGS_FILE, tmp_path)
    pools = yaml.safe_load(files["pools"].read_text())
    connections = yaml.safe_load(files["connections"].read_text())
    assert pools["gpu"]["slots"] >= 1
    assert connections["kubernetes_default"]["conn_type"] == "kubernetes"
    assert "variables" not in files  # the project keeps its settings in pipeline.yaml, not Airflow Variables


def test_embedded_runner_help_runs_without_airflow_state() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.embedded", "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "--conf" in done.stdout


def _alert(report: str, signal: str = "realized_performance") -> dict:
    """A monitor alert's payload, from the decision ``decide`` records."""
    from orchestration.contracts import monitor_alert_extra

    decision = {
        "signals": [signal, "drift"],
        "reason": f"realized roc_auc 0.62 outside the holdout's band [0.76, 0.84] ({report})",
        "figures": {signal: {"value": 0.62, "lower": 0.76}},
        "drifted_features": ["age", "plan"],
        "report_uri": f"s3://ml/monitor/{report}",
        "report_html_uri": f"s3://ml/monitor/{report}.html",
        "model_version": 3,
        "window_end": "2026-03-02T03:00:00+00:00",
    }
    return monitor_alert_extra(decision, "churn-classifier")


def test_a_retraining_run_knows_what_triggered_it() -> None:
    from types import SimpleNamespace

    from airflow.utils.types import DagRunType

    from orchestration.assets import model_assets
    from orchestration.retrain import RetrainTriggers
    from orchestration.settings import get_settings

    assets = model_assets(get_settings())
    triggers = RetrainTriggers(assets, get_settings().dataset_uri)
    run_trigger, triggering_monitor_alert = triggers.run_trigger, triggers.monitor_alert

    scheduled = SimpleNamespace(run_type=DagRunType.SCHEDULED)
    assert run_trigger(scheduled, {}) == "scheduled"
    assert run_trigger(SimpleNamespace(run_type="manual"), None) == "manual"
    old, new = _alert("old.json", "drift"), _alert("new.json")
    events = {assets.alert: [SimpleNamespace(extra=old), SimpleNamespace(extra=new)]}
    asset_run = SimpleNamespace(run_type=DagRunType.ASSET_TRIGGERED)
    assert run_trigger(asset_run, events) == "realized_performance", "the signal of the latest alert"
    assert triggering_monitor_alert(events) == new
    assert triggering_monitor_alert({}) is None
    assert run_trigger(asset_run, {assets.training_data: [SimpleNamespace(extra={"producer": "etl"})]}) == "new_data"


def test_the_monitor_alert_payload_is_what_ml_retrain_tags_its_run_with() -> None:
    # One payload (contracts.MonitorAlertExtra): built by ml_model_monitor's alert, read by ml_retrain's templates.
    from types import SimpleNamespace

    from jinja2 import Environment

    from orchestration.assets import model_assets
    from orchestration.retrain import TRIGGER_TAG_ARGS, RetrainTriggers
    from orchestration.settings import get_settings

    assets = model_assets(get_settings())
    macros = RetrainTriggers(assets, get_settings().dataset_uri).macros()

    extra = _alert("r1.json")
    templates = [Environment().from_string(arg) for arg in TRIGGER_TAG_ARGS[1::2]]
    context = {**macros, "dag_run": SimpleNamespace(run_type="asset_triggered")}

    on_alert = [
        t.render(**context, triggering_asset_events={assets.alert: [SimpleNamespace(extra=extra)]}) for t in templates
    ]
    on_cron = [t.render(**context, triggering_asset_events={}) for t in templates]
    by_hand = {**context, "dag_run": SimpleNamespace(run_type="manual", triggering_user_name="ana")}
    assert [t.render(**by_hand, triggering_asset_events={}) for t in templates][:2] == [
        "trigger=manual",
        "trigger_reason=manual by ana",
    ]

    assert on_alert == [
        "trigger=realized_performance",
        f"trigger_reason={extra['reason']}",
        "monitor_report=s3://ml/monitor/r1.json.html",
        "drifted_features=age,plan",
    ]
    assert on_cron == [
        "trigger=asset_triggered",
        "trigger_reason=asset_triggered",
        "monitor_report=",
        "drifted_features=",
    ]


def test_the_runners_import_no_airflow_before_they_point_it_at_their_state() -> None:
    # make loop and the embedded runner set AIRFLOW_HOME and the database for their state folder first: Airflow
    # reads its configuration once, at its first import, so importing it earlier would use the wrong database.
    probe = "import sys, orchestration.embedded, orchestration.loop; print('airflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_data_check_stops_runs_for_data_that_is_not_new(tmp_path: Path) -> None:
    from mlsteps import results
    from orchestration.retrain import data_check, summarize

    dataset = "s3://ml-datasets/churn/latest.parquet"
    root = str(tmp_path / "run")
    snapshot = {"snapshot_id": "0123456789abcdef", "source_uri": dataset, "rows": 10}
    results.write_result(root, "snapshot", {**snapshot, "champion_version": 3, "champion_trained_on_snapshot": True})
    stop = data_check(root, "scheduled", [], dataset)
    assert stop == (
        f"the training data {dataset} (snapshot 0123456789ab) is what champion v3 was trained on: nothing retrained, "
        "nothing registered"
    )
    summary = summarize(root, "scheduled__1")
    assert (summary["outcome"], summary["message"], summary["trigger"]) == ("unchanged", stop, "scheduled")
    assert data_check(root, "manual", [], dataset) is None, "a person may retrain on the same data"

    results.write_result(root, "snapshot", {**snapshot, "champion_version": 3, "champion_trained_on_snapshot": False})
    assert data_check(root, "new_data", [{"producer": "etl"}], dataset) is None, "a producer's event is new data"
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": "retrain please"}
    watched = {"from_trigger": True, "payload": {"status": "success", "message_batch": [message]}}
    stop = data_check(root, "new_data", [watched], dataset)
    assert stop.startswith("no new data for this dataset: ") and "not an S3 event notification" in stop
