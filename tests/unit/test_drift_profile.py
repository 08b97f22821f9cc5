"""The reference profile: what it keeps, its deterministic sample cap, the prediction signals of each task, its
round trip through local files and S3, and the same profile built batch by batch in bounded memory."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsteps.config import ColumnSpec, DriftConfig, PipelineConfig
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.errors import DataError
from mlsteps.evaluation.tasks import output_frame
from mlsteps.monitoring.drift import build_profile, detect_drift, load_profile, prediction_signals, save_profile
from mlsteps.monitoring.drift.profile import (
    CategoricalProfile,
    ColumnProfile,
    NumericProfile,
    ReferenceProfile,
    build_profile_from_batches,
)

TIERS = ["bronze", "silver", "gold"]


@pytest.fixture(scope="module")
def churn_profile(pipeline_config: PipelineConfig) -> ReferenceProfile:
    frame = generate_churn(4_000, seed=1)
    scores = np.random.default_rng(1).beta(2, 5, 4_000)
    return build_profile(frame, pipeline_config.dataset.features, predictions={"probability": scores})


def _assert_same_columns(left: dict[str, ColumnProfile], right: dict[str, ColumnProfile]) -> None:
    assert list(left) == list(right)
    for name, column in left.items():
        other = right[name]
        assert type(other) is type(column)
        if isinstance(column, NumericProfile):
            assert (column.count, column.null_count, column.mean, column.std) == (
                other.count,
                other.null_count,
                other.mean,
                other.std,
            )
            for array in ("sample", "bin_edges", "bin_counts"):
                np.testing.assert_array_equal(getattr(column, array), getattr(other, array))
        else:
            assert (column.count, column.null_count, column.categories) == (
                other.count,
                other.null_count,
                other.categories,
            )
            np.testing.assert_array_equal(column.counts, other.counts)


def _assert_same(left: ReferenceProfile, right: ReferenceProfile) -> None:
    assert (left.rows, left.psi_bins, left.sample_size) == (right.rows, right.psi_bins, right.sample_size)
    _assert_same_columns(left.features, right.features)
    _assert_same_columns(left.predictions, right.predictions)


def test_profile_keeps_what_the_statistics_need(churn_profile: ReferenceProfile) -> None:
    tenure = churn_profile.features["tenure_months"]
    assert isinstance(tenure, NumericProfile)
    assert (tenure.count, tenure.null_count) == (4_000, 0)
    assert np.all(np.diff(tenure.sample) >= 0)
    assert tenure.bin_counts.sum() == 4_000 and tenure.bin_counts.size == tenure.bin_edges.size + 1
    session = churn_profile.features["avg_session_minutes"]  # ~3% nulls, continuous: ten even quantile bins
    assert session.null_count + session.count == 4_000 and 60 < session.null_count < 180
    assert session.bin_edges.size == 9
    np.testing.assert_allclose(session.bin_counts / session.count, 0.1, atol=0.002)
    channel = churn_profile.features["acquisition_channel"]
    assert isinstance(channel, CategoricalProfile)
    assert channel.categories == ["organic", "paid_search", "partner", "referral", "social"]
    assert channel.counts.sum() == channel.count and channel.null_count > 0
    assert list(churn_profile.predictions) == ["probability"]
    assert churn_profile.predictions["probability"].count == 4_000


def test_large_columns_are_thinned_deterministically_to_the_cap() -> None:
    values = np.random.default_rng(2).lognormal(size=250_000)
    frame = pd.DataFrame({"x": values})
    config = DriftConfig(reference_sample_size=10_000)
    first = build_profile(frame, [ColumnSpec(name="x", type="numeric")], config=config).features["x"]
    again = build_profile(frame.sample(frac=1, random_state=3), [ColumnSpec(name="x", type="numeric")], config=config)
    np.testing.assert_array_equal(first.sample, again.features["x"].sample)  # row order does not matter
    assert first.sample.size == 10_000
    assert (first.sample[0], first.sample[-1]) == (values.min(), values.max())
    # evenly spaced order statistics: the sample's ECDF is within 1/cap of the full column's everywhere
    probe = np.quantile(values, np.linspace(0.001, 0.999, 500))
    full = np.searchsorted(np.sort(values), probe, side="right") / values.size
    thinned = np.searchsorted(first.sample, probe, side="right") / first.sample.size
    assert np.abs(full - thinned).max() <= 1 / 10_000 + 1e-12
    assert first.mean == pytest.approx(values.mean()) and first.std == pytest.approx(values.std())  # full column


def test_round_trip_through_a_local_file(churn_profile: ReferenceProfile, tmp_path: Path) -> None:
    uri = str(tmp_path / "models" / "drift_profile.npz")
    save_profile(churn_profile, uri)
    loaded = load_profile(uri)
    _assert_same(churn_profile, loaded)
    window = generate_churn(2_000, seed=9, covariate_drift=0.8)
    signals = {"probability": np.random.default_rng(4).beta(2, 4, 2_000)}
    assert detect_drift(loaded, window, signals).to_dict() == detect_drift(churn_profile, window, signals).to_dict()
    assert Path(uri).stat().st_size < 200_000


def test_round_trip_through_s3(churn_profile: ReferenceProfile, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/models/churn/3/drift_profile.npz"
    save_profile(churn_profile, uri)
    assert storage.exists(uri)
    _assert_same(churn_profile, load_profile(uri))


def test_missing_columns_and_text_in_numeric_columns_are_listed_at_once() -> None:
    frame = pd.DataFrame({"amount": ["12.5", "oops", "7"], "plan": ["a", "b", "a"]})
    specs = [
        ColumnSpec(name="amount", type="numeric"),
        ColumnSpec(name="plan", type="categorical"),
        ColumnSpec(name="age", type="numeric"),
        ColumnSpec(name="region", type="categorical"),
    ]
    with pytest.raises(DataError, match="cannot build the reference profile") as raised:
        build_profile(frame, specs)
    assert "reference data lacks feature columns ['age', 'region']" in str(raised.value)
    assert "column 'amount' should be numeric but 1 of 3 values are not numbers (e.g. 'oops'" in str(raised.value)


def test_loading_a_missing_or_foreign_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no reference profile at .*nothing.npz: build it from the training snapshot"):
        load_profile(str(tmp_path / "nothing.npz"))
    foreign = tmp_path / "foreign.npz"
    foreign.write_text("not a profile")
    with pytest.raises(DataError, match=r"foreign.npz is not a reference profile \(.npz written by save_profile\)"):
        load_profile(str(foreign))
    other_version = tmp_path / "future.npz"
    np.savez(other_version, meta=np.array('{"format_version": 99}'))
    with pytest.raises(DataError, match="profile format_version 99, this code reads 2 .*: retrain the model"):
        load_profile(str(other_version))
    one_score = tmp_path / "one_score.npz"  # version 1 kept one binary score; such a model predates the task
    np.savez(one_score, meta=np.array('{"format_version": 1, "score": null}'))
    with pytest.raises(
        DataError, match="format_version 1, this code reads 2 .*retrain the model to rebuild its profile"
    ):
        load_profile(str(one_score))


def _contract(task: str, classes: list, rows: int, seed: int) -> pd.DataFrame:
    """A model's predict-contract output for ``rows`` rows (``tasks.output_frame`` of random raw outputs)."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(50.0, 10.0, rows) if task == "regression" else rng.dirichlet(np.ones(len(classes)), rows)
    return output_frame(task, classes, raw)


