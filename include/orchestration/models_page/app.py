"""The models page's FastAPI app: the page, its JSON API and the runs' reports, behind Airflow's login.

Routes (under the plugin's ``url_prefix``, ``/ml-models``):

- ``GET /``: every model the user may see, one line each (HTML); ``GET /api/models`` the same as JSON;
- ``GET /{model}``: one model's page; ``GET /api/models/{model}`` the same as JSON (``reads.model_overview``);
- ``GET /{model}/runs/{purpose}/{run folder}/{report}``: a report of one of the model's runs (``reads.REPORTS``);
- ``POST /api/models/{model}/checks/{purpose}`` with ``{"conf": {...}}``: what the params of a run cannot say in
  their schema (``prechecks``), asked before the run is posted to Airflow; 422 with a message per problem.

Airflow does not put the apps of plugins behind its login, so every route depends on Airflow's own authentication:
``airflow.api_fastapi.core_api.security.get_user`` (the ``Authorization: Bearer`` token, else the UI's ``_token``
cookie, checked by the auth manager). No credential is a 401, a bad one Airflow's 403. A user sees a model only when
the auth manager lets them read its retrain DAG, and the broken configs only with access to import errors. Airflow is
imported on the first request, not with this module, so the scheduler and workers that load the plugin pay nothing.
"""

from __future__ import annotations

import contextlib
import functools
import html
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlsteps import results
from mlsteps.data import storage
from orchestration.models import ModelEntry, dag_id, load_models
from orchestration.models_page import prechecks, reads, render
from orchestration.settings import Settings

log = logging.getLogger(__name__)

URL_PREFIX = "/ml-models"
# The MLflow UI as browsers reach it, when the tracking URI the steps use is not (a cluster-internal Service).
MLFLOW_UI_ENV_VAR = "ML_MLFLOW_UI_URL"
CONFIGS_TTL_SECONDS = 30.0  # model configs are read again after this long: a new model appears without a restart
PURPOSES_WITH_REPORTS = ("retrain", "monitor")
RUN_PURPOSES = ("retrain", "deploy", "monitor")  # each model's DAGs that a person may start
# A report is our own self-contained file (inline CSS and SVG): it may show nothing but itself.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
}

_bearer = HTTPBearer(auto_error=False)


class RunCheck(BaseModel):
    """The body of a run check: the params as they will be posted to Airflow's trigger API."""

    conf: dict[str, Any] = {}


