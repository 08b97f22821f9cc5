"""Two-sample statistics on pre-sorted values and on category counts, equal to scipy's to 1e-9.

The reference side always comes from a profile: numeric values sorted once when the profile was built, categories
as counts. The current window is sorted once per feature; the two sorted arrays are then merged in linear time
(no sort of the concatenation, unlike ``scipy.stats.ks_2samp`` and ``wasserstein_distance``), which is what keeps a
10-million-row window fast. p-values come from scipy's distributions (``kstwo``) or from scipy itself where the
input is only a few counts (``chi2_contingency``, ``jensenshannon``). A window read in batches is counted against the
reference's values instead (``EcdfCounts``), so it need not be held whole.
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
    merged, gaps = _merged_ecdf_gaps(reference, current)
    last_of_run = np.append(merged[1:] != merged[:-1], True)
    statistic = float(np.abs(gaps[last_of_run]).max())
    return statistic, ks_p_value(statistic, reference, current, current.size)


def ks_p_value(statistic: float, reference: np.ndarray, current: np.ndarray | None, current_size: int) -> float:
    """The p-value of a two-sample KS statistic, as ``scipy.stats.ks_2samp`` (method "auto") gives it.

    Args:
        statistic: the KS statistic of the two samples.
        reference: the reference's sorted values.
        current: the current sample's sorted values; needed only while both samples have at most 10,000 values
            (the exact distribution is scipy-internal, so scipy's whole test runs, in microseconds at that size).
        current_size: the number of current values.

    Returns:
        The exact p-value up to 10,000 values a side, else Smirnov's asymptotic one (``scipy.stats.kstwo``).
    """
    from scipy import stats

    if max(reference.size, current_size) <= KS_EXACT_MAX_SIZE:
        if current is None or current.size != current_size:
            raise ValueError(f"the exact KS p-value needs all {current_size} current values")
        return float(stats.ks_2samp(reference, current).pvalue)
    larger, smaller = sorted([float(reference.size), float(current_size)], reverse=True)
    effective_size = np.round(larger * smaller / (larger + smaller))
    return float(np.clip(stats.kstwo.sf(statistic, effective_size), 0.0, 1.0))


class EcdfCounts:
    """The KS statistic and the Wasserstein distance of a current sample against a fixed sorted reference, from
    numbers that add up over batches.

    The reference's empirical CDF is flat between two neighbouring distinct reference values, where the current one
    only rises. So the largest gap there lies at one of the two ends, and the number of current values at or below
    each reference value and below it give the KS statistic exactly (the very numbers ``ks_test`` compares).
    Between those values the area between the two CDFs is exact from the count and the sum of the current values
    inside, unless the current CDF crosses the reference's level there. Only those crossing intervals are estimated
    (as if their values were spread evenly), and ``wasserstein`` returns how far off the sum can be: in each, at most
    twice its width times the smaller of the two CDF gaps at its ends. With a dense reference sample that is small
    (below 1e-3 of a std with 20,000 reference values; the profile keeps up to 100,000), and 0 when no current value
    lies strictly between reference values (a discrete feature whose values the reference has). Memory is four
    numbers per distinct reference value, whatever the number of current values.
    """

    def __init__(self, reference: np.ndarray) -> None:
        """Start counting against ``reference`` (sorted finite values)."""
        self.reference = reference
        self.points = np.unique(reference)
        self.reference_seen = np.searchsorted(reference, self.points, side="right")
        # per region (below the first point, between two points, above the last):
        size = self.points.size + 1
        self.at_or_below = np.zeros(size, dtype=np.int64)  # values by the first point not below them
        self.below = np.zeros(size, dtype=np.int64)  # values by the first point above them
        self.inside = np.zeros(size, dtype=np.int64)  # values equal to no point, by the region they lie in
        self.inside_sum = np.zeros(size, dtype=np.float64)  # and their sum
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        """Count a batch of finite current values (any order)."""
        size = self.points.size + 1
        first_not_below = np.searchsorted(self.points, values, side="left")
        first_above = np.searchsorted(self.points, values, side="right")
        inside = first_not_below == first_above
        self.at_or_below += np.bincount(first_not_below, minlength=size)
        self.below += np.bincount(first_above, minlength=size)
        self.inside += np.bincount(first_above[inside], minlength=size)
        self.inside_sum += np.bincount(first_above[inside], weights=values[inside], minlength=size)
        self.count += int(values.size)

    def _shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At each point: the reference's CDF, the current CDF, and the current share strictly below it."""
        at_or_below = np.cumsum(self.at_or_below)[:-1]
        below = np.cumsum(self.below)[:-1]
        return self.reference_seen / self.reference.size, at_or_below / self.count, below / self.count

    def statistic(self) -> float:
        """The KS statistic of every value added against the reference, equal to ``ks_test``'s."""
        reference_share, current_share, current_below = self._shares()
        gaps = [
            np.abs(reference_share - current_share),  # at each point
            np.abs(reference_share[:-1] - current_below[1:]),  # the largest current value before the next point
            current_below[:1],  # the largest current value below every point
        ]
        return float(max(gap.max(initial=0.0) for gap in gaps))

    def wasserstein(self) -> tuple[float, float]:
        """The Wasserstein distance of every value added to the reference (``wasserstein_distance``), and how far
        from it the value returned may be at most (0: exact; see the class docstring)."""
        points, count = self.points, self.count
        reference_share, current_share, current_below = self._shares()
        # outside the reference's range one CDF is 0 or 1: the area is exact
        outside = self.inside[0] * points[0] - self.inside_sum[0] + self.inside_sum[-1] - self.inside[-1] * points[-1]
        width = np.diff(points)
        start_gap = current_share[:-1] - reference_share[:-1]  # current minus reference CDF after each point
        end_gap = current_below[1:] - reference_share[:-1]  # ... just before the next point
        signed_area = width * start_gap + (self.inside[1:-1] * points[1:] - self.inside_sum[1:-1]) / count
        crossing = (start_gap < 0) & (end_gap > 0)
        smallest = np.abs(signed_area)
        largest = np.minimum(signed_area - 2 * width * start_gap, 2 * width * end_gap - signed_area)
        spread_evenly = width * (start_gap**2 + end_gap**2) / np.where(crossing, 2 * (end_gap - start_gap), 1.0)
        area = np.where(crossing, np.clip(spread_evenly, smallest, np.maximum(smallest, largest)), smallest)
        bound = float(np.sum(np.where(crossing, np.maximum(largest - smallest, 0.0), 0.0)))
        return float(outside / count + area.sum()), bound


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
