"""Soak of the model server: minutes of steady load with a reload to the other model version every minute.

In one run, on loopback:

1. **the model**: the churn model trained as the train step trains it, registered twice (versions 1 and 2) with its
   serving bundle in a temporary MLflow registry on SQLite, as ``serving_layouts.py`` builds it;
2. **the server**: ``python -m mlsteps.serve --allow-reload --model-name churn-classifier --model-version 1``, the
   command the deploy step's ``LocalTarget`` runs (one worker: reloads need it);
3. **unloaded**: one keep-alive connection, one request in flight at a time, for a few seconds: the server's own
   latency, measured before the soak in the same run;
4. **the soak**: C keep-alive connections sending at a fixed rate (``serving.keep_sending`` with a ``Pace``) at batch
   1 on the v2 JSON endpoint for the whole duration. The rate is ``--load-share`` (default 0.5) of the throughput the
   unloaded connection reached, split over the connections. A request the server held back (its answer to the
   previous one came after this one was due) counts from when it was due, so a stall delays every request behind it;
   the generator's own lateness (its event loop's timer wakes it up to a millisecond after a request was due) is the
   generator's, not the server's: it is reported apart and not counted. A fixed rate below capacity is what a service
   sees and what a latency goal is about: a closed loop at full speed keeps the server saturated, so its p99 is
   queueing by construction and says nothing of whether reloads or a long run degrade the server. Meanwhile the model
   is reloaded through ``POST /v2/repository/models/{name}/load`` every ``--reload-every`` seconds (the first half an
   interval in), each time to the version it does not serve; after each reload the server must name the new version.
   The server's RSS is sampled every second.

It prints one table: requests sent, failed requests (goal 0), server RSS at start, end and max, p50/p99 under load
against the unloaded p99 (goal: within 2x), the generator's lateness, reloads done; and writes it, with the machine,
the commit and the config, to ``benchmarks/results/soak-<time>.json`` (or ``$BENCH_RESULTS_DIR``). Unless ``--pin``
puts the generator on the first CPU and every thread of the server on the others, they share the machine's cores.

``--smoke`` runs every part on a model trained from 600 rows for one round, with 8 s of load and a reload every 5 s
(two reloads): it checks that the benchmark works (``tests/unit/test_benchmarks.py``); its figures mean nothing.

Usage: ``python benchmarks/soak.py [--seconds 300] [--reload-every 60] [--connections 2] [--load-share 0.5]
[--rows 5000] [--pin] [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from record import write_report
from serving import HOST, LoadResult, Pace, Target, cpu_plan, keep_sending, sample_rows, v2_body
from serving_layouts import MODELS, build_models, deployed, memory_mb, reload, v2_answer_rows

MODEL = MODELS[0]  # churn-classifier, the shipped model
BODIES = 16  # distinct batch-1 requests, sent in turn
LATENCY_GOAL = 2.0  # p50 and p99 under load at most this many times the unloaded p99
SMOKE = {"seconds": 8.0, "reload_every": 5.0, "unloaded_seconds": 1.0, "rows": 600}


@dataclass
class Soak:
    """What the soak saw besides the answers: each reload, and the server's RSS sampled through the run."""

    reloads: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def pin(server_pid: int) -> str:
    """The generator on the first CPU, every thread of the server (and its children) on the others; what was done.

    Threads the server starts later (a reload's) inherit their creator's CPUs, so pinning once holds for the run.
    """
    generator, server = cpu_plan("on")
    os.sched_setaffinity(0, generator)
    for pid in [server_pid, *_children(server_pid)]:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), server)
    return f"generator on CPU {sorted(generator)}, server on CPUs {sorted(server)}"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            found += [child, *_children(child)]
    return found


def served_version(port: int, name: str) -> str:
    """The version the server says it serves (its model metadata)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/v2/models/{name}", timeout=10) as answer:
        return str(json.loads(answer.read())["versions"][0])


def reload_and_check(port: int, name: str, version: int) -> dict[str, Any]:
    """Reload to ``version``; its duration and problem ('' when the server then names ``version``)."""
    started, ended, problem = reload(port, name, version)
    if not problem and (serving := served_version(port, name)) != str(version):
        problem = f"asked for version {version}, the server names version {serving}"
    return {"version": version, "seconds": round(ended - started, 3), "problem": problem}


async def sample_rss(pid: int, stop_at: float, into: list[float]) -> None:
    """The server's RSS in MB every second until ``stop_at``."""
    while time.perf_counter() < stop_at:
        into.append(memory_mb([pid])["rss_mb"])
        await asyncio.sleep(1.0)


