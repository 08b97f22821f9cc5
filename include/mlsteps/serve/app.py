"""The HTTP API of the model server: Open Inference Protocol v2, MLflow's scoring server, health and metrics.

v2 (``/v2/...``) with the binary tensor data extension and the model repository extension's index and load;
MLflow's scoring-server endpoints (``/invocations``, ``/ping``, ``/health``, ``/version``). Every answer is valid
JSON, except v2 answers whose outputs the client asked for as binary data: a model output that is not a finite
number is a 422 naming the row and its inputs outside the range seen in training, never a ``NaN`` in the body.

Handlers are plain Starlette endpoints inside a FastAPI app (no per-request pydantic models or dependency
resolution): they read the body once, parse it with ``mlsteps.serve.protocol`` and run the model inline on the
event loop, which for small batches is faster than a hand-off to a thread. Batches of ``THREADPOOL_ROWS`` rows or
more run in the thread pool instead, so one large request does not stall the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import mlsteps
from mlsteps.errors import ConfigError, StepError
from mlsteps.monitoring.prediction_log import SMOKE_REQUEST_PREFIX
from mlsteps.serve.metrics import CONTENT_TYPE, ServerMetrics
from mlsteps.serve.model import ModelHandle, ModelLoader, ServedModel
from mlsteps.serve.protocol import (
    HEADER_LENGTH_HEADER,
    MODEL_VERSION_HEADER,
    ParsedRequest,
    RequestError,
    RequestSchema,
    body_format,
    load_json,
    parse_mlflow,
    parse_v2,
)
from mlsteps.serving_bundle import BundleError

logger = logging.getLogger(__name__)

SERVER_NAME = "mlsteps-serve"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# A body not received in this time is refused with 408: a client that stalls mid-body would otherwise hold its
# connection and its buffered bytes for as long as it likes (uvicorn has no body timeout of its own).
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
THREADPOOL_ROWS = 2048
JSON = "application/json"
BINARY = "application/octet-stream"  # v2 answers with binary outputs (a JSON header, then the tensors' bytes)
REQUEST_ID_HEADER = "x-request-id"
# MLflow's /version answers the version of the MLflow that serves. This server speaks the scoring protocol of the MLflow
# the project pins (constraints.txt), whose own scoring client tests/unit/test_serve_clients.py runs against it; the
# serving image has no MLflow to ask, and tests/unit/test_serve_edges.py keeps this equal to the pin.
MLFLOW_SCORING_VERSION = "3.17.2"


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, headers, JSON)


def _v2_body(model: ServedModel, parsed: ParsedRequest, raw: np.ndarray) -> tuple[bytes, str | None]:
    """The v2 answer, and the length of its JSON header when outputs go as binary data (None: all JSON)."""
    rows = len(raw)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if parsed.request_id is not None:
        answer["id"] = parsed.request_id
    tensors = model.outputs.tensors
    values_of = model.outputs.tensor_values(raw)
    outputs, chunks = [], []
    for name, binary in ((name, False) for name in tensors) if parsed.outputs is None else parsed.outputs:
        tensor = tensors[name]
        answer_tensor: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": tensor.shape(rows)}
        if binary:
            chunks.append(tensor.as_bytes(values_of[name]))
            answer_tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            answer_tensor["data"] = tensor.as_json(values_of[name])
        outputs.append(answer_tensor)
    answer["outputs"] = outputs
    header = json.dumps(answer).encode()
    return (header + b"".join(chunks), str(len(header))) if chunks else (header, None)


def _mlflow_body(model: ServedModel, parsed: ParsedRequest, raw: np.ndarray) -> tuple[bytes, str | None]:
    """MLflow's scoring answer: one record per row with the predict contract's columns."""
    columns = model.outputs.column_values(raw)
    rows = zip(*(values.tolist() for values in columns.values()), strict=True)
    return json.dumps({"predictions": [dict(zip(columns, row, strict=True)) for row in rows]}).encode(), None


def _non_finite(model: ServedModel, parsed: ParsedRequest, raw: np.ndarray, outside: np.ndarray | None) -> RequestError:
    """The 422 for rows whose output is not a finite number, naming the first row's unusual inputs."""
    rows = model.outputs.non_finite_rows(raw)
    first = int(rows[0])
    return RequestError(
        f"the model gave no finite {model.outputs.scored} for {len(rows)} row(s) {rows[:10].tolist()}: row {first} "
        f"has {model.schema.describe_outside(outside, parsed, first)}. Send values within the range seen in "
        "training; nothing was scored or logged for this request",
        422,
        "non_finite_output",
    )


