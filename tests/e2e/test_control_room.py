"""The Airflow UI as the control room, used the way people and programs use it, on the real services.

`make airflow` / `make airflow-stop` (python -m orchestration.services) start the API server, scheduler, DAG
processor, triggerer and the MLflow UI with one command on 127.0.0.1, log in with the printed password, refuse a
port in use and a second start, and stop with one command leaving no process behind (the last tests).

`orchestration.services` (what `make airflow` runs) starts the API server, scheduler, DAG processor, triggerer and
MLflow on one state folder holding the churn model (short training, no absolute gate, crons that do not fire
during the test). The official REST client (`apache-airflow-client`):

- is refused by Airflow for params of the wrong type or out of range, and by the models page's check for a param
  the DAG does not have, a dataset that does not exist and a version that does not exist: no run starts;
- triggers `<model>.retrain` with the params its trigger form sends, follows it to success, and checks its tasks,
  the version it registered (v1, with the epochs it was given), its promotion and the asset event that announced it
  (which starts the deploy DAG);
- triggers a deploy of v1 that requires approval, approves it through the human-in-the-loop API, and sees v1 serve;
- reads the models page's API: champion, what serves, the alias history and how each run started.

Last, headless Chromium (Debian's, driven by Playwright) logs in, fills the retrain DAG's trigger form, sees the
run it started, and, through the UI's navigation, finds the champion's version and its chart on the models page,
whose check refuses a missing dataset in the page itself. Screenshots go to `build/test-artifacts/control-room/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from orchestration.models import DEFAULT_MODELS_DIR, MODELS_DIR_ENV_VAR, dag_id, load_models
from orchestration.settings import Settings

pytestmark = pytest.mark.e2e

MODEL = "churn-classifier"
RETRAIN, DEPLOY = dag_id(MODEL, "retrain"), dag_id(MODEL, "deploy")
RUN_TIMEOUT_SECONDS = 600
START_TIMEOUT_SECONDS = 400
POLL_SECONDS = 1.0
NO_TICK_CRON = "0 0 29 2 *"
APPROVAL_THINKING_TIME = timedelta(seconds=3)  # how long after a request the test answers it, like a person
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
    start_output: str  # what `python -m orchestration.services start` printed

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


def _services(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.services", *args],
        env={**os.environ, "ML_STATE_DIR": str(state), **LOOP_TUNING},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


def _request(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (``/proc/net/tcp``: hex address, state 0A)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def _started_by_this_test(pid: int) -> bool:
    """Whether the test process is an ancestor of ``pid`` (the browser and its driver; never the services, whose
    starter exited after starting them)."""
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def _processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment names this state folder, other than the test's own."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes() and not _started_by_this_test(int(environ.parent.name)):
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


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
        "runtime": {
            "dataset_uri": str(state / "datasets" / "churn.parquet"),
            # Crons whose latest tick (2024-02-29) is before the DAGs' start date: unpaused, they start no run of
            # their own while the test runs; every run here is one the test (or the promotion's asset) starts.
            "retrain_cron": NO_TICK_CRON,
            "monitor_cron": NO_TICK_CRON,
        },
    }
    (models / "churn.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ML_STATE_DIR", str(state))
        env.setenv(MODELS_DIR_ENV_VAR, str(models))
        # load_models, not the process's cached get_models: other tests in this process cached another state
        settings = next(entry.settings for entry in load_models() if entry.name == MODEL)
        subprocess.run(
            [sys.executable, "-m", "mlsteps", "make-dataset", "--output-uri", settings.dataset_uri]
            + ["--rows", "3000", "--seed", "7", "--task", "binary"],
            env={**os.environ, **settings.step_env()},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # as `make airflow` starts them, with Airflow tuned to react in seconds (its configuration comes from the env)
        started = _services(state, "start", "--port", str(free_port()), "--mlflow-port", str(free_port()))
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            running = services.read_running(settings)
            password = services.admin_password(settings)
            token = _token(running.url, password)
            with ApiClient(Configuration(host=running.url, access_token=token)) as api:
                yield Room(settings, running, password, token, api, started.stdout)
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
def retrained(room: Room) -> tuple[Any, dict[str, Any]]:
    """A retrain run triggered through the REST API with the form's params, 3 epochs: v1, promoted (no champion
    yet, no absolute bar), which starts the deploy DAG through the model_promoted asset."""
    conf = _form_conf(room, RETRAIN, epochs=3)
    status, _ = room.page_api("POST", f"models/{MODEL}/checks/retrain", {"conf": conf})
    assert status == 200
    started = _trigger(room, RETRAIN, conf)
    return _finished_run(room, RETRAIN, started.dag_run_id), conf


def test_a_retrain_run_with_form_params_trains_registers_and_announces_its_promotion(
    room: Room, retrained: tuple[Any, dict[str, Any]]
) -> None:
    from airflow_client.client.api.asset_api import AssetApi
    from mlflow import MlflowClient

    run, conf = retrained
    assert run.state.value == "success" and run.conf == conf and run.run_type.value == "manual"
    states = _task_states(room, RETRAIN, run.dag_run_id)
    assert {task: states[task] for task in ("snapshot", "validate", "train", "evaluate", "register", "promote")} == {
        task: "success" for task in ("snapshot", "validate", "train", "evaluate", "register", "promote")
    }
    assert states["reject"] == "skipped"
    summary = results.read_summary(room.settings.run_root(RETRAIN, run.dag_run_id))
    assert summary["registered_version"] == 1 and summary["promoted"] is True
    client = MlflowClient(tracking_uri=room.settings.mlflow_tracking_uri)
    version = client.get_model_version(MODEL, "1")
    assert client.get_run(version.run_id).data.params["epochs"] == "3"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) == 1
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

        Airflow 3.3.2 can lose an answer given soon after the request: when the executor reports the parked task's
        process only after the scheduler resumed it, the resumed try counts as a new one and asks again. So this
        answers as a person does, a few seconds after a request appears, and again if it is asked again.
        """
        run = DagRunApi(room.api).get_dag_run(DEPLOY, started.dag_run_id)
        if run.state.value in ("success", "failed"):
            return run
        pending = waiting_for_approval()
        if (
            pending
            and not pending.response_received
            and pending.task_instance.state.value == "awaiting_input"
            and datetime.now(UTC) - pending.created_at > APPROVAL_THINKING_TIME
        ):
            payload = UpdateHITLDetailPayload(chosen_options=["Approve"])
            tasks.update_hitl_detail(DEPLOY, started.dag_run_id, APPROVAL_TASK, -1, payload)
            approvals.append(pending.task_instance.try_number)
        return None

    run = _wait(f"{DEPLOY} run {started.dag_run_id} to be approved and finish", approved)
    assert approvals, "approved at least once"
    states = _task_states(room, DEPLOY, started.dag_run_id)
    assert (run.state.value, states["approval"], states["deploy"]) == ("success", "success", "success")
    assert tasks.get_hitl_detail(DEPLOY, started.dag_run_id, APPROVAL_TASK, -1).responded_by_user.name == "admin"
    status, model = room.page_api("GET", f"models/{MODEL}")
    assert (status, model["serving"]["version"], model["serving"]["running"]) == (200, 1, True)
    assert model["deploys"][0]["run_id"] == started.dag_run_id


