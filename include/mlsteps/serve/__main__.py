"""``python -m mlsteps.serve``: the serving image's command."""

from mlsteps.serve.cli import app

if __name__ == "__main__":
    app(prog_name="python -m mlsteps.serve")
