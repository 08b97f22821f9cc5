"""Benchmark of scale: the main job's steps at 100k, 1M and 10M rows, before and after a change, side by side.

The steps are the churn model's retrain steps as ``main_job.py`` runs them bare (``dag_steps``: the DAG's step
tasks in topological order, with its ``STEP_ARGS``), each a plain ``python -m mlsteps <step>`` subprocess. Two
sides run them on the same generated dataset, one after the other at each size, so a change of load on a shared
machine weighs on both alike:

- **before**: the code of a git revision (``--ref``, default ``HEAD``), checked out with ``git worktree add
  --detach`` in a temporary folder; its ``include/`` comes first on ``PYTHONPATH`` and its own model config is the
  steps' config (``MLSTEPS_CONFIG``), in the same virtualenv. ``--ref none`` leaves this side out.
- **after**: the working tree as it is.

Both sides run the working tree DAG's list of steps; a step that fails ends its side at that size. ``--steps``
shows only the steps named, and runs the DAG's steps up to the last one named (the earlier ones make its input).

Per step it measures the wall time and the peak RSS of the step process: ``ru_maxrss`` of the rusage that
``os.wait4`` returns for that one child, started by a small launcher (``_LAUNCHER``) so that this process's own size
does not count in it. That is the larger of the process's own peak and that of any child it
waited for (the steps run bare start none: training runs in the step's own process, no torchrun, no loader
workers); children running at the same time would not be summed.

What runs at each size is what the pipeline config says, on all the rows (nothing is sampled or capped), except:
training runs ``--epochs`` epochs (default 1; early stopping may end sooner), and promotion is forced so that
promote runs on both sides whatever the gate says. Each side at each size starts from a fresh state folder (its
own MLflow store and snapshot store), so no run finds another's snapshot or champion. The datasets are generated
once per size (``python -m mlsteps make-dataset``, the working tree's code, seed 7) into a cache folder outside the
repository (``--cache``, default ``$TMPDIR/mlsteps-scale-datasets``) and reused by later runs: 10M rows are a
1.4 GB CSV that takes minutes to make.

It prints one table per size (each step's seconds and peak RSS on both sides, after/before ratios), then a line
per side: how total wall time grows from size to size against the rows (``time ratio / rows ratio``: at most 1
when time grows at most linearly) and the largest peak RSS at the biggest size against the 2 GB goal. Everything
(with the machine, the commit and the config) goes to ``benchmarks/results/scale-<time>.json`` (or
``$BENCH_RESULTS_DIR``). It exits 1, after both, when a step failed; the end of that step's output is in the report.

``--smoke`` runs 2,000 and 4,000 rows, one epoch: it checks that the benchmark works
(``tests/unit/test_bench_scale.py``); its figures mean nothing.

Usage: ``python benchmarks/scale.py [--sizes 100000,1000000,10000000] [--epochs 1] [--steps snapshot,validate]
[--ref HEAD|none] [--cache DIR] [--smoke]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from main_job import DAG_ID, MODEL, STEP_ARGS, dag_steps
from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIZES = (100_000, 1_000_000, 10_000_000)
SMOKE_SIZES = (2_000, 4_000)
EPOCHS = 1
SEED = 7
MEMORY_GOAL_MB = 2048.0  # peak RSS of any step at the biggest size, the goal of batched processing
CACHE_DIR_NAME = "mlsteps-scale-datasets"
OUTPUT_TAIL_CHARS = 2000


@dataclass(frozen=True)
class Side:
    """The code one side runs: its checkout's root (the working tree, or a worktree of ``revision``)."""

    label: str
    revision: str
    root: Path


