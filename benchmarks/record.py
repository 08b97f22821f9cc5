"""Where every benchmark leaves its figures: one JSON file per run with the machine, the commit and the config.

The folder is ``benchmarks/results/`` unless ``$BENCH_RESULTS_DIR`` names another (smoke runs in the tests write
to a temporary folder). Standard library only: ``benchmarks/gpu_check.py`` runs where little else is installed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
RESULTS_DIR_ENV = "BENCH_RESULTS_DIR"


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