async def reload_every(port: int, name: str, start: float, stop_at: float, interval: float, into: Soak) -> None:
    """A reload at half an interval after ``start`` and every ``interval`` after, each to the version not served."""
    at = start + interval / 2
    while at < stop_at:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        version = 2 if len(into.reloads) % 2 == 0 else 1  # the server starts on version 1
        into.reloads.append(await asyncio.to_thread(reload_and_check, port, name, version))
        at += interval


async def soak(
    target: Target, name: str, pid: int, args: argparse.Namespace, rate: float
) -> tuple[LoadResult, Pace, Soak]:
    """``args.connections`` connections at ``rate`` requests/s in all for ``args.seconds``: the answers, the
    generator's lateness, the reloads and the RSS samples."""
    result, pace, seen = LoadResult(), Pace(args.connections / rate), Soak()
    start = time.perf_counter()
    stop_at = start + args.seconds
    connections = (
        # staggered, so that the connections' requests interleave rather than arrive in pairs
        keep_sending(target, index, start + index * pace.interval / args.connections, stop_at, result, pace)
        for index in range(args.connections)
    )
    ends, _, _ = await asyncio.gather(
        asyncio.gather(*connections),
        reload_every(target.port, name, start, stop_at, args.reload_every, seen),
        sample_rss(pid, stop_at, seen.rss_mb),
    )
    result.seconds = max(ends) - start
    return result, pace, seen


def unloaded(target: Target, seconds: float) -> LoadResult:
    """One connection, one request in flight at a time, for ``seconds``."""

    async def one_connection() -> LoadResult:
        result = LoadResult()
        start = time.perf_counter()
        result.seconds = await keep_sending(target, 0, start, start + seconds, result) - start
        return result

    return asyncio.run(one_connection())


def figures_of(
    load: LoadResult, pace: Pace, baseline: LoadResult, seen: Soak, rss_start: float, rate: float
) -> dict[str, Any]:
    """The table's figures: requests, failures, RSS, latency against the unloaded p99, the generator's own lateness
    (not counted in the latency), reloads."""
    under, alone = load.summary(), baseline.summary()
    late_p50, late_p99 = np.percentile(pace.generator_lateness, [50, 99]) * 1000
    failed = under["errors"] + sum(1 for attempt in seen.reloads if attempt["problem"])
    return {
        "requests_sent": under["requests"] + under["errors"],
        "failed_requests": under["errors"],
        "failures_by_reason": under["errors_by_reason"],
        "failure_samples": under["error_samples"],
        "requests_per_second": under["requests_per_second"],
        "rss_mb": {"start": rss_start, "end": seen.rss_mb[-1], "max": max([rss_start, *seen.rss_mb])},
        "rate_per_second": round(rate, 1),
        "unloaded": {key: alone[key] for key in ("requests", "requests_per_second", "p50_ms", "p99_ms", "errors")},
        "p50_ms": under["p50_ms"],
        "p99_ms": under["p99_ms"],
        "p50_over_unloaded_p99": round(under["p50_ms"] / alone["p99_ms"], 2),
        "p99_over_unloaded_p99": round(under["p99_ms"] / alone["p99_ms"], 2),
        "generator_lateness_ms": {"p50": round(float(late_p50), 2), "p99": round(float(late_p99), 2)},
        "reloads": seen.reloads,
        "reloads_done": sum(1 for attempt in seen.reloads if not attempt["problem"]),
        "goals_met": failed == 0 and under["p99_ms"] <= LATENCY_GOAL * alone["p99_ms"],
    }


