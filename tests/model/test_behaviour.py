"""Behavioural tests of a trained churn model: directional expectations and invariances, on the logged package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlsteps import results
from mlsteps.config import load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.steps import preprocess, train

TRAINING = {"epochs": 6, "hidden_units": [32], "batch_size": 128, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, pd.DataFrame]]:
    """The model package of one 5k-row training run and its holdout rows."""
    tmp = tmp_path_factory.mktemp("behaviour")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        patch.setenv("MLFLOW_ARTIFACT_LOCATION", (tmp / "mlartifacts").as_uri())
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        root = str(tmp / "run")
        snapshot_uri = storage.join(root, "snapshot", "data.parquet")
        storage.write_parquet(generate_churn(5000, seed=11), snapshot_uri)
        results.write_result(root, "snapshot", {"snapshot_id": "b", "snapshot_uri": snapshot_uri, "dataset": "churn"})
        config = load_pipeline_config(overrides={"training": TRAINING})
        split = preprocess.run(root, config)
        model = mlflow.pyfunc.load_model(train.run(root, config)["model_uri"])
        yield model, storage.read_parquet(split["holdout_uri"])
        mlflow.set_tracking_uri(None)


def probabilities(model: Any, rows: pd.DataFrame, **changes: Any) -> pd.Series:
    return model.predict(rows.assign(**changes))["probability"]


def test_more_support_calls_on_a_monthly_contract_raise_churn_risk(trained) -> None:
    model, holdout = trained
    few = probabilities(model, holdout, contract_type="monthly", support_calls_90d=0.0)
    many = probabilities(model, holdout, contract_type="monthly", support_calls_90d=6.0)

    assert (many > few).mean() > 0.95


def test_longer_tenure_lowers_churn_risk(trained) -> None:
    model, holdout = trained
    new = probabilities(model, holdout, tenure_months=2.0)
    loyal = probabilities(model, holdout, tenure_months=60.0)

    assert (loyal < new).mean() > 0.95


def test_a_two_year_contract_is_safer_than_a_monthly_one(trained) -> None:
    model, holdout = trained
    monthly = probabilities(model, holdout, contract_type="monthly")
    two_year = probabilities(model, holdout, contract_type="two_year")

    assert (two_year < monthly).mean() > 0.95


def test_predictions_do_not_depend_on_ids_row_order_or_batch(trained) -> None:
    model, holdout = trained
    rows = holdout.head(200)
    together = probabilities(model, rows)
    renamed = probabilities(model, rows, customer_id="someone-else")
    reversed_rows = probabilities(model, rows.iloc[::-1]).iloc[::-1]
    one_by_one = pd.concat([probabilities(model, rows.iloc[[i]]) for i in range(5)])

    pd.testing.assert_series_equal(renamed, together)
    pd.testing.assert_series_equal(reversed_rows, together)
    pd.testing.assert_series_equal(one_by_one, together.iloc[:5], rtol=1e-6)
