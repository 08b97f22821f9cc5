"""Drift decisions: no alarm on the same distribution at any size, drift on real shifts, BH, gates and overrides."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mlsteps.config import ColumnSpec, DriftConfig, FeatureDriftConfig, PipelineConfig
from mlsteps.data.datasets import generate_churn
from mlsteps.errors import ConfigError
from mlsteps.monitoring.drift import build_profile, detect_drift

NUMERIC = [ColumnSpec(name="amount", type="numeric"), ColumnSpec(name="minutes", type="numeric")]
CATEGORICAL = [ColumnSpec(name="colour", type="categorical")]
COLOURS = np.array(["red", "green", "blue", "grey"])


def _frame(rows: int, seed: int, shift: float = 0.0, mix: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)) -> pd.DataFrame:
    """Two numeric columns and one categorical; ``shift`` moves the means (in std units), ``mix`` the colours."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.normal(100 + 15 * shift, 15, rows),
            "minutes": np.round(rng.exponential(20, rows) + 20 * shift),  # many ties
            "colour": COLOURS[rng.choice(4, rows, p=mix)],
        }
    )


def _by_name(report: object) -> dict[str, object]:
    return {f.name: f for f in report.features}


@pytest.fixture(scope="module")
def million_row_profile() -> object:
    return build_profile(_frame(1_000_000, seed=1), NUMERIC + CATEGORICAL)


@pytest.mark.parametrize(
    "config",
    [DriftConfig(), DriftConfig(numeric_method="ks", categorical_method="chisquare")],
    ids=["auto-distances", "p-value-tests"],
)
def test_a_million_rows_of_the_same_distribution_do_not_drift(million_row_profile: object, config: DriftConfig) -> None:
    report = detect_drift(million_row_profile, _frame(1_000_000, seed=2), config=config)
    assert [f.status for f in report.features] == ["ok", "ok", "ok"]
    assert not any(f.drifted for f in report.features), [f.message for f in report.features]
    assert not report.dataset.drift_detected
    assert report.dataset.drifted_share == 0.0
    assert not report.data_quality_failed


def test_auto_uses_distances_on_large_windows_and_tests_on_small_ones(million_row_profile: object) -> None:
    large = _by_name(detect_drift(million_row_profile, _frame(5_000, seed=3)))
    assert (large["amount"].method, large["colour"].method) == ("wasserstein", "jensenshannon")
    small = _by_name(detect_drift(million_row_profile, _frame(300, seed=3)))
    assert (small["amount"].method, small["colour"].method) == ("ks", "chisquare")
    switched = _by_name(
        detect_drift(million_row_profile, _frame(300, seed=3), config=DriftConfig(large_sample_size=200))
    )
    assert switched["amount"].method == "wasserstein"


def test_identical_data_reports_zero_statistics_and_no_drift() -> None:
    frame = _frame(20_000, seed=4)
    for config in (DriftConfig(), DriftConfig(numeric_method="ks", categorical_method="chisquare")):
        report = detect_drift(build_profile(frame, NUMERIC + CATEGORICAL), frame, config=config)
        assert [f.statistic for f in report.features] == [0.0, 0.0, 0.0]
        assert not any(f.drifted for f in report.features)


@pytest.mark.parametrize("rows", [300, 20_000])
def test_a_shifted_mean_and_a_changed_category_mix_drift(million_row_profile: object, rows: int) -> None:
    current = _frame(rows, seed=5, shift=0.5, mix=(0.1, 0.2, 0.3, 0.4))
    report = detect_drift(million_row_profile, current)
    assert all(f.drifted for f in report.features), [f.message for f in report.features]
    assert report.dataset.drift_detected
    assert report.dataset.message == "3 of 3 judged features drifted: share 1.000 >= drift_share 0.5: dataset drift"


def test_covariate_drift_of_the_churn_dataset_is_detected(pipeline_config: PipelineConfig) -> None:
    features = pipeline_config.dataset.features
    profile = build_profile(generate_churn(5_000, seed=1), features)
    steady = detect_drift(profile, generate_churn(3_000, seed=2))
    drifted = detect_drift(profile, generate_churn(3_000, seed=2, covariate_drift=1.0))
    assert steady.counts == {"features": 16, "drifted": 0, "ok": 16}
    assert not steady.dataset.drift_detected
    assert drifted.dataset.drift_detected
    assert {"tenure_months", "support_calls_90d", "contract_type"} <= {f.name for f in drifted.features if f.drifted}


def test_large_sample_significance_without_effect_size_is_not_drift(million_row_profile: object) -> None:
    # 2% of a std: invisible in practice, yet with a million rows the KS test is wildly significant.
    current = _frame(1_000_000, seed=6, shift=0.02)
    amount = _by_name(detect_drift(million_row_profile, current, config=DriftConfig(numeric_method="ks")))["amount"]
    assert amount.adjusted_p_value < 1e-6
    assert amount.effect_size < 0.1
    assert not amount.drifted
    assert amount.message.endswith(
        "KS statistic 0.0090 < min effect size 0.1 (significant through the sample size only): no drift"
    )


