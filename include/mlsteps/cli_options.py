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

PredictionStore = Annotated[
    str,
    typer.Option("--prediction-store", help="root folder of the prediction log (path or URI), as score writes it"),
]
WindowEnd = Annotated[
    str | None,
    typer.Option(
        "--window-end",
        help="end of the window, ISO 8601 (no offset means UTC); default: the start of the current hour",
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
