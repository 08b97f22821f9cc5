"""The gbdt family (XGBoost) on small synthetic splits: each task trains and predicts the task's output, a seed
fixes the model, early stopping stops on a target it cannot learn, and a class without train rows is refused."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost

from mlsteps.errors import DataError
from mlsteps.training.api import TrainerContext, TrainingData
from mlsteps.training.gbdt import EVAL_METRIC, GbdtTrainer

TASKS = ("binary", "multiclass", "regression")
CLASSES = {"binary": ["stay", "churn"], "multiclass": ["basic", "plus", "pro"], "regression": []}
NUMERIC_COLUMNS = ["tenure", "charges", "calls"]
CATEGORICAL_COLUMNS = ["plan", "region"]
CARDINALITY = 4
FAST = {"n_estimators": 60, "learning_rate": 0.3, "max_depth": 3, "early_stopping_rounds": 10}


def synthetic_split(task: str, rows: int, seed: int, learnable: bool = True) -> TrainingData:
    """Preprocessed rows as the train step hands them over: standardised numerics, category indices 0..4, and a
    target that depends on both (or, with ``learnable=False``, on nothing)."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, len(NUMERIC_COLUMNS))).astype(np.float32)
    categories = rng.integers(0, CARDINALITY + 1, size=(rows, len(CATEGORICAL_COLUMNS))).astype(np.int64)
    signal = numeric[:, 0] + 1.5 * (categories[:, 0] == 2) - 0.5 * numeric[:, 1]
    if not learnable:
        signal = rng.normal(size=rows)
    if task == "binary":
        target = (signal > 0.3).astype(np.int64)
    elif task == "multiclass":
        target = np.digitize(signal, [-0.5, 0.8]).astype(np.int64)
    else:
        # In the thousands, as a price would be: the export check's tolerance is relative for regression.
        target = 2000.0 * signal + 300.0 * categories[:, 1] + rng.normal(scale=50.0, size=rows)
    return TrainingData(numeric, categories, target)


def trainer_context(task: str, params: dict | None = None, seed: int = 7, logged: list | None = None) -> TrainerContext:
    """A context as the train step builds it, recording logged metrics into ``logged`` when given."""

    def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
        if logged is not None:
            logged.append((step, metrics))

    return TrainerContext(
        task=task,
        classes=CLASSES[task],
        numeric_columns=NUMERIC_COLUMNS,
        categorical_columns=CATEGORICAL_COLUMNS,
        cardinalities=[CARDINALITY] * len(CATEGORICAL_COLUMNS),
        seed=seed,
        device="cpu",
        params=dict(FAST if params is None else params),
        log_metrics=log_metrics,
    )


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_and_predicts_its_output(task: str) -> None:
    train, validation = synthetic_split(task, 800, seed=1), synthetic_split(task, 300, seed=2)
    logged: list = []
    trainer = GbdtTrainer(trainer_context(task, logged=logged))

    metrics = trainer.fit(train, validation)
    predicted = trainer.predict(validation.numeric, validation.categories)

    metric = f"val_{EVAL_METRIC[task]}"
    assert set(metrics) == {"best_iteration", metric}
    # One validation loss per round, stepped by round, the reported one being the best round's.
    assert [step for step, _ in logged] == list(range(len(logged)))
    losses = [values[metric] for _, values in logged]
    assert metrics[metric] == pytest.approx(min(losses)) == pytest.approx(losses[int(metrics["best_iteration"])])
    if task == "regression":
        assert predicted.shape == (len(validation),)
        assert np.corrcoef(predicted, validation.target)[0, 1] > 0.9
    else:
        assert predicted.shape == (len(validation), len(CLASSES[task]))
        np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-6)
        assert (predicted.argmax(axis=1) == validation.target).mean() > 0.8


def test_the_same_seed_gives_the_same_model_and_another_seed_another() -> None:
    train, validation = synthetic_split("binary", 800, seed=1), synthetic_split("binary", 300, seed=2)
    sampled = {**FAST, "subsample": 0.7, "colsample_bytree": 0.6}

    def predictions(seed: int) -> np.ndarray:
        trainer = GbdtTrainer(trainer_context("binary", sampled, seed=seed))
        trainer.fit(train, validation)
        return trainer.predict(validation.numeric, validation.categories)

    first = predictions(seed=11)
    np.testing.assert_array_equal(first, predictions(seed=11))
    assert not np.array_equal(first, predictions(seed=12))


def test_early_stopping_stops_on_a_target_it_cannot_learn_and_keeps_the_best_rounds(tmp_path) -> None:
    train = synthetic_split("binary", 800, seed=1, learnable=False)
    validation = synthetic_split("binary", 300, seed=2, learnable=False)
    logged: list = []
    params = {**FAST, "n_estimators": 500, "early_stopping_rounds": 5}
    trainer = GbdtTrainer(trainer_context("binary", params, logged=logged))

    best = int(trainer.fit(train, validation)["best_iteration"])

    assert len(logged) == best + 1 + 5 < 500
    # Only the best rounds are kept: in the saved booster as in predict.
    booster = xgboost.Booster(model_file=str(trainer.save(tmp_path)))
    assert booster.num_boosted_rounds() == best + 1
    saved = booster.predict(xgboost.DMatrix(validation.features))
    np.testing.assert_allclose(saved, trainer.predict(validation.numeric, validation.categories)[:, 1], rtol=1e-6)


def test_a_class_without_train_rows_is_refused_by_name() -> None:
    train = synthetic_split("multiclass", 300, seed=1)
    without_pro = TrainingData(train.numeric, train.categories, np.minimum(train.target, 1))

    with pytest.raises(DataError, match=r"no rows of class\(es\) \['pro'\].*target.classes"):
        GbdtTrainer(trainer_context("multiclass")).fit(without_pro, synthetic_split("multiclass", 100, seed=2))
