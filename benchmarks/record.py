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


def parse_times(scripts: dict[str, list[str]], repeats: int, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Time of ``python <script args>`` for each labelled script (a DAG file), net of the bare interpreter and of the
    ``airflow.sdk`` import, median of ``repeats`` rounds: wall time, and CPU time (user + system) of the process.

    Each round runs the bare interpreter, the ``airflow.sdk`` import and every script once, one after another, so a
    change of load on a shared machine weighs on all of them alike. On an idle machine both times agree; on a busy
    one the wall time also holds the waits for a core, the CPU time does not. ``env`` replaces the environment of
    every process. The processes run one at a time: this process must have no other child ending meanwhile.
    """
    commands = {"anchor:bare": ["-c", ""], "anchor:sdk": ["-c", SDK_IMPORT], **scripts}
    wall: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(repeats):
        for label, args in commands.items():
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(
                [sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wall[label].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    wall_s = {label: statistics.median(values) for label, values in wall.items()}
    cpu_s = {label: statistics.median(values) for label, values in cpu.items()}
    return [
        {
            "file": label,
            "seconds": round(wall_s[label] - wall_s["anchor:bare"], 3),
            "seconds_beyond_airflow_sdk": round(wall_s[label] - wall_s["anchor:sdk"], 3),
            "airflow_sdk_import_seconds": round(wall_s["anchor:sdk"] - wall_s["anchor:bare"], 3),
            "cpu_seconds_beyond_airflow_sdk": round(cpu_s[label] - cpu_s["anchor:sdk"], 3),
            "airflow_sdk_import_cpu_seconds": round(cpu_s["anchor:sdk"] - cpu_s["anchor:bare"], 3),
        }
        for label in scripts
    ]
