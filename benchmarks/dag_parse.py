"""DAG parse time with many models, and how soon the scheduler picks up a new model config, in one run.

Every model config (``include/config/models/*.yaml``, or the folder ``$ML_MODELS_DIR`` names) gets a retrain, a
monitor and a deploy DAG, built by the three DAG files at every parse. This benchmark writes N model configs to a
temporary folder (copies of the built-in churn model named ``model-001``, ``model-002``, ... each with its own
serving port, the datasets alternating between churn (binary) and tiers (multiclass)) and measures:

1. **parse time per DAG file** for N = 1, 10 and 50 beyond ``import airflow.sdk; from airflow.sdk import dag``
   (``record.parse_times``, as ``main_job.py`` measures it), median of several rounds. The budget, 0.3 s a file with
   50 models, judges the CPU time the file takes in its process after that import (*in-process*): what the
   dag-processor pays for a file, which it parses in a forked child that ends with ``os._exit``
   (``airflow.sdk.execution_time.supervisor``) and so never runs the interpreter's exit. Beside it,
   ``python dags/<file>.py`` minus ``python -c '<that import>'``, as wall and CPU time of the processes (on an idle
   machine both agree; on a shared one the wall time also holds the waits for a core): it also counts the
   interpreter's exit freeing the file's objects (some 0.04 s with 50 models), and on a shared machine the difference
   of two processes of ~2 s each varies by a tenth of a second from round to round. Bytecode is cached as in a
   running dag-processor (one untimed round first; see ``record.parse_times``);
2. **the anchors**, in the same rounds: the ``airflow.sdk`` import (what every DAG file pays first, subtracted
   above) and the *Airflow floor*: the very same DAGs (ids, tasks, dependencies, params, and a cron schedule where
   ours have a schedule, since Airflow validates the params of a scheduled DAG at each parse) built with
   ``airflow.sdk`` alone, a no-op operator per task, without our configs or helpers: what Airflow itself costs for
   those DAGs; also the time loading the N configs takes in a fresh process (``orchestration.models.load_models``);
3. **scheduler pickup**: the real ``airflow dag-processor`` on an isolated Airflow home and SQLite database
   (``orchestration.embedded.prepare_airflow``, state in a temporary folder), first with short intervals, then
   (not in a smoke run) with this Airflow's defaults. Once every DAG of the N models is parsed, one more model config
   is written and the seconds until its three DAGs are serialized are measured. A new model config is not a new DAG
   file: the processor picks it up when it parses the DAG files again, at most ``min_file_process_interval`` after
   their last parse, plus one parse; ``refresh_interval`` (how often the DAG folder is listed for new files) does
   not enter. The config is written just after a full pass, so the figure is close to the worst case; one written
   at a random moment waits about half the interval less.

The machine may be shared: figures are medians, and the floor runs in the same rounds as ours so that a change of
load weighs on both alike. Results go to ``benchmarks/results/dag_parse-<time>.json`` (or ``$BENCH_RESULTS_DIR``).

``--smoke`` runs every part with N = 1 and 3, one round, and the pickup with one model and short intervals only:
it checks that the benchmark works (``tests/unit/test_benchmarks.py``, about a minute); its figures mean nothing.
``--skip-pickup`` measures the parse times only (a minute or two instead of about seven).

Usage: ``python benchmarks/dag_parse.py [--models 1 10 50] [--repeats 5] [--smoke] [--skip-pickup]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from record import parse_times, write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = PROJECT_ROOT / "include" / "config"
DAGS = PROJECT_ROOT / "dags"
BUDGET_SECONDS = 0.3  # a DAG file's parse beyond the airflow.sdk import: CPU seconds in its process
MODELS, REPEATS = (1, 10, 50), 5
SMOKE_MODELS, SMOKE_REPEATS = (1, 3), 1
DATASETS = ("churn", "tiers")  # alternating: a binary and a multiclass model in the mix
FIRST_PORT = 9000  # model-001 serves on 9001, ...
# Short intervals of the measured pickup: a new config is picked up within seconds, at the price of parsing every DAG
# file every few seconds.
SHORT_INTERVALS = {"refresh_interval": 5, "min_file_process_interval": 5}
INITIAL_TIMEOUT_SECONDS = 600  # the first pass over the DAG files with every model
POLL_SECONDS = 0.2
# What record.parse_times gives of each file: wall and CPU seconds beyond the airflow.sdk import (of the process, and
# in it), and that import's.
PARSE_FIGURES = (
    "seconds_beyond_airflow_sdk",
    "cpu_seconds_beyond_airflow_sdk",
    "cpu_seconds_in_process",
    "airflow_sdk_import_seconds",
    "airflow_sdk_import_cpu_seconds",
)
# The Airflow floor: the DAGs of a shapes file (JSON, argv[1]) built with airflow.sdk alone, one no-op task per task;
# a scheduled DAG gets a cron schedule (any schedule makes Airflow validate the params' defaults at parse time).
FLOOR_SCRIPT = """\
import datetime
import json
import sys

