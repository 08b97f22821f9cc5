"""One module per step; each has a ``main`` function that is its CLI (see ``mlsteps.cli``)."""
