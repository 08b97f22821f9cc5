"""Benchmark of performance estimation without labels: mlsteps.monitoring.performance (CBPE in numpy) against
NannyML 0.13's ``CBPE``, same model, same calibration rows, same windows, in one run.

For each built-in classification dataset (binary churn, multiclass tiers) one gbdt model is trained as the train
step trains it, on ``benchmarks/model_quality.py``'s split and preprocessing (70% train, 15% validation, 15%
holdout). Both sides calibrate on the validation split's outputs: ours with ``fit_calibrator``, NannyML's CBPE with
those rows as its reference data (it fits its isotonic calibrators there, unless its cross-validated check finds
calibration does not help: the report says whether it did). Our ``PerformanceReference`` is the holdout, as evaluate
writes it. Then windows of fresh rows from the generator, at ``--rows`` and (fewer windows) ``--big-rows`` rows:

- reference-like: the estimate should match the realized metric within its band;
- covariate drift (rising ``covariate_drift``): the inputs move, P(y | x) stays: the estimate should follow;
- concept drift (``concept_drift``): P(y | x) changed, which CBPE cannot see: both sides are expected to miss it.

Per window and metric (ROC AUC, accuracy, F1; macro F1 for multiclass) it prints the realized value on the window's
labels, our estimate, its absolute error, whether our band (estimate ± ``band_sigmas`` sampling errors at the
window's size, the monitor's settings) holds the realized value, whether the monitor's judge calls the estimate a
drop, NannyML's estimate, the difference and NannyML's sampling error. Then the median time per window, ours
against NannyML's in two settings:

- warm: ours ``estimate_metrics`` and ``judge`` of every metric with that window size's sampling errors already
  known, against NannyML's ``estimate`` call of an estimator fitted before (as a stored one would be);
- cold: ours with a fresh reference, so ``judge`` bootstraps each sampling error at the window's size, as a monitor
  run that loads the reference does, against NannyML's ``fit`` (where it derives its sampling errors) and
  ``estimate`` in the same run.

NannyML runs in ``.venv-bench-nannyml`` (``requirements/bench-nannyml.txt``), in its own process, which reads the
Parquet files this side wrote and times its own calls. The goal: estimates within NannyML's sampling error of
NannyML's, at least 10 times faster. Everything goes to ``benchmarks/results/performance_estimation-<time>.json``
(or ``$BENCH_RESULTS_DIR``).

``--smoke`` runs every part (NannyML too, unless ``--no-nannyml``) on small sizes: it checks that the benchmark works
(``tests/unit/test_benchmarks.py``); its figures mean nothing.

Usage: ``python benchmarks/performance_estimation.py [--rows 10000] [--big-rows 1000000] [--no-nannyml] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NANNYML_PYTHON = PROJECT_ROOT / ".venv-bench-nannyml" / "bin" / "python"
TASKS = ("binary", "multiclass")
FAMILY = "gbdt"
TRAIN_ROWS = 100_000
# (name, covariate_drift, concept_drift); the big windows are the first, the strongest covariate and concept drift.
WINDOWS = [
    ("reference #1", 0.0, 0.0),
    ("reference #2", 0.0, 0.0),
    ("covariate 0.25", 0.25, 0.0),
    ("covariate 0.5", 0.5, 0.0),
    ("covariate 1.0", 1.0, 0.0),
    ("concept 0.5", 0.0, 0.5),
    ("concept 1.0", 0.0, 1.0),
]
BIG_WINDOWS = [0, 4, 6]
WINDOW_SEED = 1_000  # window i is drawn with seed WINDOW_SEED + i; the model trains on model_quality.SEED
# NannyML's name of each of our metrics (its multiclass F1 is macro-averaged).
ANCHOR_METRIC = {"roc_auc": "roc_auc", "accuracy": "accuracy", "f1": "f1", "macro_f1": "f1"}
SMOKE = {"rows": 1_000, "big_rows": 3_000, "train_rows": 6_000}


# ---------------------------------------------------------------------------------------------------- the anchor
def side_nannyml(folder: str) -> dict[str, Any]:
    """NannyML's CBPE per window size, fitted on the validation outputs, each window estimated as one chunk."""
    import nannyml
    import pandas as pd
    from nannyml.calibration import NoopCalibrator

    warnings.simplefilter("ignore")  # "the resulting number of chunks is too low": one window is one chunk here
    plan = json.loads((Path(folder) / "plan.json").read_text())
    reference = pd.read_parquet(Path(folder) / "reference.parquet")
    classes = range(plan["classes"])
    binary = plan["task"] == "binary"
    sizes = {}
    for size, windows in plan["windows"].items():
        estimator = nannyml.CBPE(
            problem_type="classification_binary" if binary else "classification_multiclass",
            y_pred_proba="proba_1" if binary else {k: f"proba_{k}" for k in classes},
            y_pred="y_pred",
            y_true="y_true",
            metrics=sorted({ANCHOR_METRIC[metric] for metric in plan["metrics"]}),
            chunk_size=int(size),
        )
        started = time.perf_counter()
        estimator.fit(reference)
        fit = time.perf_counter() - started
        # Its cross-validated check may leave a class uncalibrated (ours calibrates every class).
        calibrated = (
            int(estimator.needs_calibration)
            if binary
            else sum(not isinstance(c, NoopCalibrator) for c in estimator._calibrators.values())
        )
        results = []
        for name in windows:
            window = pd.read_parquet(Path(folder) / name)
            started = time.perf_counter()
            result = estimator.estimate(window)
            seconds = time.perf_counter() - started
            row = result.filter(period="analysis").to_df().iloc[0]
            results.append(
                {
                    "seconds": seconds,
                    "metrics": {
                        metric: {
                            "value": float(row[(ANCHOR_METRIC[metric], "value")]),
                            "sampling_error": float(row[(ANCHOR_METRIC[metric], "sampling_error")]),
                        }
                        for metric in plan["metrics"]
                    },
                }
            )
        sizes[size] = {
            "fit_seconds": fit,
            "calibrated_maps": calibrated,
            "maps": 1 if binary else len(classes),
            "windows": results,
        }
    return {"version": nannyml.__version__, "sizes": sizes}


