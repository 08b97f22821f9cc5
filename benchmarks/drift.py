"""Benchmark of drift detection: mlsteps.monitoring.drift against Evidently 0.7's DataDriftPreset, same data, same
methods.

In one run, on seeded synthetic data of 20 numeric and 5 categorical columns (a few of them drifted, some with
nulls and ties), written once as Parquet to a temporary folder:

1. **ours**, in ``.venv``: the reference profile is built once (its time is reported apart, it belongs to
   training), then each window is checked: load the profile, read the window, ``detect_drift``, write the JSON and
   HTML report. Once with a profile that keeps every reference value (identical inputs to Evidently's, so the
   statistics must agree to rounding) and once with the default 100k-value sample; then a 10-million-row window;
2. **the anchor**, in ``.venv-bench-evidently`` (``requirements/bench-evidently.txt``): read both Parquet files and
   run ``Report([DataDriftPreset(per_column_method=..., drift_share=...)])`` with the same per-column methods and
   the same thresholds (the defaults of both).

Every side runs in its own subprocess, which reports its peak RSS (``getrusage(RUSAGE_SELF)``) and the time of its
drift computation; the parent times each whole process. It prints wall times and ratios, peak memory, the largest
difference of each method's statistic and how many drifted flags agree, and writes everything (machine, commit,
config) to ``benchmarks/results/drift-<time>.json`` (or ``$BENCH_RESULTS_DIR``).

``--smoke`` runs every side (Evidently too, unless ``--no-evidently``) and the comparison on 2,000 rows and a
4,000-row large window: it checks that the benchmark works (``tests/unit/test_benchmarks.py``); its figures mean
nothing.

Usage: ``python benchmarks/drift.py [--rows 1000000] [--big-rows 10000000] [--no-evidently] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from record import write_report

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY_PYTHON = PROJECT_ROOT / ".venv-bench-evidently" / "bin" / "python"
DEFAULT_SAMPLE_SIZE = 100_000

NUMERIC = [f"num_{i:02d}" for i in range(20)]
CATEGORICAL = [f"cat_{i}" for i in range(5)]
# The same method per column on both sides: mostly the large-sample defaults, plus every other method on a few.
METHODS = {
    **{name: "wasserstein" for name in NUMERIC[:14]},
    **{name: "ks" for name in NUMERIC[14:17]},
    **{name: "psi" for name in NUMERIC[17:]},
    "cat_0": "jensenshannon",
    "cat_1": "jensenshannon",
    "cat_2": "jensenshannon",
    "cat_3": "chisquare",
    "cat_4": "psi",
}
DRIFT_SHARE = 0.5
# What the current window changes (the other columns keep the reference distribution):
# numeric columns get (mean shift in std units, std factor) applied to their underlying normal draw,
NUMERIC_DRIFTS = {
    "num_02": (0.5, 1.0),
    "num_06": (0.0, 1.6),
    "num_11": (0.05, 1.0),
    "num_15": (0.3, 1.0),
    "num_18": (0.4, 1.0),
}
# categorical ones a reversed category mix, or a new category in about 3% of the rows.
CATEGORICAL_DRIFTS = {"cat_1": "reversed mix", "cat_3": "reversed mix", "cat_4": "new category"}
# Statistics that are the same quantity on both sides; the others differ by definition (see _agreement).
SAME_DEFINITION = {"wasserstein (numeric)", "ks (numeric)", "jensenshannon (categorical)", "psi (categorical)"}
# --smoke: every side on small tables (enough rows for each method's minimum sample).
SMOKE = {"rows": 2_000, "big_rows": 4_000}


# ---------------------------------------------------------------------------------------------------- the data
def _numeric_column(index: int, rows: int, rng: np.random.Generator, drift: tuple[float, float]) -> np.ndarray:
    """Five shapes in turn (normal, lognormal, integer counts with ties, exponential, rounded uniform)."""
    shift, scale = drift
    base = rng.standard_normal(rows) * scale + shift
    shape = index % 5
    if shape == 0:
        values = 50 + 10 * base
    elif shape == 1:
        values = np.exp(0.5 * base + 3)
    elif shape == 2:
        values = np.round(np.clip(4 + 2 * base, 0, None))
    elif shape == 3:
        values = -np.log(rng.uniform(size=rows)) * 20 * scale + 20 * shift
    else:
        values = np.round(rng.uniform(size=rows) * 100 * scale + 29 * shift, 1)
    if index == 1:
        values[rng.uniform(size=rows) < 0.01] = np.nan
    return values


def _categorical_column(index: int, rows: int, rng: np.random.Generator, drift: str | None) -> Any:
    """4 to 8 categories with falling frequencies; column 2 has 2% nulls."""
    import pyarrow as pa

    labels = [f"c{index}_{letter}" for letter in "abcdefgh"[: 4 + index]]
    weights = np.arange(len(labels), 0, -1, dtype=float)
    if drift == "reversed mix":
        weights = weights[::-1]
    if drift == "new category":
        labels, weights = [*labels, f"c{index}_new"], np.append(weights, weights.sum() * 0.031)
    codes = rng.choice(len(labels), rows, p=weights / weights.sum())
    mask = rng.uniform(size=rows) < 0.02 if index == 2 else None
    indices = pa.array(codes.astype(np.int32), mask=mask)
    return pa.DictionaryArray.from_arrays(indices, pa.array(labels)).cast(pa.string())


def write_window(path: Path, rows: int, seed: int, drifted: bool, chunk: int = 1_000_000) -> None:
    """Write one seeded table as Parquet, in chunks so that 10 million rows fit in little memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start in range(0, rows, chunk):
        size = min(chunk, rows - start)
        rng = np.random.default_rng([seed, start])
        columns = {
            name: pa.array(
                _numeric_column(i, size, rng, NUMERIC_DRIFTS.get(name, (0.0, 1.0)) if drifted else (0.0, 1.0)),
                from_pandas=True,
            )
            for i, name in enumerate(NUMERIC)
        }
        for i, name in enumerate(CATEGORICAL):
            columns[name] = _categorical_column(i, size, rng, CATEGORICAL_DRIFTS.get(name) if drifted else None)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()


