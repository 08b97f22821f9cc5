"""evaluate and drift read their data in batches: the same results as one batch (drift: the same report, exact but for
a Wasserstein distance of a column with more values than processing.batch_rows, within its stated bound), and memory
that follows processing.batch_rows, not the rows."""

from __future__ import annotations

import math
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fake_models import PIPELINE, TASK, log_package, task_model

from mlsteps import results
from mlsteps.config import DriftConfig, PipelineConfig
from mlsteps.data import batches, storage
from mlsteps.data.datasets import generate_churn
from mlsteps.monitoring import prediction_log
from mlsteps.monitoring.drift import build_profile, detect_drift, prediction_signals
from mlsteps.steps import drift, evaluate

HOUR = pd.Timestamp("2026-11-20T10:00:00Z")
MODEL = "churn-stream"
VERSION = 3
# how a Wasserstein distance from counts and sums says how exact it is
STATED = re.compile(r"the window's \d+ values are more .*, (?:within (\S+) of the exact distance|exact)$")


def _with(config: PipelineConfig, batch_rows: int, drift_config: DriftConfig | None = None) -> PipelineConfig:
    raw = config.model_dump()
    raw["processing"] = {"batch_rows": batch_rows}
    raw["monitoring"]["performance"]["bootstrap_samples"] = 20  # the reference's sampling error is not tested here
    if drift_config is not None:
        raw["drift"] = drift_config.model_dump()
    return PipelineConfig.model_validate(raw)


def _close(left: Any, right: Any, where: str = "") -> None:
    """Equal structures, floats within rounding."""
    if isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            _close(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list):
        assert len(left) == len(right), where
        for position, (a, b) in enumerate(zip(left, right, strict=True)):
            _close(a, b, f"{where}[{position}]")
    elif isinstance(left, float) and isinstance(right, float) and not (math.isnan(left) and math.isnan(right)):
        assert left == pytest.approx(right, rel=1e-9, abs=1e-12), where
    else:
        assert left == right, where


class _Largest:
    """Wraps the batch readers of ``mlsteps.data.batches`` and keeps the largest batch they gave."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        self.batches = 0
        record_batches = batches.iter_record_batches  # iter_frames reads through it

        def iter_record_batches(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for batch in record_batches(*args, **kwargs):
                self._saw(batch.num_rows)
                yield batch

        monkeypatch.setattr(batches, "iter_record_batches", iter_record_batches)

        def whole(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("read whole instead of in batches")

        monkeypatch.setattr(storage, "read_parquet", whole)
        monkeypatch.setattr(prediction_log, "read_window", whole)

    def _saw(self, rows: int) -> None:
        self.rows = max(self.rows, rows)
        self.batches += 1


# evaluate


def test_evaluate_in_batches_gives_the_result_of_one_batch(
    tmp_path: Path, mlflow_tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    holdout = generate_churn(2500, seed=3)
    holdout.loc[holdout.index % 7 == 0, "plan"] = None  # a (missing) slice, and nulls in some batches only
    holdout_uri = str(tmp_path / "holdout.parquet")
    storage.write_parquet(holdout, holdout_uri)
    run_id, model_uri = log_package(*task_model("binary"))
    family = PIPELINE.training.model

    def evaluate_run(name: str, batch_rows: int) -> dict:
        run_root = str(tmp_path / name)
        results.write_result(run_root, "preprocess", {"holdout_uri": holdout_uri, "snapshot_id": "snap-7"})
        train = {"mlflow_run_id": run_id, "model_uri": model_uri, "family": family, "task": "binary"}
        results.write_result(run_root, results.candidate_step(family), train)
        return evaluate.run(run_root, _with(PIPELINE, batch_rows))

    whole = evaluate_run("whole", 100_000)
    largest = _Largest(monkeypatch)
    batched = evaluate_run("batched", 1000)
    assert largest.rows == 1000 and largest.batches == 2 * 3  # target and slices, then the model: 3 batches each

    assert batched["challenger"]["metrics"]["rows"] == 2500 and "(missing)" in batched["challenger"]["slices"]["plan"]
    for key in ("report_uri", "report_html_uri"):
        assert batched.pop(key) != whole.pop(key)
    _close(batched, whole)
    _close(
        storage.read_json(str(tmp_path / "batched/evaluate/report.json")),
        storage.read_json(str(tmp_path / "whole/evaluate/report.json")),
    )
    pages = [storage.read_text(str(tmp_path / name / "evaluate/report.html")) for name in ("batched", "whole")]
    assert pages[0] == pages[1]


# drift


@pytest.fixture(scope="module")
def reference() -> Any:
    """The profile of a churn sample with the binary model's probability as its prediction signal."""
    frame = generate_churn(20_000, seed=1)
    signals = {"probability": np.random.default_rng(1).beta(2, 5, len(frame))}
    return build_profile(frame, PIPELINE.dataset.features, predictions=signals, config=PIPELINE.drift)