def _run_nannyml(folder: Path) -> dict[str, Any]:
    """The anchor in its own process and virtualenv, on the Parquet files and plan that ``run_task`` wrote."""
    done = subprocess.run(
        [str(NANNYML_PYTHON), __file__, "--side", "nannyml", str(folder)],
        env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the NannyML side failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((folder / "nannyml.json").read_text())


def _anchor_frame(task: str, probabilities: np.ndarray, y_true: np.ndarray | None = None) -> Any:
    """The model's outputs as NannyML reads them: one column per class, the predicted class, the label if known."""
    import pandas as pd

    from mlsteps.evaluation.tasks import predicted_positions

    frame = pd.DataFrame({f"proba_{k}": probabilities[:, k] for k in range(probabilities.shape[1])})
    frame["y_pred"] = predicted_positions(task, probabilities)
    if y_true is not None:
        frame["y_true"] = y_true
    return frame


# ---------------------------------------------------------------------------------------------------- ours
class Model:
    """One gbdt model trained as the train step trains it, its calibrator (validation) and reference (holdout)."""

    def __init__(self, task: str, rows: int) -> None:
        from model_quality import built_in, matrices

        from mlsteps.config import load_pipeline_config
        from mlsteps.monitoring.performance.calibration import fit_calibrator
        from mlsteps.monitoring.performance.reference import PerformanceReference
        from mlsteps.training.families import load_trainer, trainer_context

        dataset = built_in(task, rows)
        self.dataset, self.target = dataset.name, dataset.config.target
        self.task, self.classes = task, list(self.target.classes)
        self.preprocessor, data = matrices(dataset)
        with tempfile.TemporaryDirectory() as work:
            context = trainer_context(
                load_pipeline_config().training,
                FAMILY,
                self.target,
                self.preprocessor,
                "cpu",
                work_dir=work,
                checkpoint_dir=str(Path(work) / "checkpoints"),
                resume_key={"run_root": work},
            )
            self.trainer = load_trainer(FAMILY)(context)
            self.trainer.fit(data["train"], data["validation"])
        validation, holdout = data["validation"], data["holdout"]
        self.validation = validation.target, self._predict(validation.numeric, validation.categories)
        self.calibrator = fit_calibrator(task, self.classes, *self.validation)
        holdout_output = self._predict(holdout.numeric, holdout.categories)
        self.reference = PerformanceReference.from_holdout(task, self.classes, holdout.target, holdout_output)

    def _predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        return self.trainer.predict(numeric, categories).astype(np.float64)

    def window(self, rows: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``index`` of ``WINDOWS``: fresh rows from the generator, their labels and the model's output."""
        from mlsteps.data.datasets import BUILT_IN
        from mlsteps.evaluation.tasks import encode_target

        _, covariate, concept = WINDOWS[index]
        frame = BUILT_IN[self.task].generate(
            rows, seed=WINDOW_SEED + index, covariate_drift=covariate, concept_drift=concept
        )
        y_true = encode_target(frame[self.target.name], self.task, self.classes, f"window {index}")
        return y_true, self._predict(*self.preprocessor.transform(frame))


def ours(model: Model, y_true: np.ndarray, output: np.ndarray, band_sigmas: float, samples: int) -> dict[str, Any]:
    """What the monitor does per window, timed: estimate every metric, judge each against the holdout's band.

    Cold: a fresh reference, so every sampling error is a bootstrap at this window's size (a monitor run loads the
    reference anew). Warm: the judging again, the sampling errors now known, as when they are kept per window size.
    The estimate is the same call either way, timed once, before the bootstrap (as the monitor runs it): timed after
    it, it took up to twice as long at a million rows, from the bootstrap's evicted caches and freed memory.
    """
    from mlsteps.evaluation.metrics import metric_value
    from mlsteps.monitoring.performance.estimate import estimate_metrics
    from mlsteps.monitoring.performance.judge import judge
    from mlsteps.monitoring.performance.reference import PerformanceReference

    task, classes, rows = model.task, model.classes, len(y_true)
    reference = PerformanceReference(task, classes, model.reference.y_true, model.reference.output)

    def judged(estimates: dict[str, float | None]) -> dict[str, Any]:
        return {
            metric: judge("estimated", metric, value, rows, reference, task, band_sigmas=band_sigmas, samples=samples)
            for metric, value in estimates.items()
        }

    started = time.perf_counter()
    estimates = estimate_metrics(task, classes, output, model.calibrator)
    seconds, estimated = {}, time.perf_counter() - started
    for run in ("cold", "warm"):
        started = time.perf_counter()
        verdicts = judged(estimates)
        seconds[run] = {"estimate": estimated, "judge": time.perf_counter() - started}
    metrics = {}
    for metric, verdict in verdicts.items():
        realized = metric_value(task, classes, metric, y_true, output)
        error = abs(verdict.value - realized)
        metrics[metric] = {
            "realized": realized,
            "estimate": verdict.value,
            "abs_error": error,
            "sampling_error": verdict.sampling_error,
            "band_holds_realized": error <= band_sigmas * verdict.sampling_error,
            "drop": verdict.drop,
        }
    return {"seconds": seconds, "metrics": metrics}


# ---------------------------------------------------------------------------------------------------- one task
def run_task(task: str, args: argparse.Namespace, folder: Path, settings: Any) -> dict[str, Any]:
    """Train, draw every window, run ours on each and write the anchor's inputs; then NannyML on all of them."""
    from mlsteps.evaluation.tasks import ESTIMABLE_METRICS

    started = time.perf_counter()
    model = Model(task, args.train_rows)
    print(f"\n{task}: {FAMILY} trained on {args.train_rows:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    validation_labels, validation_output = model.validation
    _anchor_frame(task, validation_output, validation_labels).to_parquet(folder / "reference.parquet")
    sizes = {args.rows: range(len(WINDOWS)), **({args.big_rows: BIG_WINDOWS} if args.big_rows else {})}
    windows, plan = [], {}
    for size, indices in sizes.items():
        for index in indices:
            y_true, output = model.window(size, index)
            outcome = ours(model, y_true, output, settings.band_sigmas, settings.bootstrap_samples)
            name = f"window-{size}-{index}.parquet"
            _anchor_frame(task, output).to_parquet(folder / name)
            plan.setdefault(str(size), []).append(name)
            windows.append({"rows": size, "window": WINDOWS[index][0], "index": index, **outcome})
        print(f"  ours: {len(indices)} windows of {size:,} rows", flush=True)
    anchor = None
    if not args.no_nannyml:
        metrics = list(ESTIMABLE_METRICS[task])
        (folder / "plan.json").write_text(
            json.dumps({"task": task, "classes": len(model.classes), "metrics": metrics, "windows": plan})
        )
        anchor = _run_nannyml(folder)
        for size, results in anchor["sizes"].items():
            for window, result in zip([w for w in windows if w["rows"] == int(size)], results["windows"], strict=True):
                window["nannyml"] = result
    return {"task": task, "dataset": model.dataset, "windows": windows, "nannyml": anchor}


def _compare(window: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """Ours against NannyML on one metric of one window; None without NannyML."""
    if "nannyml" not in window:
        return None
    anchor = window["nannyml"]["metrics"][metric]
    difference = window["metrics"][metric]["estimate"] - anchor["value"]
    return {**anchor, "difference": difference, "within": abs(difference) <= anchor["sampling_error"]}


def _milliseconds(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """Per window size: how many estimates lie within NannyML's sampling error of NannyML's, and median times."""
    summary = {}
    for size in dict.fromkeys(window["rows"] for window in entry["windows"]):
        windows = [window for window in entry["windows"] if window["rows"] == size]
        compared = [c for w in windows for m in w["metrics"] if (c := _compare(w, m)) is not None]
        cold = [sum(w["seconds"]["cold"].values()) for w in windows]
        warm = [sum(w["seconds"]["warm"].values()) for w in windows]
        figures = {"ours_cold_ms": _milliseconds(cold), "ours_warm_ms": _milliseconds(warm)}
        if compared:
            anchor = entry["nannyml"]["sizes"][str(size)]
            figures |= {
                "within_nannyml_sampling_error": sum(c["within"] for c in compared),
                "compared": len(compared),
                "nannyml_ms": _milliseconds([w["nannyml"]["seconds"] for w in windows]),
                "nannyml_fit_ms": 1000 * anchor["fit_seconds"],
                "nannyml_calibrated": f"{anchor['calibrated_maps']} of {anchor['maps']} maps",
            }
            # Warm: a fitted NannyML (stored) against known sampling errors; cold: NannyML fitted in the run, as ours
            # bootstraps its sampling errors in the run.
            figures["speedup_warm"] = figures["nannyml_ms"] / figures["ours_warm_ms"]
            figures["speedup_cold"] = (figures["nannyml_fit_ms"] + figures["nannyml_ms"]) / figures["ours_cold_ms"]
        summary[str(size)] = figures
    return summary


# ---------------------------------------------------------------------------------------------------- printing
def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def print_task(entry: dict[str, Any], band_sigmas: float) -> None:
    """Every window's metrics side by side, then the times per window size."""
    for size, figures in entry["summary"].items():
        windows = [window for window in entry["windows"] if window["rows"] == int(size)]
        title = f"{entry['task']}: {entry['dataset']}, {int(size):,} rows per window"
        print(f"\n{title}; band = estimate ± {band_sigmas:g} sampling errors, σ = a sampling error")
        header = f"{'window':<16}{'metric':<10}{'realized':>9}{'ours':>8}{'|error|':>9}{'in band':>8}{'drop':>6}"
        print(header + (f"{'nannyml':>9}{'ours-nml':>10}{'nml σ':>8}{'<= σ':>6}" if "nannyml" in windows[0] else ""))
        for window in windows:
            for metric, ours_figures in window["metrics"].items():
                line = (
                    f"{window['window']:<16}{metric:<10}{ours_figures['realized']:>9.4f}{ours_figures['estimate']:>8.4f}"
                    f"{ours_figures['abs_error']:>9.4f}{_yes(ours_figures['band_holds_realized']):>8}"
                    f"{'yes' if ours_figures['drop'] else 'no':>6}"
                )
                if (compared := _compare(window, metric)) is not None:
                    line += (
                        f"{compared['value']:>9.4f}{compared['difference']:>+10.1e}{compared['sampling_error']:>8.4f}"
                        f"{_yes(compared['within']):>6}"
                    )
                print(line)
        print(
            "concept drift: P(y | x) changed under the same inputs; CBPE trusts the validation split's calibration, so "
            "both estimates stay near the holdout's level and miss the realized drop (expected)\n"
            "in band: the band is the sampling noise of a window this size; it leaves out the error of the calibration "
            "itself (fitted on the validation rows), which dominates at large windows"
        )
        print(
            f"time per window (median): ours {figures['ours_warm_ms']:.1f} ms warm (sampling errors known), "
            f"{figures['ours_cold_ms']:.1f} ms cold (bootstrapped in the run)"
        )
        if "nannyml_ms" in figures:
            with_fit = figures["nannyml_fit_ms"] + figures["nannyml_ms"]
            print(
                f"  nannyml {figures['nannyml_ms']:.1f} ms fitted, {with_fit:.1f} ms with its fit in the run "
                f"(calibrated {figures['nannyml_calibrated']}): ours {figures['speedup_warm']:.1f}x faster warm, "
                f"{figures['speedup_cold']:.1f}x cold"
            )


def print_goal(entries: list[dict[str, Any]]) -> None:
    """The issue's goal per task and window size, met or not."""
    print("\ngoal: estimates within NannyML's sampling error of NannyML's, at least 10x faster per window")
    for entry in entries:
        for size, figures in entry["summary"].items():
            if "compared" not in figures:
                continue
            agree = figures["within_nannyml_sampling_error"] == figures["compared"]
            fast = figures["speedup_warm"] >= 10
            print(
                f"  {entry['task']:<11}{int(size):>10,} rows: {figures['within_nannyml_sampling_error']} of "
                f"{figures['compared']} within ({'met' if agree else 'NOT met'}); {figures['speedup_warm']:.1f}x warm, "
                f"{figures['speedup_cold']:.1f}x cold ({'met' if fast else 'NOT met'} warm)"
            )


def main() -> None:
    """Run every task's windows on both sides, print the comparison and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per window")
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows per big window (3 windows); 0 skips")
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS, help="rows the model's split is drawn from")
    parser.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS), help="the built-in datasets")
    parser.add_argument("--no-nannyml", action="store_true", help="run our side only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every part on small sizes: checks the benchmark runs; "
        + ", ".join(f"{key} {value}" for key, value in SMOKE.items()),
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        folder = Path(args.args[0])
        (folder / "nannyml.json").write_text(json.dumps(side_nannyml(str(folder))))
        return
    if args.smoke:
        vars(args).update(SMOKE)
    if not args.no_nannyml and not NANNYML_PYTHON.exists():
        raise SystemExit(f"no {NANNYML_PYTHON}: create it with make .venv-bench-nannyml, or --no-nannyml")

    from mlsteps.config import load_pipeline_config

    settings = load_pipeline_config().monitoring.performance
    entries = []
    for task in args.task:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-estimation-{task}-"))
        try:
            entry = run_task(task, args, folder, settings)
        finally:
            shutil.rmtree(folder)
        entry["summary"] = summarise(entry)
        print_task(entry, settings.band_sigmas)
        entries.append(entry)
    print_goal(entries)
    write_report(
        "performance_estimation",
        {
            "tasks": args.task,
            "family": FAMILY,
            "train_rows": args.train_rows,
            "rows": args.rows,
            "big_rows": args.big_rows,
            "windows": WINDOWS,
            "big_windows": BIG_WINDOWS,
            "band_sigmas": settings.band_sigmas,
            "bootstrap_samples": settings.bootstrap_samples,
            "smoke": args.smoke,
            "nannyml": not args.no_nannyml,
        },
        {"tasks": entries},
    )


if __name__ == "__main__":
    main()
