"""The served model: a verified bundle in an ONNX Runtime session, its outputs per task, its smoke check, and the
swappable handle.

``load_model`` turns a ``ServingBundle`` into a ``ServedModel`` only after the model reproduced the bundle's own
``smoke.json`` (any task), so a model that does not answer as recorded never serves traffic. ``ModelHandle.current``
is the one reference the request handlers read: a reload builds the new model completely and then assigns it, so a
request keeps the model it started with and never sees a half-loaded one.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlsteps.errors import ConfigError
from mlsteps.evaluation.tasks import onnx_output
from mlsteps.inference import predict_raw
from mlsteps.monitoring.prediction_log import PredictionLogWriter
from mlsteps.serve.outputs import TaskOutputs
from mlsteps.serve.protocol import ParsedRequest, RequestError, RequestPolicy, RequestSchema, parse_records
from mlsteps.serve.registry_client import registry_from_environment
from mlsteps.serving_bundle import (
    BundleError,
    ServingBundle,
    describe_difference,
    fetch_bundle,
    resolve_version,
    smoke_differences,
    values_text,
)

logger = logging.getLogger(__name__)

# The bundle's smoke.json holds the model's outputs on its smoke rows; this server must reproduce them this closely
# (probabilities: absolute difference; regression: relative, see serving_bundle.smoke_differences).
SMOKE_TOLERANCE = 1e-4
# A reloaded model's prediction-log writer stays open this long for requests that started on it, then flushes.
RETIRED_WRITER_GRACE_SECONDS = 30.0

# Loads a model from a selector: a version number ("8") or an alias ("champion").
ModelLoader = Callable[[str], "ServedModel"]


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version: what a request needs from it, read through one reference."""

    bundle: ServingBundle
    session: Any  # onnxruntime.InferenceSession
    schema: RequestSchema
    outputs: TaskOutputs
    log_writer: PredictionLogWriter | None = None

    @property
    def name(self) -> str:
        """The registered model name; requests must use it in their path."""
        return self.bundle.model_name

    @property
    def version(self) -> str:
        """The version as the protocol writes it (a string)."""
        return str(self.bundle.model_version)

    def predict(self, request: ParsedRequest) -> np.ndarray:
        """The ONNX model's raw output (float64) on the request's rows: probabilities (rows x classes) or predictions
        (rows); ``outputs`` turns it into the answer."""
        numeric, indices = self.bundle.preprocessor.transform_columns(request.columns, request.rows)
        return predict_raw(self.session, numeric, indices, self.outputs.task)

    def log(self, request: ParsedRequest, raw: np.ndarray, request_id: str) -> None:
        """Queue the rows and their predict-contract outputs for the prediction log (when there is one); never
        blocks and never raises.

        Each row's id is its value in the dataset's id column when the request carries that column, so delayed
        labels join on it; otherwise the request id, with ``-<row>`` appended for requests of more than one row so
        that every logged row keeps a unique id.
        """
        if self.log_writer is None:
            return
        ids: list[Any] = [request_id] if request.rows == 1 else [f"{request_id}-{row}" for row in range(request.rows)]
        if request.row_ids is not None:
            ids = [own if own is not None else ids[row] for row, own in enumerate(request.row_ids)]
        self.log_writer.log_columns(request.columns, self.outputs.column_values(raw), ids)

    def close(self) -> None:
        """Flush and stop the prediction-log writer."""
        if self.log_writer is not None:
            self.log_writer.close()