# ---------------------------------------------------------------------------------------------------- the sides
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def side_profile(reference: str, profile: str, sample_size: str) -> dict[str, Any]:
    """Ours, once at training time: read the reference and save its profile."""
    import pandas as pd

    from mlsteps.config import ColumnSpec, DriftConfig
    from mlsteps.monitoring.drift import build_profile, save_profile

    started = time.perf_counter()
    frame = pd.read_parquet(reference)
    read = time.perf_counter() - started
    specs = [ColumnSpec(name=n, type="numeric") for n in NUMERIC] + [
        ColumnSpec(name=n, type="categorical") for n in CATEGORICAL
    ]
    save_profile(build_profile(frame, specs, config=DriftConfig(reference_sample_size=int(sample_size))), profile)
    return {
        "read_seconds": read,
        "compute_seconds": time.perf_counter() - started - read,
        "profile_bytes": Path(profile).stat().st_size,
    }


def side_ours(profile: str, current: str, out_dir: str) -> dict[str, Any]:
    """Ours, per window: load the profile, read the window, detect drift, write the JSON and HTML report."""
    import pandas as pd

    from mlsteps.config import DriftConfig, FeatureDriftConfig
    from mlsteps.data import storage
    from mlsteps.monitoring.drift import detect_drift, load_profile, render_html

    config = DriftConfig(
        drift_share=DRIFT_SHARE, features={name: FeatureDriftConfig(method=method) for name, method in METHODS.items()}
    )
    started = time.perf_counter()
    reference = load_profile(profile)
    window = pd.read_parquet(current)
    read = time.perf_counter() - started
    report = detect_drift(reference, window, config=config)
    compute = time.perf_counter() - started - read
    storage.write_json(f"{out_dir}/drift.json", report.to_dict())
    storage.write_text(f"{out_dir}/drift.html", render_html(report, Path(current).name))
    return {
        "read_seconds": read,
        "compute_seconds": compute,
        "report_seconds": time.perf_counter() - started - read - compute,
        "dataset_drift": report.dataset.drift_detected,
        "columns": {
            f.name: {"method": f.method, "statistic": f.statistic, "p_value": f.p_value, "drifted": f.drifted}
            for f in report.features
        },
    }


