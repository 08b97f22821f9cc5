"""Soak of the model server: minutes of steady load with a reload to the other model version every minute.

In one run, on loopback:

1. **the model**: the churn model trained as the train step trains it, registered twice (versions 1 and 2) with its
   serving bundle in a temporary MLflow registry on SQLite, as ``serving_layouts.py`` builds it;
2. **the server**: ``python -m mlsteps.serve --allow-reload --model-name churn-classifier --model-version 1``, the
   command the deploy step's ``LocalTarget`` runs (one worker: reloads need it);
3. **the probe**: before the server starts, a busy loop on each CPU for ``--probe-seconds``: how often the machine
   itself (kernel threads, the hypervisor) takes a CPU away, and for how long;
4. **closed loop**: one keep-alive connection, the next request sent as soon as the answer came, for
   ``--closed-loop-seconds``: the throughput that sets the rates below;
5. **unloaded**: one connection paced at ``--unloaded-share`` (default 0.05) of that throughput for
   ``--unloaded-seconds``: the latency a request meets at an idle server, measured as the soak measures;
6. **the soak**: C keep-alive connections sending at a fixed rate (``serving.keep_sending`` with a ``Pace``) at batch
   1 on the v2 JSON endpoint for the whole duration. The rate is ``--load-share`` (default 0.5) of the closed loop's
   throughput, split over the connections. A request the server held back (its answer to the previous one came after
   this one was due) counts from when it was due, so a stall delays every request behind it; the generator's own
   lateness (its event loop's timer wakes it up to a millisecond after a request was due) is the generator's, not the
   server's: it is reported apart and not counted. A fixed rate below capacity is what a service sees and what a
   latency goal is about: a closed loop at full speed keeps the server saturated, so its p99 is queueing by
   construction and says nothing of whether reloads or a long run degrade the server. Meanwhile the model is reloaded
   through ``POST /v2/repository/models/{name}/load`` every ``--reload-every`` seconds (the first half an interval
   in), each time to the version it does not serve; after each reload the server must name the new version. The
   server's RSS is sampled every second.

The goal compares the soak's p99 with the unloaded p99, both paced: a closed loop has one request in flight, so a
stall of the machine delays one request and never shows in its p99, while a paced load meets every stall with every
request due during it (``docs/design.md``, "The soak's baseline"). The closed loop's p99 is printed beside it.

It prints one table: the probe, the closed loop, the unloaded run, requests sent, failed requests (goal 0), server RSS
at start, end and max, p50/p99 under load against the unloaded p99 (goal: within 2x) and the closed loop's, the
generator's lateness, reloads done; and writes it, with the machine, the commit and the config, to
``benchmarks/results/soak-<time>.json`` (or ``$BENCH_RESULTS_DIR``). Unless ``--pin`` puts the generator on the first
CPU and every thread of the server on the others (the default, with two CPUs or more; ``--pin off`` does not), they
share the machine's cores: a generator that takes the server's CPU measures itself.

``--smoke`` runs every part briefly on a model trained from 600 rows for one round, with 8 s of load and a reload
every 5 s (two reloads): it checks that the benchmark works (``tests/unit/test_benchmarks.py``); its figures mean
nothing.

Usage: ``python benchmarks/soak.py [--seconds 300] [--reload-every 60] [--connections 2] [--load-share 0.5]
[--unloaded-share 0.05] [--unloaded-seconds 60] [--closed-loop-seconds 10] [--probe-seconds 10] [--rows 5000]
[--pin on|off] [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from record import write_report
from serving import HOST, LoadResult, Pace, Target, cpu_plan, generate_load, keep_sending, sample_rows, v2_body
from serving_layouts import MB, MODELS, build_models, deployed, reload, v2_answer_rows

MODEL = MODELS[0]  # churn-classifier, the shipped model
BODIES = 16  # distinct batch-1 requests, sent in turn
LATENCY_GOAL = 2.0  # p50 and p99 under load at most this many times the unloaded p99
STALL_MS = 1.0  # a CPU taken from the busy loop this long counts as a stall
SMOKE = {
    "seconds": 8.0,
    "reload_every": 5.0,
    "closed_loop_seconds": 1.0,
    "unloaded_seconds": 2.0,
    "probe_seconds": 1.0,
    "rows": 600,
}


@dataclass
class Soak:
    """What the soak saw besides the answers: each reload, and the server's RSS sampled through the run."""

    reloads: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def pin(server_pid: int, choice: str) -> str:
    """With ``choice`` "on" and two CPUs or more: the generator on the first CPU, every thread of the server (and its
    children) on the others. What was done.

    Threads the server starts later (a reload's) inherit their creator's CPUs, so pinning once holds for the run.
    """
    plan = cpu_plan(choice)
    if plan is None:
        return f"off ({len(os.sched_getaffinity(0))} CPUs shared by the generator and the server)"
    generator, server = plan
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


