"""Placeholder until the step lands."""


def main() -> None:
    """Not implemented yet."""
    raise NotImplementedError("make_dataset")
