"""The steps package stays free of Airflow and starts fast, whichever step runs."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mlsteps
from mlsteps.steps import COMMANDS


def _modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.walk_packages(mlsteps.__path__, prefix="mlsteps.") if m.name != "mlsteps.__main__"
    )


def test_no_mlsteps_module_imports_airflow() -> None:
    # The steps run in containers without Airflow; the orchestration side depends on them, never the reverse.
    probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('airflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, *_modules()], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_cli_loads_no_heavy_library_before_a_step_needs_it() -> None:
    probe = (
        "import sys; import mlsteps.cli; "
        "print(','.join(m for m in ('torch', 'mlflow', 'great_expectations', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_every_step_has_help_with_examples() -> None:
    for step in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-m", "mlsteps", step, "--help"], capture_output=True, text=True, check=True
        )
        assert "Examples" in done.stdout, step


def test_every_step_module_is_a_command_and_every_command_a_module() -> None:
    import mlsteps.steps
    from mlsteps.steps import module_name

    modules = {m.name for m in pkgutil.iter_modules(mlsteps.steps.__path__)}
    assert modules == {module_name(command) for command in COMMANDS}
