"""Every benchmark still runs: each one's smoke mode, as a subprocess of this interpreter, writes its report.

The smoke runs start together (they mostly wait on subprocesses, servers and imports) and write their reports to a
temporary folder (``$BENCH_RESULTS_DIR``), never to ``benchmarks/results/``. Their figures mean nothing and are not
asserted; what is asserted is that every part of each benchmark ran. The GPU check runs without a GPU, as on this
machine, with the imports a GPU node lacks made to fail, so it proves it needs only torch, numpy, pandas and
scikit-learn. About two minutes on 2 cores, most of it the main job's two passes over the DAG's steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import benchmark_env, load_benchmark

from mlsteps.config import load_pipeline_config
from mlsteps.data.datasets import generate_churn
from mlsteps.steps.preprocess import time_split

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "benchmarks"
EVIDENTLY_PYTHON = REPO_ROOT / ".venv-bench-evidently" / "bin" / "python"
NANNYML_PYTHON = REPO_ROOT / ".venv-bench-nannyml" / "bin" / "python"
SMOKE_TIMEOUT_SECONDS = 600
# What a GPU node lacks (it has Python with torch, numpy, pandas, scikit-learn and ONNX Runtime): these packages are
# hidden from the GPU check's process and its DDP workers.
NOT_ON_GPU_NODE = ("mlflow", "typer", "pydantic", "yaml", "tqdm", "airflow", "boto3", "great_expectations", "pyarrow")
SMOKE_ARGS = {
    "main_job": ["--smoke"],
    "dag_parse": ["--smoke"],
    # Evidently's side needs its own virtualenv (make .venv-bench-evidently); without it, ours alone.
    "drift": ["--smoke", *([] if EVIDENTLY_PYTHON.exists() else ["--no-evidently"])],
    # NannyML's side needs its own virtualenv (make .venv-bench-nannyml); without it, ours alone.
    "performance_estimation": ["--smoke", *([] if NANNYML_PYTHON.exists() else ["--no-nannyml"])],
    "serving": ["--smoke"],
    "soak": ["--smoke"],
    "model_quality": ["--smoke"],
    "models_page": ["--smoke"],
    "gpu_check": ["--rows", "20000", "--epochs", "2", "--rehearse"],
}
# Every import finder is wrapped so that it does not see these packages: they look absent, as on a GPU node, also to
# code that only asks whether they exist (importlib.util.find_spec, as torch._dynamo does).
SITECUSTOMIZE = f"""
import sys

class _NotOnGpuNode:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_ON_GPU_NODE!r}:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

sys.meta_path[:] = [_NotOnGpuNode(finder) for finder in sys.meta_path]
"""


gpu_check = load_benchmark("gpu_check")


@dataclass
class SmokeRun:
    """One benchmark's smoke run in its own process group: its output goes to ``log``, its report to ``results``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    results: Path

    def finish(self) -> tuple[int, str, dict[str, Any] | None]:
        """Wait for the run; its exit code, its output, and its report (None when none was written)."""
        code = self.process.wait(timeout=SMOKE_TIMEOUT_SECONDS)
        reports = sorted(self.results.glob(f"{self.name}-*.json"))
        return code, self.log.read_text(errors="replace"), json.loads(reports[-1].read_text()) if reports else None

    def stop(self) -> None:
        """Interrupt a run still going (its servers stop in its finally blocks), then kill what is left."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _start(name: str, folder: Path) -> SmokeRun:
    log, env = folder / "output.log", benchmark_env(folder)
    if name == "gpu_check":
        blocker = folder / "not-on-gpu-node"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env |= {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO_ROOT / "include")])}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), *SMOKE_ARGS[name]],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return SmokeRun(name, process, log, folder / "results")


@pytest.fixture(scope="module")
def smoke_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SmokeRun]]:
    """The smoke runs of the benchmarks whose tests were selected, all started at once."""
    selected = [
        item.callspec.params["benchmark"]
        for item in request.session.items
        if item.module is request.module and "benchmark" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    runs = {name: _start(name, tmp_path_factory.mktemp(f"smoke-{name}")) for name in dict.fromkeys(selected)}
    yield runs
    for run in runs.values():
        run.stop()


def _check_main_job(report: dict[str, Any], output: str) -> None:
    """The parse times, the DAG through Airflow and every step of the DAG bare (promotion forced in a smoke run)."""
    bare_steps = ["snapshot", "validate", "preprocess", "train", "evaluate", "register", "promote"]
    assert report["config"]["bare_steps"] == bare_steps  # ml_retrain's step tasks in order; no drift, no deploy
    assert [row["file"] for row in report["parse"]] == sorted(p.name for p in (REPO_ROOT / "dags").glob("*.py"))
    tasks = {row["task"]: row for row in report["tasks"]}
    for step in bare_steps:
        assert tasks[step]["state"] == "success" and tasks[step]["bare_step_seconds"] is not None, tasks[step]
    assert "whole DAG run" in output


def _check_dag_parse(report: dict[str, Any], output: str) -> None:
    """Every DAG file with 1 and 3 models beside its floor (the same DAGs built with airflow.sdk alone), the config
    loading, and a model config picked up by the real dag-processor (short intervals only in a smoke run)."""
    files = sorted(p.name for p in (REPO_ROOT / "dags").glob("*.py"))
    assert [(row["models"], row["file"]) for row in report["parse"]] == [(n, name) for n in (1, 3) for name in files]
    for row in report["parse"]:
        assert row["dags"] == (0 if row["file"] == "ml_model_configs.py" else row["models"]), row
        assert (row["floor_seconds_beyond_airflow_sdk"] is None) == (row["dags"] == 0), row
        assert row["config_loading_cpu_seconds"] > 0 and row["airflow_sdk_import_cpu_seconds"] > 0, row
    (pickup,) = report["pickup"]
    assert pickup["label"] == "short" and pickup["models"] == 1 and pickup["new_model_seconds"] > 0
    assert "Scheduler pickup" in output


def _check_drift(report: dict[str, Any], output: str) -> None:
    """Every side of ours, and Evidently's with the comparison where its virtualenv exists."""
    runs = report["runs"]
    assert sum(label.startswith("ours") for label in runs) == 3 and sum("profile" in label for label in runs) == 2
    if report["config"]["evidently"]:
        assert any(label.startswith("evidently") for label in runs)
        assert report["agreement"]["columns"] == 25
    else:
        assert report["agreement"] is None


