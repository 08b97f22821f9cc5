"""``python -m mlsteps.serve``: load a model version (from the registry or a bundle folder) and serve it.

The model is loaded, verified and smoke-checked before the server binds its port, so a failed load exits non-zero
with the reason (Kubernetes restarts the pod and the rollout fails visibly) and readiness never reports a model
that cannot answer. With ``--workers N`` the main process fetches and checks the bundle once; each worker then
opens that local copy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from mlsteps.config import load_pipeline_config
from mlsteps.errors import EXIT_USER_ERROR, ConfigError, StepError
from mlsteps.serve.app import DEFAULT_MAX_BODY_BYTES, create_app
from mlsteps.serve.model import (
    ModelHandle,
    ModelLoader,
    ServedModel,
    check_model_name,
    fetch_from_registry,
    load_model,
    registry_loader,
)
from mlsteps.serve.protocol import RequestPolicy
from mlsteps.serving_bundle import read_bundle

logger = logging.getLogger("mlsteps.serve")

# The settings a worker process reads (``--workers`` > 1 starts workers by import string, not with objects).
SETTINGS_ENV_VAR = "MLSTEPS_SERVE_SETTINGS"
GRACEFUL_SHUTDOWN_SECONDS = 30

app = typer.Typer(name="mlsteps-serve", pretty_exceptions_enable=False, add_completion=False, help="The model server.")


@dataclass(frozen=True)
class ServeSettings:
    """What a server process needs to load and serve its model."""

    bundle: str | None
    model_name: str | None
    selector: str
    prediction_log: str | None
    max_body_bytes: int
    allow_reload: bool
    intra_op_threads: int
    policy: dict[str, Any] = field(default_factory=dict)  # RequestPolicy's fields (JSON, for worker processes)

    @property
    def request_policy(self) -> RequestPolicy:
        """How requests are read."""
        policy = dict(self.policy)
        policy["bounds"] = {name: tuple(bound) for name, bound in policy.get("bounds", {}).items()}
        return RequestPolicy(**policy)


def policy_from_config(config_uri: str | None, strict_columns: bool | None) -> RequestPolicy:
    """The request policy of the pipeline config: its ``serving`` settings and its dataset's id column and bounds.

    Args:
        config_uri: the pipeline config; None: ``$MLSTEPS_CONFIG`` or the bundled one.
        strict_columns: overrides ``serving.strict_columns`` unless None.

    Raises:
        ConfigError: the config cannot be read or is invalid.
    """
    config = load_pipeline_config(config_uri)
    dataset = config.dataset
    return RequestPolicy(
        strict_columns=config.serving.strict_columns if strict_columns is None else strict_columns,
        id_column=dataset.id_column,
        max_string_length=config.serving.max_string_length,
        bounds={
            c.name: (c.min, c.max) for c in dataset.features if c.type == "numeric" and (c.min, c.max) != (None, None)
        },
    )


def _load_initial(settings: ServeSettings) -> ServedModel:
    """The model to start with: the bundle folder, else the registry version or alias.

    Raises:
        StepError: the bundle is invalid, fails its smoke check, or the version or alias does not exist.
    """
    if settings.bundle is not None:
        bundle = read_bundle(Path(settings.bundle))
        model = load_model(
            bundle,
            prediction_log=settings.prediction_log,
            intra_op_threads=settings.intra_op_threads,
            policy=settings.request_policy,
        )
        check_model_name(model, settings.model_name)
        return model
    return _registry(settings)(settings.selector)


def _require_model_name(settings: ServeSettings) -> str:
    if not settings.model_name:
        raise ConfigError(
            "name the model to serve: --model-name (MODEL_NAME) with MLFLOW_TRACKING_URI, or --bundle DIR"
        )
    return settings.model_name


def _registry(settings: ServeSettings) -> ModelLoader:
    return registry_loader(
        _require_model_name(settings),
        prediction_log=settings.prediction_log,
        intra_op_threads=settings.intra_op_threads,
        policy=settings.request_policy,
    )


def build_app(settings: ServeSettings, model: ServedModel) -> Any:
    """The ASGI app for a loaded model with the reload source the settings allow."""
    loader = _registry(settings) if settings.allow_reload else None
    return create_app(ModelHandle(model), loader=loader, max_body_bytes=settings.max_body_bytes)


def _configure_logging() -> None:
    """INFO lines to stdout, in the main process and in every worker (uvicorn starts workers as fresh processes)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")


def worker_app() -> Any:
    """App factory of one worker process (``--workers`` > 1): loads the bundle the main process fetched."""
    _configure_logging()
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV_VAR]))
    return build_app(settings, _load_initial(settings))


