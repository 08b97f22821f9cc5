"""Benchmark of the local serving layouts: one server process per model (today's) against one process for N models.

In one run, on loopback, for N = 2 and 5 models:

1. **the models**: one model per (dataset, family) of the built-in families (mlp, gbdt) on the built-in datasets
   (churn, tiers, claims), trained in this process as the train step trains them, exported to ONNX and checked
   against the native model, written as serving bundles and registered twice (versions 1 and 2) in a temporary MLflow
   registry on SQLite, the local runtime's registry. N = 2 is the shipped pair (churn-classifier, tier-classifier);
2. **one process per model**: N ``python -m mlsteps.serve --allow-reload --model-name <m> --model-version 1``
   processes, each on a port of its own, with the command and environment the deploy step's ``LocalTarget`` gives
   them (``MLSTEPS_CONFIG`` naming the model's config);
3. **one process for all**: the server cannot host several models, so this benchmark composes its building blocks,
   in itself only: per model the ``registry_loader`` and ``create_app`` the server's CLI uses, behind one ASGI app
   that sends ``/v2/models/{name}/...`` and ``/v2/repository/models/{name}/load`` to that model's app, in one uvicorn
   process with the CLI's options;
4. **alone**, each layout in turn with no other server running: start to ready (every process started at once,
   until every model answers its ``/v2/models/{name}/ready``), and RSS and PSS summed over its processes after the
   start and after a warm-up's load;
5. **in turns**, both layouts running at once: R rounds, each a steady run of one layout then of the other (the
   order flips every round), and then R rounds of reload runs alike, so that a change of the machine's load weighs on
   both. A steady run is a closed loop of C keep-alive connections per model at batch 1 on the v2 JSON endpoint
   (requests/s, p50/p99 latency, server CPU ms per request, cores busy: medians over the rounds); a reload run is the
   same load while model 1 is reloaded K times through the reload endpoint, each time to the version it does not
   serve, with the other models' latency for requests sent while a reload ran; last, a SIGKILL of model 1's process
   and how many of the other models still answer.

It prints both layouts side by side with the ratios (one process / per model) and the isolation facts, and writes
them, with the machine, the commit and the config, to ``benchmarks/results/serving_layouts-<time>.json`` (or
``$BENCH_RESULTS_DIR``). Nothing is pinned: the generator and the servers share the machine's cores, as on a laptop.

``--smoke`` runs every part for N = 2 on models trained from 600 rows for one round of training, with one round of
0.5 s runs: it checks that the benchmark works (``tests/unit/test_bench_serving_layouts.py``); its figures mean
nothing.

Usage: ``python benchmarks/serving_layouts.py [--models 2 5] [--duration 8] [--warmup 2] [--connections 2]
[--reloads 3] [--rounds 3] [--rows 5000] [--smoke]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from record import write_report
from serving import (
    HOST,
    START_TIMEOUT_SECONDS,
    Target,
    free_port,
    json_prefix,
    keep_sending,
    sample_rows,
    stop_process_group,
    v2_body,
)

CONFIGS = Path(__file__).resolve().parents[1] / "include" / "config"
LAYOUTS = ("per_model", "one_process")
BODIES_PER_MODEL = 16  # distinct batch-1 requests per model, sent in turn
SPLIT = 0.8  # share of the generated rows the models train on; the rest is their validation split
EXPORT_CHECK_ROWS = 256
MB = 1024 * 1024
# What a full run trains: the shipped configs' own training settings. --smoke: just enough to make a real model.
QUICK_TRAINING = {"epochs": 1, "hidden_units": [16], "gbdt": {"n_estimators": 10}}
SMOKE = {"models": [2], "duration": 0.5, "warmup": 0.2, "connections": 1, "reloads": 1, "rounds": 1, "rows": 600}
# uvicorn as ``python -m mlsteps.serve`` runs it with one worker (mlsteps.serve.cli._run).
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "auto",
    "http": "auto",
    "access_log": False,
    "timeout_graceful_shutdown": 30,
    "log_config": None,
}


@dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark: its registered name, the config it is trained and served with, its family."""

    name: str
    config: str  # under include/config/
    family: str


