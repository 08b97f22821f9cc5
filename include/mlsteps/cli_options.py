"""CLI options shared by every step, so each means the same thing everywhere."""

from typing import Annotated

import typer

RunRoot = Annotated[
    str,
    typer.Option(
        "--run-root",
        help="folder of this run's artifacts (path, file:// or s3:// URI); the step writes under <run-root>/<step>/",
        envvar="MLSTEPS_RUN_ROOT",
    ),
]
ConfigUri = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="pipeline config YAML (path or URI); default: $MLSTEPS_CONFIG, else the bundled pipeline.yaml",
    ),
]
