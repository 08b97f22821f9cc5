"""The models page: what it shows of a model, and its app behind Airflow's login.

The state is real: MLflow on SQLite (versions, aliases, the alias history written by ``registry.move_alias``), run
folders whose ``summary.json`` the DAGs' own summarizers write (``retrain``, ``deploy``, ``monitor``), the monitor's
state written by ``record_decision``. The app is tested inside Airflow's own API server app (``create_app``) with this
project's plugin folder, the SimpleAuthManager that Airflow 3 uses by default, and tokens it issues itself.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import load_benchmark

from mlsteps import registry, results
from orchestration.models import dag_id, load_models
from orchestration.models_page import prechecks, reads, render
from orchestration.settings import Settings

page_benchmark = load_benchmark("models_page")

# The test run's Airflow signs its tokens with the short key it generates when none is configured; PyJWT says so.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
REPO_ROOT = Path(__file__).resolve().parents[2]
CHURN = "churn-classifier"
START = datetime(2026, 11, 20, 10, tzinfo=UTC)


def _run_id(kind: str, hours: float) -> str:
    """An Airflow-generated run id at START + hours, e.g. ``manual__2026-11-20T10:00:00+00:00``."""
    return f"{kind}__{(START + timedelta(hours=hours)).isoformat()}"


def _root(settings: Settings, purpose: str, run_id: str) -> str:
    return settings.run_root(dag_id(CHURN, purpose), run_id)


def _monitor_runs(settings: Settings, hours: int) -> None:
    """Hourly monitor checks of v1: realized roc_auc falls from 0.80 by 0.02 an hour, drift from the 4th hour on."""
    for hour in range(hours):
        end = START + timedelta(hours=100 + hour)
        page_benchmark.write_monitor_check(
            settings, _run_id("scheduled", 100 + hour), end, hour >= 3, 0.80 - 0.02 * hour
        )


def _build(settings: Settings) -> None:
    """A model with history: v1 promoted, v2 promoted on drift then rolled back by its deploy, v3 rejected (the
    challenger); a failed run and one still running; 6 monitor checks ending in an alert."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment_id = client.create_experiment("churn-retraining")
    client.create_registered_model(CHURN)
    r1, r2, r3 = _run_id("manual", 0), _run_id("asset_triggered", 24), _run_id("scheduled", 48)
    v1 = page_benchmark.register_version(client, experiment_id, 0.78, "manual")
    registry.move_alias(client, CHURN, "champion", v1, actor=r1, reason="promote (gate passed): roc_auc 0.78 >= 0.7")
    drifted = "input drift in 2 consecutive window(s) of v1 (age)"
    v2 = page_benchmark.register_version(client, experiment_id, 0.80, "drift", drifted)
    registry.move_alias(client, CHURN, "champion", v2, actor=r2, reason="promote (gate passed): roc_auc 0.80")
    d2 = _run_id("asset_triggered", 25)
    registry.move_alias(client, CHURN, "champion", v1, actor=d2, reason="rollback: smoke test failed: p99 900 ms")
    v3 = page_benchmark.register_version(client, experiment_id, 0.74)
    client.set_registered_model_alias(CHURN, "challenger", str(v3))

    retrain_run, deploy_run = page_benchmark.write_retrain_run, page_benchmark.write_deploy_run
    retrain_run(settings, r1, trigger="manual", version=v1, roc_auc=0.78, promoted=True)
    retrain_run(settings, r2, trigger="drift", version=v2, roc_auc=0.80, champion=v1, promoted=True)
    retrain_run(settings, r3, version=v3, roc_auc=0.74, champion=v1)
    retrain_run(settings, _run_id("manual", 50), trigger="manual", failed_task="validate")
    results.write_result(_root(settings, "retrain", _run_id("manual", 51)), "snapshot", {"snapshot_id": "x"})
    deploy_run(settings, _run_id("asset_triggered", 1), v1, None, "deployed")
    deploy_run(settings, d2, v2, v1, "rolled_back")
    _monitor_runs(settings, hours=6)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The churn model's settings on a fresh state folder and MLflow store holding the history of ``_build``."""
    root = tmp_path_factory.mktemp("models-page")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ML_STATE_DIR", str(root / "state"))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MLFLOW_ARTIFACT_LOCATION", (root / "mlartifacts").as_uri())
        env.delenv("ML_ARTIFACT_ROOT", raising=False)
        env.delenv("ML_MODELS_DIR", raising=False)
        settings = next(entry.settings for entry in load_models() if entry.name == CHURN)
        _build(settings)
        yield settings


