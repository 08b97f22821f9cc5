"""Benchmark of the main job: the churn model's retrain DAG on the embedded default, against the same steps run bare.

In one run, on a fresh state folder and the same generated dataset:

1. **DAG parse time** of every file in ``dags/``: ``python dags/<file>.py`` minus ``python -c ''`` (budget 0.3 s
   a file beyond the ``airflow.sdk`` import, which every DAG file pays), median of several runs;
2. **the whole DAG** through Airflow (``dag.test()`` on SQLite, steps as local subprocesses): each task's wall time
   as Airflow saw it, and the time the step process itself reported (``elapsed_seconds`` in its result);
3. **the anchor**: the step commands of the same DAG run one after another as plain subprocesses, no Airflow. The
   steps are the DAG's own step tasks (``cmds == ["python", "-m", "mlsteps", <step>]``) in topological order, read
   from the DagBag, so the anchor follows the DAG when steps come or go; promotion follows the DAG's gate.

It prints per-task figures and the Airflow overhead as differences and ratios, and writes everything (with the
machine, the commit and the config) to ``benchmarks/results/main_job-<time>.json`` (or ``$BENCH_RESULTS_DIR``).

``--smoke`` runs every part on 1,000 rows with one epoch and one parse-time sample, promotion forced so that
promote runs on both sides: it checks that the benchmark works (``tests/unit/test_benchmarks.py``, about 1.5
minutes); its figures mean nothing.

Usage: ``python benchmarks/main_job.py [--rows 100000] [--epochs 5] [--force-promotion] [--smoke]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from record import parse_times as measure_parse_times
from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = "churn-classifier"  # the built-in binary model (include/config/models/churn.yaml)
DAG_ID = f"{MODEL}.retrain"
# What a bare step needs beyond --run-root, from the settings and whether promotion is forced: the DAG's arguments
# that have no default in the step's CLI, the epochs (the benchmark sets them for both sides) and --force.
STEP_ARGS: dict[str, Callable[[Any, bool], list[str]]] = {
    "snapshot": lambda s, force: ["--input-uri", s.dataset_uri, "--snapshot-store", s.snapshot_store],
    "train": lambda s, force: ["--epochs", str(s.pipeline.training.epochs)],
    "promote": lambda s, force: ["--force"] if force else [],
}
ROWS, EPOCHS, PARSE_REPEATS = 100_000, 5, 5
# Smoke run: just enough rows for validate (dataset min_rows 500); such a model fails the gate, so a smoke run
# forces promotion to run the promote step on both sides.
SMOKE_ROWS, SMOKE_EPOCHS, SMOKE_PARSE_REPEATS = 1_000, 1, 1


def parse_times(repeats: int = PARSE_REPEATS) -> list[dict[str, Any]]:
    """Parse time of each DAG file, net of the bare interpreter and of the ``airflow.sdk`` import."""
    dag_files = sorted((PROJECT_ROOT / "dags").glob("*.py"))
    return measure_parse_times({path.name: [str(path)] for path in dag_files}, repeats)


def dag_steps(dag_id: str = DAG_ID) -> list[tuple[str, str]]:
    """The step tasks of a DAG as (task id, step), in topological order, from the DagBag of ``dags/``.

    A step task runs ``python -m mlsteps <step>``; branches, the summary and other Airflow-side tasks are not
    steps. A mapped step (train) runs bare once, for the configured ``training.model``. Airflow's configuration
    (``AIRFLOW_HOME``) must be in the environment before this is called.

    Raises:
        SystemExit: the DAG does not load, or it has no step task.
    """
    from airflow.dag_processing.dagbag import DagBag

    from orchestration.pod_task import step_command

    prefix = step_command("<step>")[0][:-1]  # the container command less the step: python -m mlsteps
    bag = DagBag(str(PROJECT_ROOT / "dags"))
    if dag_id not in bag.dags:
        raise SystemExit(f"{dag_id} did not load from {PROJECT_ROOT / 'dags'}; import errors: {bag.import_errors}")
    steps = []
    for task in bag.dags[dag_id].topological_sort():
        # A mapped task (train, one instance per candidate) keeps its command among its partial arguments.
        cmds = list(getattr(task, "cmds", None) or getattr(task, "partial_kwargs", {}).get("cmds") or [])
        if len(cmds) == len(prefix) + 1 and cmds[:-1] == prefix:
            steps.append((task.task_id, cmds[-1]))
    if not steps:
        raise SystemExit(f"{dag_id} has no step task (cmds {prefix} + [step]): nothing to run bare")
    return steps


def run_bare_steps(
    settings: Any, env: dict[str, str], steps: list[tuple[str, str]], force_promotion: bool = False
) -> dict[str, float]:
    """The anchor: each step of the DAG, in its order, as a plain subprocess; returns seconds per task id.

    Promotion follows the DAG's own gate decision (``orchestration.retrain.promotion_branch``), forced or not as
    the DAG run was.

    Raises:
        SystemExit: ``STEP_ARGS`` names a step the DAG does not have, or a step failed.
    """
    from orchestration.contracts import PROMOTE_TASK
    from orchestration.retrain import promotion_branch

    unknown = sorted(set(STEP_ARGS) - {step for _, step in steps})
    if unknown:
        raise SystemExit(
            f"STEP_ARGS in {Path(__file__).name} names {unknown}, not steps of {DAG_ID} "
            f"({[step for _, step in steps]}): remove or rename them"
        )
    root = settings.run_root("bare_steps", time.strftime("%Y%m%dT%H%M%S"))
    seconds = {}
    for task_id, step in steps:
        if task_id == PROMOTE_TASK and promotion_branch(root, force=force_promotion) != PROMOTE_TASK:
            continue  # as in the DAG: a failed gate skips promotion
        extra = STEP_ARGS[step](settings, force_promotion) if step in STEP_ARGS else []
        argv = [sys.executable, "-m", "mlsteps", step, "--run-root", root, *extra]
        started = time.perf_counter()
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
        seconds[task_id] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"bare {step} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def _print_tables(
    parse: list[dict[str, Any]], rows: list[dict[str, Any]], dataset_rows: int, dag_wall: float, bare_total: float
) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:8.2f}"

    print("\nDAG parse time (median; budget 0.3 s beyond the airflow.sdk import)")
    for row in parse:
        print(
            f"  {row['file']:<24} {row['seconds']:.3f} s total, {row['seconds_beyond_airflow_sdk']:.3f} s beyond "
            f"airflow.sdk ({row['airflow_sdk_import_seconds']:.3f} s)"
        )
    print(f"\n{DAG_ID} on {dataset_rows} rows: per task (seconds)")
    print(f"  {'task':<12}{'in Airflow':>12}{'step process':>14}{'bare step':>11}")
    for row in rows:
        print(
            f"  {row['task']:<12}{fmt(row['task_seconds']):>12}{fmt(row['step_process_seconds']):>14}"
            f"{fmt(row['bare_step_seconds']):>11}"
        )
    task_total = sum(r["task_seconds"] or 0 for r in rows)
    print(
        f"\n  whole DAG run {dag_wall:.1f} s (tasks {task_total:.1f} s) vs bare steps {bare_total:.1f} s: "
        f"Airflow overhead {dag_wall - bare_total:.1f} s, ratio {dag_wall / bare_total:.2f}x"
    )


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, help=f"rows of the generated dataset (default {ROWS}; smoke {SMOKE_ROWS})")
    parser.add_argument(
        "--epochs", type=int, help=f"training epochs, early stopping may end sooner (default {EPOCHS}; smoke 1)"
    )
    parser.add_argument(
        "--force-promotion",
        action="store_true",
        help="promote even if the gate fails, in the DAG (its force_promotion param) and bare; --smoke implies it",
    )
    parser.add_argument("--smoke", action="store_true", help="every part on tiny data: checks the benchmark runs")
    args = parser.parse_args()
    force = args.force_promotion or args.smoke
    rows = args.rows or (SMOKE_ROWS if args.smoke else ROWS)
    epochs = args.epochs or (SMOKE_EPOCHS if args.smoke else EPOCHS)

    state = Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    os.environ["ML_STATE_DIR"] = str(state)
    sys.path.insert(0, str(PROJECT_ROOT / "include"))
    from mlsteps import results
    from orchestration import embedded
    from orchestration.models import model_settings
    from orchestration.retrain import format_summary

    settings = model_settings(MODEL)
    settings = settings.model_copy(
        update={
            "pipeline": settings.pipeline.model_copy(
                update={"training": settings.pipeline.training.model_copy(update={"epochs": epochs})}
            )
        }
    )
    print(f"state folder {state}; {rows} rows; {epochs} epochs{'; smoke run' if args.smoke else ''}", flush=True)

    parse = parse_times(SMOKE_PARSE_REPEATS if args.smoke else PARSE_REPEATS)
    env = embedded.prepare_airflow(settings)
    os.environ.update(env)  # the DagBag below reads the same Airflow home as the DAG run
    steps = dag_steps()
    print(f"bare steps, in the DAG's order: {', '.join(step for _, step in steps)}", flush=True)
    embedded.ensure_dataset(settings, rows, seed=7)

    started = time.perf_counter()
    outcome = embedded.run_dag(settings, env, DAG_ID, {"epochs": epochs, "force_promotion": force})
    dag_wall = time.perf_counter() - started
    if outcome["state"] != "success":
        report = format_summary(outcome["summary"]) if outcome["summary"] else "no summary"
        raise SystemExit(f"{DAG_ID} failed (log {outcome['log_file']}):\n{report}")
    root = settings.run_root(DAG_ID, outcome["run_id"])

    bare = run_bare_steps(settings, settings.step_env(), steps, force)

    table = []
    in_run_order = sorted(outcome["tasks"].items(), key=lambda item: item[1]["started_at"] or "~")
    for task_id, info in in_run_order:
        step_seconds = (results.optional_result(root, task_id) or {}).get("elapsed_seconds")
        table.append(
            {
                "task": task_id,
                "state": info["state"],
                "task_seconds": info["seconds"],
                "step_process_seconds": step_seconds,
                "bare_step_seconds": round(bare[task_id], 3) if task_id in bare else None,
            }
        )
    bare_total = sum(bare.values())
    _print_tables(parse, table, rows, dag_wall, bare_total)

    write_report(
        "main_job",
        {
            "rows": rows,
            "epochs": epochs,
            "force_promotion": force,
            "smoke": args.smoke,
            "bare_steps": [step for _, step in steps],
        },
        {
            "parse": parse,
            "tasks": table,
            "dag_wall_seconds": round(dag_wall, 3),
            "bare_steps_seconds": round(bare_total, 3),
            "overhead_ratio": round(dag_wall / bare_total, 3),
        },
    )


if __name__ == "__main__":
    main()
