"""Waiting for the prediction log: the server's writer flushes in the background, so tests poll with a deadline."""

from __future__ import annotations

import time

import pandas as pd

from mlsteps.monitoring import prediction_log


def logged_rows(store: str, model_name: str, rows: int, timeout: float = 30.0) -> pd.DataFrame:
    """Every logged prediction of ``model_name`` once the log holds at least ``rows`` rows.

    Raises:
        AssertionError: the log did not reach ``rows`` rows within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            frame = prediction_log.read_window(store, model_name, "2000-01-01", "2100-01-01")
        except FileNotFoundError:
            frame = None
        if frame is not None and len(frame) >= rows:
            return frame
        assert time.monotonic() < deadline, f"the prediction log did not reach {rows} row(s)"
        time.sleep(0.05)
