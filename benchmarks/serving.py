"""Benchmark of the model server: ``python -m mlsteps.serve`` against ``mlflow models serve``, same model, same load.

In one run, on loopback:

1. **the model**: the real steps (make-dataset, snapshot, validate, preprocess, train, evaluate, register) on a small
   generated dataset, in a temporary state folder with MLflow on SQLite; register leaves the version's serving bundle,
   which ours serves with ``--bundle`` and MLflow serves as ``models:/<name>/<version>`` (``--env-manager local``);
2. **the load**: a closed loop of C keep-alive connections (raw asyncio streams, uvloop), each sending its next request
   as soon as the answer came; a warm-up, then a fixed duration per configuration. Every answer is checked (status 200
   and one prediction per row sent); failures are counted by reason and printed. The request bodies are pre-encoded
   from rows of the dataset without nulls (the Open Inference Protocol has no null);
3. **the configurations**: batch 1 and 64 rows, 1 and 2 workers; ours on its natural endpoint
   (``/v2/models/<name>/infer``, JSON, and at batch 64 also the binary tensor data extension that tritonclient sends
   by default, binary outputs included) and on MLflow's (``/invocations``, dataframe_split), MLflow on
   ``/invocations``. One server runs at a time;
4. **the generator's ceiling**: the same generator against a canned-answer server that does no work, so a reader sees
   when the generator, not the server, limits (generator and servers share the machine's cores).

It prints requests/s and p50/p99 latency of each configuration, our ratios to MLflow against the target (at least 5x
MLflow's throughput at batch 1 with a lower p99), that both servers give the same probabilities, and the serving
image's size when ``build/images/serve.json`` exists (``make images``). Everything, with the machine, the commit and
the config, goes to ``benchmarks/results/serving-<time>.json`` (or ``$BENCH_RESULTS_DIR``).

``--smoke`` runs every part (both servers, every configuration, the ceiling, the comparison) on a model from 600 rows
and one epoch, with 0.5 s of load per configuration: it checks that the benchmark works
(``tests/unit/test_benchmarks.py``); its figures mean nothing.

Usage: ``python benchmarks/serving.py [--duration 10] [--warmup 3] [--concurrency 8] [--rows 5000] [--epochs 3]
[--smoke]`` (``BENCH_SERVING_DURATION``, ``BENCH_SERVING_WARMUP`` and ``BENCH_SERVING_CONCURRENCY`` set the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE_REPORT = PROJECT_ROOT / "build" / "images" / "serve.json"
HOST = "127.0.0.1"
BATCHES = (1, 64)
WORKERS = (1, 2)
BODIES_PER_BATCH = 16  # distinct pre-encoded requests per batch size, sent in turn
TARGET_RATIO = 5.0
START_TIMEOUT_SECONDS = 180
WORKER_STARTED = "Application startup complete"  # what each uvicorn worker logs once it accepts connections
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL"}
NUMPY_DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "?"}  # little-endian, as v2 sends
BINARY = " binary"  # suffix of the endpoint label of binary-extension requests
PYTHON_TYPES: dict[str, Callable[[Any], Any]] = {
    "double": float,
    "float": float,
    "long": int,
    "integer": int,
    "boolean": bool,
    "string": str,
}
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)")
# --smoke: every configuration, briefly, on a model from just enough rows for validate (dataset min_rows 500).
SMOKE = {"duration": 0.5, "warmup": 0.2, "concurrency": 2, "rows": 600, "epochs": 1}


# ---------------------------------------------------------------------------------------------------- the load
class ProtocolError(Exception):
    """An answer that is not well-formed HTTP/1.1."""


@dataclass(frozen=True)
class Target:
    """One endpoint under load: where, the pre-encoded bodies sent in turn, and how to count an answer's rows."""

    port: int
    path: str
    bodies: list[bytes]
    rows: int
    rows_in: Callable[[bytes], int]
    binary: bool = False  # the bodies use the binary tensor data extension
    host: str = HOST

    @property
    def label(self) -> str:
        """The endpoint as the report names it: the path, marked when the bodies are binary."""
        return self.path + (BINARY if self.binary else "")

    def requests(self) -> list[bytes]:
        """Each body as a whole keep-alive POST, encoded once so that the generator only writes bytes."""
        head = f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        requests = []
        for body in self.bodies:
            if self.binary:
                kind = (
                    f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {json_prefix(body)[1]}"
                )
            else:
                kind = "Content-Type: application/json"
            requests.append(f"{head}{kind}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return requests


@dataclass
class LoadResult:
    """What the generator saw after the warm-up: good answers' latencies, failures by reason, the measured time."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, reason: str, sample: str = "") -> None:
        """Count a failed request; the first answer of each reason is kept to print."""
        self.errors[reason] += 1
        self.error_samples.setdefault(reason, sample[:300])

    def answered(self, sent: float, latency: float) -> None:
        """Record a good answer to a request sent at ``sent`` (perf_counter seconds)."""
        self.latencies.append(latency)

    @property
    def requests(self) -> int:
        """Requests answered correctly."""
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        """Requests/s (good answers only), p50/p99 latency in ms, and the failures."""
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1000 if self.latencies else (float("nan"),) * 2
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2),
            "errors": sum(self.errors.values()),
            "errors_by_reason": dict(self.errors),
            "error_samples": self.error_samples,
        }


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size + 2))
    await reader.readuntil(b"\r\n")  # no trailers expected: the empty line after the last chunk
    return b"".join(chunk[:-2] for chunk in chunks)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: status, body, and whether the connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if not head.startswith(b"http/1.1 "):
        raise ProtocolError(f"not an HTTP/1.1 status line: {head[:40]!r}")
    if match := _CONTENT_LENGTH.search(head):
        body = await reader.readexactly(int(match[1]))
    elif b"\r\ntransfer-encoding: chunked" in head:
        body = await _read_chunked(reader)
    else:
        raise ProtocolError("answer has neither Content-Length nor chunked encoding")
    return int(head[9:12]), body, b"\r\nconnection: close" not in head


def check_answer(target: Target, status: int, body: bytes) -> str | None:
    """Why an answer is wrong (None when it is right): not 200, unreadable, or not one prediction per row."""
    if status != 200:
        return f"HTTP {status}"
    try:
        rows = target.rows_in(body)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"unreadable answer ({type(exc).__name__})"
    return None if rows == target.rows else f"{rows} predictions for {target.rows} rows"


class Answers(Protocol):
    """Where a connection reports: a good answer (send time, latency) or a failure (reason, the answer)."""

    def answered(self, sent: float, latency: float) -> None: ...

    def fail(self, reason: str, sample: str = "") -> None: ...


@dataclass
class Pace:
    """A fixed rate for ``keep_sending``: a request due every ``interval`` seconds on each connection, and where the
    generator's own lateness goes (its timer wakes it up to a millisecond after a request was due, its garbage
    collector and other coroutines add to that; none of it is the server's)."""

    interval: float
    generator_lateness: list[float] = field(default_factory=list)


async def keep_sending(
    target: Target, first: int, measure_from: float, stop_at: float, result: Answers, pace: Pace | None = None
) -> float:
    """One keep-alive connection until ``stop_at``, starting at request ``first`` of the target's; what is sent from
    ``measure_from`` on is reported to ``result``. Returns when its last answer came.

    Without ``pace`` it is a closed loop: the next request goes as soon as the answer came. With one, requests are due
    every ``pace.interval`` seconds from ``measure_from`` (a fixed rate, whatever the server's speed). A request the
    server held back, because its answer to the previous one came after this one was due, counts from when it was due:
    a stall then counts for every request it delayed, not only for the one it caught (no coordinated omission). The
    generator's own lateness, from when a request was due and its connection free to when it went, is not counted in
    the latency but kept in ``pace.generator_lateness``.
    """
    requests = target.requests()
    sent_count = first
    writer: asyncio.StreamWriter | None = None
    last = measure_from
    due = measure_from
    while (sent := await _wake_at(due) if pace else time.perf_counter()) < stop_at:
        held_back = max(0.0, last - due) if pace else 0.0  # the server's doing: the connection was still busy
        if pace:
            pace.generator_lateness.append(sent - max(due, last))
            due += pace.interval
        counted_from = sent - held_back
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(target.host, target.port)
            writer.write(requests[sent_count % len(requests)])
            sent_count += 1
            status, body, keep_alive = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError) as exc:
            if counted_from >= measure_from:
                result.fail(type(exc).__name__, str(exc))
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.05)  # a server that refuses connections must not turn this into a busy loop
            continue
        last = time.perf_counter()
        if counted_from >= measure_from:
            problem = check_answer(target, status, body)
            if problem:
                result.fail(problem, body.decode(errors="replace"))
            else:
                result.answered(counted_from, last - counted_from)
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    return last


