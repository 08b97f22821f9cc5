"""Data and prediction drift: a reference profile of the training snapshot, vectorised two-sample statistics,
per-feature and dataset decisions, prediction-signal decisions per task, and a JSON + HTML report.

Typical use (training time, then every monitoring window)::

    signals = prediction_signals(info.task, info.classes, model_output_on_snapshot)
    profile = build_profile(snapshot, pipeline.dataset.features, predictions=signals, config=pipeline.drift)
    save_profile(profile, "s3://bucket/models/churn/7/drift_profile.npz")
    ...
    window_signals = prediction_signals(info.task, info.classes, window)  # a prediction-log window
    report = detect_drift(load_profile(uri), window, predictions=window_signals, config=pipeline.drift)
    storage.write_json(json_uri, report.to_dict())
    storage.write_text(html_uri, render_html(report, "churn window 2025-06-01"))
"""

from mlsteps.monitoring.drift.decide import DatasetDrift, DriftReport, FeatureDrift, WindowDrift, detect_drift
from mlsteps.monitoring.drift.profile import (
    ReferenceProfile,
    build_profile,
    load_profile,
    prediction_signals,
    save_profile,
)
from mlsteps.monitoring.drift.report import render_html

__all__ = [
    "DatasetDrift",
    "DriftReport",
    "FeatureDrift",
    "ReferenceProfile",
    "WindowDrift",
    "build_profile",
    "detect_drift",
    "load_profile",
    "prediction_signals",
    "render_html",
    "save_profile",
]