def test_benjamini_hochberg_adjusts_across_the_tested_features() -> None:
    specs = [ColumnSpec(name=f"x{i}", type="numeric") for i in range(10)]
    reference = pd.DataFrame({s.name: np.random.default_rng(100 + i).normal(size=2_000) for i, s in enumerate(specs)})
    rng = np.random.default_rng(0)
    current = pd.DataFrame({s.name: rng.normal(size=200) for s in specs})
    config = DriftConfig(numeric_method="ks", min_effect_size={"ks": 0.0})
    report = detect_drift(build_profile(reference, specs), current, config=config)
    raw = [f.p_value for f in report.features]
    adjusted = [f.adjusted_p_value for f in report.features]
    np.testing.assert_allclose(adjusted, scipy_stats.false_discovery_control(raw, method="bh"), rtol=1e-12)
    # one feature is below alpha by chance alone; after the adjustment across ten it is not
    chance = [f for f in report.features if f.p_value < 0.05]
    assert [f.name for f in chance] == ["x4"]
    assert chance[0].adjusted_p_value > 0.05
    assert not any(f.drifted for f in report.features)


def test_fewer_values_than_min_samples_are_insufficient_data_not_drift(million_row_profile: object) -> None:
    current = _frame(30, seed=7, shift=3.0)
    report = detect_drift(million_row_profile, current)
    assert {f.status for f in report.features} == {"insufficient_data"}
    assert "30 current and 100000 reference values, fewer than min_samples 50" in report.features[0].message
    assert report.dataset.status == "insufficient_data"
    assert not report.dataset.drift_detected
    assert not report.data_quality_failed
    lowered = DriftConfig(features={"amount": FeatureDriftConfig(min_samples=20)})
    amount = _by_name(detect_drift(million_row_profile, current, config=lowered))["amount"]
    assert (amount.status, amount.drifted) == ("ok", True)


def test_methods_and_thresholds_can_be_set_globally_and_per_feature(million_row_profile: object) -> None:
    current = _frame(5_000, seed=8, shift=0.5)
    config = DriftConfig(
        numeric_method="psi",
        thresholds={"psi": 0.05},
        features={
            "minutes": FeatureDriftConfig(method="ks", threshold=0.01, min_effect_size=0.9),
            "colour": FeatureDriftConfig(method="psi", threshold=5.0),
        },
    )
    features = _by_name(detect_drift(million_row_profile, current, config=config))
    amount, minutes, colour = features["amount"], features["minutes"], features["colour"]
    assert (amount.method, amount.threshold, amount.drifted) == ("psi", 0.05, True)
    assert (minutes.method, minutes.threshold, minutes.min_effect_size) == ("ks", 0.01, 0.9)
    assert not minutes.drifted  # significant, but the KS statistic is far below the 0.9 asked for
    assert (colour.method, colour.threshold, colour.drifted) == ("psi", 5.0, False)


def test_dataset_decision_follows_drift_share(million_row_profile: object) -> None:
    current = _frame(5_000, seed=9).assign(amount=lambda f: f["amount"] + 30)  # one of three features drifts
    assert not detect_drift(million_row_profile, current).dataset.drift_detected
    lenient = detect_drift(million_row_profile, current, config=DriftConfig(drift_share=0.3))
    assert lenient.dataset.drift_detected
    assert lenient.dataset.message.startswith("1 of 3 judged features drifted: share 0.333 >= drift_share 0.3")


def test_prediction_drift_is_its_own_signal() -> None:
    rng = np.random.default_rng(10)
    reference = _frame(10_000, seed=11)
    profile = build_profile(reference, NUMERIC + CATEGORICAL, predictions={"probability": rng.beta(2, 5, 10_000)})
    report = detect_drift(profile, _frame(5_000, seed=12), predictions={"probability": rng.beta(5, 2, 5_000)})
    assert report.prediction[0].drifted
    assert report.prediction[0].name == "probability"
    assert not report.dataset.drift_detected
    assert report.counts["drifted"] == 0
    calm = detect_drift(profile, _frame(5_000, seed=12), predictions={"probability": rng.beta(2, 5, 5_000)})
    assert not calm.prediction[0].drifted
    assert detect_drift(build_profile(reference, NUMERIC), reference).prediction == []


def test_decisions_are_logged_with_both_numbers(million_row_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlsteps.monitoring.drift.decide"):
        detect_drift(million_row_profile, _frame(5_000, seed=13))
    assert "drift of amount: ok: wasserstein 0.0" in caplog.text
    assert "< threshold 0.1: no drift" in caplog.text
    assert "dataset drift: 0 of 3 judged features drifted: share 0.000 < drift_share 0.5" in caplog.text


def test_overrides_that_do_not_fit_the_profile_are_refused_all_at_once() -> None:
    probability = np.random.default_rng(3).uniform(size=5_000)
    profile = build_profile(_frame(5_000, seed=1), NUMERIC + CATEGORICAL, predictions={"probability": probability})
    config = DriftConfig(
        features={
            "amount": FeatureDriftConfig(method="chisquare"),
            "colour": FeatureDriftConfig(method="wasserstein"),
            "amuont": FeatureDriftConfig(threshold=0.2),
        },
        score=FeatureDriftConfig(method="jensenshannon"),
    )
    with pytest.raises(ConfigError, match="drift config does not fit") as raised:
        detect_drift(profile, _frame(100, seed=14), config=config)
    message = str(raised.value)
    assert "drift.features names ['amuont'], which the reference profile lacks" in message
    assert "drift.features.amount.method 'chisquare' does not apply to a numeric column" in message
    assert "drift.features.colour.method 'wasserstein' does not apply to a categorical column" in message
    assert "drift.score.method 'jensenshannon' does not apply to a numeric column" in message


def test_the_bundled_pipeline_config_has_drift_defaults(pipeline_config: PipelineConfig) -> None:
    drift = pipeline_config.drift
    assert (drift.numeric_method, drift.categorical_method, drift.large_sample_size) == ("auto", "auto", 1000)
    assert (drift.thresholds.ks, drift.thresholds.wasserstein, drift.thresholds.jensenshannon) == (0.05, 0.1, 0.1)
