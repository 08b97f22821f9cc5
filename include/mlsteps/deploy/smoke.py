"""The smoke test of a deployed version: its bundle's smoke rows through the serving endpoint, over plain HTTP.

The bundle carries a few raw rows and the model's outputs on them (``smoke.json``), so the test proves the whole
path (Service, server, preprocessing, ONNX model) end to end: every answer must come from the expected version
(``x-model-version``), match the expected outputs within the tolerance (per task: the ``probability`` of a binary
model, the ``probabilities`` of a multiclass one, both by absolute difference; the ``prediction`` of a regression
model by relative difference), and the p99 latency over the requests must stay within the budget. urllib only: the
steps image needs no HTTP client package for it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any, TypedDict
from urllib.parse import quote

import numpy as np

from mlsteps.config import SmokeConfig
from mlsteps.deploy import DeployFailed
from mlsteps.monitoring.prediction_log import SMOKE_REQUEST_PREFIX
from mlsteps.serve.outputs import TaskOutputs
from mlsteps.serve.protocol import MODEL_VERSION_HEADER, V2_DATATYPE
from mlsteps.serving_bundle import describe_difference, smoke_differences, values_text

_BODY_EXCERPT_CHARS = 300

log = logging.getLogger(__name__)


class SmokeReport(TypedDict):
    """What the smoke test measured; ``failures`` is empty when it passed."""

    url: str
    model_version: int
    requests: int
    rows: int
    passed: bool
    failures: list[str]
    served_versions: dict[str, int]
    compared: str  # the output compared with the bundle's smoke outputs
    difference: str  # how: absolute (probabilities) or relative (regression predictions)
    max_difference: float | None
    tolerance: float
    p50_ms: float | None
    p99_ms: float | None
    latency_budget_ms: float


def nearest_rank(values: list[float], quantile: float) -> float:
    """The nearest-rank quantile (no interpolation): a latency some request actually had."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


def v2_request(bundle: Any) -> dict[str, Any]:
    """The smoke rows as an Open Inference Protocol v2 request: one tensor per column, in signature order.

    Raises:
        DeployFailed: a column has a type the protocol cannot carry (the bundle is not servable as is).
    """
    rows = bundle.smoke_inputs
    unsupported = [f"{column.name} ({column.type})" for column in bundle.columns if column.type not in V2_DATATYPE]
    if unsupported:
        raise DeployFailed(
            f"{bundle.model_name} v{bundle.model_version}: columns {unsupported} have types without a v2 datatype "
            f"(supported: {', '.join(V2_DATATYPE)}); re-register the model with supported column types"
        )
    return {
        "id": f"{SMOKE_REQUEST_PREFIX}{bundle.model_name}-v{bundle.model_version}",
        "inputs": [
            {
                "name": column.name,
                "shape": [len(rows)],
                "datatype": V2_DATATYPE[column.type],
                "data": [row.get(column.name) for row in rows],
            }
            for column in bundle.columns
        ],
    }


def _post(url: str, body: bytes, timeout: float) -> tuple[str | None, Any]:
    """POST JSON; the response's model version header and its parsed body.

    Raises:
        urllib.error.HTTPError, OSError, ValueError: transport failures, non-2xx answers and bodies that are not JSON.
    """
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.headers.get(MODEL_VERSION_HEADER), json.loads(response.read())