# The first two are the shipped pair; the others add the remaining (dataset, family) combinations.
MODELS = (
    ModelSpec("churn-classifier", "models/churn.yaml", "mlp"),
    ModelSpec("tier-classifier", "models/tiers.yaml", "gbdt"),
    ModelSpec("claims-cost", "examples/claims.yaml", "gbdt"),
    ModelSpec("churn-gbdt", "models/churn.yaml", "gbdt"),
    ModelSpec("tier-mlp", "models/tiers.yaml", "mlp"),
)


# ---------------------------------------------------------------------------------------------------- the models
@dataclass(frozen=True)
class BuiltModel:
    """A registered model: its spec, its task, its request columns and its generated dataset (CSV)."""

    spec: ModelSpec
    task: str
    columns: list[dict[str, str]]
    dataset: Path
    bundle_bytes: int


def train_bundle(spec: ModelSpec, rows: int, quick: bool, folder: Path) -> tuple[Any, Any, Any, Any, Path]:
    """Train the spec's family on its built-in dataset as the train step does; the config, the preprocessor, the
    contract ONNX model, the task info and the dataset CSV."""
    from mlsteps.config import load_pipeline_config
    from mlsteps.data.datasets import BUILT_IN
    from mlsteps.data.features import TabularPreprocessor
    from mlsteps.inference import TaskInfo
    from mlsteps.steps.train import training_data
    from mlsteps.training.families import load_trainer, trainer_context
    from mlsteps.training.onnx_export import check_export, to_contract

    training = {"model": spec.family, "candidates": [], **(QUICK_TRAINING if quick else {})}
    config = load_pipeline_config(str(CONFIGS / spec.config), {"training": training})
    dataset, target = config.dataset, config.dataset.target
    frame = BUILT_IN[target.task].generate(rows, seed=7)
    cut = int(len(frame) * SPLIT)
    preprocessor = TabularPreprocessor.fit(frame.iloc[:cut], dataset.numeric_features, dataset.categorical_features)
    train, validation = (
        training_data(part, preprocessor, dataset, f"{spec.name} {what}")
        for part, what in ((frame.iloc[:cut], "train"), (frame.iloc[cut:], "validation"))
    )
    context = trainer_context(
        config.training,
        spec.family,
        target,
        preprocessor,
        "cpu",
        work_dir=str(folder / "work"),
        checkpoint_dir=str(folder / "checkpoints"),
        resume_key={"run_root": str(folder)},
    )
    trainer = load_trainer(spec.family)(context)
    trainer.fit(train, validation)
    numeric, categories = validation.numeric[:EXPORT_CHECK_ROWS], validation.categories[:EXPORT_CHECK_ROWS]
    exported = to_contract(trainer.to_onnx(numeric, categories), target.task, numeric.shape[1], categories.shape[1])
    check_export(exported, trainer.predict(numeric, categories), numeric, categories, target.task, family=spec.family)
    info = TaskInfo(task=target.task, classes=list(target.classes or []), target=target.name, family=spec.family)
    csv = folder / "data.csv"
    frame.to_csv(csv, index=False)
    return config, preprocessor, exported, info, csv


