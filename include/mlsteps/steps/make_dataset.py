"""The ``make-dataset`` command: write one of the built-in synthetic datasets as input for the pipeline.

``--task`` picks the dataset (``mlsteps.data.datasets.BUILT_IN``): churn (binary), tiers (multiclass) or claims
(regression); each is described by its dataset config under ``include/config/datasets/``. It makes input data rather
than running a pipeline step, so it takes no run root and writes no result.json. The drift knobs produce the shifted
batches that exercise drift monitoring and retraining.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer

from mlsteps.data.datasets import BUILT_IN, BuiltInDataset
from mlsteps.data.snapshots import table_format, unknown_extension_message, write_table
from mlsteps.errors import ConfigError
from mlsteps.evaluation.tasks import Task, is_classification


def describe_target(frame: pd.DataFrame, dataset: BuiltInDataset) -> str:
    """The target in a few words: the share of each class (classification), or its mean and range (regression)."""
    target = frame[dataset.target]
    if is_classification(dataset.task):
        shares = target.value_counts(normalize=True)
        return f"{dataset.target}: " + ", ".join(f"{label} {share:.1%}" for label, share in shares.items())
    return f"{dataset.target}: mean {target.mean():,.2f}, min {target.min():,.2f}, max {target.max():,.2f}"


def main(
    output_uri: Annotated[
        str,
        typer.Option("--output-uri", help="file to write: .csv, .parquet or .pq; path, file:// or s3:// URI"),
    ],
    task: Annotated[
        Task,
        typer.Option("--task", help="binary: churn; multiclass: loyalty tiers; regression: insurance claim costs"),
    ] = "binary",
    rows: Annotated[int, typer.Option("--rows", min=1, help="number of rows")] = 20000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="random seed; the same options give the same rows")] = 0,
    start: Annotated[str, typer.Option("--start", help="first day of event_time (UTC)")] = "2025-01-01",
    days: Annotated[int, typer.Option("--days", min=1, help="days that event_time spreads over")] = 365,
    covariate_drift: Annotated[
        float,
        typer.Option("--covariate-drift", min=0.0, help="feature drift: 0 = reference distribution, 1 = strong"),
    ] = 0.0,
    concept_drift: Annotated[
        float,
        typer.Option(
            "--concept-drift", min=0.0, max=1.0, help="target drift: 0 = reference relationship, 1 = a different one"
        ),
    ] = 0.0,
) -> None:
    r"""Generate one of the built-in synthetic datasets and write it as CSV or Parquet.

    The output format follows the extension of --output-uri. The dataset configs that describe the data are
    include/config/datasets/churn.yaml (binary), tiers.yaml (multiclass) and claims.yaml (regression).

    Args:
        output_uri: where to write the file.
        task: which dataset: binary (churn), multiclass (tiers) or regression (claims).
        rows: number of rows.
        seed: random seed.
        start: first day of event_time (UTC).
        days: number of days event_time spreads over.
        covariate_drift: how far the feature distributions move.
        concept_drift: how far the relationship between features and target moves.

    Raises:
        ConfigError: the output extension is unknown or --start is not a date.

    Examples:
        python -m mlsteps make-dataset --output-uri data/churn.csv --seed 1

        python -m mlsteps make-dataset --task regression --output-uri data/claims.parquet

        python -m mlsteps make-dataset --output-uri s3://ml/in/drift.parquet \
            --covariate-drift 0.8 --concept-drift 0.5
    """
    if table_format(output_uri) is None:
        raise ConfigError(f"--output-uri {output_uri}: {unknown_extension_message(output_uri)}")
    try:
        pd.Timestamp(start, tz="UTC")
    except ValueError:
        raise ConfigError(f"--start {start!r} is not a date; give one like 2025-01-01") from None
    dataset = BUILT_IN[task]
    frame = dataset.generate(
        rows, seed=seed, start=start, days=days, covariate_drift=covariate_drift, concept_drift=concept_drift
    )
    write_table(frame, output_uri)
    print(
        f"make-dataset: wrote {len(frame)} rows of {dataset.name} ({task}; {describe_target(frame, dataset)}) "
        f"to {output_uri}",
        flush=True,
    )
