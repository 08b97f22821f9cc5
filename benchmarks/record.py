"""Where every benchmark leaves its figures: one JSON file per run with the machine, the commit and the config."""

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


def write_report(benchmark: str, config: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<benchmark>-<time>.json`` and say where; figures from one machine compare."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    report = {
        "benchmark": benchmark,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "commit": commit.strip(),
        "config": config,
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{benchmark}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out}")
    return out