def _run(settings: ServeSettings, host: str, port: int, workers: int) -> None:
    import uvicorn

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop and httptools when installed (the serving image has both)
        "http": "auto",
        "access_log": False,  # a log line per request would cost more than the prediction
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "log_config": None,  # keep the logging set up below
    }
    with tempfile.TemporaryDirectory(prefix="mlsteps-serve-bundle-") as folder:
        if workers > 1 and settings.bundle is None:
            # Fetched once here; every worker opens this copy instead of downloading it again.
            bundle = fetch_from_registry(_require_model_name(settings), settings.selector, Path(folder))
            settings = replace(settings, bundle=str(bundle.folder))
        model = _load_initial(settings)
        logger.info(
            "serving %s v%s (bundle sha256 %s) on http://%s:%d with %d worker(s); reloads %s",
            model.name,
            model.version,
            model.bundle.sha256[:12],
            host,
            port,
            workers,
            "on" if settings.allow_reload else "off",
        )
        # Uvicorn re-raises the signal it stopped on after its graceful shutdown; a handler of our own turns that
        # into a normal return, so SIGTERM ends the process with exit code 0 once in-flight requests are answered.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: None)
        if workers == 1:
            uvicorn.Server(uvicorn.Config(build_app(settings, model), **options)).run()
            return
        model.close()
        os.environ[SETTINGS_ENV_VAR] = json.dumps(asdict(settings))
        uvicorn.run("mlsteps.serve.cli:worker_app", factory=True, workers=workers, **options)


@app.command()
def main(
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", envvar="MODEL_NAME", help="registered model to serve (loads from MLflow)"),
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", envvar="MODEL_VERSION", help="version to serve; wins over --model-alias"),
    ] = None,
    model_alias: Annotated[
        str, typer.Option("--model-alias", envvar="MODEL_ALIAS", help="alias to serve when no version is given")
    ] = "champion",
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", envvar="SERVE_BUNDLE", help="serve this downloaded bundle folder (no MLflow needed)"),
    ] = None,
    host: Annotated[str, typer.Option("--host", envvar="SERVE_HOST", help="address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", envvar="SERVE_PORT", help="port to listen on")] = 8080,
    workers: Annotated[
        int, typer.Option("--workers", envvar="SERVE_WORKERS", min=1, help="server processes sharing the port")
    ] = 1,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            "--prediction-log",
            envvar="PREDICTION_LOG_URI",
            help="prediction log store (path or s3:// URI) to append to",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option("--max-body-bytes", envvar="SERVE_MAX_BODY_BYTES", min=1, help="larger request bodies get 413"),
    ] = DEFAULT_MAX_BODY_BYTES,
    allow_reload: Annotated[
        bool,
        typer.Option(
            "--allow-reload", envvar="SERVE_ALLOW_RELOAD", help="enable POST /v2/repository/models/{name}/load"
        ),
    ] = False,
    intra_op_threads: Annotated[
        int,
        typer.Option(
            "--intra-op-threads", envvar="SERVE_INTRA_OP_THREADS", min=1, help="ONNX Runtime threads per worker"
        ),
    ] = 1,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            envvar="MLSTEPS_CONFIG",
            help="pipeline config: serving.strict_columns, serving.max_string_length, the dataset's id column and "
            "min/max (default: the bundled one)",
        ),
    ] = None,
    strict_columns: Annotated[
        bool | None,
        typer.Option(
            "--strict-columns/--ignore-extra-columns",
            envvar="SERVE_STRICT_COLUMNS",
            help="refuse MLflow-format columns the model does not use, or ignore them (default: "
            "serving.strict_columns)",
        ),
    ] = None,
) -> None:
    """Serve a model version over HTTP: Open Inference Protocol v2, MLflow's /invocations and /metrics.

    The bundle is verified against its checksums and its own smoke.json before the port opens; a failed load
    exits non-zero with the reason. MLFLOW_TRACKING_URI names the registry when loading by name.

    Args:
        model_name: registered model to serve (loads from MLflow).
        model_version: version to serve; wins over model_alias.
        model_alias: alias to serve when no version is given.
        bundle: serve this downloaded bundle folder (no MLflow needed).
        host: address to listen on.
        port: port to listen on.
        workers: server processes sharing the port.
        prediction_log: prediction log store (path or s3:// URI) to append to.
        max_body_bytes: larger request bodies get 413.
        allow_reload: enable POST /v2/repository/models/{name}/load.
        intra_op_threads: ONNX Runtime threads per worker.
        config: pipeline config: serving.strict_columns, serving.max_string_length, the dataset's id column and
            min/max (default: the bundled one).
        strict_columns: refuse MLflow-format columns the model does not use, or ignore them (default:
            serving.strict_columns).

    Examples:
        MLFLOW_TRACKING_URI=http://mlflow:5000 python -m mlsteps.serve --model-name churn-classifier

        python -m mlsteps.serve --bundle /tmp/bundle --port 8081 --prediction-log /tmp/artifacts/predictions

        python -m mlsteps.serve --model-name churn-classifier --model-version 7 --workers 2

        curl -s localhost:8080/v2/health/ready
    """
    _configure_logging()
    try:
        settings = ServeSettings(
            bundle=None if bundle is None else str(bundle),
            model_name=model_name,
            selector=model_version or model_alias,
            prediction_log=prediction_log,
            max_body_bytes=max_body_bytes,
            allow_reload=allow_reload,
            intra_op_threads=intra_op_threads,
            policy=asdict(policy_from_config(config, strict_columns)),
        )
        if allow_reload and workers > 1:
            raise ConfigError(
                f"--allow-reload with --workers {workers}: a load request reaches one worker only, so workers would "
                "serve different versions; use --workers 1 with reloads, or roll out new pods instead"
            )
        _run(settings, host, port, workers)
    except StepError as exc:
        print(f"serve failed: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