@dataclass(frozen=True)
class StepMeasure:
    """One step process: wall seconds, peak RSS in MB, exit code, and the end of its output when it failed."""

    seconds: float
    peak_rss_mb: float
    exit_code: int
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the step exited 0."""
        return self.exit_code == 0


# Starts the step and writes its ru_maxrss to argv[1]. Linux counts in a child's peak RSS the memory it shared with
# its parent before exec, so a step forked straight from this process (Airflow and the DAGs imported: over 1 GB in a
# test run) would report at least this process's size; forked from this small launcher it reports its own.
_LAUNCHER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(argv: list[str], env: dict[str, str], cwd: Path) -> StepMeasure:
    """Run one process to its end; its wall time and its own peak RSS (``os.wait4``'s rusage of that child, taken by
    a small launcher process so that this process's size does not count: see ``_LAUNCHER``)."""
    with tempfile.TemporaryFile() as output, tempfile.TemporaryDirectory(prefix="scale-rss-") as scratch:
        rss_file = Path(scratch) / "maxrss"
        started = time.perf_counter()
        launcher = [sys.executable, "-c", _LAUNCHER, str(rss_file), *argv]
        process = subprocess.Popen(launcher, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        try:
            process.wait()
        except BaseException:  # interrupted: leave no step running
            process.kill()
            process.wait()
            raise
        seconds = time.perf_counter() - started
        tail = ""
        if process.returncode != 0:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-OUTPUT_TAIL_CHARS:]
        # Linux gives ru_maxrss in kilobytes; no report when the step could not even start.
        peak_kb = int(rss_file.read_text()) if rss_file.exists() else 0
    return StepMeasure(round(seconds, 3), round(peak_kb / 1024, 1), process.returncode, tail)


def dataset_path(cache: Path, rows: int, task: str) -> Path:
    """Where the cache keeps the generated dataset of one task and size (seed ``SEED``)."""
    return cache / f"{task}-{rows}-seed{SEED}.csv"


def cached_dataset(cache: Path, rows: int, task: str) -> Path:
    """The generated dataset of ``rows`` rows in the cache folder, generated first when it is not there yet.

    Raises:
        SystemExit: make-dataset failed.
    """
    path = dataset_path(cache, rows, task)
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.csv")  # renamed when complete: an interrupted run leaves no half dataset
    print(f"generating {rows} rows into {path}", flush=True)
    argv = [sys.executable, "-m", "mlsteps", "make-dataset", "--output-uri", str(partial), "--rows", str(rows)]
    done = subprocess.run([*argv, "--seed", str(SEED), "--task", task], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"make-dataset --rows {rows} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    partial.rename(path)
    return path


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Side]:
    """The code of ``ref`` in a temporary ``git worktree add --detach``, removed again on the way out.

    Raises:
        SystemExit: ``ref`` is not a revision of this repository.
    """
    revision = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    if revision.returncode != 0:
        raise SystemExit(
            f"--ref {ref!r} is not a commit of {PROJECT_ROOT}: {revision.stderr.strip()}; give a "
            "revision (HEAD, a branch, a hash) or none"
        )
    commit = revision.stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-ref-")) / "tree"
    git = ["git", "-C", str(PROJECT_ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(folder), commit], check=True, capture_output=True)
    try:
        yield Side("before", commit, folder)
    finally:
        subprocess.run([*git, "remove", "--force", str(folder)], check=False, capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


def fresh_settings(settings: Any, state: Path, dataset: Path) -> Any:
    """The settings with their own state folder (artifacts, MLflow store, snapshots) and the cached dataset."""
    return settings.model_copy(
        update={
            "state_dir": state,
            "artifact_root": str(state / "artifacts"),
            "mlflow_tracking_uri": f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
            "dataset_uri": str(dataset),
        }
    )


def side_env(side: Side, settings: Any) -> dict[str, str]:
    """The step environment (``Settings.step_env``) with the side's ``include/`` first on the path and the side's
    own copy of the model config, which its config classes can read."""
    from mlsteps.config import CONFIG_ENV_VAR

    env = {**os.environ, **settings.step_env()}
    config = Path(settings.config_uri).resolve()
    if config.is_relative_to(PROJECT_ROOT):
        env[CONFIG_ENV_VAR] = str(side.root / config.relative_to(PROJECT_ROOT))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(side.root / "include"), os.environ.get("PYTHONPATH")]))
    return env