def _describe_request_failure(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        excerpt = exc.read()[:_BODY_EXCERPT_CHARS].decode("utf-8", errors="replace")
        return f"HTTP {exc.code}: {excerpt}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _answered(payload: Any, output: str) -> np.ndarray:
    """One output of a v2 answer (JSON data), flat.

    Raises:
        ValueError: the answer has no such output, or it holds something other than numbers.
    """
    for tensor in payload.get("outputs", []) if isinstance(payload, dict) else []:
        if tensor.get("name") == output:
            return np.asarray(tensor["data"], dtype=np.float64).reshape(-1)
    raise ValueError(f"the response has no {output!r} output: {json.dumps(payload)[:_BODY_EXCERPT_CHARS]}")


def smoke_test(base_url: str, model_name: str, bundle: Any, budget: SmokeConfig) -> SmokeReport:
    """Send the bundle's smoke rows ``budget.requests`` times and check version, outputs and latency.

    Stops at the first request that fails outright (no answer, non-2xx, no outputs): a server that cannot answer
    once has failed. Every answer is checked, so during a rolling update an old pod still answering is caught.

    Args:
        base_url: the serving endpoint, e.g. ``http://model-server.ml.svc.cluster.local``.
        model_name: the model's name in the v2 path.
        bundle: the version's ``ServingBundle`` (its task, columns, smoke rows and expected outputs).
        budget: requests, p99 latency budget, tolerance and per-request timeout.

    Returns:
        The report (passed).

    Raises:
        DeployFailed: naming every check that failed; ``details`` is the report.
    """
    url = f"{base_url.rstrip('/')}/v2/models/{quote(model_name, safe='')}/infer"
    body = json.dumps(v2_request(bundle)).encode("utf-8")
    task = bundle.info.task
    outputs = TaskOutputs(task, bundle.info.classes)
    compared = outputs.scored  # probability, probabilities or prediction
    expected = outputs.tensor_values(bundle.smoke_outputs)[compared]
    expected_version = str(bundle.model_version)
    latencies_ms: list[float] = []
    served_versions: Counter[str] = Counter()
    worst_difference, worst_row = 0.0, None
    failures: list[str] = []
    for attempt in range(1, budget.requests + 1):
        started = time.perf_counter()
        try:
            served_version, payload = _post(url, body, budget.request_timeout_seconds)
            answered = _answered(payload, compared)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"request {attempt} of {budget.requests} failed: {_describe_request_failure(exc)}")
            break
        latencies_ms.append((time.perf_counter() - started) * 1000)
        served_versions[str(served_version)] += 1
        if answered.size != expected.size:
            failures.append(
                f"the server answered {answered.size} {compared} value(s) for {len(expected)} rows, expected "
                f"{expected.size}"
            )
            break
        answered = answered.reshape(expected.shape)
        differences = smoke_differences(task, answered, expected)
        row = int(differences.argmax())
        if differences[row] > worst_difference:
            worst_difference, worst_row = float(differences[row]), (row, answered[row], expected[row])

    wrong_versions = {served: count for served, count in served_versions.items() if served != expected_version}
    if wrong_versions:
        failures.append(
            f"{sum(wrong_versions.values())} of {sum(served_versions.values())} answers came from another version "
            f"({MODEL_VERSION_HEADER} {wrong_versions}, expected {expected_version!r})"
        )
    measure = describe_difference(task)
    if worst_row is not None and worst_difference > budget.tolerance:
        row, got, want = worst_row
        failures.append(
            f"{compared} of smoke row {row} is {values_text(got)}, expected {values_text(want)} ({measure} "
            f"{worst_difference:.2e} > tolerance {budget.tolerance:.0e})"
        )
    p99 = nearest_rank(latencies_ms, 0.99) if latencies_ms else None
    if p99 is not None and p99 > budget.latency_budget_ms:
        failures.append(
            f"p99 latency {p99:.1f} ms over {len(latencies_ms)} requests exceeds the budget "
            f"{budget.latency_budget_ms:.0f} ms (serving.smoke.latency_budget_ms)"
        )
    report = SmokeReport(
        url=url,
        model_version=bundle.model_version,
        requests=len(latencies_ms),
        rows=len(expected),
        passed=not failures,
        failures=failures,
        served_versions=dict(served_versions),
        compared=compared,
        difference=measure,
        max_difference=worst_difference if latencies_ms else None,
        tolerance=budget.tolerance,
        p50_ms=round(nearest_rank(latencies_ms, 0.5), 3) if latencies_ms else None,
        p99_ms=round(p99, 3) if p99 is not None else None,
        latency_budget_ms=budget.latency_budget_ms,
    )
    if failures:
        raise DeployFailed(
            f"smoke test of {model_name} v{bundle.model_version} at {url}: {'; '.join(failures)}", report
        )
    log.info(
        "smoke test of %s v%s at %s passed: %d requests, p99 %.1f ms <= budget %.0f ms, largest %s %.2e <= %.0e",
        model_name,
        bundle.model_version,
        url,
        len(latencies_ms),
        p99,
        budget.latency_budget_ms,
        measure,
        worst_difference,
        budget.tolerance,
    )
    return report