async def _wake_at(moment: float) -> float:
    """Sleep until ``moment`` (a ``perf_counter`` time); when this coroutine runs again, which is later."""
    if (wait := moment - time.perf_counter()) > 0:
        await asyncio.sleep(wait)
    return time.perf_counter()


async def generate_load(target: Target, concurrency: int, duration: float, warmup: float) -> LoadResult:
    """Closed-loop load: ``concurrency`` connections, each waiting for its answer before it sends again.

    Requests sent during the warm-up are not counted; requests sent before the end are awaited and counted, so the
    measured time runs from the end of the warm-up to the last answer.
    """
    result = LoadResult()
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration
    ends = await asyncio.gather(
        *(keep_sending(target, index, measure_from, stop_at, result) for index in range(concurrency))
    )
    result.seconds = max(ends) - measure_from
    return result


def run_load(target: Target, concurrency: int, duration: float, warmup: float) -> LoadResult:
    """``generate_load`` on its own event loop (uvloop when installed: it is the cheaper generator)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(generate_load(target, concurrency, duration, warmup))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(generate_load(target, concurrency, duration, warmup))


# ---------------------------------------------------------------------------------------------------- canned server
class CannedServer(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server that does no work: ``answer()`` gives (status, body) for each request in turn."""

    def __init__(self, answer: Callable[[], tuple[int, bytes]]) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = _CONTENT_LENGTH.search(self.buffer[: end + 2].lower())
            size = end + 4 + (int(match[1]) if match else 0)
            if len(self.buffer) < size:
                return
            self.buffer = self.buffer[size:]
            status, body = self.answer()
            head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            self.transport.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


