"""Evaluation: the tasks (``tasks``), their holdout metrics and the champion/challenger gate (``metrics``)."""
