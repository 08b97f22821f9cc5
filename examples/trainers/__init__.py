"""Worked examples of your own model family (``training.model: module:Class``, ``mlsteps.training.api``)."""
