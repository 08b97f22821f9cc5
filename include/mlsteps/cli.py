"""The steps CLI: ``python -m mlsteps <step> --run-root URI ...``.

Each step module keeps its heavy imports (torch, MLflow, Great Expectations) inside functions, so this CLI
starts fast whichever step it runs. A ``StepError`` (bad config, bad data, a failed gate) prints one clear
message and exits with code 2, which tells the orchestrator that a retry cannot help.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from mlsteps import IMPORTED_AT, results
from mlsteps.distributed import World
from mlsteps.errors import EXIT_USER_ERROR, StepError
from mlsteps.steps import COMMANDS, module_name

app = typer.Typer(
    name="mlsteps",
    help="Steps of the continuous-training loop. Each writes <run-root>/<step>/result.json.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _user_errors_exit_cleanly(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # stdout is what the orchestrator streams into the task log
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
        try:
            outcome = func(*args, **kwargs)
        except StepError as exc:
            print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        if kwargs.get("run_root") and World.from_env().is_main:  # one writer of result.json per step
            elapsed = time.perf_counter() - IMPORTED_AT
            results.record_elapsed(kwargs["run_root"], name, elapsed)
            print(f"{name} finished in {elapsed:.1f} s", flush=True)
        return outcome

    return wrapper


for _command in COMMANDS:
    _module = importlib.import_module(f"mlsteps.steps.{module_name(_command)}")
    app.command(_command)(_user_errors_exit_cleanly(_command, _module.main))
