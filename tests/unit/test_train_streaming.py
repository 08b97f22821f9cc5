"""Training from memory-mapped splits: encoding by batches, the streamed order of global batches on any number of
ranks, gbdt through XGBoost's data iterator, and your own trainer on the memory-mapped arrays."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import xgboost
from test_gbdt import FAST, synthetic_split, trainer_context

from mlsteps.config import load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import TabularPreprocessor
from mlsteps.distributed import World
from mlsteps.monitoring.drift import build_profile
from mlsteps.steps.train import feature_profiles, training_data
from mlsteps.training.api import TrainingData
from mlsteps.training.gbdt import GbdtTrainer
from mlsteps.training.mlp import GlobalBatches
from mlsteps.training.streaming import BlockShuffle, encode_split, is_file_backed, read_rows

ROWS = 1000
BATCH_ROWS = 96  # far fewer than the split's rows: several batches to encode, several windows to stream
# XGBoost sketches the quantiles of each batch and merges them; the bin edges can move a little from those of one
# sketch of the whole table, so the models are close, not equal (measured: 3e-3 at most on these rows).
ITERATOR_PROBABILITY_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def churn_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TabularPreprocessor]:
    """A raw churn split in Parquet, with the preprocessor fitted on it."""
    dataset = load_pipeline_config().dataset
    frame = generate_churn(ROWS, seed=3)
    uri = str(tmp_path_factory.mktemp("split") / "train.parquet")
    storage.write_parquet(frame, uri)
    return uri, TabularPreprocessor.fit(frame, dataset.numeric_features, dataset.categorical_features)


def test_encoding_by_batches_equals_encoding_the_whole_table(
    churn_split: tuple[str, TabularPreprocessor], tmp_path: Path
) -> None:
    uri, preprocessor = churn_split
    dataset = load_pipeline_config().dataset

    streamed = encode_split(uri, preprocessor, dataset, "train split", tmp_path, BATCH_ROWS)
    whole = training_data(storage.read_parquet(uri), preprocessor, dataset, "train split")

    for name in ("numeric", "categories", "target"):
        array = getattr(streamed, name)
        assert is_file_backed(array) and array.dtype == getattr(whole, name).dtype
        np.testing.assert_array_equal(array, getattr(whole, name), err_msg=name)
        # Read back from the file in blocks, as the families do: the same rows.
        np.testing.assert_array_equal(read_rows(array, 250, 420), getattr(whole, name)[250:420], err_msg=name)


def _steps(numeric: np.ndarray, world: World, batch_size: int, epoch: int, batch_rows: int) -> list[tuple]:
    labels = torch.arange(len(numeric), dtype=torch.float32)
    batches = GlobalBatches(numeric, numeric, labels, batch_size, world, seed=11, epoch=epoch, batch_rows=batch_rows)
    steps = list(batches)
    assert len(steps) == len(batches)
    return [
        (step_numeric[:, 0].tolist(), step_labels.tolist(), factor) for step_numeric, _, step_labels, factor in steps
    ]


@pytest.mark.parametrize(("rows", "batch_size", "size"), [(1000, 64, 2), (1003, 50, 3), (10, 4, 3)])
def test_every_world_size_steps_on_the_same_global_batches(
    rows: int, batch_size: int, size: int, tmp_path: Path
) -> None:
    # Row i holds i, so a step's values are the row ids it trains on; on disk, as the train step keeps a split.
    numeric = np.lib.format.open_memmap(tmp_path / "numeric.npy", mode="w+", dtype=np.float32, shape=(rows, 1))
    numeric[:, 0] = np.arange(rows)
    numeric.flush()
    numeric = np.load(tmp_path / "numeric.npy", mmap_mode="r")

    for epoch in (1, 2):
        single = _steps(numeric, World(), batch_size, epoch, BATCH_ROWS)
        order = BlockShuffle.for_memory(rows, BATCH_ROWS, seed=11).order(epoch)
        # One process: consecutive global batches of the epoch's order, every row once, each step at full weight.
        assert [ids for ids, _, _ in single] == [
            order[start : start + batch_size].tolist() for start in range(0, rows, batch_size)
        ]
        assert sorted(order.tolist()) == list(range(rows))
        assert all(labels == ids and factor == 1.0 for ids, labels, factor in single)
        # The same batches when the rows are in memory instead of in a file.
        assert _steps(np.array(numeric), World(), batch_size, epoch, BATCH_ROWS) == single

        ranks = [_steps(numeric, World(rank, rank, size), batch_size, epoch, BATCH_ROWS) for rank in range(size)]
        assert {len(steps) for steps in ranks} == {len(single)}, "every rank takes the same number of steps"
        for step, (ids, _, _) in enumerate(single):
            parts = [ranks[rank][step] for rank in range(size)]
            # Rank r's part is the r-th slice of the global batch (an empty part steps on one row with factor 0).
            assert [row for part_ids, _, factor in parts if factor for row in part_ids] == ids
            # The factors turn the ranks' mean losses into the global batch's mean, as DDP averages over ranks.
            mean = sum(np.mean(labels) * factor for _, labels, factor in parts) / size
            assert mean == pytest.approx(np.mean(ids))
    assert _steps(numeric, World(), batch_size, 1, BATCH_ROWS) != _steps(numeric, World(), batch_size, 2, BATCH_ROWS)


def test_a_split_that_fits_one_window_is_shuffled_as_a_whole() -> None:
    order = BlockShuffle.for_memory(500, batch_rows=100_000, seed=1).order(1)

    assert sorted(order.tolist()) == list(range(500))
    # Not blocks in another order: neighbours in the file are spread over the whole epoch.
    assert np.abs(np.diff(order)).mean() > 100


def _gbdt_with_batch_rows(batch_rows: int) -> GbdtTrainer:
    context = dataclasses.replace(trainer_context("binary", FAST), batch_rows=batch_rows)
    trainer = GbdtTrainer(context)
    trainer.fit(synthetic_split("binary", 3000, seed=1), synthetic_split("binary", 600, seed=2))
    return trainer


def test_gbdt_through_the_data_iterator_matches_the_whole_table() -> None:
    train, validation = synthetic_split("binary", 3000, seed=1), synthetic_split("binary", 600, seed=2)
    one_batch, batches = _gbdt_with_batch_rows(10_000), _gbdt_with_batch_rows(BATCH_ROWS * 4)
    params = {key: value for key, value in FAST.items() if key != "early_stopping_rounds"}
    whole = xgboost.XGBClassifier(
        **params, early_stopping_rounds=FAST["early_stopping_rounds"], tree_method="hist", random_state=7
    ).fit(train.features, train.target, eval_set=[(validation.features, validation.target)], verbose=False)

    rows = (validation.numeric, validation.categories)
    # One batch is the whole table: the model XGBoost's scikit-learn API trains on it.
    np.testing.assert_allclose(one_batch.predict(*rows), whole.predict_proba(validation.features), atol=1e-6)
    np.testing.assert_allclose(batches.predict(*rows), one_batch.predict(*rows), atol=ITERATOR_PROBABILITY_TOLERANCE)


def test_your_own_trainer_gets_array_like_splits(churn_split: tuple[str, TabularPreprocessor], tmp_path: Path) -> None:
    from examples.trainers.sklearn_gbt import GradientBoostingTrainer

    uri, preprocessor = churn_split
    config = load_pipeline_config()
    data = encode_split(uri, preprocessor, config.dataset, "train split", tmp_path, BATCH_ROWS)
    context = dataclasses.replace(
        trainer_context("binary", {"n_estimators": 5}), numeric_columns=preprocessor.numeric_columns
    )

    assert isinstance(data, TrainingData) and isinstance(data.numeric, np.ndarray) and len(data) == ROWS
    assert data.features.shape == (ROWS, data.numeric.shape[1] + data.categories.shape[1])
    trainer = GradientBoostingTrainer(context)
    trainer.fit(data, data)
    assert trainer.predict(data.numeric[:7], data.categories[:7]).shape == (7, 2)


def test_the_reference_profile_read_column_by_column_is_the_whole_tables(
    churn_split: tuple[str, TabularPreprocessor],
) -> None:
    uri, _ = churn_split
    config = load_pipeline_config()

    rows, profiles = feature_profiles(uri, config.dataset.features, BATCH_ROWS, config.drift)

    whole = build_profile(storage.read_parquet(uri), config.dataset.features, config=config.drift)
    assert rows == whole.rows == ROWS
    np.testing.assert_equal(
        {name: dataclasses.asdict(profile) for name, profile in profiles.items()},
        {name: dataclasses.asdict(profile) for name, profile in whole.features.items()},
    )
