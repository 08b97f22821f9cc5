"""The scale benchmark: its tables put both sides side by side, it measures a step process's own peak RSS, the
'before' side runs the code of a git revision, and its smoke mode runs (about 30 s on 2 cores: the snapshot step at
two sizes, the working tree only, on datasets made in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_modules import load_benchmark, run_benchmark

from mlsteps.config import CONFIG_ENV_VAR
from mlsteps.steps import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT_SECONDS = 300

bench = load_benchmark("scale")
StepMeasure = bench.StepMeasure
STEPS = [("snapshot", "snapshot"), ("validate", "validate"), ("train", "train"), ("promote", "promote")]


def _runs() -> dict[int, dict[str, dict[str, object]]]:
    """Two sizes, both sides: after is twice as fast and half the memory, except where a step failed or did not run."""
    return {
        1000: {
            "before": {"snapshot": StepMeasure(2.0, 400.0, 0), "train": StepMeasure(10.0, 800.0, 0)},
            "after": {"snapshot": StepMeasure(1.0, 200.0, 0), "train": StepMeasure(5.0, 400.0, 0)},
        },
        10000: {
            "before": {"snapshot": StepMeasure(30.0, 3000.0, 0), "train": StepMeasure(90.0, 2500.0, 0)},
            "after": {"snapshot": StepMeasure(6.0, 300.0, 0), "train": StepMeasure(1.0, 0.0, 2, "bad rows")},
        },
    }


def test_tables_put_both_sides_side_by_side_with_after_over_before_ratios() -> None:
    text = bench.report_text([1000, 10000], ["snapshot", "train"], _runs(), ["before", "after"])
    lines = text.splitlines()

    small = lines.index("1,000 rows")
    assert (
        " ".join(lines[small + 1].split()) == "step before s after s ratio before peak RSS MB after peak RSS MB ratio"
    )
    assert lines[small + 2].split() == ["snapshot", "2.0", "1.0", "0.50", "400", "200", "0.50"]
    assert lines[small + 3].split() == ["train", "10.0", "5.0", "0.50", "800", "400", "0.50"]
    big = lines.index("10,000 rows")
    assert lines[big + 2].split() == ["snapshot", "30.0", "6.0", "0.20", "3000", "300", "0.10"]
    assert lines[big + 3].split() == ["train", "90.0", "failed", "-", "2500", "failed", "-"]
    before, after = lines[-2], lines[-1]
    # before: 12 s -> 120 s for 10x the rows is linear (1.00); its biggest peak is snapshot's 3000 MB, over 2 GB.
    assert "time x10.00 for rows x10 = 1.00 (at most linear)" in before
    assert "3000 MB (snapshot), OVER the 2 GB goal" in before
    # after: no total at 10,000 rows (train failed), so no growth; its biggest peak is among the steps that ran.
    assert "no two sizes with every step run" in after and "300 MB (snapshot), within the 2 GB goal" in after
    assert "train FAILED at 10,000 rows" in after


def test_growth_beyond_linear_is_called_out_and_one_side_alone_has_its_own_columns() -> None:
    runs = {rows: {"after": {"snapshot": StepMeasure(rows / 100, 100.0, 0)}} for rows in (100, 1000)}
    runs[1000]["after"] = {"snapshot": StepMeasure(30.0, 100.0, 0)}  # 10x the rows, 30x the time

    text = bench.report_text([100, 1000], ["snapshot"], runs, ["after"])

    assert text.splitlines()[3].split() == ["snapshot", "-", "1.0", "-", "-", "100", "-"]
    assert "time x30.00 for rows x10 = 3.00 (MORE than linear)" in text.splitlines()[-1]
    lines = text.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("scaling"))) + 1 :] == [lines[-1]], (
        "one summary line: only the side that ran"
    )


def test_steps_run_up_to_the_last_one_named_and_only_those_named_show() -> None:
    assert bench.chosen_steps(STEPS, None) == (STEPS, ["snapshot", "validate", "train", "promote"])
    assert bench.chosen_steps(STEPS, ["train", "snapshot"]) == (STEPS[:3], ["snapshot", "train"])
    with pytest.raises(SystemExit, match="--steps score: not steps of .*choose among snapshot,validate,train,promote"):
        bench.chosen_steps(STEPS, ["score"])


def test_a_step_process_is_measured_by_its_own_peak_rss_and_exit_code(tmp_path: Path) -> None:
    """A step's figure is its own peak, not that of the (here deliberately large) process that started it."""
    allocate = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    grown = bench.run_measured([sys.executable, "-c", allocate], dict(os.environ), tmp_path)
    small = bench.run_measured([sys.executable, "-c", "import sys; print('bad rows'); sys.exit(2)"], {}, tmp_path)
    del ballast

    assert grown.ok and grown.peak_rss_mb >= 300
    assert not small.ok and small.exit_code == 2 and small.peak_rss_mb < 300 and "bad rows" in small.output_tail


def test_the_before_side_runs_the_code_and_config_of_the_revision_in_a_worktree_removed_afterwards() -> None:
    from orchestration.models import model_settings

    settings = model_settings(bench.MODEL)
    with bench.checkout("HEAD") as side:
        env = bench.side_env(side, settings)
        assert (side.root / "include" / "mlsteps" / "__main__.py").exists()
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(side.root / "include")
        assert Path(env[CONFIG_ENV_VAR]).is_relative_to(side.root) and Path(env[CONFIG_ENV_VAR]).exists()
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert str(side.root) not in worktrees and not side.root.exists()
    with (
        pytest.raises(SystemExit, match="--ref 'no-such-revision' is not a commit"),
        bench.checkout("no-such-revision"),
    ):
        pass


def test_smoke_run_measures_each_size_from_the_cached_datasets(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for rows in bench.SMOKE_SIZES:  # made here, in-process: the benchmark must reuse them, not generate its own
        make_dataset.main(output_uri=str(bench.dataset_path(cache, rows, "binary")), rows=rows, seed=bench.SEED)

    args = ["--smoke", "--ref", "none", "--steps", "snapshot", "--cache", str(cache)]
    report, output = run_benchmark("scale", args, tmp_path, SMOKE_TIMEOUT_SECONDS)

    assert "generating" not in output
    assert report["config"]["sizes"] == list(bench.SMOKE_SIZES) and report["config"]["sides"] == {
        "after": "working tree"
    }
    assert [(run["rows"], run["side"], list(run["steps"])) for run in report["runs"]] == [
        (rows, "after", ["snapshot"]) for rows in bench.SMOKE_SIZES
    ]
    assert all(run["steps"]["snapshot"]["peak_rss_mb"] > 0 for run in report["runs"])
    (summary,) = report["summary"]
    assert summary["peak_rss_step"] == "snapshot" and summary["within_memory_goal"] is True
    assert "4,000 rows" in output and "scaling" in output
