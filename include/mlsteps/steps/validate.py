"""The ``validate`` step: check the run's snapshot against the dataset's Great Expectations suite.

It always writes the full GX result (``gx_result.json``), a human-readable report (``report.html``) and
``result.json``, so a failed run can be inspected; then it fails the task if any expectation failed.
"""

from __future__ import annotations

from typing import Any

from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.data import storage, validation
from mlsteps.data.batches import iter_frames, parquet_rows, parquet_schema
from mlsteps.errors import DataError, ValidationFailed
from mlsteps.results import read_result, result_uri, step_dir, write_result

STEP = "validate"
UPSTREAM = "snapshot"
GX_RESULT_FILE = "gx_result.json"
REPORT_FILE = "report.html"


def run(run_root: str, config: PipelineConfig) -> dict[str, Any]:
    """Validate the run's snapshot against the dataset's suite and write the reports and the result.

    The reports and ``result.json`` are written before a failure is raised, so a failed run can be inspected.

    Args:
        run_root: folder of this run's artifacts; the snapshot step must have run for it.
        config: the pipeline config; its dataset config holds the limits the suite checks.

    Returns:
        The payload written to ``result.json`` (``success`` is true: a failure raises).

    Raises:
        ValidationFailed: at least one expectation failed; the message lists them and where the report is.
        DataError: the snapshot result names no snapshot file, or that file does not exist.
    """
    dataset = config.dataset
    snapshot = read_result(run_root, UPSTREAM)
    snapshot_id = snapshot.get("snapshot_id", "unknown")
    uri, rows, columns = _snapshot_file(snapshot, run_root)
    print(f"validating snapshot {snapshot_id}: {rows} rows, {columns} columns", flush=True)

    batch_rows = config.processing.batch_rows

    def read(columns: list[str] | None = None) -> Any:
        return iter_frames(uri, batch_rows, columns)

    # Batch by batch: memory follows processing.batch_rows, not the size of the snapshot.
    report = validation.validate_batches(read, dataset, rows)
    out_dir = step_dir(run_root, STEP)
    json_uri = storage.join(out_dir, GX_RESULT_FILE)
    html_uri = storage.join(out_dir, REPORT_FILE)
    storage.write_json(json_uri, report.gx_result)
    storage.write_text(html_uri, validation.render_html(report, f"{dataset.name} snapshot {snapshot_id}"))
    stats = report.statistics
    payload = {
        "success": report.success,
        "snapshot_id": snapshot_id,
        "report_json_uri": json_uri,
        "report_html_uri": html_uri,
        "statistics": stats,
        "failures": [failure.as_dict() for failure in report.failures],
    }
    write_result(run_root, STEP, payload)
    print(
        f"validation {'passed' if report.success else 'failed'}: "
        f"{stats['successful']} of {stats['evaluated']} expectations met; report: {html_uri}",
        flush=True,
    )
    if not report.success:
        failures = "\n".join(f"- {failure.line()}" for failure in report.failures)
        raise ValidationFailed(
            f"snapshot {snapshot_id} failed {stats['unsuccessful']} of {stats['evaluated']} expectations:\n"
            f"{failures}\n"
            f"Report: {html_uri}. Fix the source data, or if the data is right, adjust the limits in the "
            f"dataset config of {dataset.name!r} (min/max, categories, max_null_fraction, max_unknown_fraction, "
            "leakage, future_tolerance_seconds)."
        )
    return payload


def main(run_root: RunRoot, config: ConfigUri = None) -> None:
    """Validate the run's snapshot: row count, required columns, types, ranges, categories, nulls, target, ids,
    target leakage (one feature predicting the target almost perfectly) and event times in the future.

    Always writes gx_result.json, report.html and result.json under <run-root>/validate/.
    Exits with code 2 and lists every failed expectation when the data does not pass.

    Args:
        run_root: folder of this run's artifacts; the snapshot step's result.json must be there.
        config: pipeline config YAML; its dataset config holds the limits the suite checks.

    Raises:
        ValidationFailed: at least one expectation failed; the message lists them and where the report is.
        DataError: the snapshot file named by the snapshot result cannot be read.

    Examples:
        python -m mlsteps validate --run-root /tmp/runs/ml_retrain/manual-1
        python -m mlsteps validate --run-root s3://ml-artifacts/runs/ml_retrain/manual-1 --config pipeline.yaml
    """
    run(run_root, load_pipeline_config(config))


def _snapshot_file(snapshot: dict[str, Any], run_root: str) -> tuple[str, int, int]:
    """The snapshot's URI, rows and columns (from its footer), or a DataError saying which file is missing and how
    to recreate it."""
    uri = snapshot.get("snapshot_uri")
    if not uri:
        raise DataError(
            f"{result_uri(run_root, UPSTREAM)} has no snapshot_uri: re-run `{UPSTREAM}` for this --run-root"
        )
    try:
        return uri, parquet_rows(uri), len(parquet_schema(uri).names)
    except FileNotFoundError:
        raise DataError(
            f"snapshot file {uri} does not exist: re-run `{UPSTREAM}` for this --run-root ({run_root})"
        ) from None
