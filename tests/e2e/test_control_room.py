"""The Airflow UI as the control room, used the way people and programs use it, on the real services.

`orchestration.services` (what `make airflow` runs) starts the API server, scheduler, DAG processor, triggerer and
MLflow on one state folder holding the churn model (short training). The scheduler first retrains it for its latest
cron tick (v1, promoted; the promotion deploys it). Then the official REST client (`apache-airflow-client`):

- is refused by Airflow for params of the wrong type or out of range, and by the models page's check for a param
  the DAG does not have, a dataset that does not exist and a version that does not exist: no run starts;
- triggers `<model>.retrain` with the params its trigger form sends, follows it to success, and checks its tasks,
  the version it registered (with the epochs it was given) and the asset event its promotion emitted;
- triggers a deploy of v1 that requires approval, approves it through the human-in-the-loop API, and sees v1 serve;
- reads the models page's API: champion, challenger, what serves, the alias history and how each run started.

Last, headless Chromium (Debian's, driven by Playwright) logs in, fills the retrain DAG's trigger form, sees the
run it started, and finds the champion's version and the charts on the models page, whose check refuses a missing
dataset in the page itself. Screenshots go to `build/test-artifacts/control-room/`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ports import free_port

from mlsteps import results
from orchestration import services
from orchestration.contracts import APPROVAL_TASK
from orchestration.embedded import local_server
from orchestration.loop import LOOP_TUNING
from orchestration.models import DEFAULT_MODELS_DIR, MODELS_DIR_ENV_VAR, dag_id, model_settings
from orchestration.settings import Settings

pytestmark = pytest.mark.e2e

MODEL = "churn-classifier"
RETRAIN, DEPLOY = dag_id(MODEL, "retrain"), dag_id(MODEL, "deploy")
RUN_TIMEOUT_SECONDS = 600
POLL_SECONDS = 1.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "control-room"
# Debian's chromium: the binary itself (the /usr/bin/chromium wrapper script works too, with a shell warning).
CHROMIUM = next(
    (path for path in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if path and Path(path).exists()), None
)


@dataclass
class Room:
    """The running services, the model's settings and an admin's REST client."""

    settings: Settings
    running: services.Running
    password: str
    token: str
    api: Any  # airflow_client.client.ApiClient

    def page_api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call the models page's API (``/ml-models/api/...``) as the admin: status and JSON body."""
        request = urllib.request.Request(
            f"{self.running.url}/ml-models/api/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def _token(url: str, password: str) -> str:
    login = json.dumps({"username": services.ADMIN_USER, "password": password}).encode()
    request = urllib.request.Request(f"{url}/auth/token", data=login, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["access_token"]


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    from airflow_client.client import ApiClient, Configuration

    state = tmp_path_factory.mktemp("control-room")
    models = state / "models"
    models.mkdir()
    config = {
        "extends": str(DEFAULT_MODELS_DIR / "churn.yaml"),
        "training": {"epochs": 2},
        "evaluation": {"threshold": None},  # no absolute bar: the first model becomes the champion, however short
        "serving": {"local": {"port": free_port()}},
        "runtime": {"dataset_uri": str(state / "datasets" / "churn.parquet")},
    }
    (models / "churn.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ML_STATE_DIR", str(state))
        env.setenv(MODELS_DIR_ENV_VAR, str(models))
        settings = model_settings(MODEL)
        subprocess.run(
            [sys.executable, "-m", "mlsteps", "make-dataset", "--output-uri", settings.dataset_uri]
            + ["--rows", "3000", "--seed", "7", "--task", "binary"],
            env={**os.environ, **settings.step_env()},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        running = services.start(settings, port=free_port(), mlflow_port=free_port(), tuning=LOOP_TUNING)
        try:
            password = services.admin_password(settings)
            token = _token(running.url, password)
            with ApiClient(Configuration(host=running.url, access_token=token)) as api:
                yield Room(settings, running, password, token, api)
        finally:
            services.stop(settings)
            local_server(settings).stop()


def _wait(what: str, found: Callable[[], Any]) -> Any:
    """Poll ``found`` until it returns something truthy, or fail after ``RUN_TIMEOUT_SECONDS`` naming ``what``."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"{what}: not within {RUN_TIMEOUT_SECONDS} s")


def _finished_run(room: Room, dag: str, run_id: str) -> Any:
    from airflow_client.client.api.dag_run_api import DagRunApi

    def finished() -> Any:
        run = DagRunApi(room.api).get_dag_run(dag, run_id)
        return run if run.state.value in ("success", "failed") else None

    return _wait(f"{dag} run {run_id} to finish", finished)


def _runs(room: Room, dag: str) -> list[Any]:
    from airflow_client.client.api.dag_run_api import DagRunApi

    return DagRunApi(room.api).get_dag_runs(dag, order_by=["id"]).dag_runs


def _task_states(room: Room, dag: str, run_id: str) -> dict[str, str]:
    from airflow_client.client.api.task_instance_api import TaskInstanceApi

    instances = TaskInstanceApi(room.api).get_task_instances(dag, run_id).task_instances
    return {ti.task_id: ti.state.value if ti.state else "none" for ti in instances}


def _form_conf(room: Room, dag: str, **changes: Any) -> dict[str, Any]:
    """What the DAG's trigger form sends: every param with the value the form shows, some of them changed."""
    from airflow_client.client.api.dag_api import DAGApi

    params = DAGApi(room.api).get_dag_details(dag).params
    unknown = set(changes) - set(params)
    assert not unknown, f"{dag} has no params {unknown}"
    return {name: param["value"] for name, param in params.items()} | changes


def _trigger(room: Room, dag: str, conf: dict[str, Any]) -> Any:
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    return DagRunApi(room.api).trigger_dag_run(dag, TriggerDAGRunPostBody(conf=conf, logical_date=None))


@pytest.fixture(scope="module")
def first_champion(room: Room) -> Any:
    """The scheduler's own run for the model's latest cron tick, once it finished: v1, promoted (no champion yet, no
    absolute bar), which starts the deploy DAG through the model_promoted asset."""
    scheduled = _wait(
        "the scheduled retrain run", lambda: [r for r in _runs(room, RETRAIN) if r.run_type.value == "scheduled"]
    )
    return _finished_run(room, RETRAIN, scheduled[0].dag_run_id)


def test_bad_params_are_refused_before_any_run_starts(room: Room) -> None:
    from airflow_client.client.exceptions import ApiException

    runs_before = len(_runs(room, RETRAIN)) + len(_runs(room, DEPLOY))
    for conf, named in (
        ({"epochs": 0}, "epochs"),  # below the minimum
        ({"epochs": "many"}, "epochs"),  # not an integer
        ({"primary_metric": "rmse"}, "primary_metric"),  # not a metric of a binary task
        ({"dataset_uri": "churn.txt"}, "dataset_uri"),  # neither an absolute path nor a CSV or Parquet name
    ):
        with pytest.raises(ApiException) as refused:
            _trigger(room, RETRAIN, conf)
        assert refused.value.status == 400 and named in refused.value.body, refused.value.body
    with pytest.raises(ApiException) as refused:
        _trigger(room, DEPLOY, {"model": "latest"})
    assert refused.value.status == 400 and "model" in refused.value.body

    # What a schema cannot say, the models page's check says before the page posts a run
    status, body = room.page_api("POST", f"models/{MODEL}/checks/retrain", {"conf": {"epoch": 3}})
    assert status == 422 and "unknown params ['epoch']" in body["detail"][0] and "'epochs'" in body["detail"][0]
    missing = room.settings.state_dir / "datasets" / "nothing-here.csv"
    status, body = room.page_api("POST", f"models/{MODEL}/checks/retrain", {"conf": {"dataset_uri": str(missing)}})
    assert (status, body["detail"]) == (
        422,
        [f"dataset_uri: input file not found: no such file: {missing}; check the input URI"],
    )
    status, body = room.page_api("POST", f"models/{MODEL}/checks/deploy", {"conf": {"model": "99"}})
    assert status == 422 and body["detail"][0].startswith(f"model: {MODEL} has no version 99")
    assert len(_runs(room, RETRAIN)) + len(_runs(room, DEPLOY)) == runs_before


@pytest.fixture(scope="module")
def retrained(room: Room, first_champion: Any) -> tuple[Any, dict[str, Any]]:
    """A retrain run triggered through the REST API with the form's params, 3 epochs and promotion forced."""
    conf = _form_conf(room, RETRAIN, epochs=3, force_promotion=True)
    status, _ = room.page_api("POST", f"models/{MODEL}/checks/retrain", {"conf": conf})
    assert status == 200
    started = _trigger(room, RETRAIN, conf)
    return _finished_run(room, RETRAIN, started.dag_run_id), conf


def test_a_retrain_run_with_form_params_trains_registers_and_announces_its_promotion(
    room: Room, first_champion: Any, retrained: tuple[Any, dict[str, Any]]
) -> None:
    from airflow_client.client.api.asset_api import AssetApi
    from mlflow import MlflowClient

    run, conf = retrained
    assert first_champion.state.value == "success"
    assert run.state.value == "success" and run.conf == conf and run.run_type.value == "manual"
    states = _task_states(room, RETRAIN, run.dag_run_id)
    assert {task: states[task] for task in ("snapshot", "validate", "train", "evaluate", "register", "promote")} == {
        task: "success" for task in ("snapshot", "validate", "train", "evaluate", "register", "promote")
    }
    assert states["reject"] == "skipped"
    summary = results.read_summary(room.settings.run_root(RETRAIN, run.dag_run_id))
    assert summary["registered_version"] == 2 and summary["promoted"] is True
    client = MlflowClient(tracking_uri=room.settings.mlflow_tracking_uri)
    version = client.get_model_version(MODEL, "2")
    assert client.get_run(version.run_id).data.params["epochs"] == "3"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) == 2
    assert (champion.tags["trigger"], champion.tags["trigger_reason"]) == ("manual", f"manual by {services.ADMIN_USER}")
    events = AssetApi(room.api).get_asset_events(source_dag_id=RETRAIN, source_run_id=run.dag_run_id).asset_events
    assert [event.name for event in events] == [f"{MODEL}.model_promoted"]


def test_a_deploy_that_requires_approval_waits_for_a_person_and_deploys_once_approved(
    room: Room, retrained: tuple[Any, dict[str, Any]]
) -> None:
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.api.task_instance_api import TaskInstanceApi
    from airflow_client.client.exceptions import NotFoundException
    from airflow_client.client.models.update_hitl_detail_payload import UpdateHITLDetailPayload

    started = _trigger(room, DEPLOY, _form_conf(room, DEPLOY, model="1", require_approval=True))
    tasks = TaskInstanceApi(room.api)

    def waiting_for_approval() -> Any:
        try:
            return tasks.get_hitl_detail(DEPLOY, started.dag_run_id, APPROVAL_TASK, -1)
        except NotFoundException:
            return None

    request = _wait("the deploy's approval request", waiting_for_approval)
    assert request.response_received is False and "Approve" in request.options and "1" in request.subject
    assert _task_states(room, DEPLOY, started.dag_run_id)["deploy"] in ("none", "scheduled", "queued")
    approvals = []

    def approved() -> Any:
        """The finished run; meanwhile, approve each request the task parks with, as a person in the UI would.

        Airflow 3.3.2 can lose an answer given within about a second of the request: the executor reports the
        parked task's process after the scheduler has already resumed it, the resumed try counts as a new one and
        asks again. A person answering seconds later does not meet this; a test answering at once does.
        """
        run = DagRunApi(room.api).get_dag_run(DEPLOY, started.dag_run_id)
        if run.state.value in ("success", "failed"):
            return run
        pending = waiting_for_approval()
        if pending and not pending.response_received and pending.task_instance.state.value == "awaiting_input":
            payload = UpdateHITLDetailPayload(chosen_options=["Approve"])
            tasks.update_hitl_detail(DEPLOY, started.dag_run_id, APPROVAL_TASK, -1, payload)
            approvals.append(pending.task_instance.try_number)
        return None

    run = _wait(f"{DEPLOY} run {started.dag_run_id} to be approved and finish", approved)
    assert 1 <= len(approvals) <= 2, approvals
    states = _task_states(room, DEPLOY, started.dag_run_id)
    assert (run.state.value, states["approval"], states["deploy"]) == ("success", "success", "success")
    assert tasks.get_hitl_detail(DEPLOY, started.dag_run_id, APPROVAL_TASK, -1).responded_by_user.name == "admin"
    status, model = room.page_api("GET", f"models/{MODEL}")
    assert (status, model["serving"]["version"], model["serving"]["running"]) == (200, 1, True)
    assert model["deploys"][0]["run_id"] == started.dag_run_id


def test_the_models_page_api_tells_the_story(room: Room, retrained: tuple[Any, dict[str, Any]]) -> None:
    status, model = room.page_api("GET", f"models/{MODEL}")
    assert status == 200
    assert model["champion"]["version"] == 2 and model["champion"]["metrics"]["roc_auc"] > 0.5
    history = [(event["kind"], event["from_version"], event["to_version"]) for event in model["alias_history"]]
    assert history == [("promote", 1, 2), ("promote", None, 1)]  # newest first
    assert model["alias_history"][0]["actor"] == retrained[0].dag_run_id
    runs = [(run["trigger"], run["outcome"], run["registered_version"]) for run in model["training_runs"]]
    assert runs == [("manual", "promoted", 2), ("scheduled", "promoted", 1)]
    assert all(run["links"]["evaluation"] and run["links"]["validation"] for run in model["training_runs"])
    status, index = room.page_api("GET", "models")
    assert status == 200 and [card["model"] for card in index["models"]] == [MODEL]


@pytest.fixture(scope="module")
def browser_page(room: Room) -> Iterator[Any]:
    """Headless Chromium, logged in to Airflow through its login form."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{room.running.url}/dags/{RETRAIN}")  # Airflow sends a browser without a login to its form
            page.fill("input[name=username]", services.ADMIN_USER)
            page.fill("input[name=password]", room.password)
            page.click("button[type=submit]")
            page.wait_for_url(f"**/dags/{RETRAIN}")
            yield page
        finally:
            browser.close()


def test_a_person_triggers_retraining_from_the_form_and_sees_the_run(
    room: Room, browser_page: Any, retrained: tuple[Any, dict[str, Any]]
) -> None:
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.models.dag_run_patch_body import DAGRunPatchBody

    page = browser_page
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.locator("input[name=element_epochs]").fill("4")
    page.screenshot(path=str(ARTIFACTS / "trigger-form.png"))
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url(f"**/dags/{RETRAIN}/runs/manual__*")
    page.get_by_text("Dag run has been successfully triggered").first.wait_for()
    run_id = page.url.rsplit("/runs/", 1)[1]
    page.screenshot(path=str(ARTIFACTS / "triggered-run.png"))
    started = next(run for run in _runs(room, RETRAIN) if urllib.parse.unquote(run_id) == run.dag_run_id)
    assert started.conf["epochs"] == 4 and started.triggering_user_name == services.ADMIN_USER
    # Seen is enough: stop it as a person would (marked failed, Airflow ends its tasks), not at the services' stop.
    DagRunApi(room.api).patch_dag_run(RETRAIN, started.dag_run_id, DAGRunPatchBody(state="failed"))


def test_a_person_finds_the_champion_and_the_charts_on_the_models_page(
    room: Room, browser_page: Any, retrained: tuple[Any, dict[str, Any]]
) -> None:
    page = browser_page
    page.get_by_role("link", name="Models").first.click()  # the plugin's entry in Airflow's navigation
    models = page.frame_locator("iframe")  # Airflow shows the page in a frame
    models.get_by_role("link", name=MODEL).click()
    models.get_by_text("Champion: v2").first.wait_for()
    # the champion's version over time (drift and performance charts come with the monitor's first checks)
    assert models.get_by_role("img", name="Champion version").count() == 1
    page.screenshot(path=str(ARTIFACTS / "models-in-airflow.png"))
    retrain = models.locator("form.trigger").first
    retrain.locator("textarea").fill(json.dumps({"dataset_uri": "/no/such/export.csv"}))
    retrain.get_by_role("button", name="Trigger").click()
    refusal = retrain.locator("output")
    refusal.get_by_text("refused before starting (422)").wait_for()
    assert "input file not found: no such file: /no/such/export.csv" in refusal.inner_text()
    page.goto(f"{room.running.url}/ml-models/{MODEL}")  # the page alone, for the whole of it
    page.get_by_text("Champion: v2").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "models-page.png"), full_page=True)
