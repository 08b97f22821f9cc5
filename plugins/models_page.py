"""The models page in the Airflow UI: one view per model of what serves, what waits, what happened, how it is doing.

Thin wiring only: the app is ``orchestration.models_page.app`` (reads, page and JSON API, behind Airflow's login),
mounted by the API server under ``/ml-models``; the nav entry shows it inside the UI (``/plugin/models``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from orchestration.models_page.app import URL_PREFIX, create_app

# The UI frames href as given: behind a path prefix ([api] base_url), the page is under it too.
BASE_PATH = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class ModelsPagePlugin(AirflowPlugin):
    """Mounts the models page's app and adds it to the UI's navigation."""

    name = "models_page"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Models"}]
    external_views = [
        {
            "name": "Models",
            "href": f"{BASE_PATH}{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "models",
            "nav_top_level": True,
        }
    ]
