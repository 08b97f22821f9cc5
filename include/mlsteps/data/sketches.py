"""Whole-column statistics from batches: exact order statistics (medians) in a few passes and bounded memory.

A median needs every value at once when computed directly. Here it is found by radix selection over the bits of
the values instead: each pass over the column counts how many values fall in each of 65,536 ranges of the ranges
still in question, which narrows the k-th smallest value to one range; once a range holds few enough values they
are kept and the value is picked exactly. Memory per column is the 65,536 counts plus at most ``keep_at_most``
values, whatever the number of rows; the result is exact, equal to ``numpy.median`` of the whole column.
Floats are ordered by their IEEE 754 bits turned into unsigned keys (negative values with every bit flipped,
others with the sign bit set), so ranges are ranges of keys and no comparison of floats can round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

_BITS_PER_PASS = 16
_BINS = 1 << _BITS_PER_PASS
_KEY_BITS = 64
_SIGN = np.uint64(1 << 63)


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """float64 values (no NaN) as uint64 keys in the same order."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def from_sortable_keys(keys: np.ndarray) -> np.ndarray:
    """The float64 values of keys made by ``sortable_keys``."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).view(np.float64)


@dataclass
class _Search:
    """The search for the value of one rank (0-based) of one column, one pass at a time."""

    rank: int  # within the values whose key starts with ``prefix``
    prefix: int = 0
    prefix_bits: int = 0
    value: float | None = None
    collect: bool = False  # this pass keeps the values with this prefix and picks the value
    histogram: np.ndarray | None = None
    kept: list[np.ndarray] | None = None

    def start_pass(self) -> None:
        self.histogram = np.zeros(_BINS, dtype=np.int64)
        self.kept = []

    def observe(self, keys: np.ndarray) -> None:
        """Count (or keep) the keys of a batch that are still in question."""
        if self.prefix_bits:
            keys = keys[(keys >> np.uint64(_KEY_BITS - self.prefix_bits)) == np.uint64(self.prefix)]
        if self.collect:
            self.kept.append(keys)
            return
        shift = np.uint64(_KEY_BITS - self.prefix_bits - _BITS_PER_PASS)
        self.histogram += np.bincount(((keys >> shift) & np.uint64(_BINS - 1)).astype(np.int64), minlength=_BINS)

    def end_pass(self, keep_at_most: int) -> None:
        """Pick the value from the kept keys, or narrow the range to the one holding the rank."""
        if self.collect:
            keys = np.concatenate(self.kept)
            self.value = float(from_sortable_keys(np.partition(keys, self.rank)[self.rank]))
            return
        cumulative = np.cumsum(self.histogram)
        chosen = int(np.searchsorted(cumulative, self.rank, side="right"))
        self.rank -= int(cumulative[chosen - 1]) if chosen else 0
        self.prefix = (self.prefix << _BITS_PER_PASS) | chosen
        self.prefix_bits += _BITS_PER_PASS
        if self.prefix_bits == _KEY_BITS:
            self.value = float(from_sortable_keys(np.array([self.prefix], dtype=np.uint64))[0])
        else:
            self.collect = int(self.histogram[chosen]) <= keep_at_most
        self.histogram, self.kept = None, None


def exact_medians(
    read: Callable[[], Iterable[dict[str, np.ndarray]]], counts: dict[str, int], keep_at_most: int
) -> dict[str, float]:
    """The median of each column, exact (as ``numpy.median`` of all its non-NaN values), in passes over batches.

    Args:
        read: starts a pass; yields batches as ``{column: float64 values}`` (NaN = missing, skipped).
        counts: the number of non-NaN values of each column (from an earlier pass).
        keep_at_most: values of one column kept in memory at once; more passes when fewer.

    Returns:
        ``{column: median}``; NaN for a column without values. Takes 1 to 4 passes over the data (2 typically).
    """
    searches = {
        column: [_Search(rank) for rank in dict.fromkeys([(count - 1) // 2, count // 2])]
        for column, count in counts.items()
        if count
    }
    while True:
        pending = {c: [s for s in found if s.value is None] for c, found in searches.items()}
        pending = {column: found for column, found in pending.items() if found}
        if not pending:
            break
        for search in (s for found in pending.values() for s in found):
            search.start_pass()
        for batch in read():
            for column, found in pending.items():
                values = batch[column]
                keys = sortable_keys(values[~np.isnan(values)])
                for search in found:
                    search.observe(keys)
        for search in (s for found in pending.values() for s in found):
            search.end_pass(keep_at_most)
    medians = dict.fromkeys(counts, float("nan"))
    for column, found in searches.items():
        # An even count: the mean of the two middle values, as numpy takes it.
        medians[column] = float(np.mean([found[0].value, found[-1].value]))
    return medians