def _check_performance_estimation(report: dict[str, Any], output: str) -> None:
    """Both tasks, every window at both sizes estimated and judged by ours, and by NannyML where its virtualenv
    exists; the concept-drift windows are said to be missed by design."""
    config = report["config"]
    windows = len(config["windows"]) + len(config["big_windows"])
    assert [entry["task"] for entry in report["tasks"]] == ["binary", "multiclass"]
    for entry in report["tasks"]:
        assert len(entry["windows"]) == windows
        assert all(
            len(window["metrics"]) == 3 and window["seconds"]["cold"]["judge"] > 0 for window in entry["windows"]
        )
        assert all(("nannyml" in window) == config["nannyml"] for window in entry["windows"])
        sizes = entry["summary"].values()
        assert all(("speedup_warm" in figures) == config["nannyml"] for figures in sizes)
    assert "miss the realized drop (expected)" in output


def _check_serving(report: dict[str, Any], output: str) -> None:
    """The generator's ceiling, then both servers with 1 and 2 workers at batch 1 and 64 on every endpoint, and ours
    with binary tensors at batch 64; every answer right (the smoke run's figures are not judged)."""
    measured = {(m["server"], m["endpoint"], m["workers"], m["batch"]) for m in report["measurements"]}
    model = report["config"]["model"]["name"]
    expected = {("canned", "/", None, batch) for batch in (1, 64)}
    for workers in (1, 2):
        expected.add(("ours", f"/v2/models/{model}/infer binary", workers, 64))
        for batch in (1, 64):
            expected |= {
                ("ours", f"/v2/models/{model}/infer", workers, batch),
                ("ours", "/invocations", workers, batch),
                ("mlflow", "/invocations", workers, batch),
            }
    assert measured == expected
    assert all(m["errors"] == 0 for m in report["measurements"]), [
        m["errors_by_reason"] for m in report["measurements"]
    ]
    assert len(report["ratios"]) == 10 and isinstance(report["max_probability_difference"], float)
    assert "binary tensors / JSON on v2, batch 64" in output


def _check_soak(report: dict[str, Any], output: str) -> None:
    """Load through the whole run with no failed request, the RSS samples, the closed loop and the paced unloaded
    baseline beside the loaded latencies at half the closed loop's throughput, the generator's own lateness apart, a
    probe of every CPU, and both reloads done, each to the version not served (the smoke run's latencies are not
    judged)."""
    assert report["requests_sent"] > 0 and report["failed_requests"] == 0, report["failures_by_reason"]
    assert set(report["rss_mb"]) == {"start", "end", "max"} and report["rss_mb"]["max"] >= report["rss_mb"]["end"] > 0
    closed, unloaded = report["closed_loop"], report["unloaded"]
    assert closed["requests"] > 0 and closed["errors"] == 0 and unloaded["requests"] > 0 and unloaded["errors"] == 0
    assert unloaded["requests_per_second"] == pytest.approx(0.05 * closed["requests_per_second"], rel=0.2)
    assert report["rate_per_second"] == pytest.approx(0.5 * closed["requests_per_second"], rel=0.01)
    assert report["p99_ms"] >= report["p50_ms"] > 0 and report["p99_over_unloaded_p99"] > 0
    assert report["generator_lateness_ms"]["p99"] >= report["generator_lateness_ms"]["p50"] >= 0
    assert [probe["cpu"] for probe in report["cpu_stalls"]] == sorted(os.sched_getaffinity(0))
    assert [(reload["version"], reload["problem"]) for reload in report["reloads"]] == [(2, ""), (1, "")]
    assert report["reloads_done"] == 2
    assert "reloads done" in output and "p99 ms under load" in output and "generator lateness" in output


