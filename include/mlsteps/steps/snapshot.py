"""The ``snapshot`` step: freeze the input data as a content-addressed Parquet snapshot.

Everything downstream reads the snapshot, never the input file, so a run can be reproduced after the input
changes, and an unchanged input maps to the snapshot that is already stored. The result also says whether the
champion was trained on this snapshot (``champion_trained_on_snapshot``): then retraining would reproduce it.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.data.snapshots import stream_snapshot

STEP = "snapshot"


def _champion_lineage(model_name: str, snapshot_id: str) -> dict[str, Any]:
    """Which version is champion, and whether it was trained on this very snapshot: the orchestrator stops a
    retraining that would only reproduce it. Nothing is known without a registry (``MLFLOW_TRACKING_URI`` unset)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return {"champion_version": None, "champion_trained_on_snapshot": None}
    champion = registry.alias_version(tracking.client(), model_name, registry.CHAMPION)
    same = champion is not None and champion.tags.get("snapshot_id") == snapshot_id
    return {"champion_version": champion and int(champion.version), "champion_trained_on_snapshot": same}


def run(run_root: str, config: PipelineConfig, input_uri: str, snapshot_store: str) -> dict[str, Any]:
    """Read the input, type its columns as the dataset config says, and store it once under its content id, a batch
    of ``processing.batch_rows`` rows at a time.

    Args:
        run_root: folder of this run's artifacts.
        config: the pipeline config; its dataset names the column types.
        input_uri: the CSV or Parquet file to snapshot.
        snapshot_store: folder of the content-addressed snapshot store.

    Returns:
        The payload written to ``result.json``.

    Raises:
        DataError: the input is a folder, not CSV or Parquet, missing, empty or without rows, or its timestamp
            column holds values that are not date-times. Missing columns are left to the validate step.
    """
    dataset = config.dataset
    # Streamed: memory follows processing.batch_rows, not the size of the input.
    streamed = stream_snapshot(input_uri, dataset, snapshot_store, config.processing.batch_rows)
    snapshot = streamed.snapshot
    print(f"{STEP}: read {streamed.rows} rows x {len(streamed.columns)} columns from {input_uri}", flush=True)
    action = "reused the stored" if snapshot.reused else "wrote"
    print(f"{STEP}: {action} snapshot {snapshot.snapshot_id} at {snapshot.data_uri}", flush=True)
    payload = {
        "snapshot_id": snapshot.snapshot_id,
        "snapshot_uri": snapshot.data_uri,
        "schema_uri": snapshot.schema_uri,
        "dataset": dataset.name,
        "rows": streamed.rows,
        "columns": streamed.columns,
        "source_uri": input_uri,
        "reused": snapshot.reused,
        **_champion_lineage(config.registry.model_name, snapshot.snapshot_id),
    }
    results.write_result(run_root, STEP, payload)
    return payload


def main(
    run_root: RunRoot,
    input_uri: Annotated[
        str,
        typer.Option(
            "--input-uri", help="CSV or Parquet file to snapshot (.csv, .parquet, .pq; path, file:// or s3://)"
        ),
    ],
    snapshot_store: Annotated[
        str,
        typer.Option(
            "--snapshot-store",
            help="folder of the content-addressed snapshots, e.g. <artifact root>/snapshots (path or URI)",
        ),
    ],
    config: ConfigUri = None,
) -> None:
    r"""Snapshot the input data under its content id, stored once and reused.

    Categorical features become strings (nulls stay null) and the timestamp
    column is parsed to UTC; nothing else changes, so the validate step sees
    the data as it arrived. Writes data.parquet and schema.json under
    <snapshot-store>/<dataset>/<snapshot id>/ and the run's result.json.

    Args:
        run_root: folder of this run's artifacts.
        input_uri: the CSV or Parquet file to snapshot.
        snapshot_store: folder of the content-addressed snapshot store.
        config: pipeline config; its dataset names the column types.

    Examples:
        python -m mlsteps snapshot --run-root /tmp/runs/r1 \
            --input-uri data/churn.csv --snapshot-store /tmp/snapshots

        python -m mlsteps snapshot --run-root s3://ml/runs/r1 \
            --input-uri s3://ml/in/churn.parquet \
            --snapshot-store s3://ml/snapshots
    """
    run(run_root, load_pipeline_config(config), input_uri, snapshot_store)
