"""The serving benchmark's pieces: its load generator counts answers and failures exactly as a server sent them, its
HTTP reader handles what servers send, and its request bodies carry the rows in both protocols."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import load_benchmark

from mlsteps.data.datasets import generate_churn

bench = load_benchmark("serving")


class Answers:
    """Every 5th request answered 500, every 5th after it with two predictions for one row, the rest correctly."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {"good": 0, "500": 0, "wrong rows": 0}
        self._numbers = count()

    def __call__(self) -> tuple[int, bytes]:
        kind = {3: "wrong rows", 4: "500"}.get(next(self._numbers) % 5, "good")
        self.sent[kind] += 1
        if kind == "500":
            return 500, b'{"error": "boom"}'
        return 200, bench.v2_answer(2 if kind == "wrong rows" else 1)


@pytest.fixture
def canned_server() -> Iterator[Callable[[Callable[[], tuple[int, bytes]]], int]]:
    """Starts the benchmark's canned server on its own event loop thread; yields a function giving its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def start(answer: Callable[[], tuple[int, bytes]]) -> int:
        create = loop.create_server(lambda: bench.CannedServer(answer), bench.HOST, 0)
        server = asyncio.run_coroutine_threadsafe(create, loop).result(timeout=5)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def _target(port: int) -> Any:
    return bench.Target(port, "/v2/models/m/infer", [b'{"inputs": []}', b'{"inputs": [1]}'], 1, bench.v2_rows)


def test_load_generator_counts_every_answer_and_each_failure_by_reason(canned_server: Any) -> None:
    answers = Answers()
    port = canned_server(answers)
    result = bench.run_load(_target(port), concurrency=4, duration=0.5, warmup=0)

    assert answers.sent["good"] > 50
    assert result.requests == answers.sent["good"]
    assert dict(result.errors) == {
        "HTTP 500": answers.sent["500"],
        "2 predictions for 1 rows": answers.sent["wrong rows"],
    }
    assert result.error_samples["HTTP 500"] == '{"error": "boom"}'
    assert result.seconds >= 0.5 and all(latency > 0 for latency in result.latencies)
    summary = result.summary()
    assert summary["errors"] == answers.sent["500"] + answers.sent["wrong rows"]
    assert summary["requests_per_second"] == pytest.approx(result.requests / result.seconds, rel=1e-3)
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]


def test_requests_sent_during_the_warm_up_are_not_counted(canned_server: Any) -> None:
    answers = Answers()
    port = canned_server(answers)
    result = bench.run_load(_target(port), concurrency=2, duration=0.3, warmup=0.3)
    counted = result.requests + sum(result.errors.values())
    assert 0 < counted < sum(answers.sent.values())


def test_a_server_that_is_not_there_counts_as_connection_errors() -> None:
    result = bench.run_load(_target(bench.free_port()), concurrency=2, duration=0.3, warmup=0)
    assert result.requests == 0
    assert list(result.errors) == ["ConnectionRefusedError"] and result.errors["ConnectionRefusedError"] >= 2
    assert result.summary()["requests_per_second"] == 0.0


def test_a_paced_connection_counts_a_stall_for_every_request_it_held_back(canned_server: Any) -> None:
    """Requests due every 10 ms; the third answer takes 60 ms. The five requests that fell due meanwhile count from
    when they were due, so each shows at least the rest of the stall; the generator's own lateness is kept apart."""
    stall, interval = 0.06, 0.01
    numbers = count()

    def answer() -> tuple[int, bytes]:
        if next(numbers) == 2:
            time.sleep(stall)  # the server's event loop is stuck: the connection's next requests wait
        return 200, bench.v2_answer(1)

    port = canned_server(answer)
    result, pace = bench.LoadResult(), bench.Pace(interval)
    start = time.perf_counter()
    asyncio.run(bench.keep_sending(_target(port), 0, start, start + 0.2, result, pace))

    assert result.errors == {} and result.requests == len(pace.generator_lateness) >= 10
    assert all(late >= 0 for late in pace.generator_lateness)
    stalled, *held_back = result.latencies[2:8]
    assert stalled >= stall
    # due at 30, 40, ... 70 ms; the stalled answer came after 20 + 60 ms
    assert all(latency >= 0.08 - 0.01 * (3 + index) for index, latency in enumerate(held_back))


def _read(raw: bytes) -> tuple[int, bytes, bool]:
    async def read() -> tuple[int, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await bench.read_response(reader)

    return asyncio.run(read())


def test_http_reader_takes_content_length_chunked_and_connection_close() -> None:
    assert _read(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody") == (200, b"body", True)
    chunked = b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert _read(chunked) == (422, b"abcde", True)
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}"
    assert _read(closing) == (200, b"{}", False)
    with pytest.raises(bench.ProtocolError, match="neither Content-Length nor chunked"):
        _read(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(bench.ProtocolError, match="not an HTTP/1.1 status line"):
        _read(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_request_bodies_carry_the_same_dataset_rows_in_both_protocols(tmp_path: Path) -> None:
    dataset = tmp_path / "churn.csv"
    generate_churn(1000, seed=3).to_csv(dataset, index=False)
    columns = [{"name": "tenure_months", "type": "double"}, {"name": "plan", "type": "string"}]
    rows = bench.sample_rows(dataset, columns, 64)
    assert len(rows) == 64 and all(isinstance(a, float) and isinstance(b, str) for a, b in rows)

    v2 = json.loads(bench.v2_body(columns, rows))["inputs"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in v2] == [
        ("tenure_months", "FP64", [64]),
        ("plan", "BYTES", [64]),
    ]
    split = json.loads(bench.invocations_body(columns, rows))["dataframe_split"]
    assert split["columns"] == ["tenure_months", "plan"]
    assert [list(pair) for pair in zip(v2[0]["data"], v2[1]["data"], strict=True)] == split["data"]
    assert bench.invocation_rows(b'{"predictions": [{"probability": 0.1, "prediction": 0}]}') == 1
    assert bench.check_answer(_target(1), 200, b'{"predictions": []}') == "unreadable answer (KeyError)"


def test_binary_bodies_carry_the_same_rows_as_tritonclient_encodes_them(tmp_path: Path) -> None:
    import numpy as np
    from tritonclient.utils import serialize_byte_tensor

    dataset = tmp_path / "churn.csv"
    generate_churn(1000, seed=3).to_csv(dataset, index=False)
    columns = [{"name": "tenure_months", "type": "double"}, {"name": "plan", "type": "string"}]
    rows = bench.sample_rows(dataset, columns, 64)

    body = bench.v2_binary_body(columns, rows)
    header, length = bench.json_prefix(body)

    sizes = [tensor["parameters"]["binary_data_size"] for tensor in header["inputs"]]
    numbers = np.array([row[0] for row in rows], dtype=np.float64).tobytes()
    names = serialize_byte_tensor(np.array([row[1] for row in rows], dtype=object)).item()
    assert body[length:] == numbers + names and sizes == [len(numbers), len(names)]
    assert header["parameters"] == {"binary_data_output": True}
    binary_answer = json.dumps({"outputs": [{"name": "probability", "shape": [64]}]}).encode() + b"\x00\xff" * 64
    assert bench.v2_rows(binary_answer) == 64