@pytest.fixture(scope="module")
def overview(state: Settings) -> dict[str, Any]:
    from mlflow import MlflowClient

    links = reads.Links.for_tracking_uri(state.mlflow_tracking_uri, page="/ml-models")
    return reads.model_overview(state, MlflowClient(tracking_uri=state.mlflow_tracking_uri), links)


def test_the_page_shows_champion_challenger_and_what_serves(overview: dict[str, Any]) -> None:
    champion, challenger = overview["champion"], overview["challenger"]
    assert (champion["version"], champion["metrics"]["roc_auc"], champion["tags"]["trigger"]) == (1, 0.78, "manual")
    assert (challenger["version"], challenger["metrics"]["roc_auc"]) == (3, 0.74)
    assert challenger["aliases"] == ["challenger"] and champion["metrics"]["accuracy"] == pytest.approx(0.83)
    assert champion["links"]["mlflow_run"] is None  # SQLite has no MLflow UI to link to
    serving = overview["serving"]
    # v2's deploy rolled back: v1 serves again, on the local server of the model's config (no server running here)
    assert (serving["version"], serving["target"], serving["endpoint"]) == (1, "local", "http://127.0.0.1:8081")
    assert serving["running"] is False and "v2 was rolled back: smoke test failed" in serving["note"]
    assert serving["deploy_run_id"] == _run_id("asset_triggered", 25)


def test_the_alias_history_says_who_moved_the_champion_from_which_version_to_which_and_why(
    overview: dict[str, Any],
) -> None:
    history = overview["alias_history"]
    assert [(e["kind"], e["from_version"], e["to_version"]) for e in history] == [
        ("rollback", 2, 1),
        ("promote", 1, 2),
        ("promote", None, 1),
    ]
    rollback = history[0]
    assert rollback["actor"] == _run_id("asset_triggered", 25) and rollback["reason"].startswith("rollback: smoke")
    # the rollback was made by a deploy run, the promotions by retrain runs: each links to its own DAG's run
    assert (
        rollback["actor_link"]
        == "/dags/churn-classifier.deploy/runs/asset_triggered__2026-11-21T11%3A00%3A00%2B00%3A00"
    )
    assert history[1]["actor_link"].startswith("/dags/churn-classifier.retrain/runs/asset_triggered__2026-11-21T10")
    assert datetime.fromisoformat(history[0]["at"]) > datetime.fromisoformat(history[2]["at"])


def test_on_kubernetes_the_page_names_the_models_deployment_and_service(state: Settings) -> None:
    deployed = {"deploy_outcome": "deployed", "version": 7, "target": "kubernetes", "at": None, "run_id": "r"}
    failed = {**deployed, "deploy_outcome": "rollback_failed", "version": 8, "reason": "pods never ready"}
    serving = reads.serving_view(state, [deployed])
    assert (serving["version"], serving["deployment"]) == (7, "ml/model-server-churn-classifier")
    assert serving["endpoint"] == "http://model-server-churn-classifier.ml.svc.cluster.local"
    unknown = reads.serving_view(state, [failed, deployed])  # newest first: after a failed rollback nobody knows
    assert unknown["version"] is None and unknown["note"] == "unknown: the rollback failed too (pods never ready)"