def test_prediction_signals_of_each_task() -> None:
    binary = _contract("binary", [0, 1], 100, seed=1)
    signals = prediction_signals("binary", [0, 1], binary)
    assert list(signals) == ["probability"] and signals["probability"].dtype == np.float64
    np.testing.assert_array_equal(signals["probability"], binary["probability"])

    multiclass = _contract("multiclass", TIERS, 100, seed=2)
    signals = prediction_signals("multiclass", TIERS, multiclass)
    assert list(signals) == ["probability_bronze", "probability_silver", "probability_gold", "prediction"]
    assert all(signals[f"probability_{tier}"].dtype == np.float64 for tier in TIERS)
    assert set(signals["prediction"]) <= set(TIERS)
    # integer labels become the same text whether they come from a model (Int64) or from the log (int64)
    from_model = prediction_signals("multiclass", [3, 7], _contract("multiclass", [3, 7], 20, seed=3))
    logged = pd.DataFrame({"probability_3": 0.5, "probability_7": 0.5, "prediction": np.array([3, 7] * 10)})
    from_log = prediction_signals("multiclass", [3, 7], logged)
    assert set(from_model["prediction"]) <= {"3", "7"} and from_log["prediction"][:2].tolist() == ["3", "7"]

    regression = _contract("regression", [], 100, seed=4)
    assert list(prediction_signals("regression", [], regression)) == ["prediction"]
    with pytest.raises(DataError, match=r"the multiclass model's outputs lack column\(s\) \['probability_gold'\]"):
        prediction_signals("multiclass", TIERS, multiclass.drop(columns=["probability_gold"]))


def test_a_multiclass_profile_keeps_numeric_and_categorical_signals(tmp_path: Path) -> None:
    frame = generate_churn(1_000, seed=5)
    signals = prediction_signals("multiclass", TIERS, _contract("multiclass", TIERS, 1_000, seed=6))
    profile = build_profile(frame, [ColumnSpec(name="age", type="numeric")], predictions=signals)

    assert isinstance(profile.predictions["probability_gold"], NumericProfile)
    predicted = profile.predictions["prediction"]
    assert isinstance(predicted, CategoricalProfile) and predicted.categories == sorted(TIERS)
    assert predicted.counts.sum() == 1_000
    uri = str(tmp_path / "multiclass.npz")
    save_profile(profile, uri)
    _assert_same(profile, load_profile(uri))