# The two inference formats: how to parse a body, how to answer, and whether the path names the model.
_Parser = Callable[[bytes, RequestSchema, "int | None"], ParsedRequest]
_Renderer = Callable[[ServedModel, ParsedRequest, np.ndarray], "tuple[bytes, str | None]"]


class _Endpoints:
    """The request handlers, sharing the handle, the metrics and the body limit."""

    def __init__(
        self, handle: ModelHandle, loader: ModelLoader | None, max_body_bytes: int, body_timeout_seconds: float
    ) -> None:
        self.handle = handle
        self.loader = loader
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.metrics = ServerMetrics(lambda: handle.current.log_writer if handle.current else None)
        if handle.current is not None:
            current = handle.current
            self.metrics.model_loaded(current.name, current.version, current.bundle.sha256, None)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 once Content-Length or the bytes received pass the limit, and with 408 when it
        has not all arrived within the body timeout."""
        declared = request.headers.get("content-length")
        too_large = RequestError(
            f"request body of {declared or 'more'} bytes is over the limit of {self.max_body_bytes} bytes: "
            "send fewer rows per request",
            413,
            "body_too_large",
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise too_large
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(
                f"request body not received within {self.body_timeout_seconds:g} s ({size} bytes came): send the "
                "whole body at once",
                408,
                "body_timeout",
            ) from None
        return b"".join(chunks)

    def serving(self, request: Request) -> ServedModel:
        """The model the path names, read once: this request uses it to the end even if a reload swaps it."""
        model = self.handle.current
        if model is None:
            raise RequestError("no model is loaded yet: wait for /v2/health/ready", 503, "not_ready")
        name = request.path_params.get("name", model.name)
        version = request.path_params.get("version", model.version)
        if name != model.name or version != model.version:
            asked = name if "version" not in request.path_params else f"{name} version {version}"
            raise RequestError(
                f"unknown model {asked!r}: this server serves {model.name!r} version {model.version}",
                404,
                "unknown_model",
            )
        return model

    def failure(self, endpoint: str, exc: RequestError, started: float, model: ServedModel | None) -> Response:
        """The JSON error answer, counted."""
        self.metrics.error(endpoint, exc.reason)
        self.metrics.observe(endpoint, exc.status, time.perf_counter() - started)
        headers = {MODEL_VERSION_HEADER: model.version} if model is not None else None
        return _json({"error": str(exc)}, exc.status, headers)

    def inference(self, endpoint: str, parse: _Parser, render: _Renderer) -> Callable[[Request], Any]:
        """A handler that parses one inference format, scores the rows, logs them and answers in that format."""
        binary = parse is parse_v2  # the binary tensor data extension is v2's

        async def infer(request: Request) -> Response:
            started = time.perf_counter()
            model = None
            try:
                model = self.serving(request)
                headers = request.headers
                header_length = body_format(headers.get("content-type"), headers.get(HEADER_LENGTH_HEADER), binary)
                parsed = parse(await self.read_body(request), model.schema, header_length)
                outside = model.schema.out_of_range(parsed)
                if outside is not None:
                    self.metrics.out_of_range(model.schema.numeric_names, outside)
                if parsed.ignored:
                    self.metrics.ignored_columns(endpoint, len(parsed.ignored))
                if parsed.rows >= THREADPOOL_ROWS:
                    raw = await run_in_threadpool(model.predict, parsed)
                else:
                    raw = model.predict(parsed)
                if not np.isfinite(raw).all():
                    raise _non_finite(model, parsed, raw, outside)
            except RequestError as exc:
                return self.failure(endpoint, exc, started, model)
            except Exception:  # a bug or a runtime failure must cost one request, never the server
                logger.exception("%s failed", endpoint)
                internal = RequestError("internal error: see the server log", 500, "internal")
                return self.failure(endpoint, internal, started, model)
            request_id = parsed.request_id or request.headers.get(REQUEST_ID_HEADER) or os.urandom(16).hex()
            if not request_id.startswith(SMOKE_REQUEST_PREFIX):
                model.log(parsed, raw, request_id)
            content, json_length = render(model, parsed, raw)
            answer_headers = {MODEL_VERSION_HEADER: model.version, REQUEST_ID_HEADER: request_id}
            if json_length is not None:
                answer_headers[HEADER_LENGTH_HEADER] = json_length
            response = Response(content, 200, answer_headers, JSON if json_length is None else BINARY)
            self.metrics.observe(endpoint, 200, time.perf_counter() - started, parsed.rows)
            return response

        return infer

    async def ping(self, request: Request) -> Response:
        """MLflow's /ping and /health: 200 once a model serves (503 before)."""
        loaded = self.handle.current is not None
        return _json({"status": "ok" if loaded else "loading"}, 200 if loaded else 503)

    async def mlflow_version(self, request: Request) -> Response:
        """MLflow's /version, as a JSON string."""
        return _json(MLFLOW_SCORING_VERSION)

    async def repository_index(self, request: Request) -> Response:
        """The model repository index: the served model with its state and version (``{"ready": true}`` filters)."""
        started = time.perf_counter()
        try:
            body = await self.read_body(request)
            payload = load_json(body) if body.strip() else {}
            if type(payload) is not dict or type(payload.get("ready", False)) is not bool:
                raise RequestError(f'send {{}} or {{"ready": true}} to list the models; got {payload!r}')
        except RequestError as exc:
            return self.failure("repository_index", exc, started, self.handle.current)
        model = self.handle.current
        models = (
            [] if model is None else [{"name": model.name, "version": model.version, "state": "READY", "reason": ""}]
        )
        self.metrics.observe("repository_index", 200, time.perf_counter() - started)
        return _json(models)

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        loaded = self.handle.current is not None
        return _json({"ready": loaded}, 200 if loaded else 503)

    async def server_metadata(self, request: Request) -> Response:
        extensions = ["model_repository", "binary_tensor_data"]
        return _json({"name": SERVER_NAME, "version": mlsteps.__version__, "extensions": extensions})

    async def model_metadata(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self.serving(request)
        except RequestError as exc:
            return self.failure("metadata", exc, started, None)
        metadata = {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": model.schema.metadata_inputs(),
            "outputs": model.outputs.metadata(),
            "parameters": model.outputs.parameters(),
        }
        return _json(metadata, headers={MODEL_VERSION_HEADER: model.version})

    async def model_ready(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self.serving(request)
        except RequestError as exc:
            return self.failure("model_ready", exc, started, None)
        return _json({"name": model.name, "ready": True}, headers={MODEL_VERSION_HEADER: model.version})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), 200, media_type=CONTENT_TYPE)

    async def load(self, request: Request) -> Response:
        started = time.perf_counter()
        current = self.handle.current
        try:
            if self.loader is None:
                raise RequestError(
                    "model reloads are off: start the server with --allow-reload (SERVE_ALLOW_RELOAD=1)",
                    403,
                    "forbidden",
                )
            if current is not None and request.path_params["name"] != current.name:
                raise RequestError(
                    f"unknown model {request.path_params['name']!r}: this server serves {current.name!r}",
                    404,
                    "unknown_model",
                )
            selector = _load_selector(load_json(await self.read_body(request)))
            model = await run_in_threadpool(_load_exclusively, self.handle, self.loader, selector, self.metrics)
        except RequestError as exc:
            return self.failure("load", exc, started, current)
        self.metrics.observe("load", 200, time.perf_counter() - started)
        return _json({"name": model.name, "version": model.version}, headers={MODEL_VERSION_HEADER: model.version})