def test_deploys_and_rollbacks_newest_first(overview: dict[str, Any]) -> None:
    deploys = overview["deploys"]
    assert [(d["outcome"], d["version"], d["previous_version"]) for d in deploys] == [
        ("rolled_back", 2, 1),
        ("deployed", 1, None),
    ]
    assert deploys[0]["reason"] == "smoke test failed: p99 900 ms" and deploys[0]["failed_task"] == "deploy"


def test_training_runs_say_what_started_them_how_they_ended_and_link_their_reports(overview: dict[str, Any]) -> None:
    runs = overview["training_runs"]
    assert [(r["outcome"], r["trigger"], r["registered_version"]) for r in runs] == [
        (None, None, None),  # still running: no summary yet
        ("failed", "manual", None),
        ("rejected", "scheduled", 3),
        ("promoted", "drift", 2),
        ("promoted", "manual", 1),
    ]
    failed, rejected = runs[1], runs[2]
    assert failed["failed_task"] == "validate" and "failed 4 of 69 expectations" in failed["message"]
    assert (rejected["challenger_value"], rejected["champion_value"], rejected["champion_version"]) == (0.74, 0.78, 1)
    assert rejected["gate_passed"] is False and rejected["mlflow_run_id"] == "run-3"
    folder = results.safe_name(rejected["run_id"])
    assert rejected["links"]["evaluation"] == f"/ml-models/churn-classifier/runs/retrain/{folder}/evaluation"
    assert rejected["links"]["validation"].endswith(f"/retrain/{folder}/validation")
    assert rejected["links"]["airflow_run"].startswith("/dags/churn-classifier.retrain/runs/scheduled__2026-11-22")


def test_drift_and_performance_over_time_and_the_monitors_decisions(overview: dict[str, Any]) -> None:
    monitor = overview["monitor"]
    windows = monitor["windows"]
    assert [w["drifted_share"] for w in windows] == [0.05, 0.05, 0.05, 0.5, 0.5, 0.5]
    assert [w["realized"]["value"] for w in windows] == pytest.approx([0.80, 0.78, 0.76, 0.74, 0.72, 0.70])
    assert windows[-1]["realized"]["lower"] == 0.76 and windows[-1]["realized"]["fired"] is True
    assert [run["outcome"] for run in monitor["runs"]] == ["cooldown", "cooldown", "alert", "quiet", "quiet", "quiet"]
    assert monitor["runs_total"] == 6 and monitor["runs"][2]["signals"] == ["realized_performance"]
    assert monitor["last_alert"]["window_end"] == (START + timedelta(hours=103)).isoformat()
    folder = results.safe_name(_run_id("scheduled", 105))
    assert monitor["runs"][0]["links"]["monitor"] == f"/ml-models/churn-classifier/runs/monitor/{folder}/monitor"


def test_the_page_renders_every_part_as_html_with_inline_svg(overview: dict[str, Any]) -> None:
    page = render.render_model(overview, "/ml-models/")
    assert "Champion: v1" in page and "Challenger: v3" in page and "v1 on local: http://127.0.0.1:8081" in page
    assert page.count("<svg") == 3  # drift, performance, champion version over time
    assert "http://" not in page.replace("http://127.0.0.1:8081", "").replace("http://www.w3.org/2000/svg", "")
    assert "rollback: smoke test failed: p99 900 ms" in page and 'target="_top"' in page
    assert "&lt;script" not in page and page.count("<script>") == 1  # only the trigger buttons' script