async def airflow_user(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The request's Airflow user, by Airflow's own ``get_user``: the bearer token, else the UI's ``_token`` cookie.

    Raises:
        HTTPException: 401 without a credential or with an expired one, 403 with an invalid token (Airflow's).
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request=request, _oauth_token=None, bearer_credentials=bearer)


def _airflow_visible_dags(user: Any, dag_ids: set[str]) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET")


def _airflow_sees_import_errors(user: Any) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView

    return get_auth_manager().is_authorized_view(access_view=AccessView.IMPORT_ERRORS, user=user)


def _airflow_dag_params(dag: str) -> list[str] | None:
    """The params of the DAG as Airflow validates a triggered run against them: its latest serialized version."""
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session

    with create_session() as session:
        serialized = DBDagBag().get_latest_version_of_dag(dag, session=session)
        return None if serialized is None else list(serialized.params.keys())


def _airflow_login_url(next_url: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login(next_url=next_url)


@dataclass(frozen=True)
class Auth:
    """Who may see what, and what Airflow knows: its authentication, the auth manager's permissions and the parsed
    DAGs (the defaults)."""

    user: Callable[..., Awaitable[Any]] = airflow_user  # a FastAPI dependency: the user, or an HTTPException
    visible_dags: Callable[[Any, set[str]], set[str]] = _airflow_visible_dags  # the DAG ids the user may read
    sees_config_errors: Callable[[Any], bool] = _airflow_sees_import_errors
    login_url: Callable[[str], str] = _airflow_login_url
    dag_params: Callable[[str], list[str] | None] = _airflow_dag_params  # what Airflow knows of a DAG's params


class _ModelConfigs:
    """The model configs, read again at most every ``CONFIGS_TTL_SECONDS`` (``orchestration.models.load_models``)."""

    def __init__(self, load: Callable[[], list[ModelEntry]], ttl: float) -> None:
        self._load, self._ttl = load, ttl
        self._lock = threading.Lock()
        self._entries: list[ModelEntry] = []
        self._loaded_at = float("-inf")

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl:
                self._entries, self._loaded_at = self._load(), time.monotonic()
            return self._entries


@functools.cache
def mlflow_client(tracking_uri: str) -> Any:
    """One MLflow client per tracking server, kept for the process (its SQL store keeps a connection pool)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _links(request: Request, settings: Settings) -> reads.Links:
    # Mounted in the Airflow API server, root_path is Airflow's base path plus the mount; app_root_path Airflow's.
    page = request.scope.get("root_path", "")
    airflow = request.scope.get("app_root_path", "")
    airflow = "" if airflow == page else airflow  # not mounted (tests, benchmarks): Airflow's routes are elsewhere
    ui = os.environ.get(MLFLOW_UI_ENV_VAR) or settings.mlflow_tracking_uri
    return reads.Links.for_tracking_uri(ui, page=page, airflow=airflow)


class _Pages:
    """What the routes answer, for the models the user may see."""

    def __init__(self, auth: Auth, configs: _ModelConfigs) -> None:
        self.auth, self.configs = auth, configs

    def visible(self, user: Any) -> list[Settings]:
        """The models whose retrain DAG the user may read."""
        settings = [entry.settings for entry in self.configs.entries() if entry.settings is not None]
        allowed = self.auth.visible_dags(user, {dag_id(s.pipeline.registry.model_name, "retrain") for s in settings})
        return [s for s in settings if dag_id(s.pipeline.registry.model_name, "retrain") in allowed]

    def one(self, user: Any, model: str) -> Settings:
        """One visible model's settings; 404 for a model that does not exist or that the user may not see."""
        for settings in self.visible(user):
            if settings.pipeline.registry.model_name == model:
                return settings
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {model!r} that you may see")

    def cards(self, request: Request, user: Any) -> dict[str, Any]:
        """The index: a card per visible model, and the broken configs for those who may see import errors.

        A model whose state cannot be read (its store down, a file unreadable) gets a card that says why: one model
        never hides the others.
        """
        found = []
        for settings in self.visible(user):
            model = settings.pipeline.registry.model_name
            try:
                client = mlflow_client(settings.mlflow_tracking_uri)
                found.append(reads.model_card(settings, client, _links(request, settings)))
            except Exception as exc:
                log.warning("models page: cannot read %s", model, exc_info=True)
                found.append({"model": model, "error": f"{type(exc).__name__}: {exc}"})
        entries = self.configs.entries()
        problems = [entry.error for entry in entries if entry.error] if self.auth.sees_config_errors(user) else []
        return {"models": found, "config_errors": problems}

    def overview(self, request: Request, user: Any, model: str) -> dict[str, Any]:
        """One model's overview."""
        settings = self.one(user, model)
        return reads.model_overview(settings, mlflow_client(settings.mlflow_tracking_uri), _links(request, settings))

    def check_run(self, user: Any, model: str, purpose: str, conf: dict[str, Any]) -> dict[str, Any]:
        """The params of a run of one of the model's DAGs, checked beyond their schema (``prechecks``).

        Raises:
            HTTPException: 404 for a model the user may not see or a DAG it does not have, 422 listing each problem.
        """
        settings = self.one(user, model)
        if purpose not in RUN_PURPOSES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{model} has no {purpose!r} DAG; it has {RUN_PURPOSES}")
        client = mlflow_client(settings.mlflow_tracking_uri)
        problems = prechecks.run_problems(settings, client, purpose, conf, self.auth.dag_params(dag_id(model, purpose)))
        if problems:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
        return {"dag_id": dag_id(model, purpose), "problems": []}

    def report(self, user: Any, model: str, purpose: str, folder: str, report: str) -> Response:
        """One report of one of the model's runs: only the reports the page links to, only of its own DAGs' runs."""
        settings = self.one(user, model)
        relative = reads.REPORTS.get(report)
        if purpose not in PURPOSES_WITH_REPORTS or relative is None or not reads.RUN_FOLDER.match(folder):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report {report!r} of a {purpose!r} run {folder!r}")
        dag_folder = results.safe_name(dag_id(model, purpose))
        uri = storage.join(settings.artifact_root, "runs", dag_folder, folder, relative)
        try:
            content = storage.read_bytes(uri)
        except FileNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {folder} of {model} has no {relative}") from None
        media_type = "application/json" if relative.endswith(".json") else "text/html; charset=utf-8"
        return Response(content, media_type=media_type, headers=REPORT_HEADERS)

    def warm_up(self) -> None:
        """Load the model configs and open each tracking store once (importing MLflow takes seconds), so that the
        first page view after the API server starts is as fast as the next. Never raises: a store that is down
        shows on the page, not in the server's start."""
        try:
            uris = {entry.settings.mlflow_tracking_uri for entry in self.configs.entries() if entry.settings}
            for uri in sorted(uris):
                mlflow_client(uri).search_registered_models(max_results=1)
        except Exception:
            log.warning("models page: warming up failed; the first request will try again", exc_info=True)

    def login_first(self, request: Request, exc: StarletteHTTPException) -> Response:
        """A browser without a login gets a page that links to Airflow's login; API clients get Airflow's JSON."""
        page_route = not request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/")
        if exc.status_code == status.HTTP_401_UNAUTHORIZED and page_route:
            login = html.escape(self.auth.login_url(str(request.url)))
            body = f'<p>{html.escape(str(exc.detail))}: <a href="{login}" target="_top">log in to Airflow</a>.</p>'
            return HTMLResponse(render.document("Models", body), status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    auth: Auth | None = None,
    models: Callable[[], list[ModelEntry]] = load_models,
    configs_ttl_seconds: float = CONFIGS_TTL_SECONDS,
) -> FastAPI:
    """The page's app, to mount in the Airflow API server (``plugins/models_page.py``).

    Args:
        auth: who may see what; default Airflow's authentication and auth manager.
        models: the model configs (``orchestration.models.load_models``: ``$ML_MODELS_DIR`` or the bundled folder).
        configs_ttl_seconds: how long the model configs are kept before they are read again.

    Returns:
        The FastAPI app; every route answers 401 without an Airflow login.
    """
    auth = auth or Auth()
    pages = _Pages(auth, _ModelConfigs(models, configs_ttl_seconds))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The API server enters the lifespan of every mounted app; the warm-up must not delay its start.
        threading.Thread(target=pages.warm_up, name="models-page-warm-up", daemon=True).start()
        yield

    app = FastAPI(title="Models", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    signed_in = Depends(auth.user)  # every route: the Airflow user, or 401/403

    @app.exception_handler(StarletteHTTPException)
    async def login_first(request: Request, exc: StarletteHTTPException) -> Response:
        return pages.login_first(request, exc)

    @app.get("/api/models")
    def api_models(request: Request, user: Any = signed_in) -> dict[str, Any]:
        """Every model the user may see: champion, challenger, what serves, last training run and monitor check."""
        return pages.cards(request, user)

    @app.get("/api/models/{model}")
    def api_model(model: str, request: Request, user: Any = signed_in) -> dict[str, Any]:
        """One model: registry, serving, deploys, training runs, monitor windows and checks, the runs to start."""
        return pages.overview(request, user, model)

    @app.post("/api/models/{model}/checks/{purpose}")
    def api_run_check(model: str, purpose: str, body: RunCheck, user: Any = signed_in) -> dict[str, Any]:
        """Check a run's params beyond their schema before it is posted to Airflow: 422 naming each problem."""
        return pages.check_run(user, model, purpose, body.conf)

    @app.get("/", response_class=HTMLResponse)
    def index_page(request: Request, user: Any = signed_in) -> str:
        """The index page."""
        found = pages.cards(request, user)
        return render.render_index(found["models"], found["config_errors"])

    @app.get("/{model}", response_class=HTMLResponse)
    def model_page(model: str, request: Request, user: Any = signed_in) -> str:
        """One model's page."""
        return render.render_model(pages.overview(request, user, model), request.scope.get("root_path", "") + "/")

    @app.get("/{model}/runs/{purpose}/{folder}/{report}")
    def run_report(model: str, purpose: str, folder: str, report: str, user: Any = signed_in) -> Response:
        """One report of one of the model's runs."""
        return pages.report(user, model, purpose, folder, report)

    return app