def side_evidently(reference: str, current: str) -> dict[str, Any]:
    """The anchor: Evidently's DataDriftPreset with the same per-column methods and thresholds."""
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    frames = pd.read_parquet(reference), pd.read_parquet(current)
    read = time.perf_counter() - started
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    reference_data, current_data = (Dataset.from_pandas(f, data_definition=definition) for f in frames)
    preset = DataDriftPreset(per_column_method=METHODS, drift_share=DRIFT_SHARE)
    snapshot = Report([preset], include_tests=True).run(current_data=current_data, reference_data=reference_data)
    result = snapshot.dict()
    compute = time.perf_counter() - started - read
    scores = {m["config"]["column"]: m["value"] for m in result["metrics"] if "column" in m["config"]}
    failed = {t["name"].removeprefix("Value Drift for column "): t["status"] == "FAIL" for t in result["tests"]}
    share_tests = [drifted for name, drifted in failed.items() if name.startswith("Share of Drifted Columns")]
    return {
        "version": evidently.__version__,
        "read_seconds": read,
        "compute_seconds": compute,
        "dataset_drift": any(share_tests),
        # Evidently reports one drift score per column: the p-value for tests, the distance otherwise
        "columns": {
            name: {"method": METHODS[name], "score": scores[name], "drifted": failed[name]} for name in METHODS
        },
    }