# Runs the page's script under node with the few DOM objects it touches, and Airflow's answers to its POST faked.
TRIGGER_HARNESS = """
const posted = [];
function form(conf) {
  const out = {textContent: "", replaceChildren(child) { this.child = child; }};
  return {
    dataset: {
      check: "/ml-models/api/models/m/checks/retrain",
      endpoint: "/api/v2/dags/m.retrain/dagRuns",
      runs: "/dags/m.retrain/runs/",
      note: "from the page",
    },
    elements: {conf: {value: conf}},
    out: out,
    querySelector: () => out,
    addEventListener(kind, handler) { this.submit = handler; },
  };
}
const forms = [
  form('{"epochs": 5}'),
  form('{"epochs": 0}'),
  form("{not json"),
  form('{"dataset_uri": "/no/such.csv"}'),
];
globalThis.document = {querySelectorAll: () => forms, createElement: () => ({})};
// The page's check refuses a missing dataset (422, a message per problem); Airflow refuses epochs below 1 (400).
globalThis.fetch = async (url, options) => {
  const body = JSON.parse(options.body);
  posted.push({url, method: options.method, credentials: options.credentials, body});
  if (url.includes("/checks/")) {
    const ok = !body.conf.dataset_uri;
    const answer = ok ? {problems: []} : {detail: ["dataset_uri: input file not found", "and another"]};
    return {ok, status: ok ? 200 : 422, json: async () => answer};
  }
  const ok = body.conf.epochs > 0;
  const answer = ok ? {dag_run_id: "manual__2026-11-30T10:00:00+00:00"} : {detail: "epochs: 0 is less than 1"};
  return {ok, status: ok ? 200 : 400, json: async () => answer};
};
SCRIPT
(async () => {
  for (const f of forms) await f.submit({preventDefault() {}});
  const link = (child) => [child.href, child.target, child.textContent];
  const shown = forms.map((f) => (f.out.child ? link(f.out.child) : f.out.textContent));
  console.log(JSON.stringify({posted, shown}));
})();
"""


