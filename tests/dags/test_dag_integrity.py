"""Every DAG imports cleanly and fast, has owners, retries, tags and docs, valid params, and the expected shape; each
model config gets its own three DAGs, and a broken one breaks only its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.param import ParamsDict

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(str(DAGS_FOLDER))


CHURN, TIERS = "churn-classifier", "tier-classifier"


def test_every_dag_file_imports_without_errors_and_each_model_gets_its_dags(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    purposes = ("retrain", "monitor", "deploy")
    assert set(dagbag.dags) == {f"{model}.{purpose}" for model in (CHURN, TIERS) for purpose in purposes}
    assert "model:tier-classifier" in dagbag.dags[f"{TIERS}.retrain"].tags


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_libraries(dag_file: Path) -> None:
    # Parsing runs often in the dag-processor: torch, pandas, MLflow and GX belong inside tasks, not at top level.
    # (Parse times are measured by benchmarks/main_job.py, not asserted here.)
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('torch', 'pandas', 'mlflow', 'great_expectations', 'sklearn', 'boto3') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{dag_file.name} imports {done.stdout.strip()} at parse time"


def test_dags_have_owner_retries_tags_and_docs(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, dag_id
        assert dag.catchup is False, dag_id
        for task in dag.tasks:
            assert task.owner not in (None, "", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"


def test_params_have_descriptions_and_defaults_that_validate(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        for name, param in dag.params.items():
            assert param.description, f"{dag_id} param {name} has no description"
            assert param.schema.get("type"), f"{dag_id} param {name} has no JSON-schema type"
        ParamsDict(dag.params).validate()  # defaults pass their own schema


BAD_PARAMS = {
    f"{CHURN}.retrain": [
        ("epochs", 0),
        ("learning_rate", 0),
        ("primary_metric", "rmse"),
        ("degradation", "percent"),
        ("candidates", ["forest"]),
        ("candidates", []),
        ("candidates", ["gbdt", "gbdt"]),
        ("threshold", "high"),
        ("dataset_uri", "data.txt"),
    ],
    f"{CHURN}.deploy": [
        ("model", "latest"),
        ("model", "0"),
        ("model", "v2"),
        ("strategy", "blue-green"),
        ("canary_share", 0),
        ("canary_share", 1.5),
        ("require_approval", "yes"),
    ],
}


@pytest.mark.parametrize(
    ("dag_id", "name", "bad"), [(dag_id, *case) for dag_id, cases in BAD_PARAMS.items() for case in cases]
)
def test_params_reject_bad_values(dagbag: DagBag, dag_id: str, name: str, bad: object) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags[dag_id].params)
    with pytest.raises(ParamValidationError, match=name):
        params[name] = bad


def test_ml_deploy_params_accept_the_alias_and_version_numbers(dagbag: DagBag) -> None:
    params = ParamsDict(dagbag.dags[f"{CHURN}.deploy"].params)
    for model in ("champion", "1", "42"):
        params["model"] = model
    params["strategy"] = "canary"
    params["canary_share"] = 1
    assert params.validate() == {"model": "42", "strategy": "canary", "canary_share": 1, "require_approval": False}


def test_ml_retrain_structure(dagbag: DagBag) -> None:
    dag = dagbag.dags[f"{CHURN}.retrain"]
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == {
        "snapshot": {"data_check"},
        "data_check": {"validate"},
        "validate": {"preprocess"},
        "preprocess": {"candidates"},
        "candidates": {"train"},
        "train": {"evaluate"},
        "evaluate": {"register"},
        "register": {"gate"},
        "gate": {"promote", "reject"},
        "promote": {"summary"},
        "reject": {"summary"},
        "summary": set(),
    }
    assert [a.name for a in dag.task_dict["promote"].outlets] == [f"{CHURN}.model_promoted"]
    # One train task instance per candidate family (dynamic task mapping), each adding --model <family>.
    assert dag.task_dict["train"].expand_input.value["extra_arguments"].operator.task_id == "candidates"


def test_every_dag_ends_in_a_summary_that_runs_whatever_happened_and_every_task_records_its_failure(
    dagbag: DagBag,
) -> None:
    from orchestration.failures import clear_failure, record_failure

    for dag_id, dag in dagbag.dags.items():
        (leaf,) = dag.leaves
        assert (leaf.task_id, leaf.trigger_rule) == ("summary", "all_done"), dag_id
        for task in dag.tasks:
            assert task.on_execute_callback == [clear_failure], f"{dag_id}.{task.task_id}"
            assert task.on_failure_callback == [record_failure], f"{dag_id}.{task.task_id}"


def test_ml_retrain_runs_on_its_cron_on_a_monitor_alert_or_on_new_data(dagbag: DagBag) -> None:
    timetable = dagbag.dags[f"{CHURN}.retrain"].timetable
    assets = [asset.name for asset in timetable.asset_condition.objects]
    assert assets == [f"{CHURN}.monitor_alert", "churn.training_data"]
    assert timetable.timetable.expression == "0 3 * * 1"


def test_ml_model_monitor_structure(dagbag: DagBag) -> None:
    dag = dagbag.dags[f"{CHURN}.monitor"]
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == {
        "drift": {"decide"},
        "performance": {"decide"},
        "decide": {"alert", "quiet"},
        "alert": {"summary"},
        "quiet": {"summary"},
        "summary": set(),
    }
    assert [a.name for a in dag.task_dict["alert"].outlets] == [f"{CHURN}.monitor_alert"]
    assert dag.timetable.expression == "0 * * * *"


def test_ml_deploy_structure(dagbag: DagBag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags[f"{CHURN}.deploy"]
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == {
        "approval_gate": {"approval", "deploy"},
        "approval": {"deploy"},
        "deploy": {"summary"},
        "summary": set(),
    }
    # deploy follows the gate directly (approval skipped) or after an approval; a rejection skips it
    assert dag.task_dict["deploy"].trigger_rule == "none_failed_min_one_success"
    assert isinstance(dag.task_dict["approval"], ApprovalOperator)
    assert dag.task_dict["approval"].response_timeout is not None, "an unanswered approval must not wait forever"
    assert dag.max_active_runs == 1, "two rollouts at once would race for the same server"


@pytest.mark.parametrize(("require_approval", "followed"), [(True, "approval"), (False, "deploy")])
def test_ml_deploy_asks_for_approval_only_when_the_run_requires_it(
    dagbag: DagBag, require_approval: bool, followed: str
) -> None:
    gate = dagbag.dags[f"{CHURN}.deploy"].task_dict["approval_gate"]
    assert gate.python_callable(params={"require_approval": require_approval}) == followed


def test_ml_deploy_runs_when_a_model_is_promoted_and_deploys_to_the_local_server(dagbag: DagBag) -> None:
    dag = dagbag.dags[f"{CHURN}.deploy"]
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == [f"{CHURN}.model_promoted"]
    deploy = dag.task_dict["deploy"]
    assert deploy.cmds == ["python", "-m", "mlsteps", "deploy"]
    args = deploy.arguments
    assert args[args.index("--target") + 1] == "local", "the tests run the local runtime"
    assert args[args.index("--state-dir") + 1].endswith(f"/serving/{CHURN}"), "each model its own server"
    assert args[args.index("--model") + 1] == "{{ params.model }}"


def _write_models(folder: Path, **files: str) -> Path:
    """A models folder whose files extend the project's defaults, like include/config/models/."""
    folder.mkdir(parents=True, exist_ok=True)
    config = DAGS_FOLDER.parent / "include" / "config"
    for stem, body in files.items():
        header = f"extends: {config / 'pipeline.yaml'}\ndataset: {config / 'datasets' / 'churn.yaml'}\n"
        (folder / f"{stem}.yaml").write_text(header + body)
    return folder


