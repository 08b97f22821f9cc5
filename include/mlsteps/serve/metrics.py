"""Prometheus metrics of the model server, kept cheap on the request path.

Each app gets its own registry (tests build many apps in one process). Label children are looked up once and
cached, so recording a request costs a dictionary lookup plus two increments. Metrics are per process: with
``--workers N`` each worker reports its own, so scrape per pod with one worker, as the Deployment runs it.

Names:

- ``mlsteps_serve_requests_total{endpoint, code}``: answered requests.
- ``mlsteps_serve_request_duration_seconds{endpoint}``: time from routing to the response body (histogram).
- ``mlsteps_serve_errors_total{endpoint, reason}``: failed requests by reason (invalid_request, body_too_large,
  unsupported_media_type, non_finite_output, unknown_model, not_ready, reload_failed, internal).
- ``mlsteps_serve_predicted_rows_total``: rows scored.
- ``mlsteps_serve_out_of_range_values_total{column}``: numeric values outside the range seen in training, in
  requests that were scored or refused for a non-finite output.
- ``mlsteps_serve_ignored_columns_total{endpoint}``: columns sent that the model does not use (MLflow format,
  ``serving.strict_columns`` false), counted once per request and column.
- ``mlsteps_serve_model_info{model_name, model_version, bundle_sha256}``: 1 for the model that serves.
- ``mlsteps_serve_model_loads_total{outcome}``: model loads (ok, failed), the initial one included.
- ``mlsteps_serve_prediction_log_rows{outcome}``: rows of the serving model's prediction-log writer
  (written, dropped, failed), read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlsteps.monitoring.prediction_log import PredictionLogWriter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _PredictionLogCollector(Collector):
    """Reads the serving model's writer counters when Prometheus scrapes."""

    def __init__(self, writer: Callable[[], PredictionLogWriter | None]) -> None:
        self._writer = writer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mlsteps_serve_prediction_log_rows",
            "rows of the serving model's prediction-log writer by outcome",
            labels=["outcome"],
        )
        writer = self._writer()
        if writer is not None:
            for outcome in ("written", "dropped", "failed"):
                family.add_metric([outcome], getattr(writer, outcome))
        yield family


class ServerMetrics:
    """The server's metrics in one registry, with cached label children for the request path."""

    def __init__(self, current_writer: Callable[[], PredictionLogWriter | None] = lambda: None) -> None:
        """Create the metrics.

        Args:
            current_writer: returns the serving model's prediction-log writer (None: no log).
        """
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "mlsteps_serve_requests", "answered requests", ["endpoint", "code"], registry=self.registry
        )
        self._latency = Histogram(
            "mlsteps_serve_request_duration_seconds",
            "request handling time",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            "mlsteps_serve_errors", "failed requests", ["endpoint", "reason"], registry=self.registry
        )
        self._rows = Counter("mlsteps_serve_predicted_rows", "rows scored", registry=self.registry)
        self._out_of_range = Counter(
            "mlsteps_serve_out_of_range_values",
            "numeric input values outside the range seen in training",
            ["column"],
            registry=self.registry,
        )
        self._ignored = Counter(
            "mlsteps_serve_ignored_columns",
            "request columns the model does not use, ignored",
            ["endpoint"],
            registry=self.registry,
        )
        self._model_info = Gauge(
            "mlsteps_serve_model_info",
            "the model that serves (value 1)",
            ["model_name", "model_version", "bundle_sha256"],
            registry=self.registry,
        )
        self._loads = Counter(
            "mlsteps_serve_model_loads", "model loads by outcome", ["outcome"], registry=self.registry
        )
        self.registry.register(_PredictionLogCollector(current_writer))
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe(self, endpoint: str, code: int, seconds: float, rows: int = 0) -> None:
        """Record one answered request."""
        key = (endpoint, code)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(endpoint, str(code))
        histogram = self._latency_children.get(endpoint)
        if histogram is None:
            histogram = self._latency_children[endpoint] = self._latency.labels(endpoint)
        counter.inc()
        histogram.observe(seconds)
        if rows:
            self._rows.inc(rows)

    def error(self, endpoint: str, reason: str) -> None:
        """Record why a request failed (besides its code in ``observe``)."""
        self._errors.labels(endpoint, reason).inc()

    def out_of_range(self, columns: list[str], outside: np.ndarray) -> None:
        """Count the values outside the training range (``outside``: rows x ``columns`` booleans)."""
        for position, count in enumerate(outside.sum(axis=0).tolist()):
            if count:
                self._out_of_range.labels(columns[position]).inc(count)

    def ignored_columns(self, endpoint: str, count: int) -> None:
        """Count columns a request sent that the model does not use."""
        self._ignored.labels(endpoint).inc(count)

    def model_loaded(self, name: str, version: str, sha256: str, previous: tuple[str, str, str] | None) -> None:
        """Record a successful load and point the info gauge at the new model."""
        if previous is not None:
            self._model_info.remove(*previous)
        self._model_info.labels(name, version, sha256).set(1)
        self._loads.labels("ok").inc()

    def load_failed(self) -> None:
        """Record a load that did not make it to serving."""
        self._loads.labels("failed").inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
