"""The drift statistics equal scipy's reference implementations to 1e-9, ties and small samples included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.spatial import distance

from mlsteps.monitoring.drift import stats

# (reference size, current size, rounding that makes ties or None, shift of the current mean)
SAMPLES = [
    (1, 1, None, 0.0),
    (5, 7, None, 0.3),
    (8, 8, 0, 0.0),  # heavy ties: a handful of integers
    (40, 90, 1, 0.1),
    (3, 20_000, 1, 0.0),  # one tiny side, asymptotic p-value
    (1_000, 3_000, 1, 0.05),
    (10_000, 10_000, None, 0.02),  # the largest size scipy's auto still computes exactly
    (12_000, 9_000, None, 0.02),  # just past it: asymptotic
    (100_000, 250_000, 2, 0.01),
]


def _pair(n_reference: int, n_current: int, decimals: int | None, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n_reference * 7 + n_current)
    reference = rng.normal(0, 1, n_reference)
    current = rng.normal(shift, 1.1, n_current)
    if decimals is not None:
        reference, current = np.round(reference, decimals), np.round(current, decimals)
    return np.sort(reference), np.sort(current)


@pytest.mark.parametrize(("n_reference", "n_current", "decimals", "shift"), SAMPLES)
def test_ks_test_equals_scipy_ks_2samp(n_reference: int, n_current: int, decimals: int | None, shift: float) -> None:
    reference, current = _pair(n_reference, n_current, decimals, shift)
    statistic, p_value = stats.ks_test(reference, current)
    expected = scipy_stats.ks_2samp(reference, current)
    assert statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-9)


@pytest.mark.parametrize(("n_reference", "n_current", "decimals", "shift"), SAMPLES)
def test_wasserstein_equals_scipy(n_reference: int, n_current: int, decimals: int | None, shift: float) -> None:
    reference, current = _pair(n_reference, n_current, decimals, shift)
    expected = scipy_stats.wasserstein_distance(reference, current)
    assert stats.wasserstein_distance(reference, current) == pytest.approx(expected, abs=1e-9)


def test_ks_p_value_beyond_the_exact_range_is_smirnovs_asymptotic_one() -> None:
    reference, current = _pair(12_000, 9_000, None, 0.02)
    _, p_value = stats.ks_test(reference, current)
    assert p_value == pytest.approx(scipy_stats.ks_2samp(reference, current, method="asymp").pvalue, abs=1e-12)


def test_identical_samples_give_zero_distance_and_p_value_one() -> None:
    values = np.sort(np.round(np.random.default_rng(3).normal(size=5_000), 1))
    assert stats.ks_test(values, values) == (0.0, 1.0)
    assert stats.wasserstein_distance(values, values) == 0.0


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ([500, 300, 200], [480, 310, 210]),
        ([500, 300, 200], [200, 300, 500]),
        ([900, 100], [850, 150]),  # 2 x 2: scipy applies Yates' correction
        ([700, 300, 0], [650, 300, 50]),  # a category only the current window has
        ([5, 3, 2, 1], [1, 2, 4, 6]),  # small counts
    ],
)
def test_chi_square_and_jensen_shannon_equal_scipy(reference: list[int], current: list[int]) -> None:
    reference_counts, current_counts = np.array(reference), np.array(current)
    statistic, p_value, effect_size = stats.chi_square_test(reference_counts, current_counts)
    table = np.array([reference, current])
    expected = scipy_stats.chi2_contingency(table)
    assert statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-9)
    # Cohen's w is the uncorrected statistic freed of both sample sizes
    uncorrected = scipy_stats.chi2_contingency(table, correction=False).statistic
    assert effect_size == pytest.approx(np.sqrt(uncorrected * table.sum() / (sum(reference) * sum(current))), abs=1e-9)
    js = stats.jensen_shannon_distance(reference_counts, current_counts)
    assert js == pytest.approx(distance.jensenshannon(reference, current), abs=1e-9)
    assert js == pytest.approx(distance.jensenshannon(reference, current, base=np.e), abs=1e-9)  # natural log


def test_chi_square_of_a_single_category_finds_no_difference() -> None:
    assert stats.chi_square_test(np.array([400]), np.array([35])) == (0.0, 1.0, 0.0)


def test_cohens_w_does_not_shrink_with_a_large_reference() -> None:
    current = np.array([30, 60, 90, 120])
    _, _, balanced = stats.chi_square_test(np.array([120, 90, 60, 30]), current)
    _, _, lopsided = stats.chi_square_test(np.array([120, 90, 60, 30]) * 10_000, current)
    assert lopsided == pytest.approx(balanced, rel=0.3)
    assert lopsided > 0.5


def test_psi_of_known_shares_and_epsilon_for_empty_bins() -> None:
    expected = (0.75 - 0.5) * np.log(0.75 / 0.5) + (0.25 - 0.5) * np.log(0.25 / 0.5)
    assert stats.psi(np.array([50, 50]), np.array([75, 25]), epsilon=1e-4) == pytest.approx(expected, abs=1e-12)
    with_empty = (0.5 - 1e-4) * np.log(0.5 / 1e-4) + (0.5 - 1.0) * np.log(0.5 / 1.0)
    assert stats.psi(np.array([0, 10]), np.array([5, 5]), epsilon=1e-4) == pytest.approx(with_empty, abs=1e-12)
    assert stats.psi(np.array([3, 7]), np.array([30, 70]), epsilon=1e-4) == pytest.approx(0.0, abs=1e-15)


def test_bin_counts_match_digitize_with_open_outer_bins() -> None:
    values = np.sort(np.round(np.random.default_rng(5).normal(size=2_000), 1))
    edges = np.array([-1.0, 0.0, 0.0 + 0.5, 1.0])
    expected = np.bincount(np.digitize(values, edges), minlength=edges.size + 1)
    np.testing.assert_array_equal(stats.bin_counts(values, edges), expected)
    np.testing.assert_array_equal(stats.bin_counts(values, np.empty(0)), [values.size])
