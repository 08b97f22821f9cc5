"""``python -m mlsteps <step> ...``: the container command of every step."""

from mlsteps.cli import app

app(prog_name="mlsteps")