def empty_tracking_store(folder: Path) -> Path:
    """An MLflow SQLite store with its tables made and nothing in it, copied into each run's state: making the
    tables takes seconds, which no step should be charged (``orchestration.embedded`` makes them before any task)."""
    from orchestration import embedded

    database = folder / "mlflow.db"
    folder.mkdir(parents=True, exist_ok=True)
    embedded._create_tracking_store(f"sqlite:///{database}")
    return database


def run_side(side: Side, settings: Any, steps: list[tuple[str, str]], tracking_store: Path) -> dict[str, StepMeasure]:
    """The steps one after another on one side, promotion forced; stops at the first step that fails.

    ``settings`` name a fresh state folder (``fresh_settings``); ``tracking_store`` is copied there as its MLflow
    store.
    """
    (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tracking_store, settings.state_dir / "mlflow" / "mlflow.db")
    env = side_env(side, settings)
    root = settings.run_root("bare_steps", time.strftime("%Y%m%dT%H%M%S"))
    measures: dict[str, StepMeasure] = {}
    for task_id, step in steps:
        extra = STEP_ARGS[step](settings, True) if step in STEP_ARGS else []
        argv = [sys.executable, "-m", "mlsteps", step, "--run-root", root, *extra]
        measures[task_id] = run_measured(argv, env, side.root)
        print(
            f"  {side.label:<6} {task_id:<11} {measures[task_id].seconds:8.1f} s "
            f"{measures[task_id].peak_rss_mb:8.0f} MB{'' if measures[task_id].ok else '  FAILED'}",
            flush=True,
        )
        if not measures[task_id].ok:
            print(f"  {side.label} {step} exited {measures[task_id].exit_code}:\n{measures[task_id].output_tail}")
            break
    return measures


def _ratio(after: float | None, before: float | None) -> str:
    return "-" if after is None or not before else f"{after / before:.2f}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def size_table(rows: int, tasks: list[str], runs: dict[str, dict[str, StepMeasure]]) -> str:
    """One size's table: per step, each side's seconds and peak RSS, and after/before ratios ("failed" where a
    step failed; "-" where it did not run)."""

    def figure(side: str, task: str, field: str, digits: int) -> tuple[str, float | None]:
        measure = runs.get(side, {}).get(task)
        if measure is None:
            return "-", None
        if not measure.ok:
            return "failed", None
        value = getattr(measure, field)
        return _number(value, digits), value

    header = (
        f"  {'step':<11}{'before s':>10}{'after s':>10}{'ratio':>7}"
        f"{'before peak RSS MB':>20}{'after peak RSS MB':>19}{'ratio':>7}"
    )
    lines = [f"\n{rows:,} rows", header]
    for task in tasks:
        before_s, before_seconds = figure("before", task, "seconds", 1)
        after_s, after_seconds = figure("after", task, "seconds", 1)
        before_mb, before_rss = figure("before", task, "peak_rss_mb", 0)
        after_mb, after_rss = figure("after", task, "peak_rss_mb", 0)
        lines.append(
            f"  {task:<11}{before_s:>10}{after_s:>10}{_ratio(after_seconds, before_seconds):>7}"
            f"{before_mb:>20}{after_mb:>19}{_ratio(after_rss, before_rss):>7}"
        )
    return "\n".join(lines)


