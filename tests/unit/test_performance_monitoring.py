"""Performance monitoring (mlsteps.monitoring.performance): calibration, estimation without labels, the holdout
reference and its sampling error, delayed labels and their counts, and the judge's band. Real computations on
synthetic data whose truth is known: labels are drawn from known probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlsteps.data import storage
from mlsteps.data.snapshots import write_table
from mlsteps.errors import DataError
from mlsteps.evaluation.metrics import metric_value, task_metrics
from mlsteps.evaluation.tasks import METRICS, output_frame
from mlsteps.inference import TaskInfo
from mlsteps.monitoring import prediction_log
from mlsteps.monitoring.performance.calibration import CELLS, Calibrator, IsotonicMap, fit_calibrator
from mlsteps.monitoring.performance.estimate import (
    AREA_TOLERANCE,
    binned_roc_areas,
    estimate_metrics,
    expected_roc_auc,
    expected_roc_aucs,
)
from mlsteps.monitoring.performance.judge import judge
from mlsteps.monitoring.performance.labels import match_labels, read_labels, unknown_label_ids
from mlsteps.monitoring.performance.reference import PerformanceReference

BINARY = [0, 1]
COLOURS = ["red", "green", "blue"]
ROWS = 5_000  # a production window
SIGMAS = 3.0


def _binary(rows: int, seed: int, shape: tuple[float, float] = (2.0, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true rates q ~ Beta(shape), and a miscalibrated model that outputs q³ (same ranking)."""
    rng = np.random.default_rng(seed)
    rate = rng.beta(*shape, rows)
    labels = (rng.uniform(size=rows) < rate).astype(np.int64)
    positive = rate**3
    return labels, np.column_stack([1 - positive, positive])


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _multiclass(rows: int, seed: int, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), and an overconfident model that outputs softmax(2 · logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, spread, (rows, 3))
    truth = _softmax(logits)
    labels = (rng.uniform(size=(rows, 1)) > truth.cumsum(axis=1)).sum(axis=1)
    return np.minimum(labels, 2).astype(np.int64), _softmax(2 * logits)


