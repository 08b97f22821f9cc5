"""One module per step; each has a ``main`` function that is its CLI (see ``mlsteps.cli``).

The names here are the one list of steps: the CLI registers its commands from ``COMMANDS``, the Airflow side
configures ``runtime.steps.<step>`` for each of ``STEPS`` and refuses any other name.
"""

# The steps DAG tasks run, in the order of the loop; each is a module, a CLI command and a task id.
STEPS = (
    "snapshot",
    "validate",
    "preprocess",
    "train",
    "evaluate",
    "register",
    "promote",
    "drift",
    "performance",
    "deploy",
)
# Every command of ``python -m mlsteps``: the steps, plus make-dataset (writes input data) and init-dataset (infers
# a dataset config from a data file), which take no run root, and score (batch scoring of a file with a registered
# model).
COMMANDS = ("make-dataset", "init-dataset", *STEPS, "score")


def module_name(command: str) -> str:
    """The module of a command under ``mlsteps.steps`` (``make-dataset`` -> ``make_dataset``)."""
    return command.replace("-", "_")
