"""The drift report: its JSON fields and a self-contained HTML page with a chart per drifted feature or prediction
signal."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mlsteps.config import ColumnSpec, PipelineConfig
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.evaluation.tasks import output_frame
from mlsteps.monitoring.drift import DriftReport, build_profile, detect_drift, prediction_signals, render_html
from mlsteps.monitoring.drift.report import share_chart_svg

FEATURE_FIELDS = {
    "name",
    "kind",
    "status",
    "message",
    "method",
    "statistic",
    "p_value",
    "adjusted_p_value",
    "effect_size",
    "threshold",
    "min_effect_size",
    "drifted",
    "reference_count",
    "current_count",
    "current_null_share",
    "unseen_share",
    "histogram",
}


@pytest.fixture(scope="module")
def report(pipeline_config: PipelineConfig) -> DriftReport:
    rng = np.random.default_rng(0)
    reference = {"probability": rng.beta(2, 5, 5_000)}
    profile = build_profile(generate_churn(5_000, seed=1), pipeline_config.dataset.features, reference)
    window = generate_churn(600, seed=2, covariate_drift=1.0).drop(columns=["num_devices"])
    return detect_drift(profile, window, predictions={"probability": rng.beta(3, 4, 600)})


def test_json_report_has_every_field(report: DriftReport, tmp_path: object) -> None:
    uri = str(tmp_path / "drift.json")
    storage.write_json(uri, report.to_dict())
    data = json.loads(storage.read_text(uri))
    assert set(data) == {
        "features",
        "prediction",
        "dataset",
        "data_quality_failed",
        "data_quality_problems",
        "reference_rows",
        "current_rows",
        "counts",
    }
    assert all(set(feature) == FEATURE_FIELDS for feature in data["features"])
    assert [signal["name"] for signal in data["prediction"]] == ["probability"]
    assert set(data["prediction"][0]) == FEATURE_FIELDS
    assert set(data["dataset"]) == {
        "drift_detected",
        "drifted_features",
        "judged_features",
        "drifted_share",
        "threshold",
        "status",
        "message",
    }
    assert (data["reference_rows"], data["current_rows"]) == (5_000, 600)
    assert data["data_quality_failed"] is True
    assert data["counts"]["missing"] == 1 and data["counts"]["features"] == 16
    tenure = next(f for f in data["features"] if f["name"] == "tenure_months")
    # 600 current rows: the auto method is the KS test, judged by its adjusted p-value and its effect size
    assert (tenure["method"], tenure["threshold"], tenure["min_effect_size"], tenure["drifted"]) == (
        "ks",
        0.05,
        0.1,
        True,
    )
    assert tenure["adjusted_p_value"] >= tenure["p_value"]
    assert len(tenure["histogram"]["labels"]) == len(tenure["histogram"]["current"]) == 10
    assert sum(tenure["histogram"]["current"]) == pytest.approx(1.0)


def test_html_page_is_self_contained_and_charts_the_drifted_features(report: DriftReport) -> None:
    page = render_html(report, "churn window <2025-06>")
    drifted = [f.name for f in report.features if f.drifted]
    steady = [f.name for f in report.features if f.status == "ok" and not f.drifted]
    assert drifted and steady
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Drift: churn window &lt;2025-06&gt;</title>" in page
    charted = re.findall(r"<h3><code>([^<]+)</code>", page)
    assert charted[: len(drifted)] == drifted
    assert not set(steady) & set(charted)
    assert page.count("<svg") == len(charted)
    assert "<td>missing</td>" in page and "the window has no column &#x27;num_devices&#x27;" in page
    assert 'Data quality: <strong class="failed">FAILED</strong>' in page
    for external in ("<script", "src=", "href=", "<link"):
        assert external not in page
    assert render_html(report.to_dict(), "churn window <2025-06>") == page  # renders from the JSON as well


def test_chart_scales_bars_to_the_largest_share_and_escapes_labels() -> None:
    svg = share_chart_svg({"labels": ["<a>", "b"], "reference": [0.5, 0.5], "current": [0.25, 0.75]})
    assert "&lt;a&gt;" in svg and "<a>" not in svg
    bars = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)]
    bars = bars[:4]  # reference and current bar of each label; the legend's squares follow
    assert [height / max(bars) for height in bars] == pytest.approx([2 / 3, 1 / 3, 2 / 3, 1.0], abs=0.01)


def test_the_prediction_section_lists_every_signal_of_a_multiclass_model() -> None:
    tiers = ["bronze", "silver", "gold"]
    rng = np.random.default_rng(3)
    frame = generate_churn(3_000, seed=4)
    specs = [ColumnSpec(name="age", type="numeric")]
    reference = output_frame("multiclass", tiers, rng.dirichlet([4.0, 2.0, 1.0], 3_000))
    profile = build_profile(frame, specs, predictions=prediction_signals("multiclass", tiers, reference))
    # the class mix turns over: gold becomes the most likely class, silver keeps its share
    shifted = output_frame("multiclass", tiers, rng.dirichlet([1.0, 2.0, 4.0], 800))

    report = detect_drift(profile, frame.head(800), predictions=prediction_signals("multiclass", tiers, shifted))
    page = render_html(report, "tiers")

    data = report.to_dict()
    assert [signal["name"] for signal in data["prediction"]] == [
        *(f"probability_{tier}" for tier in tiers),
        "prediction",
    ]
    drifted = [signal["name"] for signal in data["prediction"] if signal["drifted"]]
    assert drifted == ["probability_bronze", "probability_gold", "prediction"]  # silver keeps its share
    assert not data["dataset"]["drift_detected"]  # the features did not move: prediction drift is reported apart
    assert "3 of 4 prediction signal(s) drifted: probability_bronze, probability_gold, prediction" in page
    assert "<h2>Prediction</h2>" in page and "<th>prediction signal</th>" in page
    charted = re.findall(r"<h3><code>([^<]+)</code>", page)
    assert charted == drifted