def v2_answer(rows: int) -> bytes:
    """An Open Inference Protocol answer of ``rows`` predictions, shaped as ours gives it."""
    outputs = [
        {"name": "probability", "datatype": "FP64", "shape": [rows], "data": [0.25] * rows},
        {"name": "prediction", "datatype": "INT64", "shape": [rows], "data": [0] * rows},
    ]
    return json.dumps({"model_name": "canned", "model_version": "1", "outputs": outputs}).encode()


def serve_canned(port: int, rows: int) -> None:
    """Answer every request on ``port`` with a fixed V2 answer of ``rows`` predictions, until killed."""

    async def forever() -> None:
        body = v2_answer(rows)
        server = await asyncio.get_running_loop().create_server(
            lambda: CannedServer(lambda: (200, body)), HOST, port, reuse_address=True
        )
        await server.serve_forever()

    asyncio.run(forever())


# ---------------------------------------------------------------------------------------------------- bodies
def json_prefix(body: bytes) -> tuple[Any, int]:
    """The JSON document a body starts with, and its length in bytes: all of a JSON body, or the header of a body in
    the binary tensor data extension (tensor bytes follow it)."""
    return json.JSONDecoder().raw_decode(body.decode("latin-1"))  # latin-1: any byte is a character, JSON is ASCII


def v2_rows(body: bytes) -> int:
    """Predictions in an Open Inference Protocol answer, JSON or binary: the probability output's shape."""
    outputs = {output["name"]: output for output in json_prefix(body)[0]["outputs"]}
    return outputs["probability"]["shape"][0]


def invocation_rows(body: bytes) -> int:
    """Predictions in an MLflow scoring answer."""
    return len(json.loads(body)["predictions"])


def v2_body(columns: list[dict[str, str]], rows: list[list[Any]]) -> bytes:
    """An Open Inference Protocol request: one input tensor of shape [rows] per column."""
    inputs = [
        {
            "name": column["name"],
            "shape": [len(rows)],
            "datatype": V2_DATATYPES.get(column["type"], "BYTES"),
            "data": [row[index] for row in rows],
        }
        for index, column in enumerate(columns)
    ]
    return json.dumps({"inputs": inputs}).encode()