from airflow.sdk import DAG, BaseOperator, Param


class Noop(BaseOperator):
    def execute(self, context):
        pass


START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
with open(sys.argv[1]) as file:
    shapes = json.load(file)
for shape in shapes:
    params = {name: Param(**param) for name, param in shape["params"].items()}
    schedule = "0 3 * * 1" if shape["scheduled"] else None
    with DAG(shape["dag_id"], schedule=schedule, start_date=START, catchup=False, params=params):
        tasks = {task_id: Noop(task_id=task_id) for task_id in shape["tasks"]}
        for task_id, upstream in shape["tasks"].items():
            for upstream_id in upstream:
                tasks[upstream_id] >> tasks[task_id]
"""
# Loading the configs alone, in a fresh process as a DAG file does; prints the CPU seconds load_models took.
LOAD_MODELS = (
    "import sys, time; from pathlib import Path; from orchestration.models import load_models; "
    "started = time.process_time(); load_models(Path(sys.argv[1])); print(time.process_time() - started)"
)


def model_name(index: int) -> str:
    """The name of the index-th generated model (from 1): ``model-001``."""
    return f"model-{index:03d}"


def write_model(folder: Path, index: int) -> Path:
    """A copy of the built-in churn model with its own name and port; even ones train on the tiers dataset.

    The file appears whole (written aside, then renamed): a processor listing the folder never reads half of it.
    """
    raw = yaml.safe_load((CONFIG_ROOT / "models" / "churn.yaml").read_text())
    name = model_name(index)
    raw |= {
        "extends": str(CONFIG_ROOT / "pipeline.yaml"),  # absolute: the copy lives elsewhere
        "dataset": str(CONFIG_ROOT / "datasets" / f"{DATASETS[(index - 1) % len(DATASETS)]}.yaml"),
        "registry": {**raw["registry"], "model_name": name, "experiment_name": f"{name}-retraining"},
        "serving": {"local": {"port": FIRST_PORT + index}},
    }
    path = folder / f"{name}.yaml"
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(raw, sort_keys=False))
    partial.rename(path)
    return path


def write_models(folder: Path, count: int) -> Path:
    """A folder of ``count`` generated model configs."""
    folder.mkdir(parents=True)
    for index in range(1, count + 1):
        write_model(folder, index)
    return folder


def dag_shapes(models: Path, folder: Path) -> dict[str, Path]:
    """For each DAG file that defines DAGs: a JSON file of its DAGs' ids, params, whether they are scheduled, and
    tasks (with their upstream ids) when built for the models of ``models``, what the floor script builds again with
    ``airflow.sdk`` alone."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions._internal.types import is_arg_set

    from orchestration.models import MODELS_DIR_ENV_VAR, get_models

    os.environ[MODELS_DIR_ENV_VAR] = str(models)
    get_models.cache_clear()
    files = {}
    for dag_file in sorted(DAGS.glob("*.py")):
        bag = DagBag(str(dag_file))
        if bag.import_errors:
            raise SystemExit(f"{dag_file.name} does not load with the models of {models}: {bag.import_errors}")
        shapes = [
            {
                "dag_id": dag.dag_id,
                "scheduled": dag.timetable.can_be_scheduled,
                "params": {
                    name: {
                        **({"default": param.value} if is_arg_set(param.value) else {}),
                        "description": param.description,
                        "schema": param.schema,
                    }
                    for name, param in dag.params.items()
                },
                "tasks": {task.task_id: sorted(task.upstream_task_ids) for task in dag.topological_sort()},
            }
            for dag in bag.dags.values()
        ]
        if shapes:
            files[dag_file.name] = folder / f"shapes-{models.name}-{dag_file.stem}.json"
            files[dag_file.name].write_text(json.dumps(shapes))
    return files


def config_loading_seconds(models: Path, repeats: int, env: dict[str, str]) -> float:
    """Median CPU seconds ``load_models`` takes for the folder in a fresh process (imports not counted)."""
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", LOAD_MODELS, str(models)], env=env, capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return sorted(times)[len(times) // 2]