def cpu_stalls(cpu: int, seconds: float) -> dict[str, float]:
    """A busy loop on ``cpu`` alone for ``seconds``: how often and how long the CPU was taken from it (by kernel
    threads, interrupts, the hypervisor), each gap of at least ``STALL_MS``. On a machine whose CPUs are taken for
    milliseconds every second, a paced load sees those stalls in its p99 (a closed loop hides them: one request per
    stall)."""
    os.sched_setaffinity(0, {cpu})
    gaps, last = [], time.perf_counter()
    stop_at = last + seconds
    while (now := time.perf_counter()) < stop_at:
        if now - last >= STALL_MS / 1000:
            gaps.append((now - last) * 1000)
        last = now
    return {
        "cpu": cpu,
        "stalls_per_second": round(len(gaps) / seconds, 2),
        "longest_ms": round(max(gaps, default=0.0), 2),
        "lost_ms_per_second": round(sum(gaps) / seconds, 2),
    }


def probe_cpus(seconds: float) -> list[dict[str, float]]:
    """``cpu_stalls`` on every CPU at once, before anything of the benchmark's runs."""
    cpus = sorted(os.sched_getaffinity(0))
    with ProcessPoolExecutor(len(cpus), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(cpu_stalls, cpus, [seconds] * len(cpus)))


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


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB, from ``/proc/<pid>/statm``: a counter the kernel keeps, read in
    microseconds. (``smaps_rollup``, which PSS needs, walks every mapping of the process: milliseconds, which would
    stall the generator's event loop once a second and show up as the server's latency.)"""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / MB, 1)


async def sample_rss(pid: int, stop_at: float, into: list[float]) -> None:
    """The server's RSS in MB every second until ``stop_at``."""
    while time.perf_counter() < stop_at:
        into.append(rss_mb(pid))
        await asyncio.sleep(1.0)


async def reload_every(port: int, name: str, start: float, stop_at: float, interval: float, into: Soak) -> None:
    """A reload at half an interval after ``start`` and every ``interval`` after, each to the version not served."""
    at = start + interval / 2
    while at < stop_at:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        version = 2 if len(into.reloads) % 2 == 0 else 1  # the server starts on version 1
        into.reloads.append(await asyncio.to_thread(reload_and_check, port, name, version))
        at += interval


async def paced(target: Target, connections: int, rate: float, start: float, stop_at: float) -> tuple[LoadResult, Pace]:
    """``connections`` connections at ``rate`` requests/s in all from ``start`` to ``stop_at``: the answers and the
    generator's lateness."""
    result, pace = LoadResult(), Pace(connections / rate)
    ends = await asyncio.gather(
        # staggered, so that the connections' requests interleave rather than arrive together
        *(
            keep_sending(target, index, start + index * pace.interval / connections, stop_at, result, pace)
            for index in range(connections)
        )
    )
    result.seconds = max(ends) - start
    return result, pace


