"""Feature preprocessing of the tabular model, fitted on the train split only.

Numeric columns are median-imputed and standardised; categorical columns become vocabulary indices, with 0
reserved for missing and unseen values so that new categories in serving traffic never break a prediction.
The fitted state is a small JSON document that travels inside the MLflow model package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsteps.data.sketches import exact_medians
from mlsteps.errors import DataError

UNKNOWN_INDEX = 0


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise one DataError that names every column the frame lacks.

    Args:
        frame: the data to check.
        columns: the column names it must have.
        what: what the frame is (named in the message), e.g. ``"snapshot s3://.../data.parquet"``.

    Raises:
        DataError: listing the missing columns and the columns that are present.
    """
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"{what} lacks column(s) {missing}; it has {list(frame.columns)}. "
            "Fix the data or the column names in the dataset config."
        )


@dataclass(frozen=True)
class NumericStats:
    """Train-split statistics of one numeric column.

    ``minimum`` and ``maximum`` are the range seen in training (None for an all-null column, and in packages made
    before they were recorded); the model server counts inputs outside it and names them when a row cannot be scored.
    """

    median: float
    mean: float
    std: float
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class TabularPreprocessor:
    """Median imputation + standardisation for numeric columns, vocabulary indices for categorical ones.

    Attributes:
        numeric: statistics per numeric column, in model input order.
        vocabularies: sorted train categories per categorical column, in model input order; category
            ``vocabularies[c][i]`` gets index ``i + 1``.
    """

    numeric: dict[str, NumericStats]
    vocabularies: dict[str, list[str]]

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric_columns: Sequence[str], categorical_columns: Sequence[str]
    ) -> TabularPreprocessor:
        """Learn the statistics and vocabularies from the train split.

        Args:
            frame: the train split (never validation or holdout rows: that would leak them into the model).
            numeric_columns: numeric feature names, in model input order.
            categorical_columns: categorical feature names, in model input order.

        Raises:
            DataError: a column is missing or a numeric column holds non-numbers.
        """
        require_columns(frame, [*numeric_columns, *categorical_columns], "training data")
        numbers = numeric_frame(frame, numeric_columns)
        medians = numbers.median().fillna(0.0)
        imputed = numbers.fillna(medians)
        means = imputed.mean().fillna(0.0)
        stds = imputed.std(ddof=0).fillna(1.0)
        stds = stds.where(stds > 0, 1.0)
        minima, maxima = numbers.min(), numbers.max()
        numeric = {
            column: NumericStats(
                median=float(medians[column]),
                mean=float(means[column]),
                std=float(stds[column]),
                minimum=None if pd.isna(minima[column]) else float(minima[column]),
                maximum=None if pd.isna(maxima[column]) else float(maxima[column]),
            )
            for column in numeric_columns
        }
        vocabularies = {
            column: sorted(_as_categories(frame[column]).dropna().unique().tolist()) for column in categorical_columns
        }
        return cls(numeric=numeric, vocabularies=vocabularies)

    @classmethod
    def fit_batches(
        cls,
        read: Callable[[Sequence[str]], Iterable[pd.DataFrame]],
        numeric_columns: Sequence[str],
        categorical_columns: Sequence[str],
        keep_at_most: int,
    ) -> TabularPreprocessor:
        """``fit`` over the train split read batch by batch, in memory bounded by the batch and ``keep_at_most``.

        Every statistic equals ``fit``'s on the whole split up to float rounding: min, max and the vocabularies are
        exact from one pass; medians are exact from a few more (``sketches.exact_medians``); the mean of the imputed
        values is (sum of values + median x nulls) / rows, and the standard deviation one more pass over the squared
        deviations from it. Vocabularies hold every distinct train category, as ``fit``'s do.

        Args:
            read: starts a pass over the train split; yields DataFrames of the given columns.
            numeric_columns: numeric feature names, in model input order.
            categorical_columns: categorical feature names, in model input order.
            keep_at_most: values of one column a median search keeps in memory at once.

        Raises:
            DataError: a numeric column holds non-numbers.
        """
        numeric_columns, categorical_columns = list(numeric_columns), list(categorical_columns)
        rows = 0
        present = dict.fromkeys(numeric_columns, 0)
        sums = dict.fromkeys(numeric_columns, 0.0)
        minima: dict[str, float | None] = dict.fromkeys(numeric_columns)
        maxima: dict[str, float | None] = dict.fromkeys(numeric_columns)
        categories: dict[str, set[str]] = {column: set() for column in categorical_columns}
        for frame in read([*numeric_columns, *categorical_columns]):
            rows += len(frame)
            numbers = numeric_frame(frame, numeric_columns)
            for column in numeric_columns:
                values = numbers[column].to_numpy()
                values = values[~np.isnan(values)]
                if values.size:
                    present[column] += values.size
                    sums[column] += float(values.sum())
                    low, high = float(values.min()), float(values.max())
                    minima[column] = low if minima[column] is None else min(minima[column], low)
                    maxima[column] = high if maxima[column] is None else max(maxima[column], high)
            for column in categorical_columns:
                categories[column].update(_as_categories(frame[column]).dropna().unique().tolist())

        def numeric_passes() -> Iterable[dict[str, np.ndarray]]:
            for frame in read(numeric_columns):
                numbers = numeric_frame(frame, numeric_columns)
                yield {column: numbers[column].to_numpy() for column in numeric_columns}

        medians = exact_medians(numeric_passes, present, keep_at_most) if numeric_columns and rows else {}
        medians = {
            column: 0.0 if np.isnan(medians.get(column, np.nan)) else medians[column] for column in numeric_columns
        }
        means = {
            column: (sums[column] + medians[column] * (rows - present[column])) / rows if rows else 0.0
            for column in numeric_columns
        }
        squares = dict.fromkeys(numeric_columns, 0.0)
        if numeric_columns and rows:
            for batch in numeric_passes():
                for column, values in batch.items():
                    imputed = np.where(np.isnan(values), medians[column], values)
                    squares[column] += float(np.square(imputed - means[column]).sum())
        stds = {column: float(np.sqrt(squares[column] / rows)) if rows else 0.0 for column in numeric_columns}
        numeric = {
            column: NumericStats(
                median=medians[column],
                mean=means[column],
                std=stds[column] if stds[column] > 0 else 1.0,
                minimum=minima[column],
                maximum=maxima[column],
            )
            for column in numeric_columns
        }
        return cls(numeric=numeric, vocabularies={column: sorted(categories[column]) for column in categorical_columns})

    @property
    def numeric_columns(self) -> list[str]:
        """Numeric feature names, in the order of the numeric matrix's columns."""
        return list(self.numeric)

    @property
    def categorical_columns(self) -> list[str]:
        """Categorical feature names, in the order of the index matrix's columns."""
        return list(self.vocabularies)

    @property
    def cardinalities(self) -> list[int]:
        """Number of train categories per categorical column (index 0 comes on top)."""
        return [len(vocabulary) for vocabulary in self.vocabularies.values()]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Turn raw rows into model inputs.

        Args:
            frame: raw feature columns (extra columns are ignored).

        Returns:
            A float32 matrix (rows x numeric columns), standardised with nulls imputed, and an int64 matrix
            (rows x categorical columns) of vocabulary indices, 0 for missing or unseen categories.

        Raises:
            DataError: a feature column is missing or a numeric column holds non-numbers.
        """
        require_columns(frame, [*self.numeric_columns, *self.categorical_columns], "input data")
        numbers = numeric_frame(frame, self.numeric_columns)
        columns: dict[str, Any] = {column: numbers[column].to_numpy() for column in self.numeric_columns}
        for column in self.categorical_columns:
            columns[column] = _as_categories(frame[column]).to_numpy(dtype=object, na_value=None)
        return self.transform_columns(columns, len(frame))

    def transform_columns(self, columns: Mapping[str, Any], rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``transform`` for columns already split and typed, as the model server parses them from a request.

        One implementation serves both: ``transform`` types a DataFrame's columns and comes here, so batch
        scoring and serving encode rows identically. Without pandas on this path, a one-row request costs
        microseconds.

        Args:
            columns: every feature column: numeric ones as float64 arrays with NaN for nulls, categorical ones
                as sequences of strings with None for nulls (extra columns are ignored).
            rows: the number of rows (every column has this many values).

        Returns:
            As ``transform``.
        """
        numbers = np.empty((rows, len(self.numeric)), dtype=np.float64)
        for position, column in enumerate(self.numeric):
            numbers[:, position] = columns[column]
        medians, means, stds = self._numeric_stats
        numeric = ((np.where(np.isnan(numbers), medians, numbers) - means) / stds).astype(np.float32)
        indices = np.empty((rows, len(self.vocabularies)), dtype=np.int64)
        for position, (column, lookup) in enumerate(self._category_indices.items()):
            # Missing (None) and unseen values are not keys, so they get UNKNOWN_INDEX.
            indices[:, position] = [lookup.get(value, UNKNOWN_INDEX) for value in columns[column]]
        return numeric, indices

    @functools.cached_property
    def _numeric_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Medians, means and standard deviations as arrays in numeric-column order."""
        return tuple(
            np.array([getattr(stats, name) for stats in self.numeric.values()], dtype=np.float64)
            for name in ("median", "mean", "std")
        )

    @functools.cached_property
    def _category_indices(self) -> dict[str, dict[str, int]]:
        """Per categorical column, category -> index (``vocabularies[c][i]`` gets ``i + 1``)."""
        return {
            column: {category: index for index, category in enumerate(vocabulary, start=1)}
            for column, vocabulary in self.vocabularies.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form; ``from_dict`` restores an equal preprocessor."""
        return {
            "numeric": {column: asdict(stats) for column, stats in self.numeric.items()},
            "vocabularies": {column: list(vocabulary) for column, vocabulary in self.vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TabularPreprocessor:
        """Restore a preprocessor written by ``to_dict``."""
        return cls(
            numeric={column: NumericStats(**stats) for column, stats in payload["numeric"].items()},
            vocabularies={column: list(vocabulary) for column, vocabulary in payload["vocabularies"].items()},
        )


def _as_categories(values: pd.Series) -> pd.Series:
    """Categories as strings (missing stays missing), so 1 in serving traffic matches "1" from training."""
    return values.astype("str")


def numeric_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The numeric columns as float64 with NaN for nulls.

    Raises:
        DataError: naming each column that holds values which are not numbers.
    """
    converted = pd.DataFrame(index=frame.index)
    not_numeric = {}
    for column in columns:
        converted[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        bad = converted[column].isna() & frame[column].notna()
        if bad.any():
            not_numeric[column] = frame[column][bad].head(3).tolist()
    if not_numeric:
        details = "; ".join(f"{column}: e.g. {examples}" for column, examples in not_numeric.items())
        raise DataError(
            f"numeric feature column(s) hold values that are not numbers ({details}). Send numbers or null."
        )
    return converted