def print_table(figures: dict[str, Any]) -> None:
    """The soak's figures beside their goals."""
    rss, alone, late = figures["rss_mb"], figures["unloaded"], figures["generator_lateness_ms"]
    reload_seconds = ", ".join(f"{attempt['seconds']:.2f}" for attempt in figures["reloads"])
    rows = [
        ("requests sent", f"{figures['requests_sent']} ({figures['requests_per_second']:.0f}/s)", ""),
        (
            "rate / unloaded throughput",
            f"{figures['rate_per_second']:.0f}/s / {alone['requests_per_second']:.0f}/s",
            "",
        ),
        ("failed requests", str(figures["failed_requests"]), "0"),
        ("server RSS MB start / end / max", f"{rss['start']:.0f} / {rss['end']:.0f} / {rss['max']:.0f}", ""),
        ("unloaded p50 / p99 ms", f"{alone['p50_ms']:.2f} / {alone['p99_ms']:.2f}", ""),
        ("p50 ms under load", f"{figures['p50_ms']:.2f} ({figures['p50_over_unloaded_p99']:.2f}x unl. p99)", "<= 2x"),
        ("p99 ms under load", f"{figures['p99_ms']:.2f} ({figures['p99_over_unloaded_p99']:.2f}x unl. p99)", "<= 2x"),
        ("generator lateness p50 / p99 ms", f"{late['p50']:.2f} / {late['p99']:.2f} (not counted)", ""),
        ("reloads done", f"{figures['reloads_done']} of {len(figures['reloads'])} ({reload_seconds} s)", "all"),
    ]
    width = max(len(value) for _, value, _ in rows) + 2
    print(f"\n  {'figure':<34}{'measured':<{width}}goal")
    for label, value, goal in rows:
        print(f"  {label:<34}{value:<{width}}{goal}")
    for reason, count in figures["failures_by_reason"].items():
        print(f"      {count} x {reason}: {figures['failure_samples'][reason]}")
    for attempt in figures["reloads"]:
        if attempt["problem"]:
            print(f"      reload to version {attempt['version']} failed: {attempt['problem']}")
    print(f"  goals {'met' if figures['goals_met'] else 'NOT met'}")


def main() -> None:
    """Build the model, serve it, measure it unloaded, soak it with reloads, print the table and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="seconds of load (at least 300 for a soak)")
    parser.add_argument("--reload-every", type=float, default=60.0, help="seconds between reloads")
    parser.add_argument("--unloaded-seconds", type=float, default=10.0, help="seconds of the unloaded measurement")
    parser.add_argument("--connections", type=int, default=2, help="keep-alive connections that share the load")
    parser.add_argument(
        "--load-share", type=float, default=0.5, help="rate sent, as a share of the unloaded connection's throughput"
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows of the generated training dataset")
    parser.add_argument(
        "--pin", action="store_true", help="the generator on the first CPU, the server on the others (2 CPUs or more)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part briefly on a tiny model: checks the benchmark runs; "
        + ", ".join(f"{key} {value}" for key, value in SMOKE.items()),
    )
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    started = time.perf_counter()
    state = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    os.environ |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_LOCATION": (state / "mlartifacts").as_uri(),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    print(f"state folder {state}; {len(os.sched_getaffinity(0))} CPUs shared by the generator and the server")
    (model,) = build_models((MODEL,), state, args.rows, args.smoke)
    bodies = [v2_body(model.columns, [row]) for row in sample_rows(model.dataset, model.columns, BODIES)]
    name = MODEL.name
    with deployed("per_model", [model], state) as deployment:
        port, pid = deployment.ports[name], deployment.pids[0]
        cpus = len(os.sched_getaffinity(0))
        pinning = pin(pid) if args.pin else f"off ({cpus} CPUs shared by the generator and the server)"
        print(f"  CPU pinning: {pinning}", flush=True)
        target = Target(port, f"/v2/models/{name}/infer", bodies, 1, v2_answer_rows)
        rss_start = memory_mb([pid])["rss_mb"]
        print(f"  unloaded: one connection for {args.unloaded_seconds:g} s", flush=True)
        baseline = unloaded(target, args.unloaded_seconds)
        rate = args.load_share * baseline.summary()["requests_per_second"]
        print(
            f"  soak: {rate:.0f} requests/s over {args.connections} connections for {args.seconds:g} s, "
            f"a reload every {args.reload_every:g} s",
            flush=True,
        )
        load, pace, seen = asyncio.run(soak(target, name, pid, args, rate))
    figures = figures_of(load, pace, baseline, seen, rss_start, rate)
    print_table(figures)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
    write_report(
        "soak",
        {
            "seconds": args.seconds,
            "reload_every_seconds": args.reload_every,
            "unloaded_seconds": args.unloaded_seconds,
            "connections": args.connections,
            "load_share": args.load_share,
            "dataset_rows": args.rows,
            "smoke": args.smoke,
            "model": {"name": name, "family": MODEL.family, "bundle_bytes": model.bundle_bytes},
            "cpu_pinning": pinning,
        },
        figures,
    )
    shutil.rmtree(state)  # kept when the server fails: its log is there


if __name__ == "__main__":
    main()