def build_models(specs: tuple[ModelSpec, ...], state: Path, rows: int, quick: bool) -> list[BuiltModel]:
    """Train every model and register it twice (versions 1 and 2, the same ONNX model) with its serving bundle.

    The trainers' progress goes to ``<state>/train.log``.
    """
    import mlflow

    from mlsteps import tracking
    from mlsteps.serving_bundle import ColumnSpec, upload_bundle, write_bundle_from_parts

    client = tracking.client()
    tracking.start_experiment("serving-layouts")
    built = []
    for spec in specs:
        started = time.perf_counter()
        folder = state / "models" / spec.name
        (folder / "work").mkdir(parents=True)
        with (state / "train.log").open("a") as log, contextlib.redirect_stdout(log):
            config, preprocessor, exported, info, csv = train_bundle(spec, rows, quick, folder)
        onnx_path = folder / "model.onnx"
        onnx_path.write_bytes(exported.SerializeToString())
        dataset = config.dataset
        columns = [ColumnSpec(name, "double") for name in dataset.numeric_features]
        columns += [ColumnSpec(name, "string") for name in dataset.categorical_features]
        example = sample_frame(csv, [column.name for column in columns])
        client.create_registered_model(spec.name)
        with mlflow.start_run(run_name=spec.name) as run:
            for version in (1, 2):
                bundle = folder / f"bundle-v{version}"
                write_bundle_from_parts(
                    bundle,
                    onnx_model_path=onnx_path,
                    preprocessor=preprocessor,
                    info=info,
                    columns=columns,
                    example=example,
                    model_name=spec.name,
                    model_version=version,
                    source_model_uri=f"runs:/{run.info.run_id}/serving_bundle/v{version}",
                )
                source = f"runs:/{run.info.run_id}/serving_bundle/v{version}"
                client.create_model_version(spec.name, source=source, run_id=run.info.run_id)
                upload_bundle(client, spec.name, version, run.info.run_id, bundle)
        size = sum(path.stat().st_size for path in (folder / "bundle-v1").iterdir())
        columns_json = [{"name": column.name, "type": column.type} for column in columns]
        built.append(BuiltModel(spec, info.task, columns_json, csv, size))
        print(
            f"  {spec.name}: {info.task} {spec.family}, bundle {size / 1e3:.0f} kB, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return built


def sample_frame(csv: Path, names: list[str]) -> Any:
    """The first rows of the dataset's request columns: the bundle's input example (its smoke rows come from it)."""
    import pandas as pd

    return pd.read_csv(csv, usecols=names, nrows=5)[names]


# ---------------------------------------------------------------------------------------------------- one process
class ModelRouter:
    """One ASGI app over several models' ``create_app`` apps: ``/v2/models/{name}/...`` and
    ``/v2/repository/models/{name}/load`` go to that model's app, every other path to the first model's.

    The lifespan is answered here: each app's own lifespan only flushes its model's prediction log at shutdown, which
    this router does for all of them.
    """

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps
        self.first = next(iter(apps.values()))

    def app_of(self, path: str) -> Any:
        """The app that serves ``path``, or None for a model name no app has."""
        parts = path.split("/")
        if parts[1:3] == ["v2", "models"] and len(parts) > 3:
            return self.apps.get(parts[3])
        if parts[1:4] == ["v2", "repository", "models"] and len(parts) > 4:
            return self.apps.get(parts[4])
        return self.first

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        app = self.app_of(scope["path"])
        if app is None:
            body = json.dumps({"error": f"unknown model in {scope['path']!r}: this server serves {list(self.apps)}"})
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await app(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        """Start at once; at shutdown flush every model's prediction log, as each app's lifespan would."""
        from starlette.concurrency import run_in_threadpool

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for app in self.apps.values():
                    await run_in_threadpool(app.state.handle.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


def host_models(port: int, models: list[str]) -> None:
    """Serve ``name=version=config`` models from the registry in this one process, as the CLI serves one."""
    import uvicorn

    from mlsteps.serve.app import create_app
    from mlsteps.serve.cli import policy_from_config
    from mlsteps.serve.model import ModelHandle, registry_loader

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    apps = {}
    for item in models:
        name, version, config = item.split("=", 2)
        loader = registry_loader(name, policy=policy_from_config(config, None))
        apps[name] = create_app(ModelHandle(loader(version)), loader=loader)
    uvicorn.Server(uvicorn.Config(ModelRouter(apps), host=HOST, port=port, **UVICORN_OPTIONS)).run()


# ---------------------------------------------------------------------------------------------------- deployments
@dataclass
class Deployment:
    """A layout's running servers: each model's port and process, and when each model answered ready."""

    layout: str
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]  # by model; in one process every model has the same
    logs: list[Path]
    ready_seconds: dict[str, float] = field(default_factory=dict)
    reloads_done: int = 0  # the first model serves version 1 after an even number of reloads, else version 2

    @property
    def pids(self) -> list[int]:
        """The server processes, each once."""
        return sorted({process.pid for process in self.processes.values()})

    def stop(self) -> None:
        """Stop every server's process group: SIGTERM, then SIGKILL after 20 s."""
        for process in {process.pid: process for process in self.processes.values()}.values():
            stop_process_group(process)


def _launch(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server in its own session; its temporary folders go under the state folder (the killed ones leave theirs)."""
    scratch = log.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    with log.open("wb") as output:
        return subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**env, "TMPDIR": str(scratch)},
        )


def start_per_model(models: list[BuiltModel], state: Path) -> Deployment:
    """One ``python -m mlsteps.serve`` per model, all started at once (the command ``LocalTarget`` builds)."""
    deployment = Deployment("per_model", {}, {}, [])
    for model in models:
        port = free_port()
        log = state / f"per_model-{model.spec.name}.log"
        argv = [sys.executable, "-m", "mlsteps.serve", "--allow-reload", "--model-name", model.spec.name]
        argv += ["--model-version", "1", "--host", HOST, "--port", str(port)]
        env = {**os.environ, "MLSTEPS_CONFIG": str(CONFIGS / model.spec.config)}
        deployment.ports[model.spec.name] = port
        deployment.processes[model.spec.name] = _launch(argv, log, env)
        deployment.logs.append(log)
    return deployment


def start_one_process(models: list[BuiltModel], state: Path) -> Deployment:
    """This script's ``--host-models``: every model in one uvicorn process on one port."""
    port = free_port()
    log = state / f"one_process-{len(models)}.log"
    argv = [sys.executable, __file__, "--host-models", str(port)]
    argv += [f"{model.spec.name}=1={CONFIGS / model.spec.config}" for model in models]
    process = _launch(argv, log, dict(os.environ))
    names = [model.spec.name for model in models]
    return Deployment("one_process", dict.fromkeys(names, port), dict.fromkeys(names, process), [log])


def answers(port: int, path: str, timeout: float = 2.0) -> bool:
    """Whether ``GET path`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(deployment: Deployment, started: float) -> None:
    """Poll every model's readiness until all answer; each model's seconds from ``started``."""
    pending = dict(deployment.ports)
    deadline = started + START_TIMEOUT_SECONDS
    while pending:
        for name, port in list(pending.items()):
            process = deployment.processes[name]
            if process.poll() is not None:
                logs = "\n".join(log.read_text(errors="replace")[-2000:] for log in deployment.logs)
                raise SystemExit(f"the {deployment.layout} server of {name} exited {process.returncode}:\n{logs}")
            if answers(port, f"/v2/models/{name}/ready", timeout=1):
                deployment.ready_seconds[name] = time.perf_counter() - started
                del pending[name]
        if time.perf_counter() > deadline:
            raise SystemExit(f"{deployment.layout}: {sorted(pending)} not ready after {START_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


@contextlib.contextmanager
def deployed(layout: str, models: list[BuiltModel], state: Path) -> Iterator[Deployment]:
    """The layout's servers, ready; stopped afterwards whatever happens."""
    started = time.perf_counter()
    deployment = (start_per_model if layout == "per_model" else start_one_process)(models, state)
    try:
        wait_ready(deployment, started)
        yield deployment
    finally:
        deployment.stop()


# ---------------------------------------------------------------------------------------------------- process figures
def memory_mb(pids: list[int]) -> dict[str, float]:
    """RSS and PSS summed over the processes (and their children), in MB. RSS counts the shared libraries' pages
    in every process that maps them; PSS splits each shared page among the processes that share it."""
    totals = Counter()
    for pid in _with_children(pids):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    totals[key.lower()] += int(value.split()[0]) * 1024
    return {f"{key}_mb": round(totals[key] / MB, 1) for key in ("rss", "pss")}


def _with_children(pids: list[int]) -> list[int]:
    found, queue = [], list(pids)
    while queue:
        pid = queue.pop()
        found.append(pid)
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                queue += [int(child) for child in (task / "children").read_text().split()]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _with_children(pids):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / ticks


# ---------------------------------------------------------------------------------------------------- the load
@dataclass
class ModelLoad:
    """One model's answers in a run: (sent at, latency) of each good answer, failures by reason."""

    answers: list[tuple[float, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def fail(self, reason: str, sample: str = "") -> None:
        """Count a failed request; keep the first answer of each reason."""
        self.errors[reason] += 1
        self.samples.setdefault(reason, sample[:300])

    def answered(self, sent: float, latency: float) -> None:
        """Record a good answer with its send time (the reload figures take the answers sent during a reload)."""
        self.answers.append((sent, latency))


@dataclass
class Run:
    """A load run over all models: each model's answers, the measured seconds, and the CPU seconds the servers and
    the generator (this process) used in them."""

    loads: dict[str, ModelLoad]
    measure_from: float
    seconds: float
    server_cpu: float
    generator_cpu: float


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(targets: dict[str, Target], connections: int, duration: float, warmup: float, pids: list[int]) -> Run:
    """``connections`` closed-loop connections per model, all at once; answers sent in the warm-up are dropped, and
    the CPU time of the servers (``pids``) and of the generator is counted from the end of the warm-up."""

    async def at_measure_start(measure_from: float) -> tuple[float, float]:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        return cpu_seconds(pids), _own_cpu()

    async def load() -> Run:
        loads = {name: ModelLoad() for name in targets}
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + duration
        (server_from, own_from), *ends = await asyncio.gather(
            at_measure_start(measure_from),
            *(
                keep_sending(target, index, measure_from, stop_at, loads[name])
                for name, target in targets.items()
                for index in range(connections)
            ),
        )
        server_cpu, own_cpu = cpu_seconds(pids) - server_from, _own_cpu() - own_from
        return Run(loads, measure_from, max(ends) - measure_from, server_cpu, own_cpu)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(load())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(load())


def v2_answer_rows(body: bytes) -> int:
    """Rows in a v2 answer of any task: the first output's shape (probabilities of every class, or predictions)."""
    return json_prefix(body)[0]["outputs"][0]["shape"][0]


def latency_figures(latencies: list[float]) -> dict[str, float]:
    """Count, p50, p99 and max latency in ms."""
    if not latencies:
        return {"requests": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {
        "requests": len(latencies),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def errors_of(run: Run) -> dict[str, int]:
    """Failed requests by model and reason (empty when every answer was right)."""
    return {f"{name}: {reason}": n for name, load in run.loads.items() for reason, n in load.errors.items()}


def targets_of(deployment: Deployment, bodies: dict[str, list[bytes]]) -> dict[str, Target]:
    """Each model's v2 endpoint with its batch-1 bodies."""
    return {
        name: Target(port, f"/v2/models/{name}/infer", bodies[name], 1, v2_answer_rows)
        for name, port in deployment.ports.items()
    }


@dataclass
class Steady:
    """One steady run's figures."""

    requests_per_second: float
    latency: dict[str, float]
    by_model: dict[str, float]
    server_cpu_ms_per_request: float
    server_cores_busy: float
    generator_cores_busy: float
    errors: dict[str, int]


def measure_steady(deployment: Deployment, targets: dict[str, Target], args: argparse.Namespace) -> Steady:
    """Throughput, latency and CPU per request with every model under load and nothing else happening."""
    run = run_load(targets, args.connections, args.duration, args.warmup, deployment.pids)
    latencies = [latency for load in run.loads.values() for _, latency in load.answers]
    requests = len(latencies)
    return Steady(
        requests_per_second=round(requests / run.seconds, 1),
        latency=latency_figures(latencies),
        by_model={name: round(len(load.answers) / run.seconds, 1) for name, load in run.loads.items()},
        server_cpu_ms_per_request=round(run.server_cpu * 1000 / requests, 3) if requests else float("nan"),
        server_cores_busy=round(run.server_cpu / run.seconds, 2),
        generator_cores_busy=round(run.generator_cpu / run.seconds, 2),
        errors=errors_of(run),
    )


def steady_figures(runs: list[Steady]) -> dict[str, Any]:
    """The median of each figure over the rounds, every round's figures, and the failures of all rounds."""
    median = {
        "requests_per_second": _median([run.requests_per_second for run in runs]),
        "p50_ms": _median([run.latency["p50_ms"] for run in runs]),
        "p99_ms": _median([run.latency["p99_ms"] for run in runs]),
        "server_cpu_ms_per_request": _median([run.server_cpu_ms_per_request for run in runs]),
        "server_cores_busy": _median([run.server_cores_busy for run in runs]),
        "generator_cores_busy": _median([run.generator_cores_busy for run in runs]),
    }
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update(run.errors)
    return {**median, "errors": dict(errors), "rounds": [asdict(run) for run in runs]}


def reload(port: int, name: str, version: int) -> tuple[float, float, str]:
    """Switch ``name`` to ``version`` through the reload endpoint; (start, end, problem or '')."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/v2/repository/models/{name}/load",
        data=json.dumps({"parameters": {"version": str(version)}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_SECONDS) as answer:
            problem = "" if answer.status == 200 else f"HTTP {answer.status}"
    except (OSError, urllib.error.URLError) as exc:
        problem = str(exc)
    return started, time.perf_counter(), problem


@dataclass
class Reloads:
    """What the reload runs saw: each reload's window, and latencies split by whether a reload ran when sent."""

    windows: list[tuple[float, float, str]] = field(default_factory=list)
    others_during: list[float] = field(default_factory=list)
    others_outside: list[float] = field(default_factory=list)
    own_during: list[float] = field(default_factory=list)
    late: int = 0  # reloads that ended after their run's last answer
    errors: Counter[str] = field(default_factory=Counter)

    def figures(self, reloaded: str) -> dict[str, Any]:
        """The reloads' durations and failures, and latency figures of the others inside and outside the reloads."""
        return {
            "reloaded_model": reloaded,
            "reloads": len(self.windows),
            "reload_seconds": [round(end - begin, 3) for begin, end, _ in self.windows],
            "reload_failures": [problem for _, _, problem in self.windows if problem],
            "reloads_ending_after_their_run": self.late,
            "others_during_reload": latency_figures(self.others_during),
            "others_outside_reload": latency_figures(self.others_outside),
            "reloaded_model_during_reload": latency_figures(self.own_during),
            "errors": dict(self.errors),
        }


def measure_reloads(
    deployment: Deployment, targets: dict[str, Target], args: argparse.Namespace, into: Reloads
) -> None:
    """The same load while the first model is reloaded ``args.reloads`` times, evenly spread over the run, each time
    to the version it does not serve; the latencies go to ``into``, split by whether a reload ran when sent."""
    reloaded = next(iter(targets))
    port = deployment.ports[reloaded]
    windows: list[tuple[float, float, str]] = []
    start = time.perf_counter() + args.warmup

    def reloader() -> None:
        for index in range(args.reloads):
            time.sleep(max(0.0, start + args.duration * (index + 0.5) / args.reloads - time.perf_counter()))
            windows.append(reload(port, reloaded, 2 if deployment.reloads_done % 2 == 0 else 1))
            deployment.reloads_done += 1

    thread = threading.Thread(target=reloader, daemon=True)
    thread.start()
    run = run_load(targets, args.connections, args.duration, args.warmup, deployment.pids)
    thread.join()

    def inside(sent: float) -> bool:
        return any(begin <= sent <= end for begin, end, _ in windows)

    for name, load in run.loads.items():
        for sent, latency in load.answers:
            if name == reloaded:
                if inside(sent):
                    into.own_during.append(latency)
            else:
                (into.others_during if inside(sent) else into.others_outside).append(latency)
    into.windows += windows
    into.late += sum(end > run.measure_from + run.seconds for _, end, _ in windows)
    into.errors.update(errors_of(run))


def crash_first(deployment: Deployment) -> dict[str, Any]:
    """SIGKILL the first model's server process (a crash, an out-of-memory kill); how many of the others answer."""
    first, *others = deployment.ports
    process = deployment.processes[first]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    alive = sum(answers(deployment.ports[name], f"/v2/models/{name}/ready") for name in others)
    return {"killed": first, "others_answering": alive, "others": len(others)}


# ---------------------------------------------------------------------------------------------------- the run
def measure_alone(
    layout: str, models: list[BuiltModel], bodies: dict[str, list[bytes]], state: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Start to ready and memory of one layout with no other server running (PSS shares pages among all processes
    that map them, so the other layout's servers would lower it): after the start, and after a warm-up's load."""
    print(f"  {layout}, {len(models)} models: start and memory, alone", flush=True)
    with deployed(layout, models, state) as deployment:
        figures: dict[str, Any] = {
            "layout": layout,
            "models": len(models),
            "processes": len(deployment.pids),
            "ports": len(set(deployment.ports.values())),
            "seconds_to_all_ready": round(max(deployment.ready_seconds.values()), 2),
            "seconds_to_ready_by_model": {name: round(s, 2) for name, s in deployment.ready_seconds.items()},
            "memory_after_start": memory_mb(deployment.pids),
        }
        run_load(targets_of(deployment, bodies), args.connections, args.warmup, 0.0, deployment.pids)
        figures["memory_after_load"] = memory_mb(deployment.pids)
    return figures


def measure_in_turns(
    models: list[BuiltModel], bodies: dict[str, list[bytes]], state: Path, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Both layouts running at once and loaded in turns, ``args.rounds`` rounds of a steady run each and then of a
    reload run each (the order flips every round), so a change of the machine's load weighs on both alike; then a
    SIGKILL of each layout's first model's process."""
    print(f"  both layouts, {len(models)} models: {args.rounds} round(s) in turns", flush=True)
    with contextlib.ExitStack() as stack:
        deployments = {layout: stack.enter_context(deployed(layout, models, state)) for layout in LAYOUTS}
        targets = {layout: targets_of(deployment, bodies) for layout, deployment in deployments.items()}
        turns = [LAYOUTS if index % 2 == 0 else LAYOUTS[::-1] for index in range(args.rounds)]
        steady: dict[str, list[Steady]] = {layout: [] for layout in LAYOUTS}
        for order in turns:
            for layout in order:
                steady[layout].append(measure_steady(deployments[layout], targets[layout], args))
        reloads = {layout: Reloads() for layout in LAYOUTS}
        for order in turns:
            for layout in order:
                measure_reloads(deployments[layout], targets[layout], args, reloads[layout])
        return {
            layout: {
                "steady": steady_figures(steady[layout]),
                "reload": reloads[layout].figures(models[0].spec.name),
                "rss_after_rounds_mb": memory_mb(deployment.pids)["rss_mb"],
                "crash": crash_first(deployment),
            }
            for layout, deployment in deployments.items()
        }


def measure_count(
    models: list[BuiltModel], bodies: dict[str, list[bytes]], state: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every figure of both layouts serving ``models``: (per model, one process)."""
    alone = {layout: measure_alone(layout, models, bodies, state, args) for layout in LAYOUTS}
    turns = measure_in_turns(models, bodies, state, args)
    return alone["per_model"] | turns["per_model"], alone["one_process"] | turns["one_process"]


def ratio(one: float, per: float) -> float:
    """one process / per model; NaN where the per-model figure is 0 or missing."""
    return round(one / per, 3) if per and per == per else float("nan")


# (label, how to read the figure, format)
ROWS: list[tuple[str, Any, str]] = [
    ("processes / ports", lambda f: f"{f['processes']} / {f['ports']}", "s"),
    ("RSS after start, MB (sum)", lambda f: f["memory_after_start"]["rss_mb"], ".0f"),
    ("PSS after start, MB (sum)", lambda f: f["memory_after_start"]["pss_mb"], ".0f"),
    ("RSS after warm-up load, MB", lambda f: f["memory_after_load"]["rss_mb"], ".0f"),
    ("PSS after warm-up load, MB", lambda f: f["memory_after_load"]["pss_mb"], ".0f"),
    ("RSS after all rounds, MB", lambda f: f["rss_after_rounds_mb"], ".0f"),
    ("start to all ready, s", lambda f: f["seconds_to_all_ready"], ".2f"),
    ("req/s, batch 1, all models", lambda f: f["steady"]["requests_per_second"], ".0f"),
    ("p50 ms", lambda f: f["steady"]["p50_ms"], ".2f"),
    ("p99 ms", lambda f: f["steady"]["p99_ms"], ".2f"),
    ("server CPU ms / request", lambda f: f["steady"]["server_cpu_ms_per_request"], ".3f"),
    ("server cores busy", lambda f: f["steady"]["server_cores_busy"], ".2f"),
    ("generator cores busy", lambda f: f["steady"]["generator_cores_busy"], ".2f"),
    ("reload of model 1, s (median)", lambda f: _median(f["reload"]["reload_seconds"]), ".3f"),
    ("others p50 ms during reloads", lambda f: f["reload"]["others_during_reload"]["p50_ms"], ".2f"),
    ("others p99 ms during reloads", lambda f: f["reload"]["others_during_reload"]["p99_ms"], ".2f"),
    ("others max ms during reloads", lambda f: f["reload"]["others_during_reload"]["max_ms"], ".2f"),
    ("others p99 ms outside reloads", lambda f: f["reload"]["others_outside_reload"]["p99_ms"], ".2f"),
    ("others answering after kill -9", lambda f: f"{f['crash']['others_answering']}/{f['crash']['others']}", "s"),
]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(count: int, per: dict[str, Any], one: dict[str, Any]) -> list[dict[str, Any]]:
    """Both layouts side by side with one process / per model; the rows as the report keeps them."""
    print(f"\n  {count} models{'':<24}{'per model':>12}{'one process':>13}{'one/per':>9}")
    rows = []
    for label, read, form in ROWS:
        a, b = read(per), read(one)
        quotient = ratio(b, a) if form != "s" else None
        shown = "" if quotient is None else f"{quotient:.2f}x"
        print(f"  {label:<34}{format(a, form):>12}{format(b, form):>13}{shown:>9}")
        rows.append({"figure": label, "per_model": a, "one_process": b, "one_per_ratio": quotient})
    for figures in (per, one):
        for what in ("steady", "reload"):
            for reason, count_ in figures[what]["errors"].items():
                print(f"      {figures['layout']} {what}: {count_} x {reason}")
        for problem in figures["reload"]["reload_failures"]:
            print(f"      {figures['layout']} reload failed: {problem}")
    return rows


ISOLATION = {
    "per_model": [
        "a crash or OOM kill of one server stops one model; the others keep answering (measured: kill -9 row)",
        "a reload runs in its own process: the others share only the machine's cores with it",
        "each model's deploy/rollback (LocalTarget.roll_out/roll_back, stop) starts, reloads or stops its own "
        "process and state file; adding or removing a model touches no other",
        "per-model ports (serving.local.port) and MLflow's /invocations per model (its path names no model)",
        "each process has its own prediction log and environment (MLSTEPS_CONFIG), and restarts alone",
    ],
    "one_process": [
        "a crash or OOM kill (one model's ONNX Runtime fault, one model's memory) stops every model",
        "a reload's download, ONNX session and smoke check run in the process that answers the other models",
        "adding or removing a model restarts the process: every model is down until all have loaded again; "
        "stopping one model (roll_back to nothing) needs an unload endpoint the server does not have",
        "one port: models differ only by path; /invocations names no model, so MLflow-format clients reach one of them",
        "one event loop and GIL for all models: one worker uses at most one core for all of them; more workers copy "
        "every model into every worker, and --allow-reload refuses --workers > 1",
    ],
}


def main() -> None:
    """Build the models, measure both layouts for each N, print the comparison and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[2, 5], help=f"model counts (at most {len(MODELS)})")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    parser.add_argument("--connections", type=int, default=2, help="keep-alive connections per model")
    parser.add_argument("--reloads", type=int, default=3, help="reloads of model 1 during each reload run")
    parser.add_argument("--rounds", type=int, default=3, help="steady and reload runs per layout, taken in turns")
    parser.add_argument("--rows", type=int, default=5000, help="rows of each generated training dataset")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part briefly on tiny models: checks the benchmark runs; "
        + ", ".join(f"{key} {value}" for key, value in SMOKE.items()),
    )
    parser.add_argument("--host-models", nargs="+", metavar="PORT NAME=VERSION=CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host_models:
        host_models(int(args.host_models[0]), args.host_models[1:])
        return
    if args.smoke:
        vars(args).update(SMOKE)
    if max(args.models) > len(MODELS) or min(args.models) < 1:
        parser.error(f"--models {args.models}: each count must be 1 to {len(MODELS)}")

    started = time.perf_counter()
    state = Path(tempfile.mkdtemp(prefix="bench-serving-layouts-"))
    os.environ |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_LOCATION": (state / "mlartifacts").as_uri(),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    print(f"state folder {state}; {len(os.sched_getaffinity(0))} CPUs shared by the generator and the servers")
    print(f"training {max(args.models)} models on {args.rows} rows each{' (smoke: one round)' if args.smoke else ''}")
    built = build_models(MODELS[: max(args.models)], state, args.rows, args.smoke)
    bodies = {
        model.spec.name: [
            v2_body(model.columns, [row]) for row in sample_rows(model.dataset, model.columns, BODIES_PER_MODEL)
        ]
        for model in built
    }
    print(
        f"closed loop: {args.connections} connection(s) per model at batch 1, {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured; {args.reloads} reload(s) of model 1 in each reload run; {args.rounds} round(s)",
        flush=True,
    )
    results, tables = [], {}
    for count in args.models:
        models = built[:count]
        per, one = measure_count(models, bodies, state, args)
        results += [per, one]
        tables[str(count)] = print_table(count, per, one)
    print("\nisolation")
    for layout, facts in ISOLATION.items():
        print(f"  {layout}:")
        for fact in facts:
            print(f"    - {fact}")
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
    write_report(
        "serving_layouts",
        {
            "model_counts": args.models,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "connections_per_model": args.connections,
            "reloads": args.reloads,
            "rounds": args.rounds,
            "dataset_rows": args.rows,
            "smoke": args.smoke,
            "cpu_pinning": f"off ({len(os.sched_getaffinity(0))} CPUs shared by the generator and the servers)",
            "models": [
                {"name": m.spec.name, "task": m.task, "family": m.spec.family, "bundle_bytes": m.bundle_bytes}
                for m in built
            ],
        },
        {"layouts": results, "tables": tables, "isolation": ISOLATION},
    )
    shutil.rmtree(state)  # kept when a server fails: its logs are there


if __name__ == "__main__":
    main()