def test_a_broken_model_config_breaks_only_its_own_dags(tmp_path: Path) -> None:
    # Parsed in a fresh process with the models folder of this test, as the dag-processor parses each file.
    models = _write_models(
        tmp_path / "models",
        good="registry: {model_name: good-model}\nserving: {local: {port: 9101}}\n",
        typo="registry: {model_name: typo-model}\nserving: {local: {port: 9102}}\ntraining: {epochs: many}\n",
        caps="registry: {model_name: Caps_Model}\nserving: {local: {port: 9103}}\n",
    )
    probe = (
        "import sys, json; from airflow.dag_processing.dagbag import DagBag; bag = DagBag(sys.argv[1]); "
        "print(json.dumps({'dags': sorted(bag.dags), 'errors': {k.rsplit('/', 1)[-1]: v for k, v in "
        "bag.import_errors.items()}}))"
    )
    env = {**os.environ, "ML_MODELS_DIR": str(models)}
    done = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_FOLDER)], capture_output=True, text=True, check=True, env=env
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["dags"] == ["good-model.deploy", "good-model.monitor", "good-model.retrain"]
    assert list(outcome["errors"]) == ["ml_model_configs.py"], "one file reports the broken configs"
    error = outcome["errors"]["ml_model_configs.py"]
    assert "2 model config(s) cannot run" in error
    assert f"{models / 'typo.yaml'}" in error and "training.epochs" in error
    assert "'Caps_Model' is not a valid model name" in error


def test_a_worker_parsing_for_one_task_builds_only_that_models_dag() -> None:
    # Airflow names the DAG of the task it is about to run in the parsing context (an environment variable).
    probe = (
        "import sys, json; from airflow.dag_processing.dagbag import DagBag; bag = DagBag(sys.argv[1]); "
        "print(json.dumps(sorted(bag.dags)))"
    )
    env = {**os.environ, "_AIRFLOW_PARSING_CONTEXT_DAG_ID": f"{TIERS}.retrain"}
    done = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_FOLDER / "ml_retrain.py")], capture_output=True, text=True, env=env
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [f"{TIERS}.retrain"], done.stderr[-2000:]