@pytest.fixture(scope="module")
def window() -> pd.DataFrame:
    """30,000 rows of a slightly shifted churn window (10,000 generated rows three times over, new ids)."""
    rows = generate_churn(10_000, seed=2, covariate_drift=0.3)
    frame = pd.concat([rows] * 3, ignore_index=True)
    frame["customer_id"] = [f"c{position}" for position in range(len(frame))]
    frame["probability"] = np.random.default_rng(2).beta(2.2, 5, len(frame))
    return frame


def _log(store: Path, frame: pd.DataFrame, files: int) -> str:
    """Log the rows as ``files`` files over two hours of the window; every row keeps its id and time."""
    features = frame[[spec.name for spec in PIPELINE.dataset.features]]
    times = HOUR + pd.to_timedelta(np.arange(len(frame)) % 7200, unit="s")
    outputs = pd.DataFrame({"probability": frame["probability"], "prediction": (frame["probability"] >= 0.5) * 1})
    for part in np.array_split(np.arange(len(frame)), files):
        prediction_log.append(
            str(store),
            features.iloc[part],
            outputs.iloc[part],
            TASK,
            MODEL,
            VERSION,
            times[part],
            frame["customer_id"].iloc[part],
        )
    return str(store)


def _streamed(store: str, profile: Any, config: PipelineConfig) -> dict:
    reader = prediction_log.WindowReader(
        store, MODEL, HOUR, HOUR + pd.Timedelta(hours=2), VERSION, config.processing.batch_rows
    )
    return drift._measure_window(reader, profile, TASK, config).to_dict()


def _whole(store: str, profile: Any, config: PipelineConfig) -> dict:
    logged = prediction_log.read_window(store, MODEL, HOUR, HOUR + pd.Timedelta(hours=2), model_version=VERSION)
    signals = prediction_signals(TASK.task, TASK.classes, logged)
    return detect_drift(profile, logged, predictions=signals, config=config.drift).to_dict()


@pytest.mark.parametrize(
    "methods",
    [
        DriftConfig(),  # auto: Wasserstein and Jensen-Shannon on this window
        DriftConfig(numeric_method="ks", categorical_method="chisquare"),
        DriftConfig(numeric_method="psi", categorical_method="psi"),
    ],
    ids=["auto", "tests", "psi"],
)
def test_drift_over_files_and_batches_equals_the_whole_window(
    methods: DriftConfig, reference: Any, window: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _log(tmp_path / "log", window.head(8000), files=5)
    whole = _whole(store, reference, _with(PIPELINE, 100_000, methods))
    largest = _Largest(monkeypatch)
    streamed = _streamed(store, reference, _with(PIPELINE, 1000, methods))
    assert largest.rows == 1000 and largest.batches >= 8
    assert streamed["current_rows"] == 8000
    _close(streamed, whole)


def test_a_window_beyond_batch_rows_is_exact_but_for_wasserstein_within_its_stated_bound(
    reference: Any, window: pd.DataFrame, tmp_path: Path
) -> None:
    store = _log(tmp_path / "log", window, files=3)
    config = _with(PIPELINE, 10_000)  # 30,000 values a numeric column: more than are kept
    streamed, whole = _streamed(store, reference, config), _whole(store, reference, config)
    assert streamed["dataset"] == whole["dataset"]
    every = zip(streamed["features"] + streamed["prediction"], whole["features"] + whole["prediction"], strict=True)
    approximate = 0
    for mine, exact in every:
        if mine["method"] != "wasserstein":
            _close(mine, exact, mine["name"])
            continue
        _close({**mine, "statistic": None, "message": None}, {**exact, "statistic": None, "message": None})
        stated = re.search(STATED, mine["message"])
        assert stated, mine["message"]
        bound = float(stated[1] or 0)
        assert abs(mine["statistic"] - exact["statistic"]) <= bound + 1e-12, mine["name"]
        assert bound < 1e-3, mine["name"]  # a dense reference sample: far below any threshold
        approximate += bound > 0
    assert approximate  # the continuous features cross somewhere

    # counts and sums add up: other files, another order and other batches give the same report
    shuffled = _log(tmp_path / "other", window.sample(frac=1.0, random_state=5), files=7)
    _close(_streamed(shuffled, reference, _with(PIPELINE, 12_000)), streamed)


def test_drift_memory_follows_the_batch_not_the_window(reference: Any, window: pd.DataFrame, tmp_path: Path) -> None:
    config = _with(PIPELINE, 10_000)
    one = _log(tmp_path / "one", window.head(10_000), files=1)
    ten = _log(
        tmp_path / "ten",
        pd.concat([window] * 3 + [window.head(10_000)], ignore_index=True).assign(
            customer_id=lambda frame: [f"r{position}" for position in range(len(frame))]
        ),
        files=4,
    )
    _streamed(one, reference, config)  # first-use allocations (imports, caches) are not the step's data
    peaks = []
    for store in (one, ten):
        tracemalloc.start()
        _streamed(store, reference, config)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    print(f"peak traced memory: {peaks[0] / 2**20:.1f} MiB for 10,000 rows, {peaks[1] / 2**20:.1f} MiB for 100,000")
    assert peaks[1] < 2 * peaks[0], peaks  # ten times the rows, not even twice the memory
