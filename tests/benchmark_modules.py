"""The benchmark scripts as modules, for tests that check their parts (``benchmarks/`` is not a package), and as
processes, for tests that run them whole."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as ``bench_<name>`` (once per process)."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings (`record`, `serving`)
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def benchmark_env(folder: Path) -> dict[str, str]:
    """The environment of a benchmark run by a test: its report goes to ``folder/results`` (never to
    ``benchmarks/results/``) and its temporary folders to ``folder/tmp``, so pytest's clean-up removes them."""
    scratch = folder / "tmp"
    scratch.mkdir()
    return {**os.environ, "BENCH_RESULTS_DIR": str(folder / "results"), "TMPDIR": str(scratch)}


def run_benchmark(name: str, args: list[str], folder: Path, timeout: float) -> tuple[dict[str, Any], str]:
    """``benchmarks/<name>.py args`` as a subprocess of this interpreter, which must succeed: its report and output."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        cwd=BENCHMARKS.parent,
        env=benchmark_env(folder),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report_file,) = (folder / "results").glob(f"{name}-*.json")
    return json.loads(report_file.read_text()), done.stdout