def v2_binary_body(columns: list[dict[str, str]], rows: list[list[Any]]) -> bytes:
    """The same request in the binary tensor data extension, as tritonclient sends it by default: a JSON header
    naming each input's ``binary_data_size``, then the tensors' bytes in input order; outputs asked for in binary."""
    inputs, tensors = [], []
    for index, column in enumerate(columns):
        datatype = V2_DATATYPES.get(column["type"], "BYTES")
        values = [row[index] for row in rows]
        if datatype == "BYTES":
            encoded = [str(value).encode() for value in values]
            data = b"".join(len(item).to_bytes(4, "little") + item for item in encoded)
        else:
            data = np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
        tensors.append(data)
        inputs.append(
            {
                "name": column["name"],
                "shape": [len(rows)],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        )
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(tensors)


def invocations_body(columns: list[dict[str, str]], rows: list[list[Any]]) -> bytes:
    """An MLflow scoring request in the dataframe_split format."""
    return json.dumps({"dataframe_split": {"columns": [column["name"] for column in columns], "data": rows}}).encode()


def sample_rows(dataset: Path, columns: list[dict[str, str]], count: int, seed: int = 0) -> list[list[Any]]:
    """``count`` rows of the request columns from the dataset, without nulls, as JSON values of the column types."""
    import pandas as pd

    names = [column["name"] for column in columns]
    frame = pd.read_csv(dataset, usecols=names)[names].dropna()
    picked = frame.sample(count, replace=len(frame) < count, random_state=seed)
    converters = [PYTHON_TYPES[column["type"]] for column in columns]
    return [[convert(value) for convert, value in zip(converters, row, strict=True)] for row in picked.to_numpy()]


# ---------------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def cpu_plan(pin: str) -> tuple[set[int], set[int]] | None:
    """(generator CPUs, server CPUs), or None when not pinning.

    ``auto`` pins only where the generator and the largest server each get CPUs of their own: pinning two workers to
    one core would measure the core, not the workers.
    """
    available = sorted(os.sched_getaffinity(0))
    if pin == "off" or (pin == "auto" and len(available) < 1 + max(WORKERS)) or len(available) < 2:
        return None
    return {available[0]}, set(available[1:])


@contextmanager
def server_process(
    argv: list[str], ready_path: str, port: int, log: Path, cpus: set[int] | None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own session (stopped as a group afterwards), once ``ready_path`` answers 200."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"`{' '.join(argv)}` exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"`{' '.join(argv)}` not ready after {START_TIMEOUT_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started in its own session, workers included: SIGTERM, then SIGKILL after 20 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_workers(log: Path, workers: int, timeout: float = 10.0) -> None:
    """Wait until the log shows every uvicorn worker started (one worker is ready when the server is).

    A worker still loading the model accepts no connection, so the keep-alive connections would all land on the
    workers that are ready and stay there for the whole measurement. A server whose workers do not log their start
    gets ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while (started := log.read_text(errors="replace").count(WORKER_STARTED)) < workers:
        if time.monotonic() > deadline:
            print(f"  note: {started} of {workers} workers logged their start; measuring after {timeout:g} s")
            return
        time.sleep(0.25)


def post(port: int, path: str, body: bytes) -> dict[str, Any]:
    """One request outside the load, its JSON answer."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


# ---------------------------------------------------------------------------------------------------- the model
def build_model(state: Path, rows: int, epochs: int) -> tuple[Path, dict[str, Any]]:
    """Run the steps up to register on a generated dataset; the dataset file and register's result."""
    dataset = state / "data" / "churn.csv"
    run_root = str(state / "runs" / "bench-serving")
    steps = [
        ("make-dataset", ["--output-uri", str(dataset), "--rows", str(rows), "--seed", "7"]),
        ("snapshot", ["--input-uri", str(dataset), "--snapshot-store", str(state / "snapshots")]),
        ("validate", []),
        ("preprocess", []),
        ("train", ["--epochs", str(epochs)]),
        ("evaluate", []),
        ("register", []),
    ]
    for step, args in steps:
        started = time.perf_counter()
        root = [] if step == "make-dataset" else ["--run-root", run_root]
        done = subprocess.run(
            [sys.executable, "-m", "mlsteps", step, *root, *args],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{step} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        print(f"  {step}: {time.perf_counter() - started:.1f} s", flush=True)
    from mlsteps.results import read_result

    return dataset, read_result(run_root, "register")


def fetch_serving_bundle(
    model_name: str, version: int, dest: Path, tracking_uri: str
) -> tuple[Path, list[dict[str, str]]]:
    """Download and verify the version's serving bundle (what ours serves); its folder and request columns in order."""
    from mlflow import MlflowClient

    from mlsteps.serving_bundle import fetch_bundle

    bundle = fetch_bundle(MlflowClient(tracking_uri=tracking_uri), model_name, version, dest)
    return bundle.folder, [{"name": column.name, "type": column.type} for column in bundle.columns]


# ---------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Measurement:
    """One configuration's figures."""

    server: str
    endpoint: str
    workers: int | None
    batch: int
    figures: dict[str, Any]

    def row(self) -> dict[str, Any]:
        """As one JSON row of the report."""
        return {
            "server": self.server,
            "endpoint": self.endpoint,
            "workers": self.workers,
            "batch": self.batch,
            **self.figures,
        }


@dataclass
class Bench:
    """The settings of one benchmark run and what it measured so far."""

    duration: float
    warmup: float
    concurrency: int
    cpus: tuple[set[int], set[int]] | None
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def server_cpus(self) -> set[int] | None:
        """The CPUs every server process is pinned to, if pinned."""
        return self.cpus[1] if self.cpus else None

    def measure(self, server: str, workers: int | None, target: Target, batch: int) -> None:
        """Put ``target`` under load, print its line and keep its figures."""
        figures = run_load(target, self.concurrency, self.duration, self.warmup).summary()
        self.measurements.append(Measurement(server, target.label, workers, batch, figures))
        print_row(self.measurements[-1])

    def find(self, server: str, endpoint: str, workers: int | None, batch: int) -> dict[str, Any]:
        """The figures of one configuration."""
        return next(
            m.figures
            for m in self.measurements
            if (m.server, m.endpoint, m.workers, m.batch) == (server, endpoint, workers, batch)
        )


def print_header() -> None:
    """The table's header; each configuration prints its row as soon as it is measured."""
    print(f"\n  {'server':<9}{'endpoint':<41}{'workers':>8}{'batch':>6}{'req/s':>9}{'rows/s':>10}", end="")
    print(f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")


def print_row(measurement: Measurement) -> None:
    """One configuration's row, and the first answer of each kind of failure under it."""
    figures = measurement.figures
    workers = "-" if measurement.workers is None else str(measurement.workers)
    rps = figures["requests_per_second"]
    print(
        f"  {measurement.server:<9}{measurement.endpoint:<41}{workers:>8}{measurement.batch:>6}{rps:>9.0f}"
        f"{rps * measurement.batch:>10.0f}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}{figures['errors']:>8}",
        flush=True,
    )
    for reason, count in figures["errors_by_reason"].items():
        print(f"      {count} x {reason}: {figures['error_samples'][reason]}", flush=True)


def measure_ceiling(bench: Bench, bodies: dict[int, list[bytes]], log_dir: Path) -> None:
    """The generator against the canned server, with our batch bodies: the most it can send here."""
    for batch in BATCHES:
        port = free_port()
        argv = [sys.executable, __file__, "--canned-server", str(port), str(batch)]
        with server_process(argv, "/", port, log_dir / f"canned-{batch}.log", bench.server_cpus):
            bench.measure("canned", None, Target(port, "/", bodies[batch], batch, v2_rows), batch)


@dataclass(frozen=True)
class Server:
    """A server under test: its command (less port and workers), readiness path, and the endpoints to load."""

    name: str
    argv: list[str]
    ready_path: str
    # path, body format, how to count the answer's rows, the batch sizes it is measured at
    endpoints: list[tuple[str, str, Callable[[bytes], int], tuple[int, ...]]]


def measure_servers(
    bench: Bench, model_name: str, version: int, bundle: Path, bodies: dict[str, dict[int, list[bytes]]], state: Path
) -> dict[str, list[float]]:
    """Each server with 1 and 2 workers under every batch and endpoint; the probabilities each gave for one body."""
    ours = Server(
        "ours",
        [sys.executable, "-m", "mlsteps.serve", "--bundle", str(bundle), "--host", HOST],
        "/v2/health/ready",
        [
            (f"/v2/models/{model_name}/infer", "v2", v2_rows, BATCHES),
            (f"/v2/models/{model_name}/infer", "v2-binary", v2_rows, (max(BATCHES),)),
            ("/invocations", "invocations", invocation_rows, BATCHES),
        ],
    )
    mlflow = Server(
        "mlflow",
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model_name}/{version}"]
        + ["--env-manager", "local", "--host", HOST],
        "/ping",
        [("/invocations", "invocations", invocation_rows, BATCHES)],
    )
    probe = bodies["invocations"][max(BATCHES)][0]
    probabilities: dict[str, list[float]] = {}
    for workers in WORKERS:
        for server in (ours, mlflow):
            port = free_port()
            log = state / f"{server.name}-{workers}.log"
            print(f"  starting {server.name} with {workers} worker(s) (log {log})", flush=True)
            command = [*server.argv, "--port", str(port), "--workers", str(workers)]
            with server_process(command, server.ready_path, port, log, bench.server_cpus):
                if workers > 1:
                    wait_for_workers(log, workers)
                answer = post(port, "/invocations", probe)["predictions"]
                probabilities.setdefault(server.name, [row["probability"] for row in answer])
                for path, body_format, rows_in, batches in server.endpoints:
                    for batch in batches:
                        binary = body_format == "v2-binary"
                        target = Target(port, path, bodies[body_format][batch], batch, rows_in, binary)
                        bench.measure(server.name, workers, target, batch)
    return probabilities


def _ratio(value: float, anchor: float) -> float:
    """value / anchor; infinite when the anchor measured nothing (possible in a 0.5 s smoke run)."""
    return value / anchor if anchor else math.inf


def ratios(bench: Bench, model_name: str) -> list[dict[str, Any]]:
    """Ours against MLflow per workers and batch: throughput and p99 ratios, and whether the target is met."""
    rows = []
    for workers in WORKERS:
        for batch in BATCHES:
            anchor = bench.find("mlflow", "/invocations", workers, batch)
            v2 = f"/v2/models/{model_name}/infer"
            binary = [v2 + BINARY] if batch == max(BATCHES) else []
            for endpoint in (v2, *binary, "/invocations"):
                ours = bench.find("ours", endpoint, workers, batch)
                rps_ratio = _ratio(ours["requests_per_second"], anchor["requests_per_second"])
                rows.append(
                    {
                        "workers": workers,
                        "batch": batch,
                        "ours_endpoint": endpoint,
                        "rps_ratio": round(rps_ratio, 2),
                        "p99_ratio": round(_ratio(ours["p99_ms"], anchor["p99_ms"]), 3),
                        "target_met": rps_ratio >= TARGET_RATIO and ours["p99_ms"] < anchor["p99_ms"],
                    }
                )
    return rows


def image_size() -> str:
    """The serving image's size from its build report, or 'not built'."""
    if not IMAGE_REPORT.is_file():
        return "not built"
    report = json.loads(IMAGE_REPORT.read_text())
    return f"{report['size_bytes'] / 1e6:.0f} MB ({report['reference']}, build/images/serve.json)"


def print_summary(
    bench: Bench, ratio_rows: list[dict[str, Any]], agreement: float, generator: dict[int, float]
) -> None:
    """Ratios against the target, the generator's headroom, the agreement of both servers and the image size."""
    print("\nours / MLflow (throughput ratio, p99 ratio; target: >= 5x throughput at batch 1 with a lower p99)")
    for row in ratio_rows:
        verdict = ""
        if row["batch"] == 1:
            verdict = "target met" if row["target_met"] else "target NOT met"
        print(
            f"  {row['workers']} worker(s), batch {row['batch']:>2}, ours on {row['ours_endpoint']:<41} "
            f"{row['rps_ratio']:>6.2f}x req/s, p99 {row['p99_ratio']:.2f}x  {verdict}"
        )
    print(
        "\ngenerator ceiling (canned server, no work):",
        ", ".join(f"batch {b}: {r:.0f} req/s" for b, r in generator.items()),
    )
    busiest = max(m.figures["requests_per_second"] for m in bench.measurements if m.server == "ours")
    print(f"  the fastest server measurement reached {_ratio(busiest, min(generator.values())):.0%} of it")
    largest = max(BATCHES)
    for workers in WORKERS:
        json_rps, binary_rps = (
            bench.find("ours", endpoint, workers, largest)["requests_per_second"]
            for endpoint in (ratio_rows[0]["ours_endpoint"], ratio_rows[0]["ours_endpoint"] + BINARY)
        )
        print(f"binary tensors / JSON on v2, batch {largest}, {workers} worker(s): {_ratio(binary_rps, json_rps):.2f}x")
    print(f"largest |ours - MLflow| probability on the same {largest} rows: {agreement:.2e}")
    print(f"serving image: {image_size()}")


def main() -> None:
    """Build the model, measure the generator and both servers, print the comparison and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("BENCH_SERVING_DURATION", 10)),
        help="measured seconds per configuration",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=float(os.environ.get("BENCH_SERVING_WARMUP", 3)),
        help="seconds of load before each measurement",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get("BENCH_SERVING_CONCURRENCY", 8)),
        help="keep-alive connections of the closed loop",
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows of the generated training dataset")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument(
        "--pin",
        choices=("auto", "on", "off"),
        default="auto",
        help="pin the generator to one CPU and the servers to the others; auto: where each server worker gets a CPU",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part briefly on a tiny model: checks the benchmark runs; "
        + ", ".join(f"{key} {value}" for key, value in SMOKE.items()),
    )
    parser.add_argument("--canned-server", nargs=2, type=int, metavar=("PORT", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.canned_server:
        serve_canned(*args.canned_server)
        return
    if args.smoke:
        vars(args).update(SMOKE)

    started = time.perf_counter()
    state = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    tracking_uri = f"sqlite:///{state / 'mlflow.db'}"
    os.environ |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ARTIFACT_LOCATION": (state / "mlartifacts").as_uri(),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow runs `uvicorn`
    }
    print(f"state folder {state}; model from {args.rows} rows, {args.epochs} epochs", flush=True)
    dataset, registered = build_model(state, args.rows, args.epochs)
    model_name, version = registered["model_name"], registered["version"]
    bundle, columns = fetch_serving_bundle(model_name, version, state / "bundle", tracking_uri)
    print(f"model {model_name} v{version}; serving bundle in {bundle}", flush=True)

    rows = sample_rows(dataset, columns, BODIES_PER_BATCH * max(BATCHES))
    bodies = {
        name: {
            batch: [encode(columns, rows[i * batch : (i + 1) * batch]) for i in range(BODIES_PER_BATCH)]
            for batch in BATCHES
        }
        for name, encode in (("v2", v2_body), ("v2-binary", v2_binary_body), ("invocations", invocations_body))
    }
    cpus = cpu_plan(args.pin)
    if cpus:
        os.sched_setaffinity(0, cpus[0])
        pinning = f"generator on CPU {sorted(cpus[0])}, servers on CPUs {sorted(cpus[1])}"
    else:
        pinning = f"off ({len(os.sched_getaffinity(0))} CPUs shared by the generator and the servers)"
    print(f"CPU pinning: {pinning}")
    print(f"closed loop: {args.concurrency} connections, {args.warmup:g} s warm-up, {args.duration:g} s measured")

    bench = Bench(args.duration, args.warmup, args.concurrency, cpus)
    print_header()
    measure_ceiling(bench, bodies["v2"], state)
    probabilities = measure_servers(bench, model_name, version, bundle, bodies, state)
    agreement = float(np.max(np.abs(np.subtract(probabilities["ours"], probabilities["mlflow"]))))
    ratio_rows = ratios(bench, model_name)
    generator = {batch: bench.find("canned", "/", None, batch)["requests_per_second"] for batch in BATCHES}
    print_summary(bench, ratio_rows, agreement, generator)
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")

    write_report(
        "serving",
        {
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "concurrency": args.concurrency,
            "dataset_rows": args.rows,
            "epochs": args.epochs,
            "cpu_pinning": pinning,
            "smoke": args.smoke,
            "model": {"name": model_name, "version": version},
        },
        {
            "measurements": [m.row() for m in bench.measurements],
            "ratios": ratio_rows,
            "max_probability_difference": agreement,
            "serving_image": image_size(),
        },
    )
    shutil.rmtree(state)  # kept when a step or a server fails: its logs are there


if __name__ == "__main__":
    main()
