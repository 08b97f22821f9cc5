"""Bad windows never crash drift detection: each gives a per-feature status and message, and never counts as drift."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsteps.config import ColumnSpec, DriftConfig, FeatureDriftConfig
from mlsteps.monitoring.drift import build_profile, detect_drift, render_html

SPECS = [
    ColumnSpec(name="amount", type="numeric"),
    ColumnSpec(name="devices", type="numeric"),
    ColumnSpec(name="plan", type="categorical"),
]
PLANS = np.array(["basic", "standard", "premium"])


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 30.0, rows),
            "devices": rng.poisson(2.0, rows).astype(float),
            "plan": PLANS[rng.choice(3, rows, p=[0.5, 0.3, 0.2])],
        }
    )


@pytest.fixture(scope="module")
def profile() -> object:
    return build_profile(
        _frame(5_000, seed=1), SPECS, predictions={"probability": np.random.default_rng(2).uniform(size=5_000)}
    )


def _statuses(report: object) -> dict[str, str]:
    return {f.name: f.status for f in report.features}


def _still_renders(report: object) -> None:
    """The report is valid JSON (no NaN) and its page names every feature."""
    json.dumps(report.to_dict(), allow_nan=False)
    page = render_html(report, "bad input")
    assert all(f"<td>{f.name}</td>" in page for f in report.features)


@pytest.mark.parametrize("window", [_frame(0, seed=3), pd.DataFrame()], ids=["no-rows", "no-rows-no-columns"])
def test_an_empty_window_is_insufficient_data_everywhere(profile: object, window: pd.DataFrame) -> None:
    report = detect_drift(profile, window, predictions={"probability": np.empty(0)})
    assert set(_statuses(report).values()) == {"insufficient_data"}
    assert report.features[0].message == "the window has no rows: nothing to judge"
    assert report.prediction[0].status == "insufficient_data"
    assert (report.dataset.status, report.dataset.drift_detected, report.dataset.drifted_share) == (
        "insufficient_data",
        False,
        None,
    )
    assert not report.data_quality_failed
    _still_renders(report)


def test_a_missing_column_is_a_data_quality_problem_not_drift(profile: object) -> None:
    window = _frame(2_000, seed=4).drop(columns=["devices"])
    report = detect_drift(profile, window, predictions={"probability": np.random.default_rng(5).uniform(size=2_000)})
    assert _statuses(report) == {"amount": "ok", "devices": "missing", "plan": "ok"}
    assert report.data_quality_failed
    assert report.data_quality_problems == [
        "devices: missing: the window has no column 'devices': check the prediction logging"
    ]
    assert report.dataset.judged_features == 2
    assert report.counts == {"features": 3, "drifted": 0, "ok": 2, "missing": 1}
    _still_renders(report)


def test_an_all_null_feature_is_reported_as_such(profile: object) -> None:
    window = _frame(2_000, seed=6).assign(amount=np.nan, plan=None)
    report = detect_drift(profile, window)
    assert _statuses(report) == {"amount": "all_null", "devices": "ok", "plan": "all_null"}
    amount = report.features[0]
    assert amount.message == "all 2000 values of the window are missing or not finite: check the logging"
    assert (amount.current_null_share, amount.drifted) == (1.0, False)
    assert report.data_quality_failed
    _still_renders(report)


def test_infinite_values_count_as_missing(profile: object) -> None:
    window = _frame(2_000, seed=7)
    window.loc[:99, "amount"] = np.inf
    amount = detect_drift(profile, window).features[0]
    assert (amount.status, amount.current_count, amount.current_null_share) == ("ok", 1_900, 0.05)


def test_text_in_a_numeric_column_is_wrong_type_and_numbers_as_text_are_read(profile: object) -> None:
    window = _frame(2_000, seed=8)
    as_text = window.assign(amount=window["amount"].astype(str))
    assert detect_drift(profile, as_text).features[0].status == "ok"
    garbage = window.assign(devices=["n/a"] * 10 + window["devices"].astype(str).tolist()[10:])
    report = detect_drift(profile, garbage)
    devices = report.features[1]
    assert devices.status == "wrong_type"
    assert "column 'devices' should be numeric but 10 of 2000 values are not numbers (e.g. 'n/a'" in devices.message
    assert report.data_quality_failed


def test_a_constant_reference_cannot_be_normalised_for_wasserstein_but_ks_judges_it() -> None:
    reference = _frame(3_000, seed=9).assign(devices=2.0)
    profile = build_profile(reference, SPECS)
    same = detect_drift(profile, _frame(3_000, seed=10).assign(devices=2.0))
    devices = same.features[1]
    assert devices.status == "constant_reference"
    assert "every reference value is 2 (std 0)" in devices.message
    assert "set this feature's method to ks or psi in the drift config" in devices.message
    assert not devices.drifted and not same.data_quality_failed
    with_ks = DriftConfig(features={"devices": FeatureDriftConfig(method="ks")})
    assert not detect_drift(profile, _frame(3_000, seed=10).assign(devices=2.0), config=with_ks).features[1].drifted
    moved = detect_drift(profile, _frame(3_000, seed=10).assign(devices=3.0), config=with_ks).features[1]
    assert (moved.status, moved.statistic, moved.drifted) == ("ok", 1.0, True)


def test_only_new_categories_is_a_data_quality_problem(profile: object) -> None:
    window = _frame(2_000, seed=11).assign(plan=lambda f: f["plan"].str.upper())
    report = detect_drift(profile, window)
    plan = report.features[2]
    assert (plan.status, plan.unseen_share, plan.drifted) == ("unseen_only", 1.0, False)
    assert "every current value is a category the reference lacks (['BASIC', 'PREMIUM', 'STANDARD']" in plan.message
    assert report.data_quality_failed
    _still_renders(report)


def test_some_new_categories_are_counted_and_named(profile: object) -> None:
    window = _frame(2_000, seed=12)
    window.loc[:199, "plan"] = "enterprise"
    plan = detect_drift(profile, window).features[2]
    assert (plan.status, plan.unseen_share) == ("ok", 0.1)
    assert plan.message.endswith("10.00% of current values are categories the reference lacks: ['enterprise']")
    assert plan.histogram["labels"] == ["basic", "premium", "standard", "enterprise"]


def test_scores_missing_while_the_profile_has_them_is_a_data_quality_problem(profile: object) -> None:
    report = detect_drift(profile, _frame(2_000, seed=13))
    assert report.prediction[0].status == "missing"
    assert report.data_quality_failed
    assert report.data_quality_problems[0].startswith(
        "probability: missing: the profile has a reference of prediction signal 'probability'"
    )


def test_a_reference_column_without_values_leaves_the_feature_unjudged() -> None:
    profile = build_profile(_frame(3_000, seed=14).assign(amount=np.nan), SPECS)
    amount = detect_drift(profile, _frame(3_000, seed=15)).features[0]
    assert amount.status == "insufficient_data"
    assert amount.message.startswith("3000 current and 0 reference values, fewer than min_samples 50")