def test_the_models_page_api_tells_the_story(room: Room, retrained: tuple[Any, dict[str, Any]]) -> None:
    from mlflow import MlflowClient

    status, model = room.page_api("GET", f"models/{MODEL}")
    assert status == 200
    # 3 epochs on 2,100 rows learn next to nothing: the page shows the holdout figure evaluate logged, whatever it is
    client = MlflowClient(tracking_uri=room.settings.mlflow_tracking_uri)
    logged = client.get_run(client.get_model_version(MODEL, "1").run_id).data.metrics["holdout_roc_auc"]
    assert model["champion"]["version"] == 1 and model["champion"]["metrics"]["roc_auc"] == pytest.approx(logged)
    history = [(event["kind"], event["from_version"], event["to_version"]) for event in model["alias_history"]]
    assert history == [("promote", None, 1)]
    assert model["alias_history"][0]["actor"] == retrained[0].dag_run_id
    runs = [(run["trigger"], run["outcome"], run["registered_version"]) for run in model["training_runs"]]
    assert runs == [("manual", "promoted", 1)]
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
        # The browser without the state folder in its environment: its crash handler leaves the test's process tree,
        # and the last test finds the services' processes by that folder.
        quiet_env = {name: value for name, value in os.environ.items() if str(room.settings.state_dir) not in value}
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], env=quiet_env)
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
    page = browser_page
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.locator("input[name=element_epochs]").fill("4")
    form.locator("input[name=element_max_degradation]").fill("1")  # any challenger may replace the champion
    page.screenshot(path=str(ARTIFACTS / "trigger-form.png"))
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url(f"**/dags/{RETRAIN}/runs/manual__*")
    page.get_by_text("Dag run has been successfully triggered").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "triggered-run.png"))
    run_id = urllib.parse.unquote(page.url.rsplit("/runs/", 1)[1])
    run = _finished_run(room, RETRAIN, run_id)
    assert (run.state.value, run.conf["epochs"], run.conf["max_degradation"]) == ("success", 4, 1)
    assert run.triggering_user_name == services.ADMIN_USER


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