def side_summary(side: str, sizes: list[int], tasks: list[str], runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """How one side scales: the total wall time of the steps at each size where all of them ran, the growth from
    each size to the next (time ratio / rows ratio: at most 1 is at most linear), and the largest peak RSS at the
    biggest size against the goal."""
    totals: dict[int, float] = {}
    for rows in sizes:
        measures = runs[rows].get(side, {})
        if tasks and all(task in measures and measures[task].ok for task in tasks):
            totals[rows] = round(sum(measures[task].seconds for task in tasks), 3)
    growth = [
        {
            "from_rows": small,
            "to_rows": big,
            "time_ratio": round(totals[big] / totals[small], 3),
            "rows_ratio": round(big / small, 3),
            "time_over_rows": round((totals[big] / totals[small]) / (big / small), 3),
        }
        for small, big in zip(sizes, sizes[1:], strict=False)
        if small in totals and big in totals
    ]
    biggest = runs[sizes[-1]].get(side, {}) if sizes else {}
    peaks = {task: measure.peak_rss_mb for task, measure in biggest.items() if measure.ok and task in tasks}
    peak_task = max(peaks, key=peaks.get) if peaks else None
    return {
        "side": side,
        "total_seconds": totals,
        "growth": growth,
        "biggest_rows": sizes[-1] if sizes else None,
        "peak_rss_mb": peaks.get(peak_task) if peak_task else None,
        "peak_rss_step": peak_task,
        "within_memory_goal": peaks[peak_task] <= MEMORY_GOAL_MB if peak_task else None,
        "failed_steps": {
            rows: task for rows in sizes for task, measure in runs[rows].get(side, {}).items() if not measure.ok
        },
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One side's summary as a line: time growth per step up in size, and its biggest peak RSS against the goal."""
    growth = (
        ", ".join(
            f"{g['from_rows']:,}->{g['to_rows']:,}: time x{g['time_ratio']:.2f} for rows x{g['rows_ratio']:.0f} "
            f"= {g['time_over_rows']:.2f} ({'at most linear' if g['time_over_rows'] <= 1 else 'MORE than linear'})"
            for g in summary["growth"]
        )
        or "no two sizes with every step run"
    )
    if summary["peak_rss_step"] is None:
        memory = f"no step ran at {summary['biggest_rows']:,} rows"
    else:
        verdict = "within" if summary["within_memory_goal"] else "OVER"
        memory = (
            f"largest peak RSS at {summary['biggest_rows']:,} rows {summary['peak_rss_mb']:.0f} MB "
            f"({summary['peak_rss_step']}), {verdict} the {MEMORY_GOAL_MB / 1024:.0f} GB goal"
        )
    failed = "".join(f"; {task} FAILED at {rows:,} rows" for rows, task in summary["failed_steps"].items())
    return f"  {summary['side']:<6} {growth}; {memory}{failed}"


def report_text(sizes: list[int], tasks: list[str], runs: dict[int, dict[str, Any]], sides: list[str]) -> str:
    """Every size's table, then the summary line of each side that ran."""
    tables = [size_table(rows, tasks, runs[rows]) for rows in sizes]
    lines = [summary_line(side_summary(side, sizes, tasks, runs)) for side in sides]
    return "\n".join([*tables, "\nscaling (time ratio / rows ratio; total of the steps above)", *lines])


def chosen_steps(all_steps: list[tuple[str, str]], names: list[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """The steps to run, the DAG's up to the last one named (what the named steps read comes from those before
    them), and the task ids to show.

    Raises:
        SystemExit: a name is not a step of the DAG.
    """
    task_ids = [task_id for task_id, _ in all_steps]
    if not names:
        return all_steps, task_ids
    unknown = [name for name in names if name not in task_ids]
    if unknown:
        raise SystemExit(f"--steps {','.join(unknown)}: not steps of {DAG_ID}; choose among {','.join(task_ids)}")
    last = max(task_ids.index(name) for name in names)
    return all_steps[: last + 1], [task_id for task_id in task_ids if task_id in names]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give rows as integers separated by commas") from None
    if not sizes or any(rows < 1 for rows in sizes) or sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct positive row counts, smallest first")
    return sizes


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=_sizes, help=f"rows of each size, comma-separated (default {','.join(map(str, SIZES))})"
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs; early stopping may end sooner")
    parser.add_argument(
        "--steps", help="steps to show, comma-separated; the DAG's steps before the last one named run too"
    )
    parser.add_argument("--ref", default="HEAD", help="revision of the 'before' side (default HEAD), or none")
    parser.add_argument("--cache", type=Path, help=f"folder of the generated datasets ($TMPDIR/{CACHE_DIR_NAME})")
    parser.add_argument("--smoke", action="store_true", help="2,000 and 4,000 rows, 1 epoch: checks the benchmark runs")
    args = parser.parse_args()
    sizes = args.sizes or list(SMOKE_SIZES if args.smoke else SIZES)
    epochs = 1 if args.smoke else args.epochs
    cache = args.cache or Path(tempfile.gettempdir()) / CACHE_DIR_NAME

    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ["ML_STATE_DIR"] = str(base / "settings")
    sys.path.insert(0, str(PROJECT_ROOT / "include"))
    from orchestration import embedded
    from orchestration.models import model_settings

    settings = model_settings(MODEL)
    training = settings.pipeline.training.model_copy(update={"epochs": epochs})
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"training": training})})
    os.environ.update(embedded.airflow_env(settings))  # dag_steps reads the DAGs with this Airflow configuration
    steps, tasks = chosen_steps(dag_steps(), args.steps.split(",") if args.steps else None)
    task = settings.pipeline.dataset.target.task
    tracking_store = empty_tracking_store(base / "empty-tracking-store")

    with contextlib.ExitStack() as stack:
        sides = [Side("after", "working tree", PROJECT_ROOT)]
        if args.ref.lower() != "none":
            sides.insert(0, stack.enter_context(checkout(args.ref)))
        print(
            f"{DAG_ID} steps {', '.join(step for _, step in steps)} on {', '.join(f'{rows:,}' for rows in sizes)} "
            f"rows: every step on all rows; train {epochs} epoch(s); promotion forced; "
            + "; ".join(f"{side.label} = {side.revision}" for side in sides)
            + ("; smoke run" if args.smoke else ""),
            flush=True,
        )
        runs: dict[int, dict[str, dict[str, StepMeasure]]] = {}
        for rows in sizes:
            dataset = cached_dataset(cache, rows, task)
            print(f"{rows:,} rows ({dataset})", flush=True)
            runs[rows] = {}
            for side in sides:
                state = base / f"{side.label}-{rows}"
                runs[rows][side.label] = run_side(side, fresh_settings(settings, state, dataset), steps, tracking_store)
                shutil.rmtree(state, ignore_errors=True)  # big at 10M rows (snapshots, features)
    shutil.rmtree(base, ignore_errors=True)

    labels = [side.label for side in sides]
    print(report_text(sizes, tasks, runs, labels))
    write_report(
        "scale",
        {
            "sizes": sizes,
            "epochs": epochs,
            "steps": [step for _, step in steps],
            "shown": tasks,
            "sides": {side.label: side.revision for side in sides},
            "ran": "every step on all rows; training limited to the epochs; promotion forced",
            "memory_goal_mb": MEMORY_GOAL_MB,
            "peak_rss": "ru_maxrss of os.wait4 on each step process",
            "smoke": args.smoke,
        },
        {
            "runs": [
                {"rows": rows, "side": side, "steps": {task_id: asdict(m) for task_id, m in measures.items()}}
                for rows in sizes
                for side, measures in runs[rows].items()
            ],
            "summary": [side_summary(side, sizes, tasks, runs) for side in labels],
        },
    )
    failed = [
        f"{side} {task_id} at {rows:,} rows"
        for rows in sizes
        for side, measures in runs[rows].items()
        for task_id, measure in measures.items()
        if not measure.ok
    ]
    if failed:
        raise SystemExit(f"steps failed (their output is in the report): {'; '.join(failed)}")


if __name__ == "__main__":
    main()