async def soak(
    target: Target, name: str, pid: int, args: argparse.Namespace, rate: float
) -> tuple[LoadResult, Pace, Soak]:
    """``args.connections`` connections at ``rate`` requests/s in all for ``args.seconds``: the answers, the
    generator's lateness, the reloads and the RSS samples."""
    seen = Soak()
    start = time.perf_counter()
    stop_at = start + args.seconds
    (result, pace), _, _ = await asyncio.gather(
        paced(target, args.connections, rate, start, stop_at),
        reload_every(target.port, name, start, stop_at, args.reload_every, seen),
        sample_rss(pid, stop_at, seen.rss_mb),
    )
    return result, pace, seen


def unloaded(target: Target, rate: float, seconds: float) -> LoadResult:
    """One connection at ``rate`` requests/s for ``seconds``: the server idle between requests, measured as the
    soak measures."""

    async def light_load() -> LoadResult:
        start = time.perf_counter()
        result, _ = await paced(target, 1, rate, start, start + seconds)
        return result

    return asyncio.run(light_load())


def closed_loop(target: Target, seconds: float) -> LoadResult:
    """One connection, the next request sent as soon as the answer came, for ``seconds``: the server's throughput
    on one connection, which sets the rates. On asyncio's own loop, as the paced runs."""
    return asyncio.run(generate_load(target, 1, seconds, warmup=0.0))


def figures_of(
    load: LoadResult,
    pace: Pace,
    capacity: LoadResult,
    light: LoadResult,
    seen: Soak,
    rss_start: float,
    rate: float,
    stalls: list[dict[str, float]],
) -> dict[str, Any]:
    """The table's figures: requests, failures, RSS, latency against the unloaded p99 (and the closed loop's), the
    generator's own lateness (not counted in the latency), reloads."""
    under, alone, closed = load.summary(), light.summary(), capacity.summary()
    late_p50, late_p99 = np.percentile(pace.generator_lateness, [50, 99]) * 1000
    failed = under["errors"] + sum(1 for attempt in seen.reloads if attempt["problem"])
    latency_keys = ("requests", "requests_per_second", "p50_ms", "p99_ms", "errors")
    return {
        "requests_sent": under["requests"] + under["errors"],
        "failed_requests": under["errors"],
        "failures_by_reason": under["errors_by_reason"],
        "failure_samples": under["error_samples"],
        "requests_per_second": under["requests_per_second"],
        "rss_mb": {"start": rss_start, "end": seen.rss_mb[-1], "max": max([rss_start, *seen.rss_mb])},
        "rate_per_second": round(rate, 1),
        "closed_loop": {key: closed[key] for key in latency_keys},
        "unloaded": {key: alone[key] for key in latency_keys},
        "p50_ms": under["p50_ms"],
        "p99_ms": under["p99_ms"],
        "p50_over_unloaded_p99": round(under["p50_ms"] / alone["p99_ms"], 2),
        "p99_over_unloaded_p99": round(under["p99_ms"] / alone["p99_ms"], 2),
        "p99_over_closed_loop_p99": round(under["p99_ms"] / closed["p99_ms"], 2),
        "generator_lateness_ms": {"p50": round(float(late_p50), 2), "p99": round(float(late_p99), 2)},
        "reloads": seen.reloads,
        "cpu_stalls": stalls,
        "reloads_done": sum(1 for attempt in seen.reloads if not attempt["problem"]),
        "goals_met": failed == 0 and under["p99_ms"] <= LATENCY_GOAL * alone["p99_ms"],
    }


