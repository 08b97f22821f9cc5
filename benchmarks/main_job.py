"""Benchmark of the main job: ml_retrain on the embedded default, against the same steps run bare.

In one run, on a fresh state folder and the same generated dataset:

1. **DAG parse time** of every file in ``dags/``: ``python dags/<file>.py`` minus ``python -c ''`` (budget 0.3 s
   a file beyond the ``airflow.sdk`` import, which every DAG file pays), median of several runs;
2. **the whole DAG** through Airflow (``dag.test()`` on SQLite, steps as local subprocesses): each task's wall time
   as Airflow saw it, and the time the step process itself reported (``elapsed_seconds`` in its result);
3. **the anchor**: the same step commands run one after another as plain subprocesses, no Airflow.

It prints per-task figures and the Airflow overhead as differences and ratios, and writes everything (with the
machine, the commit and the config) to ``benchmarks/results/main_job-<time>.json``.

Usage: ``python benchmarks/main_job.py [--rows 100000] [--epochs 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STEP_ARGS = {
    "snapshot": lambda s: ["--input-uri", s.dataset_uri, "--snapshot-store", s.snapshot_store],
    "train": lambda s: ["--epochs", str(s.pipeline.training.epochs)],
    "promote": lambda s: ["--no-force"],
}


def _median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_times(repeats: int = 5) -> list[dict[str, Any]]:
    """Parse time of each DAG file, net of the bare interpreter and of the ``airflow.sdk`` import."""
    bare = _median_seconds([sys.executable, "-c", ""], repeats)
    sdk = _median_seconds([sys.executable, "-c", "import airflow.sdk; from airflow.sdk import dag"], repeats)
    rows = []
    for dag_file in sorted((PROJECT_ROOT / "dags").glob("*.py")):
        total = _median_seconds([sys.executable, str(dag_file)], repeats)
        rows.append(
            {
                "file": dag_file.name,
                "seconds": round(total - bare, 3),
                "seconds_beyond_airflow_sdk": round(total - sdk, 3),
                "airflow_sdk_import_seconds": round(sdk - bare, 3),
            }
        )
    return rows


def run_bare_steps(settings: Any, env: dict[str, str]) -> dict[str, float]:
    """The anchor: every step command of the DAG, in order, as a plain subprocess."""
    from mlsteps import results
    from orchestration.settings import STEPS

    root = settings.run_root("bare_steps", time.strftime("%Y%m%dT%H%M%S"))
    seconds = {}
    for step in STEPS:
        argv = [sys.executable, "-m", "mlsteps", step, "--run-root", root, *STEP_ARGS.get(step, lambda _: [])(settings)]
        started = time.perf_counter()
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
        seconds[step] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"bare {step} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        if step == "evaluate" and not results.read_result(root, "evaluate")["gate"]["passed"]:
            break  # as in the DAG: a failed gate skips promotion
    return seconds


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the generated dataset")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (early stopping may end sooner)")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    os.environ["ML_STATE_DIR"] = str(state)
    sys.path.insert(0, str(PROJECT_ROOT / "include"))
    from mlsteps import results
    from orchestration import embedded
    from orchestration.settings import get_settings

    settings = get_settings()
    settings = settings.model_copy(
        update={
            "pipeline": settings.pipeline.model_copy(
                update={"training": settings.pipeline.training.model_copy(update={"epochs": args.epochs})}
            )
        }
    )
    print(f"state folder {state}; {args.rows} rows; {args.epochs} epochs", flush=True)

    parse = parse_times()
    env = embedded.prepare_airflow(settings)
    embedded.ensure_dataset(settings, args.rows, seed=7)

    started = time.perf_counter()
    outcome = embedded.run_dag(settings, env, "ml_retrain", {"epochs": args.epochs})
    dag_wall = time.perf_counter() - started
    if outcome["state"] != "success":
        raise SystemExit(f"ml_retrain failed: {outcome['step_failures']} (log {outcome['log_file']})")
    root = settings.run_root("ml_retrain", outcome["run_id"])

    bare = run_bare_steps(settings, settings.step_env())

    rows = []
    in_run_order = sorted(outcome["tasks"].items(), key=lambda item: item[1]["started_at"] or "~")
    for task_id, info in in_run_order:
        step_seconds = (results.optional_result(root, task_id) or {}).get("elapsed_seconds")
        rows.append(
            {
                "task": task_id,
                "state": info["state"],
                "task_seconds": info["seconds"],
                "step_process_seconds": step_seconds,
                "bare_step_seconds": round(bare[task_id], 3) if task_id in bare else None,
            }
        )
    task_total = sum(r["task_seconds"] or 0 for r in rows)
    bare_total = sum(bare.values())

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:8.2f}"

    print("\nDAG parse time (median; budget 0.3 s beyond the airflow.sdk import)")
    for row in parse:
        print(
            f"  {row['file']:<24} {row['seconds']:.3f} s total, {row['seconds_beyond_airflow_sdk']:.3f} s beyond "
            f"airflow.sdk ({row['airflow_sdk_import_seconds']:.3f} s)"
        )
    print(f"\nml_retrain on {args.rows} rows: per task (seconds)")
    print(f"  {'task':<12}{'in Airflow':>12}{'step process':>14}{'bare step':>11}")
    for row in rows:
        print(
            f"  {row['task']:<12}{fmt(row['task_seconds']):>12}{fmt(row['step_process_seconds']):>14}"
            f"{fmt(row['bare_step_seconds']):>11}"
        )
    overhead = dag_wall - bare_total
    print(
        f"\n  whole DAG run {dag_wall:.1f} s (tasks {task_total:.1f} s) vs bare steps {bare_total:.1f} s: "
        f"Airflow overhead {overhead:.1f} s, ratio {dag_wall / bare_total:.2f}x"
    )

    write_report(
        "main_job",
        {"rows": args.rows, "epochs": args.epochs},
        {
            "parse": parse,
            "tasks": rows,
            "dag_wall_seconds": round(dag_wall, 3),
            "bare_steps_seconds": round(bare_total, 3),
            "overhead_ratio": round(dag_wall / bare_total, 3),
        },
    )


if __name__ == "__main__":
    main()