def _profile_bytes(profile: ReferenceProfile, path: Path) -> dict[str, bytes]:
    """Every array of the saved profile (the JSON meta included) as dtype and bytes: equal means the same file."""
    save_profile(profile, str(path))
    with np.load(path, allow_pickle=False) as npz:
        return {name: str(npz[name].dtype).encode() + npz[name].tobytes() for name in npz.files}


def _batches(frame: pd.DataFrame, sizes: list[int]) -> list[pd.DataFrame]:
    bounds = np.cumsum([0, *sizes])
    return [frame.iloc[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True) if start < len(frame)]


def test_a_profile_from_batches_is_the_whole_frames_while_columns_fit_the_sample(
    pipeline_config: PipelineConfig, tmp_path: Path
) -> None:
    frame = generate_churn(4_000, seed=1)
    frame["age"] = frame["age"].astype("object").where(frame.index % 7 > 0, None)  # nulls in an object column
    specs = pipeline_config.dataset.features
    config = DriftConfig(reference_sample_size=2_000)  # 4,000 rows: at most 2 x size values, so exact
    whole = build_profile(frame, specs, config=config)
    batched = build_profile_from_batches(_batches(frame, [1_500, 1, 998, 1_501]), specs, config=config)
    assert _profile_bytes(batched, tmp_path / "batched.npz") == _profile_bytes(whole, tmp_path / "whole.npz")


def test_a_long_numeric_column_from_batches_stays_within_the_stated_bound() -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(size=250_000)
    values[rng.random(values.size) < 0.02] = np.nan
    frame = pd.DataFrame({"x": values, "plan": rng.choice(["a", "b", "c"], values.size)})
    specs = [ColumnSpec(name="x", type="numeric"), ColumnSpec(name="plan", type="categorical")]
    config = DriftConfig(reference_sample_size=10_000, psi_bins=10)
    whole = build_profile(frame, specs, config=config)
    batched = build_profile_from_batches(_batches(frame, [20_000] * 13), specs, config=config)

    np.testing.assert_equal(dataclasses.asdict(batched.features["plan"]), dataclasses.asdict(whole.features["plan"]))
    exact, approximate = whole.features["x"], batched.features["x"]
    assert isinstance(exact, NumericProfile) and isinstance(approximate, NumericProfile)
    assert (approximate.count, approximate.null_count) == (exact.count, exact.null_count)
    assert approximate.mean == pytest.approx(exact.mean, rel=1e-12)
    assert approximate.std == pytest.approx(exact.std, rel=1e-12)
    assert approximate.sample.size == 10_000 and np.all(np.diff(approximate.sample) >= 0)
    assert (approximate.sample[0], approximate.sample[-1]) == (exact.sample[0], exact.sample[-1])
    # compactions ~ rows / (size + batch rows) = 245k / 30k: at most 9, so within 10 / size
    bound = 10 / 10_000
    full = np.sort(values[np.isfinite(values)])
    probe = np.quantile(full, np.linspace(0.001, 0.999, 500))
    ecdf = np.searchsorted(full, probe, side="right") / full.size
    assert np.abs(np.searchsorted(approximate.sample, probe, side="right") / 10_000 - ecdf).max() <= bound
    assert approximate.bin_edges.size == exact.bin_edges.size == 9
    edge_ranks = np.searchsorted(full, approximate.bin_edges) / full.size
    np.testing.assert_allclose(edge_ranks, np.linspace(0.1, 0.9, 9), atol=bound)
    assert approximate.bin_counts.sum() == full.size
    np.testing.assert_allclose(approximate.bin_counts / full.size, 0.1, atol=2 * bound)


def test_text_in_a_numeric_column_is_counted_over_every_batch() -> None:
    frame = pd.DataFrame({"amount": ["1", "2", "oops", "4", "nope", "6"]})
    with pytest.raises(DataError, match=r"column 'amount' should be numeric but 2 of 6 values .*\(e.g. 'oops'"):
        build_profile_from_batches(_batches(frame, [2, 2, 2]), [ColumnSpec(name="amount", type="numeric")])


def _peak_bytes(rows: int, batch_rows: int) -> int:
    """tracemalloc's peak while profiling ``rows`` rows of a numeric and a text column generated batch by batch."""
    specs = [ColumnSpec(name="x", type="numeric"), ColumnSpec(name="plan", type="categorical")]

    def batches() -> Iterator[pd.DataFrame]:
        rng = np.random.default_rng(3)
        for _ in range(rows // batch_rows):
            yield pd.DataFrame(
                {"x": rng.normal(size=batch_rows), "plan": rng.choice(["basic", "plus", "pro"], batch_rows)}
            )

    tracemalloc.start()
    try:
        profile = build_profile_from_batches(batches(), specs, config=DriftConfig(reference_sample_size=1_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert profile.rows == rows
    return peak


def test_memory_follows_the_batch_and_sample_size_not_the_rows() -> None:
    _peak_bytes(2_000, 2_000)  # first calls allocate caches that later ones reuse
    small, large = _peak_bytes(20_000, 2_000), _peak_bytes(200_000, 2_000)
    assert large < 1.5 * small, (small, large)  # whole columns would take 10x