def print_table(figures: dict[str, Any]) -> None:
    """The soak's figures beside their goals."""
    rss, alone, closed = figures["rss_mb"], figures["unloaded"], figures["closed_loop"]
    late = figures["generator_lateness_ms"]
    reload_seconds = ", ".join(f"{attempt['seconds']:.2f}" for attempt in figures["reloads"])
    rows = [
        (
            "closed loop: 1 connection",
            f"{closed['requests_per_second']:.0f}/s, p50 {closed['p50_ms']:.2f} / p99 {closed['p99_ms']:.2f} ms",
            "",
        ),
        (
            "unloaded: 1 connection paced",
            f"{alone['requests_per_second']:.0f}/s, p50 {alone['p50_ms']:.2f} / p99 {alone['p99_ms']:.2f} ms",
            "",
        ),
        ("soak: requests sent", f"{figures['requests_sent']} at {figures['requests_per_second']:.0f}/s", ""),
        ("failed requests", str(figures["failed_requests"]), "0"),
        ("server RSS MB start / end / max", f"{rss['start']:.0f} / {rss['end']:.0f} / {rss['max']:.0f}", ""),
        ("p50 ms under load", f"{figures['p50_ms']:.2f} ({figures['p50_over_unloaded_p99']:.2f}x unl. p99)", "<= 2x"),
        ("p99 ms under load", f"{figures['p99_ms']:.2f} ({figures['p99_over_unloaded_p99']:.2f}x unl. p99)", "<= 2x"),
        ("p99 under load / closed-loop p99", f"{figures['p99_over_closed_loop_p99']:.2f}x", ""),
        ("generator lateness p50 / p99 ms", f"{late['p50']:.2f} / {late['p99']:.2f} (not counted)", ""),
        ("reloads done", f"{figures['reloads_done']} of {len(figures['reloads'])} ({reload_seconds} s)", "all"),
    ]
    rows += [
        (
            f"CPU {probe['cpu']} taken from a busy loop",
            f"{probe['stalls_per_second']:.1f}/s >= {STALL_MS:g} ms, longest {probe['longest_ms']:.1f} ms",
            "",
        )
        for probe in figures["cpu_stalls"]
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
    parser.add_argument(
        "--closed-loop-seconds", type=float, default=10.0, help="seconds of the closed loop that measures throughput"
    )
    parser.add_argument("--unloaded-seconds", type=float, default=60.0, help="seconds of the unloaded measurement")
    parser.add_argument(
        "--unloaded-share",
        type=float,
        default=0.05,
        help="the unloaded rate, a share of the closed loop's throughput",
    )
    parser.add_argument(
        "--probe-seconds", type=float, default=10.0, help="seconds of the busy loop on each CPU, before the server runs"
    )
    parser.add_argument("--connections", type=int, default=2, help="keep-alive connections that share the load")
    parser.add_argument(
        "--load-share", type=float, default=0.5, help="the soak's rate, as a share of the closed loop's throughput"
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows of the generated training dataset")
    parser.add_argument(
        "--pin",
        choices=("on", "off"),
        default="on",
        help="on: the generator on the first CPU, the server on the others (with 2 CPUs or more); off: they share them",
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
    print(f"  probe: a busy loop on each CPU for {args.probe_seconds:g} s", flush=True)
    stalls = probe_cpus(args.probe_seconds)
    with deployed("per_model", [model], state) as deployment:
        port, pid = deployment.ports[name], deployment.pids[0]
        pinning = pin(pid, args.pin)
        print(f"  CPU pinning: {pinning}", flush=True)
        target = Target(port, f"/v2/models/{name}/infer", bodies, 1, v2_answer_rows)
        rss_start = rss_mb(pid)
        print(f"  closed loop: one connection for {args.closed_loop_seconds:g} s", flush=True)
        capacity = closed_loop(target, args.closed_loop_seconds)
        throughput = capacity.summary()["requests_per_second"]
        light_rate, rate = args.unloaded_share * throughput, args.load_share * throughput
        print(f"  unloaded: {light_rate:.0f} requests/s on one connection for {args.unloaded_seconds:g} s", flush=True)
        light = unloaded(target, light_rate, args.unloaded_seconds)
        print(
            f"  soak: {rate:.0f} requests/s over {args.connections} connections for {args.seconds:g} s, "
            f"a reload every {args.reload_every:g} s",
            flush=True,
        )
        load, pace, seen = asyncio.run(soak(target, name, pid, args, rate))
    figures = figures_of(load, pace, capacity, light, seen, rss_start, rate, stalls)
    print_table(figures)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
    write_report(
        "soak",
        {
            "seconds": args.seconds,
            "reload_every_seconds": args.reload_every,
            "closed_loop_seconds": args.closed_loop_seconds,
            "unloaded_seconds": args.unloaded_seconds,
            "unloaded_share": args.unloaded_share,
            "probe_seconds": args.probe_seconds,
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