def measure_parse(count: int, folder: Path, env: dict[str, str], repeats: int) -> list[dict[str, Any]]:
    """Each DAG file's parse time with ``count`` models, beside the floor of the same DAGs; one row per file."""
    models = write_models(folder / f"models-{count}", count)
    shapes = dag_shapes(models, folder)
    floor = folder / "floor.py"
    scripts = {path.name: [str(path)] for path in sorted(DAGS.glob("*.py"))}
    scripts |= {f"floor:{name}": [str(floor), str(path)] for name, path in shapes.items()}
    env = {**env, "ML_MODELS_DIR": str(models)}
    times = {row["file"]: row for row in parse_times(scripts, repeats, env, bytecode_dir=folder / "bytecode")}
    loading = config_loading_seconds(models, repeats, env)
    rows = []
    for path in sorted(DAGS.glob("*.py")):
        ours, floor_row = times[path.name], times.get(f"floor:{path.name}") or {}
        rows.append(
            {
                "models": count,
                "file": path.name,
                "dags": len(json.loads(shapes[path.name].read_text())) if path.name in shapes else 0,
                **{key: ours[key] for key in PARSE_FIGURES},
                **{f"floor_{key}": floor_row.get(key) for key in PARSE_FIGURES if "import" not in key},
                "config_loading_cpu_seconds": round(loading, 3),
                "within_budget": ours["cpu_seconds_in_process"] <= BUDGET_SECONDS,
            }
        )
    return rows


def _dags_in_database(dag_ids: set[str], parsed_since: datetime | None = None) -> set[str]:
    """Those of the DAG ids that are serialized (and parsed at or after ``parsed_since``, when given)."""
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = set(session.scalars(select(SerializedDagModel.dag_id).where(SerializedDagModel.dag_id.in_(dag_ids))))
        if parsed_since is not None:
            recent = select(DagModel.dag_id).where(
                DagModel.dag_id.in_(dag_ids), DagModel.last_parsed_time >= parsed_since
            )
            found &= set(session.scalars(recent))
    return found