# --- `make airflow` and `make airflow-stop` themselves; the last test stops the services ---------------------


def test_start_prints_where_and_the_login_and_everything_listens_on_localhost_only(room: Room) -> None:
    assert f"http://127.0.0.1:{room.running.port}" in room.start_output
    assert f"http://127.0.0.1:{room.running.mlflow_port}" in room.start_output
    assert _listening_addresses(room.running.port) == {"127.0.0.1"}
    assert _listening_addresses(room.running.mlflow_port) == {"127.0.0.1"}


def test_every_component_is_healthy_and_the_printed_password_logs_in(room: Room) -> None:
    base = f"http://127.0.0.1:{room.running.port}"
    status, body = _request(f"{base}/api/v2/monitor/health")
    health = json.loads(body)
    assert status == 200
    assert {name: health[name]["status"] for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    password = re.search(r"user admin, password (\S+)\)", room.start_output).group(1)
    status, body = _request(f"{base}/auth/token", {"username": "admin", "password": password})
    assert status == 201, body
    token = json.loads(body)["access_token"]
    assert _request(f"{base}/api/v2/dags?limit=1", token=token)[0] == 200
    assert _request(f"{base}/api/v2/dags?limit=1")[0] == 401
    assert _request(f"http://127.0.0.1:{room.running.mlflow_port}/health")[0] == 200


def test_the_models_page_is_mounted_and_refuses_anonymous_requests(room: Room) -> None:
    assert _request(f"http://127.0.0.1:{room.running.port}/ml-models/api/models")[0] == 401


def test_a_second_start_and_a_port_in_use_are_refused_naming_them(room: Room, tmp_path: Path) -> None:
    again = _services(room.settings.state_dir, "start", "--port", str(free_port()), "--mlflow-port", str(free_port()))
    assert again.returncode == 2
    assert "already run" in again.stderr and "make airflow-stop" in again.stderr

    other_state = tmp_path / "other"
    taken = _services(other_state, "start", "--port", str(room.running.port), "--mlflow-port", str(free_port()))
    assert taken.returncode == 2
    assert f"port {room.running.port} on 127.0.0.1 is in use" in taken.stderr and "AIRFLOW_PORT" in taken.stderr
    assert not _processes_with(str(other_state)), "a refused start started nothing"


def test_stop_leaves_no_process_behind(room: Room) -> None:
    """Last in this file: it stops the module's services."""
    state = room.settings.state_dir
    local_server(room.settings).stop()  # the model server a deploy started is not theirs: make stop-server
    assert _processes_with(str(state))
    stopped = _services(state, "stop")
    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "stopped: api-server, dag-processor, mlflow, scheduler, triggerer"
    assert _processes_with(str(state)) == []
    assert _services(state, "stop").stdout.strip() == "no services were running"