def _run_side(python: Path, side: str, *args: str) -> dict[str, Any]:
    """Run one side in its own process; it writes its result as JSON, peak RSS included."""
    handle, name = tempfile.mkstemp(prefix=f"drift-{side}-", suffix=".json")
    os.close(handle)
    out = Path(name)
    started = time.perf_counter()
    done = subprocess.run(
        [str(python), __file__, "--side", side, "--out", str(out), *args],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "include"), "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"side {side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return {**result, "process_seconds": wall}


# ---------------------------------------------------------------------------------------------------- comparison
def _our_score(column: dict[str, Any]) -> float:
    """The number Evidently reports for the same column: the p-value of a test, else the statistic."""
    return column["p_value"] if column["method"] in ("ks", "chisquare") else column["statistic"]


def _agreement(ours: dict[str, Any], evidently: dict[str, Any]) -> dict[str, Any]:
    """Largest score difference per method, and how many drifted flags (and the dataset decision) agree.

    Wasserstein (normalised by the reference std), KS (p-value), Jensen-Shannon and PSI of categories are the
    same quantity on both sides. The others differ by definition: our chi-square is the homogeneity test of
    the reference-vs-current table (``chi2_contingency``), Evidently's the goodness of fit of the current counts to
    the reference shares (``chisquare``); our numeric PSI uses reference-decile bins, Evidently's equal-width
    (Sturges) bins over both samples. Our p-value tests also need the BH-adjusted p-value and an effect size,
    Evidently's only the raw p-value.
    """
    per_method: dict[str, float] = {}
    disagreements = []
    for name, column in ours["columns"].items():
        anchor = evidently["columns"][name]
        difference = abs(_our_score(column) - anchor["score"])
        method = f"{column['method']} ({'categorical' if name in CATEGORICAL else 'numeric'})"
        per_method[method] = max(per_method.get(method, 0.0), difference)
        if column["drifted"] != anchor["drifted"]:
            disagreements.append(
                f"{name} ({column['method']}): ours {column['drifted']} (score {_our_score(column):.4g}), "
                f"evidently {anchor['drifted']} (score {anchor['score']:.4g})"
            )
    return {
        "max_abs_score_difference": per_method,
        "same_definition": sorted(SAME_DEFINITION),
        "identical_flags": len(ours["columns"]) - len(disagreements),
        "columns": len(ours["columns"]),
        "disagreements": disagreements,
        "same_dataset_decision": ours["dataset_drift"] == evidently["dataset_drift"],
    }


def _print_summary(runs: dict[str, dict[str, Any]], agreement: dict[str, Any] | None, rows: int) -> None:
    print(f"\n{'run':<34}{'process s':>11}{'read s':>9}{'drift s':>9}{'peak RSS MB':>13}")
    for label, run in runs.items():
        print(
            f"{label:<34}{run['process_seconds']:>11.2f}{run['read_seconds']:>9.2f}{run['compute_seconds']:>9.2f}"
            f"{run['peak_rss_mb']:>13.0f}"
        )
    anchor = runs.get(f"evidently {rows:,} rows")
    if anchor is None or agreement is None:
        return
    print()
    for label in (f"ours {rows:,} rows, full reference", f"ours {rows:,} rows, 100k sample"):
        ours = runs[label]
        print(
            f"{label}: {anchor['process_seconds'] / ours['process_seconds']:.1f}x faster per process, "
            f"{anchor['compute_seconds'] / ours['compute_seconds']:.1f}x in the drift computation, "
            f"{anchor['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x less peak memory"
        )
    print("\nlargest |ours - evidently| per method (p-value for ks/chisquare, else the statistic):")
    for method, difference in sorted(agreement["max_abs_score_difference"].items()):
        note = "same definition" if method in SAME_DEFINITION else "different definition: see _agreement"
        print(f"  {method:<28}{difference:.3g}  ({note})")
    print(
        f"drifted flags identical: {agreement['identical_flags']} of {agreement['columns']}; "
        f"dataset decision identical: {agreement['same_dataset_decision']}"
    )
    for line in agreement["disagreements"]:
        print(f"  differs: {line}")


def _run_all(args: argparse.Namespace, folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Write the data into ``folder``, run every side on it, and compare ours with Evidently."""
    reference, current, big = folder / "reference.parquet", folder / "current.parquet", folder / "current-big.parquet"
    started = time.perf_counter()
    write_window(reference, args.rows, seed=1, drifted=False)
    write_window(current, args.rows, seed=2, drifted=True)
    if args.big_rows:
        write_window(big, args.big_rows, seed=3, drifted=True)
    print(f"data in {folder} ({time.perf_counter() - started:.0f} s)", flush=True)

    python = Path(sys.executable)
    full_profile, sampled_profile = str(folder / "profile-full.npz"), str(folder / "profile-100k.npz")
    runs: dict[str, dict[str, Any]] = {}
    runs["profile build, full reference"] = _run_side(python, "profile", str(reference), full_profile, str(args.rows))
    runs["profile build, 100k sample"] = _run_side(
        python, "profile", str(reference), sampled_profile, str(DEFAULT_SAMPLE_SIZE)
    )
    for label, profile, window in [
        (f"ours {args.rows:,} rows, full reference", full_profile, current),
        (f"ours {args.rows:,} rows, 100k sample", sampled_profile, current),
        *([(f"ours {args.big_rows:,} rows, 100k sample", sampled_profile, big)] if args.big_rows else []),
    ]:
        runs[label] = _run_side(python, "ours", profile, str(window), str(folder))
        print(f"{label}: {runs[label]['process_seconds']:.1f} s", flush=True)
    if args.no_evidently:
        return runs, None
    if not EVIDENTLY_PYTHON.exists():
        raise SystemExit(f"no {EVIDENTLY_PYTHON}: create it from requirements/bench-evidently.txt or --no-evidently")
    print("evidently: running (about a minute on 1M rows)...", flush=True)
    label = f"evidently {args.rows:,} rows"
    runs[label] = _run_side(EVIDENTLY_PYTHON, "evidently", str(reference), str(current))
    return runs, _agreement(runs[f"ours {args.rows:,} rows, full reference"], runs[label])


def main() -> None:
    """Generate the data, run every side, print the comparison and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and the current window")
    parser.add_argument(
        "--big-rows", type=int, default=10_000_000, help="rows of the large window (ours only); 0 skips"
    )
    parser.add_argument("--no-evidently", action="store_true", help="run our side only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every side on small tables: checks the benchmark runs; "
        + ", ".join(f"{key} {value}" for key, value in SMOKE.items()),
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        sides = {"profile": side_profile, "ours": side_ours, "evidently": side_evidently}
        outcome = sides[args.side](*args.args)
        Path(args.out).write_text(json.dumps({**outcome, "peak_rss_mb": _peak_rss_mb()}))
        return
    if args.smoke:
        vars(args).update(SMOKE)

    folder = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    try:
        runs, agreement = _run_all(args, folder)
    finally:
        shutil.rmtree(folder)  # about 1.3 GB of Parquet with the default sizes
    _print_summary(runs, agreement, args.rows)

    write_report(
        "drift",
        {
            "rows": args.rows,
            "big_rows": args.big_rows,
            "methods": METHODS,
            "numeric_drifts": NUMERIC_DRIFTS,
            "categorical_drifts": CATEGORICAL_DRIFTS,
            "drift_share": DRIFT_SHARE,
            "smoke": args.smoke,
            "evidently": not args.no_evidently,
        },
        {"runs": runs, "agreement": agreement},
    )


if __name__ == "__main__":
    main()