def _wait_for(
    dag_ids: set[str], timeout: float, processor: subprocess.Popen, log: Path, since: datetime | None = None
) -> float:
    """Seconds until every DAG id is in the database; fails when the processor stops or the time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if processor.poll() is not None:
            raise SystemExit(f"the dag-processor exited ({processor.returncode}); its log:\n{_tail(log)}")
        if _dags_in_database(dag_ids, since) == dag_ids:
            return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    missing = sorted(dag_ids - _dags_in_database(dag_ids, since))
    raise SystemExit(f"{len(missing)} DAGs not in the database after {timeout:.0f} s ({missing[:5]}):\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _model_dag_ids(names: list[str]) -> set[str]:
    from orchestration.models import PURPOSES, dag_id

    return {dag_id(name, purpose) for name in names for purpose in PURPOSES}


def measure_pickup(
    models: Path, next_index: int, env: dict[str, str], intervals: dict[str, int], log: Path
) -> dict[str, Any]:
    """Start the dag-processor with the intervals, wait until it parsed every model's DAGs, write one more model
    config, and time until that model's three DAGs are serialized. The processor runs in its own process group,
    stopped whatever happens."""
    existing = [path.stem for path in sorted(models.glob("*.yaml"))]
    overrides = {f"AIRFLOW__DAG_PROCESSOR__{key.upper()}": str(value) for key, value in intervals.items()}
    with log.open("ab") as output:
        processor = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dag-processor"],
            env={**env, "ML_MODELS_DIR": str(models), **overrides},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = datetime.now(UTC)
        initial = _wait_for(_model_dag_ids(existing), INITIAL_TIMEOUT_SECONDS, processor, log, since=started)
        written = time.monotonic()
        write_model(models, next_index)
        timeout = intervals["min_file_process_interval"] + INITIAL_TIMEOUT_SECONDS
        _wait_for(_model_dag_ids([model_name(next_index)]), timeout, processor, log)
        pickup = time.monotonic() - written
    finally:
        _stop(processor)
    return {
        **intervals,
        "models": len(existing),
        "first_pass_seconds": round(initial, 2),
        "new_model_seconds": round(pickup, 2),
    }


def _stop(process: subprocess.Popen) -> None:
    """Stop a process group: SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _print_tables(parse: list[dict[str, Any]], pickup: list[dict[str, Any]], repeats: int) -> None:
    print(
        f"\nDAG parse time, seconds beyond the airflow.sdk import (median of {repeats} rounds); budget "
        f"{BUDGET_SECONDS} s of CPU a file in its process\n"
        "  wall, CPU: the file's process less the import's (with the interpreter's exit; noisy on a busy machine)\n"
        "  in-proc: CPU in the file's process after the import, what the dag-processor pays (judged)\n"
        "  floor: the same DAGs, tasks, params and schedules built with airflow.sdk alone (no configs, no helpers)"
    )
    print(
        f"  {'file':<22}{'N':>4}{'DAGs':>6}{'ours wall':>11}{'CPU':>7}{'in-proc':>9}{'floor CPU':>11}{'in-proc':>9}"
        f"{'ours-floor':>12}{'sdk import wall/CPU':>21}  verdict"
    )
    for row in parse:
        ours, floor = row["cpu_seconds_in_process"], row["floor_cpu_seconds_in_process"]
        print(
            f"  {row['file']:<22}{row['models']:>4}{row['dags']:>6}{row['seconds_beyond_airflow_sdk']:>11.3f}"
            + f"{row['cpu_seconds_beyond_airflow_sdk']:>7.3f}{ours:>9.3f}"
            + (
                f"{row['floor_cpu_seconds_beyond_airflow_sdk']:>11.3f}{floor:>9.3f}{ours - floor:>12.3f}"
                if floor is not None
                else f"{'-':>32}"
            )
            + f"{row['airflow_sdk_import_seconds']:>14.3f}/{row['airflow_sdk_import_cpu_seconds']:.3f}"
            + f"  {'within' if row['within_budget'] else 'OVER'}"
        )
    loading = {row["models"]: row["config_loading_cpu_seconds"] for row in parse}
    print(
        "  of which loading the model configs (load_models, CPU in a fresh process): "
        + ", ".join(f"{seconds:.3f} s for {count}" for count, seconds in loading.items())
    )
    if not pickup:
        return
    print(
        "\nScheduler pickup: the real airflow dag-processor; seconds until every model's DAGs are parsed (first pass),"
        "\nthen until a model config written after it has its 3 DAGs serialized"
    )
    print(f"  {'intervals':<22}{'refresh':>9}{'min_file_process':>18}{'models':>8}{'first pass':>12}{'new model':>11}")
    for row in pickup:
        print(
            f"  {row['label']:<22}{row['refresh_interval']:>8}s{row['min_file_process_interval']:>17}s"
            f"{row['models']:>8}{row['first_pass_seconds']:>11.1f}s{row['new_model_seconds']:>10.1f}s"
        )
    print(
        "  a new config is picked up at the DAG files' next parse: within min_file_process_interval of their last"
        " parse,\n  plus one parse; refresh_interval only governs new DAG files"
    )


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", help=f"model counts (default {' '.join(map(str, MODELS))})")
    parser.add_argument("--repeats", type=int, help=f"rounds of the parse times (default {REPEATS}; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="N = 1 and 3, one round, short pickup with one model")
    parser.add_argument("--skip-pickup", action="store_true", help="measure the parse times only, not the pickup")
    args = parser.parse_args()
    counts = tuple(args.models or (SMOKE_MODELS if args.smoke else MODELS))
    repeats = args.repeats or (SMOKE_REPEATS if args.smoke else REPEATS)
    pickup_models = 1 if args.smoke else max(counts)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the dag-processor

    folder = Path(tempfile.mkdtemp(prefix="bench-dag-parse-"))
    try:
        os.environ["ML_STATE_DIR"] = str(folder / "state")
        sys.path.insert(0, str(PROJECT_ROOT / "include"))
        from orchestration.embedded import prepare_airflow
        from orchestration.settings import load_settings

        pickup_dir = write_models(folder / "pickup-models", pickup_models)
        env = prepare_airflow(load_settings(str(pickup_dir / f"{model_name(1)}.yaml")))
        os.environ.update(env)  # before anything imports airflow here: the DagBag and the database are this home's
        env = {**os.environ}
        (folder / "floor.py").write_text(FLOOR_SCRIPT)
        print(f"{folder}; models {list(counts)}; {repeats} round(s){'; smoke run' if args.smoke else ''}", flush=True)

        parse = []
        for count in counts:
            parse += measure_parse(count, folder, env, repeats)
            print(f"parse times with {count} model(s) measured", flush=True)

        from airflow.configuration import conf

        defaults = {key: conf.getint("dag_processor", key) for key in SHORT_INTERVALS}
        runs = [("short", SHORT_INTERVALS)] + ([] if args.smoke else [("Airflow defaults", defaults)])
        runs = [] if args.skip_pickup else runs
        pickup = []
        for index, (label, intervals) in enumerate(runs, start=1):
            log = folder / "state" / "logs" / "dag-processor.log"
            row = measure_pickup(pickup_dir, pickup_models + index, env, intervals, log)
            pickup.append({"label": label, **row})
            print(f"pickup with {label} intervals measured", flush=True)

        _print_tables(parse, pickup, repeats)
        write_report(
            "dag_parse",
            {
                "models": list(counts),
                "repeats": repeats,
                "budget_seconds": BUDGET_SECONDS,
                "pickup_models": pickup_models,
                "smoke": args.smoke,
                "skip_pickup": args.skip_pickup,
                "default_intervals": defaults,
            },
            {"parse": parse, "pickup": pickup},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