def _check_gpu_check(report: dict[str, Any], output: str) -> None:
    """No CUDA here: it says so, trains on CPU twice, rehearses the GPU checks and DDP on CPU; nothing failed."""
    assert "no CUDA device present" in output
    assert report["config"]["cuda"] is False and report["config"]["rehearsal"] is True
    assert report["CPU_repeatable"] is True and report["rehearsal_repeatable"] is True
    assert report["ddp"]["world_size"] == 2 and report["failures"] == []
    assert "No module named" not in output


def _check_model_quality(report: dict[str, Any], output: str) -> None:
    """One built-in dataset per task, each family and the anchor scored on the same holdout, with a verdict."""
    datasets = report["datasets"]
    assert [entry["task"] for entry in datasets] == ["binary", "multiclass", "regression"]
    for entry in datasets:
        assert set(entry["results"]) == {"anchor: sklearn HGB", "mlp", "gbdt", "own: sklearn GB"}
        assert all(result["seconds"] > 0 for result in entry["results"].values())
    assert output.count("vs anchor") == 2 * len(datasets), "a verdict per dataset, printed and summarised"


def _check_models_page(report: dict[str, Any], output: str) -> None:
    """The page's reads and the naive anchor timed on the same state, which the page shows in full."""
    for read in ("ours_function", "ours_api_model", "ours_page_model", "ours_api_index", "anchor_naive"):
        assert report[read]["median_ms"] > 0, read
    assert report["state"]["versions"] == report["config"]["versions"]
    assert report["shown"]["monitor_windows"] > 0 and report["shown"]["training_runs"] > 0
    assert report["anchor_read"]["versions"] == report["config"]["versions"]


CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "main_job": _check_main_job,
    "dag_parse": _check_dag_parse,
    "model_quality": _check_model_quality,
    "drift": _check_drift,
    "performance_estimation": _check_performance_estimation,
    "serving": _check_serving,
    "soak": _check_soak,
    "gpu_check": _check_gpu_check,
    "models_page": _check_models_page,
}


@pytest.mark.parametrize("benchmark", list(SMOKE_ARGS))
def test_each_benchmark_runs_its_smoke_mode_and_writes_its_report(
    smoke_runs: dict[str, SmokeRun], benchmark: str
) -> None:
    code, output, report = smoke_runs[benchmark].finish()

    assert code == 0, output[-4000:]
    assert report is not None, f"no {benchmark}-*.json in {smoke_runs[benchmark].results}:\n{output[-2000:]}"
    assert report["benchmark"] == benchmark
    CHECKS[benchmark](report, output)


def test_gpu_check_reads_the_pipeline_config_as_mlsteps_config_does() -> None:
    config = load_pipeline_config()

    network = {"device", "model", "candidates", "params", "gbdt"}  # the settings that are not the network's
    assert gpu_check.training_settings(epochs=3).__dict__ == config.training.model_dump(exclude=network) | {"epochs": 3}
    assert gpu_check.config_section("split") == config.split.model_dump()
    assert gpu_check.config_section("evaluation")["max_degradation"] == config.evaluation.max_degradation


def test_gpu_check_splits_and_chooses_features_as_the_pipeline_does() -> None:
    config = load_pipeline_config()
    frame = generate_churn(2000, seed=3)

    ours = gpu_check.time_split(frame, config.split.validation_fraction, config.split.holdout_fraction)
    pipeline, _ = time_split(frame, config.dataset.timestamp_column, config.split)
    for name, part in pipeline.items():
        assert ours[name]["customer_id"].tolist() == part["customer_id"].tolist(), name
    assert gpu_check.feature_columns(frame) == (config.dataset.numeric_features, config.dataset.categorical_features)
    dataset = config.dataset
    assert (dataset.id_column, dataset.timestamp_column, dataset.target.name) == (
        gpu_check.ID_COLUMN,
        gpu_check.TIME_COLUMN,
        gpu_check.TARGET_COLUMN,
    )
