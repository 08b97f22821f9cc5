"""Two-sample statistics on pre-sorted values and on category counts, equal to scipy's to 1e-9.

The reference side always comes from a profile: numeric values sorted once when the profile was built, categories
as counts. The current window is sorted once per feature; the two sorted arrays are then merged in linear time
(no sort of the concatenation, unlike ``scipy.stats.ks_2samp`` and ``wasserstein_distance``), which is what keeps a
10-million-row window fast. p-values come from scipy's distributions (``kstwo``) or from scipy itself where the
input is only a few counts (``chi2_contingency``, ``jensenshannon``).
"""

from __future__ import annotations

import numpy as np

# scipy.stats.ks_2samp(method="auto") computes the exact p-value up to this sample size, the asymptotic one above.
KS_EXACT_MAX_SIZE = 10_000


def _merged_ecdf_gaps(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted samples and give, at each merged position, F_reference - F_current counted so far.

    At the last of a run of equal values the counts include every tied value, as ``searchsorted(side="right")``
    does; inside a run the next value is equal, so the gap there never enters a statistic (KS skips it and the
    Wasserstein integral multiplies it by a zero-width step).
    """
    n_reference, n_current = reference.size, current.size
    # a stable merge puts a reference value before equal current values: its slot is its rank plus the
    # number of current values strictly below it
    reference_slots = np.searchsorted(current, reference, side="left") + np.arange(n_reference)
    from_reference = np.zeros(n_reference + n_current, dtype=bool)
    from_reference[reference_slots] = True
    merged = np.empty(n_reference + n_current, dtype=np.float64)
    merged[from_reference] = reference
    merged[~from_reference] = current
    reference_seen = np.cumsum(from_reference)
    current_seen = np.arange(1, merged.size + 1) - reference_seen
    return merged, reference_seen / n_reference - current_seen / n_current


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test, as ``scipy.stats.ks_2samp`` with its default method "auto".

    Args:
        reference: sorted finite values, at least one.
        current: sorted finite values, at least one.

    Returns:
        The statistic (largest gap between the two empirical CDFs) and its p-value: exact while both samples
        have at most 10,000 values, else Smirnov's asymptotic distribution (``scipy.stats.kstwo``).
    """
    from scipy import stats

    merged, gaps = _merged_ecdf_gaps(reference, current)
    last_of_run = np.append(merged[1:] != merged[:-1], True)
    statistic = float(np.abs(gaps[last_of_run]).max())
    if max(reference.size, current.size) <= KS_EXACT_MAX_SIZE:
        # the exact distribution is scipy-internal; at this size running scipy's whole test costs microseconds
        return statistic, float(stats.ks_2samp(reference, current).pvalue)
    larger, smaller = sorted([float(reference.size), float(current.size)], reverse=True)
    effective_size = np.round(larger * smaller / (larger + smaller))
    return statistic, float(np.clip(stats.kstwo.sf(statistic, effective_size), 0.0, 1.0))


def wasserstein_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """First Wasserstein distance between two samples, as ``scipy.stats.wasserstein_distance``.

    Args:
        reference: sorted finite values, at least one.
        current: sorted finite values, at least one.

    Returns:
        The area between the two empirical CDFs, in the unit of the values.
    """
    merged, gaps = _merged_ecdf_gaps(reference, current)
    return float(np.dot(np.abs(gaps[:-1]), np.diff(merged)))


def bin_counts(sorted_values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """How many values fall into each bin ``[edge_i, edge_i+1)``, the outer bins open towards -inf and +inf.

    Args:
        sorted_values: sorted values.
        inner_edges: sorted bin edges; ``k`` edges make ``k + 1`` bins.

    Returns:
        ``k + 1`` counts (int64), found by binary search: no pass over the values.
    """
    below_edge = np.searchsorted(sorted_values, inner_edges, side="left")
    return np.diff(np.concatenate(([0], below_edge, [sorted_values.size]))).astype(np.int64)


def _shares_without_zeros(counts: np.ndarray, epsilon: float) -> np.ndarray:
    shares = counts / counts.sum()
    return np.where(shares == 0, epsilon, shares)


def psi(reference_counts: np.ndarray, current_counts: np.ndarray, epsilon: float) -> float:
    """Population stability index: sum of (current - reference share) * ln(current / reference share) over bins.

    An empty bin's share is taken as ``epsilon`` (Evidently uses the same 0.0001 by default), so a bin that one
    side lacks adds a large but finite term instead of an infinite one.

    Args:
        reference_counts: counts per bin (or category) in the reference.
        current_counts: counts per bin (or category) in the current window, same order.
        epsilon: the share that stands in for zero.

    Returns:
        The PSI (0 for equal shares; 0.1 is a moderate, 0.25 a major shift by the usual rule of thumb).
    """
    reference_share = _shares_without_zeros(reference_counts, epsilon)
    current_share = _shares_without_zeros(current_counts, epsilon)
    return float(np.sum((current_share - reference_share) * np.log(current_share / reference_share)))


def chi_square_test(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float, float]:
    """Chi-square test of homogeneity of the 2 x k table (reference, current) x categories.

    Runs ``scipy.stats.chi2_contingency`` (with its default Yates correction, which applies to 2 x 2 tables).

    Args:
        reference_counts: counts per category in the reference; every category has a count on one side at least.
        current_counts: counts per category in the current window, same order.

    Returns:
        The statistic, its p-value and the effect size Cohen's w of the two samples,
        ``sqrt(sum((current share - reference share)^2 / pooled share))``: unlike Cramér's V it does not shrink
        when the reference is far larger than the window, and unlike the statistic it does not grow with the
        sample size (0.1 is a small effect, 0.3 a medium one by Cohen's rule of thumb).
    """
    from scipy import stats

    table = np.vstack([reference_counts, current_counts])
    if table.shape[1] < 2:
        return 0.0, 1.0, 0.0  # one category on both sides: nothing can differ
    outcome = stats.chi2_contingency(table)
    reference_share = reference_counts / reference_counts.sum()
    current_share = current_counts / current_counts.sum()
    pooled_share = table.sum(axis=0) / table.sum()
    effect_size = np.sqrt(np.sum((current_share - reference_share) ** 2 / pooled_share))
    return float(outcome.statistic), float(outcome.pvalue), float(effect_size)


def jensen_shannon_distance(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen-Shannon distance of the two category distributions, natural log (scipy's default base).

    Args:
        reference_counts: counts per category in the reference.
        current_counts: counts per category in the current window, same order.

    Returns:
        ``scipy.spatial.distance.jensenshannon`` of the shares: 0 for equal ones, at most sqrt(ln 2) ~ 0.833.
    """
    from scipy.spatial import distance

    return float(
        distance.jensenshannon(reference_counts / reference_counts.sum(), current_counts / current_counts.sum())
    )