def create_app(
    handle: ModelHandle,
    *,
    loader: ModelLoader | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> FastAPI:
    """Build the server's ASGI app around a model handle.

    Args:
        handle: the model that serves; an empty handle answers readiness with 503 until a model is swapped in.
        loader: loads a version or alias for ``POST /v2/repository/models/{name}/load``; None disables reloads
            (the endpoint answers 403).
        max_body_bytes: larger request bodies are refused with 413 (by Content-Length and by the bytes read).
        body_timeout_seconds: a request body not received in this time is refused with 408 (a stalled client).

    Returns:
        The app; ``app.state.metrics`` holds its ``ServerMetrics`` and ``app.state.handle`` the handle. Its
        lifespan shutdown flushes the prediction log.
    """
    endpoints = _Endpoints(handle, loader, max_body_bytes, body_timeout_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Uvicorn has answered the in-flight requests by now; write what they queued for the log.
        await run_in_threadpool(handle.close)

    app = FastAPI(
        title=SERVER_NAME,
        version=mlsteps.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.metrics = endpoints.metrics
    app.state.handle = handle
    infer_v2 = endpoints.inference("infer", parse_v2, _v2_body)
    # Starlette tries routes in order: the inference paths come first.
    routes: list[tuple[str, Callable[[Request], Any], str]] = [
        ("/v2/models/{name}/infer", infer_v2, "POST"),
        ("/invocations", endpoints.inference("invocations", parse_mlflow, _mlflow_body), "POST"),
        ("/v2/models/{name}/versions/{version}/infer", infer_v2, "POST"),
        ("/v2/health/live", endpoints.live, "GET"),
        ("/v2/health/ready", endpoints.ready, "GET"),
        ("/v2", endpoints.server_metadata, "GET"),
        ("/v2/models/{name}", endpoints.model_metadata, "GET"),
        ("/v2/models/{name}/ready", endpoints.model_ready, "GET"),
        ("/metrics", endpoints.metrics_text, "GET"),
        ("/v2/repository/models/{name}/load", endpoints.load, "POST"),
        ("/v2/repository/index", endpoints.repository_index, "POST"),
        ("/ping", endpoints.ping, "GET"),
        ("/health", endpoints.ping, "GET"),
        ("/version", endpoints.mlflow_version, "GET"),
    ]
    for path, endpoint, method in routes:
        app.router.add_route(path, endpoint, methods=[method], include_in_schema=False)
    return app


def _load_selector(payload: Any) -> str:
    """The version or alias a load request asks for.

    Raises:
        RequestError: neither or both are given.
    """
    parameters = payload.get("parameters") if type(payload) is dict else None
    wanted = {key: parameters[key] for key in ("version", "alias") if type(parameters) is dict and key in parameters}
    if len(wanted) != 1 or not str(next(iter(wanted.values()))).strip():
        raise RequestError(
            'send {"parameters": {"version": "8"}} or {"parameters": {"alias": "champion"}}: one of the two, '
            f"got {payload!r}"
        )
    return str(next(iter(wanted.values()))).strip()


def _load_exclusively(handle: ModelHandle, loader: ModelLoader, selector: str, metrics: ServerMetrics) -> ServedModel:
    """Load ``selector`` (one load at a time) and swap it in; the old model keeps serving if anything fails.

    Raises:
        RequestError: 422 for a bundle that is invalid or fails its smoke check, 404 for an unknown version or
            alias, 500 for a server without registry settings, 502 when the registry cannot be reached.
    """
    with handle.reload_lock:
        try:
            model = loader(selector)
        except Exception as exc:
            metrics.load_failed()
            status = 422 if isinstance(exc, BundleError) else 500 if isinstance(exc, ConfigError) else 404
            if not isinstance(exc, StepError):
                logger.exception("loading %r failed", selector)
                status = 502
            current = handle.current
            serving = f"{current.name} v{current.version}" if current else "nothing"
            raise RequestError(
                f"could not load {selector!r}: {exc}; still serving {serving}", status, "reload_failed"
            ) from None
        previous = handle.swap(model)
        old = (previous.name, previous.version, previous.bundle.sha256) if previous else None
        metrics.model_loaded(model.name, model.version, model.bundle.sha256, old)
        logger.info("now serving %s v%s (was %s)", model.name, model.version, old[1] if old else "nothing")
        return model