def _session(onnx_path: Path, intra_op_threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Small batches: one thread per worker beats a pool whose hand-offs cost more than the arithmetic.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle workers leave the CPU alone
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def smoke_check(model: ServedModel) -> float:
    """Score the bundle's smoke rows and compare the raw outputs with those recorded in smoke.json.

    Returns:
        The largest difference (``serving_bundle.smoke_differences``: probabilities absolute, regression relative).

    Raises:
        BundleError: the rows do not fit the signature, or an output differs by more than ``SMOKE_TOLERANCE``.
    """
    bundle = model.bundle
    task = bundle.info.task
    where = f"{bundle.model_name} v{bundle.model_version} ({bundle.folder})"
    try:
        raw = model.predict(parse_records(bundle.smoke_inputs, model.schema))
    except RequestError as exc:
        raise BundleError(f"smoke.json of {where} does not fit its own signature: {exc}") from None
    expected = bundle.smoke_outputs
    if raw.shape != expected.shape:
        raise BundleError(
            f"{where}: smoke.json holds outputs of shape {list(expected.shape)}, the model gives {list(raw.shape)} "
            f"for its {len(bundle.smoke_inputs)} smoke rows ({task}, classes {bundle.info.classes})"
        )
    gaps = smoke_differences(task, raw, expected)
    gap = float(gaps.max(initial=0.0))
    measure = describe_difference(task)
    if gap > SMOKE_TOLERANCE:
        row = int(gaps.argmax())
        raise BundleError(
            f"{where} fails its smoke check: row {row} gives {onnx_output(task)} {values_text(raw[row])}, smoke.json "
            f"expects {values_text(expected[row])} ({measure} {gap:.3g} > tolerance {SMOKE_TOLERANCE}); this model "
            "is not served"
        )
    logger.info(
        "smoke check of %s v%s: largest %s %.3g <= tolerance %g -> serve",
        bundle.model_name,
        bundle.model_version,
        measure,
        gap,
        SMOKE_TOLERANCE,
    )
    return gap


def load_model(
    bundle: ServingBundle,
    *,
    prediction_log: str | None = None,
    intra_op_threads: int = 1,
    log_flush_seconds: float = 10.0,
    policy: RequestPolicy | None = None,
) -> ServedModel:
    """Open a verified bundle in ONNX Runtime and check it against its smoke.json.

    Args:
        bundle: from ``read_bundle`` or ``fetch_bundle`` (checksums already verified).
        prediction_log: the prediction log's store URI; None logs nothing.
        intra_op_threads: ONNX Runtime threads per session (per worker process).
        log_flush_seconds: longest time a logged row waits before it is written.
        policy: how requests are read (extra columns, id column, string limit, training bounds); None: defaults.

    Raises:
        BundleError: the model cannot be opened or fails its smoke check.
    """
    try:
        session = _session(bundle.onnx_path, intra_op_threads)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid models
        raise BundleError(f"ONNX Runtime cannot load {bundle.onnx_path}: {exc}") from None
    outputs = TaskOutputs(bundle.info.task, bundle.info.classes)
    schema = RequestSchema(
        [(column.name, column.type) for column in bundle.columns],
        _with_bundle_bounds(policy or RequestPolicy(), bundle),
        bundle.preprocessor.vocabularies,
        outputs.names,
    )
    model = ServedModel(bundle, session, schema, outputs)
    smoke_check(model)
    if prediction_log is None:
        return model
    writer = PredictionLogWriter(
        prediction_log, bundle.model_name, bundle.model_version, bundle.info, flush_seconds=log_flush_seconds
    )
    return replace(model, log_writer=writer)


def _with_bundle_bounds(policy: RequestPolicy, bundle: ServingBundle) -> RequestPolicy:
    """The policy with the range seen in training, which the bundle's preprocessor records per numeric column.

    Packages trained before the range was recorded keep median, mean and std only; then the policy's bounds (the
    dataset config's min and max, which every training row was validated against) stand.
    """
    recorded = {
        name: (stats.minimum, stats.maximum)
        for name, stats in bundle.preprocessor.numeric.items()
        if stats.minimum is not None or stats.maximum is not None
    }
    return replace(policy, bounds={**policy.bounds, **recorded}) if recorded else policy


class ModelHandle:
    """The model that serves now; one reference that a reload replaces in a single assignment.

    Request handlers read ``current`` once and use that model to the end, so a request that started before a
    swap finishes on the old model. Models that were swapped out keep their log writer open for
    ``RETIRED_WRITER_GRACE_SECONDS`` (for such requests), then flush it; ``close`` flushes them all.
    """

    def __init__(self, model: ServedModel | None = None) -> None:
        """Hold ``model`` (None: not loaded yet; readiness answers 503)."""
        self.current: ServedModel | None = model
        self.reload_lock = threading.Lock()
        self._retired: list[ServedModel] = []

    def swap(self, model: ServedModel) -> ServedModel | None:
        """Serve ``model`` from now on; the model it replaces is retired."""
        previous, self.current = self.current, model
        if previous is not None and previous.log_writer is not model.log_writer:
            self._retired.append(previous)
            timer = threading.Timer(RETIRED_WRITER_GRACE_SECONDS, previous.close)
            timer.daemon = True
            timer.start()
        return previous

    def close(self) -> None:
        """Flush every prediction-log writer: the current model's and those of models swapped out."""
        for model in [*self._retired, *([self.current] if self.current else [])]:
            model.close()


def fetch_from_registry(model_name: str, selector: str, dest: Path, client: Any = None) -> ServingBundle:
    """Download and verify the bundle of a version (``"8"``) or alias (``"champion"``) into ``dest``.

    Args:
        model_name: registered model name.
        selector: a version number or an alias.
        dest: the folder to download into.
        client: a ``RegistryReader`` or an ``MlflowClient``; None: the registry at ``MLFLOW_TRACKING_URI``, read
            over MLflow's REST API (``registry_client.registry_from_environment``; the serving image has no MLflow).

    Raises:
        StepError: the version or alias does not exist, or ``MLFLOW_TRACKING_URI`` is not set or not usable.
        BundleError: the version has no bundle or the download does not match its checksums.
        RegistryError: the MLflow server answered with an error or could not be reached (a retry may pass).
    """
    registry = client or registry_from_environment()
    version = resolve_version(registry, model_name, selector)
    logger.info("fetching the serving bundle of %s v%d (%s) from the registry", model_name, version, selector)
    return fetch_bundle(registry, model_name, version, dest)


def registry_loader(
    model_name: str,
    *,
    prediction_log: str | None = None,
    intra_op_threads: int = 1,
    client: Any = None,
    policy: RequestPolicy | None = None,
) -> ModelLoader:
    """A loader that fetches a version's bundle from the registry into a temporary folder under /tmp.

    The folder is removed once ONNX Runtime holds the model.

    Args:
        model_name: registered model name.
        prediction_log: passed to ``load_model``.
        intra_op_threads: passed to ``load_model``.
        client: passed to ``fetch_from_registry``; None reads the registry named by the environment on each load.
        policy: passed to ``load_model``.
    """

    def load(selector: str) -> ServedModel:
        with tempfile.TemporaryDirectory(prefix="mlsteps-serve-") as folder:
            bundle = fetch_from_registry(model_name, selector, Path(folder), client)
            return load_model(bundle, prediction_log=prediction_log, intra_op_threads=intra_op_threads, policy=policy)

    return load


def check_model_name(model: ServedModel, expected: str | None) -> None:
    """Refuse a bundle of another model than the one the server was told to serve.

    Raises:
        ConfigError: naming both models.
    """
    if expected and model.name != expected:
        raise ConfigError(
            f"the bundle in {model.bundle.folder} is of model {model.name!r}, not {expected!r}: "
            "pass the matching --model-name or the right --bundle"
        )