def test_the_trigger_buttons_ask_the_pages_check_then_post_to_airflows_api_and_show_the_answer(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script is run only where it is")
    script = tmp_path / "trigger.js"
    script.write_text(TRIGGER_HARNESS.replace("SCRIPT", render.SCRIPT))
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["posted"][:2] == [
        {
            "url": "/ml-models/api/models/m/checks/retrain",  # the page's check first
            "method": "POST",
            "credentials": "same-origin",  # the browser sends the UI's _token cookie itself
            "body": {"conf": {"epochs": 5}},
        },
        {
            "url": "/api/v2/dags/m.retrain/dagRuns",  # then Airflow's trigger API
            "method": "POST",
            "credentials": "same-origin",
            "body": {"logical_date": None, "conf": {"epochs": 5}, "note": "from the page"},
        },
    ]
    # the third form's params are not JSON: nothing is posted; the fourth's check refuses: Airflow is not asked
    assert [post["url"] for post in report["posted"][2:]] == [
        "/ml-models/api/models/m/checks/retrain",
        "/api/v2/dags/m.retrain/dagRuns",
        "/ml-models/api/models/m/checks/retrain",
    ]
    run_link = "/dags/m.retrain/runs/manual__2026-11-30T10%3A00%3A00%2B00%3A00"
    assert report["shown"][0] == [run_link, "_top", "started manual__2026-11-30T10:00:00+00:00"]
    assert report["shown"][1] == "Airflow refused (400): epochs: 0 is less than 1"
    assert report["shown"][2].startswith("the params are not valid JSON")
    assert report["shown"][3] == "refused before starting (422): dataset_uri: input file not found; and another"


def test_the_prefilled_runs_are_accepted_by_airflows_trigger_api_and_the_dags_params(
    state: Settings, overview: dict[str, Any]
) -> None:
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict

    history = [  # v1 promoted, then v2: going back by hand deploys v1
        {"kind": "promote", "from_version": 1, "to_version": 2},
        {"kind": "promote", "from_version": None, "to_version": 1},
    ]
    promoted = reads.actions(state, reads.Links(), {"champion": {"version": 2}, "alias_history": history})
    # as the page shows it: v2 was rolled back to v1, so there is no older champion to go back to
    assert [action["name"] for action in overview["actions"]] == ["retrain", "deploy_champion"]
    actions = {action["name"]: action for action in [*overview["actions"], *promoted]}
    assert actions["deploy_previous"]["conf"]["model"] == "1"
    dags = DagBag(str(REPO_ROOT / "dags")).dags
    for action in actions.values():
        assert action["endpoint"] == f"/api/v2/dags/{action['dag_id']}/dagRuns"
        assert action["check"] == f"/api/models/{CHURN}/checks/{action['purpose']}"
        body = TriggerDAGRunPostBody.model_validate({"logical_date": None, "conf": action["conf"]})
        params = ParamsDict(dags[action["dag_id"]].params)
        params.update(body.conf)
        params.validate()  # what Airflow does with a triggered run's conf: raises on a bad or unknown type


def test_run_folders_are_ordered_by_the_run_time_in_their_ids(tmp_path: Path) -> None:
    dag_root = tmp_path / "runs" / "m.monitor"
    names = ["scheduled__2026-11-20T10-00-00-00-00", "manual__2026-11-21T09-00-00.5-00-00", "my-own-run", ".tmp"]
    for name in names:
        (dag_root / name).mkdir(parents=True)
    (dag_root / "stray.json").write_text("{}")
    found = reads.run_folders(str(tmp_path), "m.monitor")
    assert [folder.name for folder in found][1:] == [names[1], names[0]]  # the custom id: its folder's time (now)
    assert found[0].name == "my-own-run" and found[2].at == START


def test_the_page_names_the_deploy_steps_rollback_outcomes_as_the_deploy_dag_does() -> None:
    from orchestration.deploy import ROLLBACK_OUTCOMES

    assert reads.ROLLBACK_OUTCOMES == ROLLBACK_OUTCOMES


def test_the_page_imports_without_airflow_or_mlflow() -> None:
    # The scheduler and workers load the plugin too: the page's modules must cost them nothing.
    probe = (
        "import sys; import orchestration.models_page.app, orchestration.models_page.reads, "
        "orchestration.models_page.render; print([m for m in ('airflow', 'mlflow') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_model_whose_store_cannot_be_read_says_why_and_the_others_still_show(state: Settings, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from orchestration.models import ModelEntry
    from orchestration.models_page.app import Auth, create_app

    async def anyone() -> str:
        return "someone"

    tiers = next(entry for entry in load_models() if entry.name == "tier-classifier")
    blocker = tmp_path / "a-file"  # where the store's folder should be: it cannot be opened
    blocker.write_text("")
    broken = tiers.settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{blocker}/mlflow.db"})
    entries = [ModelEntry(Path("churn.yaml"), state), ModelEntry(tiers.config_path, broken)]
    auth = Auth(user=anyone, visible_dags=lambda user, ids: ids, sees_config_errors=lambda user: True)
    client = TestClient(create_app(auth=auth, models=lambda: entries))
    cards = {card["model"]: card for card in client.get("/api/models").json()["models"]}
    assert cards[CHURN]["champion"] == 1
    error = cards["tier-classifier"]["error"]
    assert "a-file" in error and f"cannot read: {html.escape(error)}" in client.get("/").text


# --- the app in Airflow's API server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_client(state: Settings) -> Iterator[Any]:
    """Airflow's own API server app with this project's plugins folder: the page mounted as the plugin mounts it."""
    from airflow import plugins_manager
    from airflow import settings as airflow_settings
    from airflow.api_fastapi.app import create_app
    from airflow.utils import db
    from fastapi.testclient import TestClient

    caches = (plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins, plugins_manager._get_ui_plugins)
    db.initdb()  # the tokens' revocation list lives in Airflow's database (the test run's throw-away one)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(airflow_settings, "PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
        for cache in caches:
            cache.cache_clear()
        try:
            with TestClient(create_app(apps="core")) as client:
                yield client
        finally:
            for cache in caches:  # the other tests see Airflow's plugins as they were
                cache.cache_clear()


def _admin_token(client: Any) -> str:
    """A token from the SimpleAuthManager's own login endpoint, with the admin password it generated."""
    from airflow.api_fastapi.app import get_auth_manager

    passwords = json.loads(Path(get_auth_manager().get_generated_password_file()).read_text())
    answer = client.post("/auth/token", json={"username": "admin", "password": passwords["admin"]})
    assert answer.status_code == 201, answer.text
    return answer.json()["access_token"]


def test_anonymous_requests_are_refused(airflow_client: Any) -> None:
    for path in ("/ml-models/", "/ml-models/churn-classifier", "/ml-models/api/models", "/ml-models/api/models/x"):
        answer = airflow_client.get(path)
        assert answer.status_code == 401, path
    assert airflow_client.get("/ml-models/api/models").json() == {"detail": "Not authenticated"}
    page = airflow_client.get("/ml-models/churn-classifier").text
    assert "log in to Airflow" in page and "/auth/login?next=" in page  # the SimpleAuthManager's login page
    folder = results.safe_name(_run_id("scheduled", 48))
    assert airflow_client.get(f"/ml-models/churn-classifier/runs/retrain/{folder}/evaluation").status_code == 401


def test_a_forged_token_is_refused(airflow_client: Any) -> None:
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiIsInJvbGUiOiJhZG1pbiJ9.c2ln"}
    assert airflow_client.get("/ml-models/api/models", headers=forged).status_code == 403  # Airflow's answer


def test_a_logged_in_user_gets_the_api_with_a_bearer_token_and_the_page_with_the_ui_cookie(
    airflow_client: Any, overview: dict[str, Any]
) -> None:
    token = _admin_token(airflow_client)
    answer = airflow_client.get("/ml-models/api/models/churn-classifier", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    shown = answer.json()
    assert shown["champion"]["version"] == 1 and shown["challenger"]["version"] == 3
    assert shown["alias_history"] == overview["alias_history"] and shown["serving"]["version"] == 1
    index = airflow_client.get("/ml-models/api/models", headers={"Authorization": f"Bearer {token}"}).json()
    cards = {card["model"]: card for card in index["models"]}
    assert {CHURN, "tier-classifier"} <= set(cards) and index["config_errors"] == []  # the bundled configs
    assert (cards[CHURN]["champion"], cards[CHURN]["challenger"], cards[CHURN]["last_alert"] is not None) == (
        1,
        3,
        True,
    )
    assert cards["tier-classifier"]["champion"] is None  # nothing trained yet: an empty line, not an error
    airflow_client.cookies.set("_token", token)  # what the UI's login leaves in the browser
    try:
        page = airflow_client.get("/ml-models/churn-classifier")
        report = airflow_client.get(shown["training_runs"][2]["links"]["evaluation"])
    finally:
        airflow_client.cookies.clear()
    assert page.status_code == 200 and "Champion: v1" in page.text
    assert report.status_code == 200 and report.text == "<html><body>evaluation</body></html>"
    assert report.headers["content-security-policy"].startswith("default-src 'none'")


def test_a_user_sees_only_the_models_whose_dags_the_auth_manager_lets_them_read(airflow_client: Any) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = get_auth_manager()
    viewer = manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    nobody = manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    as_nobody = {"Authorization": f"Bearer {nobody}"}
    seen = {card["model"] for card in airflow_client.get("/ml-models/api/models", headers=as_viewer).json()["models"]}
    assert CHURN in seen  # a viewer may read every DAG
    assert airflow_client.get("/ml-models/api/models", headers=as_nobody).json() == {"models": [], "config_errors": []}
    assert airflow_client.get("/ml-models/api/models/churn-classifier", headers=as_nobody).status_code == 404


def test_reports_are_served_only_from_the_models_own_runs(airflow_client: Any) -> None:
    token = _admin_token(airflow_client)
    headers = {"Authorization": f"Bearer {token}"}
    folder = results.safe_name(_run_id("scheduled", 48))
    ok = airflow_client.get(f"/ml-models/churn-classifier/runs/retrain/{folder}/validation", headers=headers)
    assert ok.status_code == 200 and "validation of scheduled__" in ok.text
    for path in (
        f"/ml-models/churn-classifier/runs/retrain/{folder}/summary",  # not a report
        f"/ml-models/churn-classifier/runs/deploy/{folder}/validation",  # not a purpose with reports
        "/ml-models/churn-classifier/runs/retrain/..%2F..%2F..%2Fmonitor/validation",  # not a run folder
        f"/ml-models/churn-classifier/runs/retrain/{folder}/monitor",  # a report this run does not have
        f"/ml-models/no-such-model/runs/retrain/{folder}/validation",
    ):
        assert airflow_client.get(path, headers=headers).status_code == 404, path


def test_the_plugin_adds_the_page_to_the_ui_navigation(airflow_client: Any) -> None:
    token = _admin_token(airflow_client)
    plugins = airflow_client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()["plugins"]
    ours = next(plugin for plugin in plugins if plugin["name"] == "models_page")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/ml-models"
    view = ours["external_views"][0]
    assert (view["href"], view["url_route"], view["destination"]) == ("/ml-models/", "models", "nav")


def test_a_run_is_checked_beyond_its_schema_before_it_is_posted(airflow_client: Any, state: Settings) -> None:
    from mlsteps.data.datasets import generate_churn
    from mlsteps.data.snapshots import write_table

    headers = {"Authorization": f"Bearer {_admin_token(airflow_client)}"}
    checks = f"/ml-models/api/models/{CHURN}/checks"
    good = str(state.state_dir / "checks" / "churn.parquet")
    write_table(generate_churn(50, seed=3), good)
    lacking = str(state.state_dir / "checks" / "lacking.csv")
    write_table(generate_churn(50, seed=3).drop(columns=["tenure_months", "churned"]), lacking)
    broken = state.state_dir / "checks" / "broken.parquet"
    broken.write_bytes(b"PAR1 not parquet")

    def check(purpose: str, conf: dict[str, Any]) -> tuple[int, Any]:
        answer = airflow_client.post(f"{checks}/{purpose}", headers=headers, json={"conf": conf})
        return answer.status_code, answer.json()

    assert check("retrain", {"dataset_uri": good}) == (200, {"dag_id": f"{CHURN}.retrain", "problems": []})
    status, body = check("retrain", {"dataset_uri": "/no/such/file.csv"})
    assert status == 422 and body["detail"] == [
        "dataset_uri: input file not found: no such file: /no/such/file.csv; check the input URI"
    ]
    status, body = check("retrain", {"dataset_uri": lacking})
    assert status == 422 and "lacks the columns ['tenure_months', 'churned']" in body["detail"][0]
    status, body = check("retrain", {"dataset_uri": str(broken)})
    assert status == 422 and "cannot read" in body["detail"][0] and "complete Parquet file" in body["detail"][0]
    assert check("retrain", {"dataset_uri": 7})[0] == 200  # a wrong type is Airflow's schema check's to name
    assert check("deploy", {"model": "champion"})[0] == 200
    assert check("deploy", {"model": "2"})[0] == 200
    assert check("deploy", {"model": "9"}) == (
        422,
        {"detail": [f"model: {CHURN} has no version 9; its newest versions are 3, 2, 1"]},
    )
    assert check("monitor", {})[0] == 200
    assert check("serve", {})[0] == 404
    assert airflow_client.post(f"{checks}/retrain", json={"conf": {}}).status_code == 401
    tiers = airflow_client.post("/ml-models/api/models/tier-classifier/checks/deploy", headers=headers, json={})
    assert tiers.status_code == 422
    assert tiers.json()["detail"] == [
        "model: tier-classifier has no champion yet; run tier-classifier.retrain first, or give a version number"
    ]


def test_a_param_the_dag_does_not_have_is_refused_naming_the_ones_it_has(state: Settings) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=state.mlflow_tracking_uri)
    known = ["dataset_uri", "epochs"]
    assert prechecks.run_problems(state, client, "monitor", {"epoch": 5}, known) == [
        f"unknown params ['epoch']: {CHURN}.monitor has ['dataset_uri', 'epochs']; check the spelling"
    ]
    assert prechecks.run_problems(state, client, "monitor", {"epochs": 5}, known) == []
    assert prechecks.run_problems(state, client, "monitor", {"epoch": 5}, None) == []  # not parsed yet: Airflow 404s
