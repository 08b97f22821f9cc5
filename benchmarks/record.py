"""Where every benchmark leaves its figures: one JSON file per run with the machine, the commit and the config.

The folder is ``benchmarks/results/`` unless ``$BENCH_RESULTS_DIR`` names another (smoke runs in the tests write
to a temporary folder). Also the one way DAG parse time is measured (``parse_times``: ``main_job.py`` and
``dag_parse.py``). Standard library only: ``benchmarks/gpu_check.py`` runs where little else is installed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
RESULTS_DIR_ENV = "BENCH_RESULTS_DIR"
# What every DAG file pays before its own code runs; parse times are given beyond it.
SDK_IMPORT = "import airflow.sdk; from airflow.sdk import dag"


def results_dir() -> Path:
    """``$BENCH_RESULTS_DIR`` when set, else ``benchmarks/results/``."""
    return Path(os.environ.get(RESULTS_DIR_ENV) or RESULTS)


def _commit() -> str:
    """The checked-out commit, or ``unknown`` where there is no git or no repository (a copied tree)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def write_report(benchmark: str, config: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write ``<results dir>/<benchmark>-<time>.json`` and say where; figures from one machine compare."""
    report = {
        "benchmark": benchmark,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "commit": _commit(),
        "config": config,
        **figures,
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{benchmark}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out}")
    return out


def parse_times(
    scripts: dict[str, list[str]], repeats: int, env: dict[str, str] | None = None, bytecode_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Time of ``python <script args>`` for each labelled script (a DAG file), net of the bare interpreter and of the
    ``airflow.sdk`` import, median of ``repeats`` rounds: wall time, and CPU time (user + system) of the process.

    Each round runs the bare interpreter, the ``airflow.sdk`` import and every script once, one after another, so a
    change of load on a shared machine weighs on all of them alike. On an idle machine both times agree; on a busy
    one the wall time also holds the waits for a core, the CPU time does not. ``env`` replaces the environment of
    every process. The processes run one at a time: this process must have no other child ending meanwhile.

    A script runs after the ``airflow.sdk`` import (``SDK_IMPORT``) in its own process, which also reports the CPU
    seconds from then to the script's end: ``cpu_seconds_in_process``, the same figure without the difference of two
    processes' noise on a busy machine, and without the interpreter's exit.

    One untimed round runs first, so that what a running dag-processor has warm is warm: the OS's file cache and
    compiled bytecode. With ``bytecode_dir``, every process keeps its bytecode there (``PYTHONPYCACHEPREFIX``), also
    where the environment says ``PYTHONDONTWRITEBYTECODE``; without it, the project's modules would be compiled again
    at every parse, while Airflow's come compiled with the installed package.
    """
    env = dict(os.environ if env is None else env)
    if bytecode_dir is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_dir)
    commands = {"anchor:bare": ["-c", ""], "anchor:sdk": ["-c", SDK_IMPORT]}
    commands |= {label: ["-c", _IN_PROCESS, *args] for label, args in scripts.items()}
    wall: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    in_process: dict[str, list[float]] = {label: [] for label in scripts}
    for round_index in range(repeats + 1):
        for label, args in commands.items():
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            done = subprocess.run(
                [sys.executable, *args], env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_index == 0:
                continue  # the warm-up round
            wall[label].append(elapsed)
            cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if label in in_process:
                in_process[label].append(float(done.stdout.decode().split(_IN_PROCESS_MARK)[-1].split()[0]))
    wall_s = {label: statistics.median(values) for label, values in wall.items()}
    cpu_s = {label: statistics.median(values) for label, values in cpu.items()}
    return [
        {
            "file": label,
            "seconds": round(wall_s[label] - wall_s["anchor:bare"], 3),
            "seconds_beyond_airflow_sdk": round(wall_s[label] - wall_s["anchor:sdk"], 3),
            "airflow_sdk_import_seconds": round(wall_s["anchor:sdk"] - wall_s["anchor:bare"], 3),
            "cpu_seconds_beyond_airflow_sdk": round(cpu_s[label] - cpu_s["anchor:sdk"], 3),
            "cpu_seconds_in_process": round(statistics.median(in_process[label]), 3),
            "airflow_sdk_import_cpu_seconds": round(cpu_s["anchor:sdk"] - cpu_s["anchor:bare"], 3),
        }
        for label in scripts
    ]


# How a timed script runs: after the airflow.sdk import, as __main__; then it prints its CPU seconds since the import.
_IN_PROCESS_MARK = "cpu_seconds_in_process="
_IN_PROCESS = f"""\
import os, runpy, sys, time
{SDK_IMPORT}
started = time.process_time()
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python <script>` has it
runpy.run_path(sys.argv[0], run_name="__main__")
print("\\n{_IN_PROCESS_MARK}%.6f" % (time.process_time() - started), flush=True)
"""
