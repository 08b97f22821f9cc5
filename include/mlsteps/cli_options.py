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


def above_zero(value: float | None) -> float | None:
    """Option callback for a lower bound that is not allowed itself; typer's ``min`` includes its bound.

    Raises:
        typer.BadParameter: the value is 0 or below; typer names the option and exits with code 2.
    """
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value} is not above 0")
    return value