def _ece(task: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    return metric_value(task, BINARY if task == "binary" else COLOURS, "ece", labels, probabilities)


# --- calibration -------------------------------------------------------------------------------------------------


def test_calibration_removes_most_of_a_binary_models_calibration_error() -> None:
    calibrator = fit_calibrator("binary", BINARY, *_binary(20_000, seed=1))
    labels, probabilities = _binary(20_000, seed=2)  # fresh rows: the fit must generalise
    calibrated = calibrator.apply(probabilities)

    assert _ece("binary", labels, probabilities) > 0.2
    assert _ece("binary", labels, calibrated) < 0.03
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    # Isotonic maps are monotone: the model's ranking (and so its ROC AUC) survives up to ties.
    assert np.all(np.diff(calibrator.maps[0].y) >= 0)


def test_multiclass_calibration_is_one_map_per_class_and_rows_sum_to_one() -> None:
    calibrator = fit_calibrator("multiclass", COLOURS, *_multiclass(20_000, seed=1))
    labels, probabilities = _multiclass(20_000, seed=2)
    calibrated = calibrator.apply(probabilities)

    assert len(calibrator.maps) == 3
    assert np.allclose(calibrated.sum(axis=1), 1.0) and (calibrated >= 0).all()
    assert _ece("multiclass", labels, probabilities) > 0.1
    assert _ece("multiclass", labels, calibrated) < 0.03


def test_calibrator_round_trips_through_json_and_stays_small() -> None:
    labels, probabilities = _multiclass(50_000, seed=3)
    calibrator = fit_calibrator("multiclass", COLOURS, labels, probabilities, max_points=100)
    document = json.dumps(calibrator.to_dict())

    again = Calibrator.from_dict(json.loads(document))

    assert again == calibrator
    assert np.array_equal(again.apply(probabilities), calibrator.apply(probabilities))
    assert all(len(m.x) <= 100 for m in again.maps) and len(document) < 3 * 2 * 100 * 25
    unthinned = fit_calibrator("multiclass", COLOURS, labels, probabilities).apply(probabilities)
    assert np.abs(again.apply(probabilities) - unthinned).max() < 0.05


def test_a_map_gives_np_interps_values_through_its_cells() -> None:
    rng = np.random.default_rng(4)
    dense = np.sort(rng.uniform(0.3, 0.3001, 40))  # many breakpoints in one cell
    maps = [
        IsotonicMap([0.0, 1.0], [0.1, 0.9]),
        IsotonicMap([0.5], [0.7]),  # one breakpoint: flat
        IsotonicMap([0.2, 0.2, 0.25, 0.5, 0.5, 0.75], [0.0, 0.1, 0.2, 0.4, 0.6, 1.0]),  # repeated breakpoints: steps
        IsotonicMap([*dense, *np.linspace(0.31, 0.99, 500)], np.linspace(0.0, 1.0, 540).tolist()),
    ]
    edges = np.arange(0, CELLS + 1, 7) / CELLS  # the cells' edges
    values = np.concatenate([rng.uniform(-0.1, 1.1, 20_000), rng.uniform(0.29, 0.31, 2_000), edges, [np.inf, -np.inf]])
    for isotonic in maps:
        values_and_breakpoints = np.concatenate([values, isotonic.x])
        assert np.allclose(
            isotonic(values_and_breakpoints),
            np.interp(values_and_breakpoints, isotonic.x, isotonic.y),
            rtol=0,
            atol=1e-15,
        )
    assert np.isnan(maps[0](np.array([np.nan, 0.5])))[0]


def test_a_regression_model_has_no_calibrator() -> None:
    with pytest.raises(ValueError, match="a regression model has no probabilities to calibrate"):
        fit_calibrator("regression", [], [1.0, 2.0], [1.5, 2.5])


def test_a_broken_calibrator_document_says_what_is_wrong() -> None:
    good = Calibrator("binary", BINARY, [IsotonicMap([0.0, 1.0], [0.1, 0.9])]).to_dict()
    with pytest.raises(DataError, match=r"format_version 0, this code reads 1; retrain the model"):
        Calibrator.from_dict({**good, "format_version": 0})
    with pytest.raises(DataError, match=r"2 map\(s\) where a binary calibrator has 1"):
        Calibrator.from_dict({**good, "maps": good["maps"] * 2})
    with pytest.raises(DataError, match=r"map 0 has 2 x and 1 y values, or its x are not sorted"):
        Calibrator.from_dict({**good, "maps": [{"x": [0.0, 1.0], "y": [0.5]}]})
    with pytest.raises(DataError, match=r"not a calibrator .*'maps'"):
        Calibrator.from_dict({"task": "binary", "classes": BINARY})
    with pytest.raises(ValueError, match=r"needs probabilities of rows x 2; got \(3, 3\)"):
        Calibrator.from_dict(good).apply(np.full((3, 3), 1 / 3))


# --- estimation --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary_model() -> tuple[Calibrator, PerformanceReference]:
    """A miscalibrated binary model's calibrator (validation split) and its holdout reference."""
    calibrator = fit_calibrator("binary", BINARY, *_binary(20_000, seed=10))
    return calibrator, PerformanceReference.from_holdout("binary", BINARY, *_binary(20_000, seed=11))


@pytest.fixture(scope="module")
def multiclass_model() -> tuple[Calibrator, PerformanceReference]:
    calibrator = fit_calibrator("multiclass", COLOURS, *_multiclass(20_000, seed=10))
    return calibrator, PerformanceReference.from_holdout("multiclass", COLOURS, *_multiclass(20_000, seed=11))


def _gaps(
    task: str, classes: list, labels: np.ndarray, probabilities: np.ndarray, model: tuple
) -> dict[str, tuple[float, float]]:
    """Per estimable metric: (estimated - realized, estimated - the reference's expectation), in sampling errors."""
    calibrator, reference = model
    estimates = estimate_metrics(task, classes, probabilities, calibrator)
    gaps = {}
    for name, estimate in estimates.items():
        error = reference.sampling_error(name, labels.size)
        realized = metric_value(task, classes, name, labels, probabilities)
        gaps[name] = ((estimate - realized) / error, (estimate - reference.expected(name)) / error)
    return gaps


def test_binary_estimates_match_realized_performance_when_the_calibration_holds(binary_model: tuple) -> None:
    labels, probabilities = _binary(ROWS, seed=12)
    gaps = _gaps("binary", BINARY, labels, probabilities, binary_model)
    assert list(gaps) == ["roc_auc", "accuracy", "f1"]
    assert all(abs(realized) < SIGMAS for realized, _ in gaps.values()), gaps


def test_multiclass_estimates_match_realized_performance_when_the_calibration_holds(multiclass_model: tuple) -> None:
    labels, probabilities = _multiclass(ROWS, seed=12)
    gaps = _gaps("multiclass", COLOURS, labels, probabilities, multiclass_model)
    assert list(gaps) == ["roc_auc", "accuracy", "macro_f1"]
    assert all(abs(realized) < SIGMAS for realized, _ in gaps.values()), gaps


def test_estimates_follow_realized_performance_under_covariate_shift(
    binary_model: tuple, multiclass_model: tuple
) -> None:
    # The inputs move (other true rates, other logit spread), P(y | x) stays: realized performance changes, and the
    # estimate moves with it.
    binary = _gaps("binary", BINARY, *_binary(ROWS, seed=13, shape=(0.4, 0.4)), binary_model)
    multiclass = _gaps("multiclass", COLOURS, *_multiclass(ROWS, seed=13, spread=0.6), multiclass_model)
    for gaps in (binary, multiclass):
        assert all(abs(realized) < SIGMAS for realized, _ in gaps.values()), gaps
        assert all(abs(expected) > SIGMAS for _, expected in gaps.values()), gaps  # the shift was real


def test_estimates_are_blind_to_concept_drift(binary_model: tuple) -> None:
    labels, probabilities = _binary(ROWS, seed=14)
    # Rows the model finds unlikely to churn (true rate below 0.5: q³ < 0.125) now churn at the opposite rate.
    drifted = np.where(probabilities[:, 1] < 0.125, 1 - labels, labels)
    gaps = _gaps("binary", BINARY, drifted, probabilities, binary_model)
    # The estimate stays at the holdout's level, beyond the band above what the labels say.
    assert all(abs(expected) < SIGMAS and realized > SIGMAS for realized, expected in gaps.values()), gaps


def test_expected_roc_auc_of_certain_labels_is_their_roc_auc_with_ties() -> None:
    rng = np.random.default_rng(5)
    score = rng.integers(0, 10, 400) / 10  # many tied scores
    labels = (rng.uniform(size=400) < score).astype(float)
    assert expected_roc_auc(score, labels) == pytest.approx(skm.roc_auc_score(labels, score))
    assert expected_roc_auc(score, np.zeros(400)) is None and expected_roc_auc(score, np.ones(400)) is None


def _exact_areas(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    return np.array([expected_roc_auc(score[:, k], positive[:, k]) for k in range(score.shape[1])], dtype=float)


@pytest.mark.parametrize("case", ["uniform", "ties", "near 0", "near 1", "labels"])
def test_binned_roc_auc_is_within_its_bound_of_the_exact_one(case: str) -> None:
    rng = np.random.default_rng(9)
    rows = 20_000
    score = {
        "uniform": rng.uniform(size=(rows, 3)),
        "ties": rng.integers(0, 7, (rows, 3)) / 6,  # few distinct scores: every bin a tie
        "near 0": rng.uniform(0, 1e-4, (rows, 3)),  # a handful of bins hold every row
        "near 1": 1 - rng.exponential(1e-3, (rows, 3)),
        "labels": _softmax(rng.normal(0, 3, (rows, 3))),
    }[case]
    # Calibrated probabilities that follow the score loosely (not monotone within a bin); or certain 0/1 labels.
    positive = np.clip(score + rng.normal(0, 0.2, score.shape), 0, 1)
    if case == "labels":
        positive = (rng.uniform(size=score.shape) < score).astype(float)
    exact = _exact_areas(score, positive)
    for bins in (2**8, 2**12, 2**16):
        areas, bounds = binned_roc_areas(score, positive, bins)
        assert np.all(np.abs(areas - exact) <= bounds + 1e-12), (bins, areas - exact, bounds)
    if case == "ties":
        assert np.allclose(areas, exact, rtol=0, atol=1e-12)  # each bin holds one tie: binned is exact
    if case == "near 0":
        assert np.all(bounds > AREA_TOLERANCE / np.sqrt(rows))  # too crowded: expected_roc_aucs sorts instead
    tolerance = AREA_TOLERANCE / np.sqrt(rows)
    assert np.all(np.abs(np.array(expected_roc_aucs(score, positive)) - exact) <= tolerance)


def test_expected_roc_aucs_sorts_where_the_bins_are_too_crowded() -> None:
    rng = np.random.default_rng(10)
    score = rng.uniform(0.5, 0.5 + 1e-6, (5_000, 1))  # all in one bin
    positive = (score - 0.5) * 1e6  # from 0 to 1 across the bin
    assert expected_roc_aucs(score, positive) == [expected_roc_auc(score[:, 0], positive[:, 0])]
    assert expected_roc_aucs(score, np.zeros_like(score)) == [None]


def test_the_estimated_roc_auc_is_the_exact_expected_one_within_the_tolerance(
    binary_model: tuple, multiclass_model: tuple
) -> None:
    for task, classes, (_, probabilities), (calibrator, _) in [
        ("binary", BINARY, _binary(ROWS, seed=15), binary_model),
        ("multiclass", COLOURS, _multiclass(ROWS, seed=15), multiclass_model),
    ]:
        calibrated = calibrator.apply(probabilities)
        scored = [1] if task == "binary" else range(len(classes))
        exact = np.mean([expected_roc_auc(probabilities[:, k], calibrated[:, k]) for k in scored])
        estimated = estimate_metrics(task, classes, probabilities, calibrator)["roc_auc"]
        assert abs(estimated - exact) <= AREA_TOLERANCE / np.sqrt(ROWS), task


def test_estimates_are_none_where_undefined_and_refused_where_they_do_not_apply() -> None:
    nothing_positive = Calibrator("binary", BINARY, [IsotonicMap([0.0, 1.0], [0.0, 0.0])])
    low = np.column_stack([np.full(4, 0.8), np.full(4, 0.2)])
    assert estimate_metrics("binary", BINARY, low, nothing_positive) == {"roc_auc": None, "accuracy": 1.0, "f1": None}
    assert estimate_metrics("binary", BINARY, np.empty((0, 2)), nothing_positive) == dict.fromkeys(
        ["roc_auc", "accuracy", "f1"]
    )
    with pytest.raises(ValueError, match="regression performance cannot be estimated"):
        estimate_metrics("regression", [], np.zeros(3), nothing_positive)
    with pytest.raises(ValueError, match=r"calibrator is of a binary model of classes \[0, 1\], not of this binary"):
        estimate_metrics("binary", ["no", "yes"], low, nothing_positive)


# --- reference ---------------------------------------------------------------------------------------------------


def test_sampling_error_shrinks_with_the_square_root_of_the_rows(binary_model: tuple) -> None:
    _, reference = binary_model
    for name in ("roc_auc", "accuracy", "log_loss"):
        small, large = reference.sampling_error(name, 400), reference.sampling_error(name, 3_600)
        assert 2.4 < small / large < 3.6, (name, small, large)  # sqrt(3600 / 400) = 3
    assert reference.sampling_error("roc_auc", 400) == reference.sampling_error("roc_auc", 400, samples=200, seed=0)
    with pytest.raises(ValueError, match="rows and samples must be positive, got rows=0"):
        reference.sampling_error("roc_auc", 0)


def test_reference_round_trips_through_npz_and_expects_the_metric_on_all_rows(tmp_path: Path) -> None:
    labels, probabilities = _multiclass(3_000, seed=6)
    reference = PerformanceReference.from_holdout("multiclass", COLOURS, labels, probabilities, max_rows=1_000)
    path = tmp_path / "holdout.npz"
    reference.save(path)

    loaded = PerformanceReference.load(path)

    assert loaded.rows == 1_000 and (loaded.task, loaded.classes) == ("multiclass", COLOURS)
    assert np.array_equal(loaded.y_true, reference.y_true) and np.array_equal(loaded.output, reference.output)
    for name in METRICS["multiclass"]:
        assert loaded.expected(name) == metric_value("multiclass", COLOURS, name, loaded.y_true, loaded.output)
    again = PerformanceReference.from_holdout("multiclass", COLOURS, labels, probabilities, max_rows=1_000)
    assert np.array_equal(again.y_true, reference.y_true)  # the subsample is seeded


def test_a_missing_or_foreign_reference_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no performance reference at .*nothing.npz: evaluate writes it"):
        PerformanceReference.load(tmp_path / "nothing.npz")
    (tmp_path / "other.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"other.npz is not a performance reference \(.npz written by save\)"):
        PerformanceReference.load(tmp_path / "other.npz")


def _random_outputs(task: str, rows: int, seed: int) -> tuple[list, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if task == "regression":
        target = rng.normal(10, 3, rows)
        return [], target, target + rng.normal(0, 2, rows)
    classes = BINARY if task == "binary" else COLOURS
    probabilities = _softmax(rng.normal(0, 1, (rows, len(classes))))
    return classes, rng.integers(0, len(classes), rows), probabilities.astype(np.float32)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_metric_value_equals_task_metrics_for_every_metric(task: str) -> None:
    classes, y_true, output = _random_outputs(task, 700, seed=7)
    everything = task_metrics(task, classes, y_true, output, calibration_bins=15)
    for name in METRICS[task]:
        assert metric_value(task, classes, name, y_true, output, calibration_bins=15) == everything[name], name
    with pytest.raises(ValueError, match=rf"'mape' is not a {task} metric; choose one of"):
        metric_value(task, classes, "mape", y_true, output)


# --- labels ------------------------------------------------------------------------------------------------------


def _write_labels(folder: str) -> None:
    """Two files of churn labels with every kind of problem (ids a.. are text, 1.. integers)."""
    write_table(
        pd.DataFrame(
            {
                "customer_id": ["007", "a2", "a3", "a3", "a4", "a4", "", "a5", "a6", "a7"],
                "churned": ["1", "0", "1", "1", "0", "1", "1", "yes", "0", None],
                # No offset means UTC; the second a3 came earlier, so the kept copy has its time.
                "labelled_at": ["2025-03-02T10:00Z", "2025-03-02T09:00", "2025-03-02T09:00", "2025-03-02T08:00+00:00"]
                + ["2025-03-02T09:00"] * 6,
            }
        ),
        storage.join(folder, "day1.csv"),
    )
    write_table(
        pd.DataFrame(
            {
                "customer_id": pd.array([1, 2, None, 3], dtype="Int64"),
                "churned": [1, 5, 0, 0],
                "labelled_at": pd.to_datetime(["2025-03-03T08:00"] * 4),
            }
        ),
        storage.join(folder, "late/day2.parquet"),
    )
    storage.write_text(storage.join(folder, "README.txt"), "not a label file")


def _check_churn_labels(labels, folder: str) -> None:
    assert labels.files == [storage.join(folder, "day1.csv"), storage.join(folder, "late/day2.parquet")]
    assert labels.counts == {
        "rows_read": 14,
        "usable": 6,
        "duplicates": 1,  # a3 twice with label 1
        "conflicting": 2,  # a4 with 0 and 1: both rows dropped
        "wrong_type": 3,  # "yes", a missing label, and 5 (not a class)
        "missing_id": 2,  # "" and a null integer
    }
    frame = labels.frame
    assert dict(zip(frame["request_id"], frame["label"], strict=True)) == {
        "007": 1,
        "a2": 0,
        "a3": 1,
        "a6": 0,
        "1": 1,
        "3": 0,
    }
    assert frame["label"].dtype == "int64" and str(frame["labelled_at"].dtype) == "datetime64[us, UTC]"
    labelled_at = frame.set_index("request_id")["labelled_at"]
    assert labelled_at["007"] == pd.Timestamp("2025-03-02T10:00Z") and labelled_at["a2"] == pd.Timestamp(
        "2025-03-02T09:00Z"
    )
    assert labelled_at["a3"] == pd.Timestamp("2025-03-02T08:00Z") and labelled_at["1"] == pd.Timestamp(
        "2025-03-03T08:00Z"
    )
    day1, day2 = labels.files
    assert labels.problems == [
        f"2 label row(s) have no id in column 'customer_id' (in {[day1, day2]}): dropped; every label needs the "
        "request id of its prediction",
        "3 label(s) in column 'churned' are not one of the classes [0, 1], e.g. ['yes', '(missing)', '5']: dropped; "
        "fix them, or add the class to dataset.target.classes",
        "1 label row(s) repeat the label of an id already labelled, e.g. ids ['a3']: counted once",
        "2 label row(s) of 1 id(s) give different labels to the same id, e.g. ids ['a4']: all dropped, as the true "
        "label is unknown; keep one label per id",
    ]


def _read_churn(uri: str):
    return read_labels(
        uri,
        id_column="customer_id",
        label_column="churned",
        labelled_at_column="labelled_at",
        task="binary",
        classes=BINARY,
    )


def test_labels_from_csv_and_parquet_are_checked_and_counted(tmp_path: Path) -> None:
    _write_labels(str(tmp_path))
    _check_churn_labels(_read_churn(str(tmp_path)), str(tmp_path))


def test_labels_are_read_from_an_s3_folder(s3_bucket: str) -> None:
    folder = f"{s3_bucket}/labels"
    _write_labels(folder)
    _check_churn_labels(_read_churn(folder), folder)


def test_a_single_label_file_and_other_tasks(tmp_path: Path) -> None:
    tiers = tmp_path / "tiers.parquet"
    write_table(pd.DataFrame({"id": ["x", "y", "z"], "tier": ["gold", "tin", "red"]}), str(tiers))
    labels = read_labels(
        f"file://{tiers}",
        id_column="id",
        label_column="tier",
        labelled_at_column=None,
        task="multiclass",
        classes=COLOURS,
    )
    assert labels.counts["usable"] == 1 and labels.counts["wrong_type"] == 2
    assert labels.frame["label"].tolist() == [0] and labels.frame["labelled_at"].isna().all()

    write_table(pd.DataFrame({"id": [1, 2, 3], "spend": ["12.5", "inf", "lots"]}), str(tmp_path / "spend.csv"))
    spend = read_labels(
        str(tmp_path / "spend.csv"),
        id_column="id",
        label_column="spend",
        labelled_at_column=None,
        task="regression",
        classes=[],
    )
    assert spend.frame["label"].tolist() == [12.5] and spend.frame["label"].dtype == "float64"
    assert spend.problems == [
        "2 label(s) in column 'spend' are not a finite number, e.g. ['inf', 'lots']: dropped; fix them"
    ]


def test_unusable_label_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    write_table(pd.DataFrame({"id": ["a"], "label": [1]}), str(csv))
    with pytest.raises(DataError, match=r"labels file .*labels.csv lacks the column\(s\) \['churned'\] "):
        read_labels(
            str(csv), id_column="id", label_column="churned", labelled_at_column=None, task="binary", classes=BINARY
        )
    with pytest.raises(DataError, match=r"\['seen'\] \(labelled_at_column='seen'\); it has \['id', 'label'\]"):
        read_labels(
            str(csv), id_column="id", label_column="label", labelled_at_column="seen", task="binary", classes=BINARY
        )
    floats = tmp_path / "floats" / "labels.parquet"
    write_table(pd.DataFrame({"id": [1.0, 2.5], "label": [1, 0]}), str(floats))
    with pytest.raises(DataError, match=r"labels.parquet: id column 'id' holds 1 number\(s\) that are not integers"):
        read_labels(
            str(floats), id_column="id", label_column="label", labelled_at_column=None, task="binary", classes=BINARY
        )
    with pytest.raises(DataError, match=r"no label file under .*empty: labels are CSV or Parquet files"):
        read_labels(
            str(tmp_path / "empty"),
            id_column="id",
            label_column="label",
            labelled_at_column=None,
            task="binary",
            classes=BINARY,
        )


def _records(task: str, classes: list, outputs: np.ndarray, version: int, ids: list[str]) -> pd.DataFrame:
    """Prediction-log records of a model version, as the log stores them."""
    info = TaskInfo(task=task, classes=classes, target="y", family="mlp")
    features = pd.DataFrame({"x": np.arange(len(ids), dtype=float)})
    predictions = output_frame(task, classes, outputs)
    return prediction_log.build_records(features, predictions, info, "m", version, "2025-03-01T10:00Z", ids)


def _write_csv(folder: Path, ids: list[str], labels: list) -> Path:
    path = folder / "labels.csv"
    write_table(pd.DataFrame({"id": ids, "label": labels}), str(path))
    return path


def test_match_labels_counts_and_rebuilds_the_logged_probabilities(tmp_path: Path) -> None:
    _, probabilities = _multiclass(6, seed=8)
    records = pd.concat(
        [
            _records("multiclass", COLOURS, probabilities, 3, ["r1", "r2", "r3", "r4", "r5", "r6"]),
            _records("multiclass", COLOURS, probabilities[:2], 2, ["o1", "o2"]),
        ],
        ignore_index=True,
    )
    labels = read_labels(
        str(_write_csv(tmp_path, ["r5", "r2", "o1", "stranger"], ["blue", "red", "green", "red"])),
        id_column="id",
        label_column="label",
        labelled_at_column=None,
        task="multiclass",
        classes=COLOURS,
    )

    window = match_labels(records, labels, "multiclass", COLOURS, model_version=3)

    assert window.counts == {
        "predictions": 6,
        "labelled": 2,
        "unlabelled": 4,
        "other_version": 1,
        "label_share": pytest.approx(2 / 6),
    }
    assert window.y_true.tolist() == [0, 2]  # r2 red, r5 blue, in log order
    assert np.array_equal(window.output, probabilities[[1, 4]])
    assert unknown_label_ids(labels, records["request_id"]) == 1  # "stranger"


def test_match_labels_of_binary_and_regression_models(tmp_path: Path) -> None:
    binary = _records("binary", BINARY, np.array([[0.9, 0.1], [0.3, 0.7]]), 1, ["a", "b"])
    labels = read_labels(
        str(_write_csv(tmp_path / "b", ["b"], [1])),
        id_column="id",
        label_column="label",
        labelled_at_column=None,
        task="binary",
        classes=BINARY,
    )
    window = match_labels(binary, labels, "binary", BINARY, model_version=1)
    assert window.y_true.tolist() == [1] and np.allclose(window.output, [[0.3, 0.7]])

    spend = _records("regression", [], np.array([5.0, 7.5]), 1, ["a", "b"])
    labels = read_labels(
        str(_write_csv(tmp_path / "r", ["a"], [4.0])),
        id_column="id",
        label_column="label",
        labelled_at_column=None,
        task="regression",
        classes=[],
    )
    window = match_labels(spend, labels, "regression", [], model_version=1)
    assert window.y_true.tolist() == [4.0] and window.output.tolist() == [5.0]
    with pytest.raises(DataError, match=r"records lack column\(s\) \['probability'\] of a binary model"):
        match_labels(spend, labels, "binary", BINARY, model_version=1)


# --- judge -------------------------------------------------------------------------------------------------------


def _judge(reference: PerformanceReference, task: str, metric: str, value: float | None, rows: int = 1_000, **kw):
    return judge("realized", metric, value, rows, reference, task, band_sigmas=SIGMAS, samples=200, **kw)


def test_judge_holds_a_value_to_the_band_of_sampling_noise(binary_model: tuple) -> None:
    _, reference = binary_model
    expected, error = reference.expected("roc_auc"), reference.sampling_error("roc_auc", 1_000)

    inside = _judge(reference, "binary", "roc_auc", expected - 2 * error)
    below = _judge(reference, "binary", "roc_auc", expected - 4 * error)

    assert inside.status == "ok" and not inside.drop
    assert inside.lower == pytest.approx(expected - 3 * error) and inside.upper == pytest.approx(expected + 3 * error)
    assert below.status == "ok" and below.drop
    assert below.message.startswith(f"realized roc_auc={expected - 4 * error:.4g} on 1000 labelled predictions vs ")
    assert below.message.endswith(f"(higher is better): below the band's bad edge {below.lower:.4g}: a drop")
    assert below.to_dict()["drop"] is True and set(below.to_dict()) >= {"expected", "sampling_error", "lower"}
    assert not _judge(reference, "binary", "roc_auc", 1.0).drop  # better than expected is never a drop
    assert _judge(reference, "binary", "roc_auc", 0.9, rows=5).upper == 1.0  # clipped to the metric's range


def test_judge_respects_metrics_where_lower_is_better(binary_model: tuple) -> None:
    _, reference = binary_model
    expected, error = reference.expected("log_loss"), reference.sampling_error("log_loss", 1_000)
    assert _judge(reference, "binary", "log_loss", expected + 4 * error).drop
    assert not _judge(reference, "binary", "log_loss", expected - 4 * error).drop

    classes, target, prediction = _random_outputs("regression", 2_000, seed=9)
    spend = PerformanceReference.from_holdout("regression", classes, target, prediction)
    worse = _judge(spend, "regression", "rmse", spend.expected("rmse") * 1.5, rows=500)
    assert worse.drop and worse.message.endswith(
        f"(lower is better): above the band's bad edge {worse.upper:.4g}: a drop"
    )
    assert not _judge(spend, "regression", "rmse", spend.expected("rmse") * 0.5, rows=500).drop


def test_judge_does_not_judge_what_it_cannot(binary_model: tuple) -> None:
    _, reference = binary_model
    few = _judge(reference, "binary", "roc_auc", 0.1, rows=50, min_rows=200)
    assert (few.status, few.drop, few.expected) == ("insufficient_labels", False, None)
    assert few.message == "realized roc_auc not judged: 50 labelled predictions, fewer than the 200 needed"
    undefined = _judge(reference, "binary", "roc_auc", None)
    assert (undefined.status, undefined.drop) == ("undefined", False) and undefined.expected is not None
    brier = judge("estimated", "brier", 0.3, 1_000, reference, "binary", band_sigmas=SIGMAS, samples=200)
    assert (brier.status, brier.drop) == ("not_estimable", False)
    assert "estimable: ['roc_auc', 'accuracy', 'f1']" in brier.message
    with pytest.raises(ValueError, match="'macro_f1' is not a binary metric"):
        _judge(reference, "binary", "macro_f1", 0.5)


def test_stored_sampling_errors_spare_the_monitor_a_bootstrap(binary_model: tuple, tmp_path: Path) -> None:
    _, reference = binary_model
    written = reference.with_sampling_errors(samples=50)
    written.save(tmp_path / "holdout.npz")
    loaded = PerformanceReference.load(tmp_path / "holdout.npz")
    assert loaded.unit_errors == written.unit_errors and set(loaded.unit_errors) >= {"roc_auc", "log_loss", "f1"}
    assert loaded.sampling_error("roc_auc", 4_000, samples=50) == pytest.approx(written.unit_errors["roc_auc"] / 2)
    assert loaded._sampling_errors == {}, "read from the file, not bootstrapped"
    assert loaded.sampling_error("roc_auc", 4_000, samples=80) is not None and loaded._sampling_errors, "other samples"
