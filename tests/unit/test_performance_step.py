"""The performance step on a real champion (trained, evaluated, registered) and its real prediction logs: labels that
follow the training relationship keep realized performance inside the holdout's band; concept drift drops it while
the estimate, blind to it, stays; label problems are counted and reported; no labels yet, too few, or a labels file
without its columns leave realized performance unjudged with the reason, and the check goes on; no champion skips."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from test_drift_step import score_window
from test_train import prepare_run

from mlsteps import registry, results, tracking
from mlsteps.config import PipelineConfig
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.steps import evaluate, performance, train

HOUR = pd.Timestamp("2026-11-20T10:00:00Z")
ROWS = 2000


@pytest.fixture
def champion(mlflow_tracking: str, tmp_path: Path) -> PipelineConfig:
    """A small model trained, evaluated (which writes its holdout reference) and made the champion."""
    root = str(tmp_path / "train")
    config = prepare_run(root, rows=4000, epochs=3)
    trained = train.run(root, config)
    evaluate.run(root, config)
    client = tracking.client()
    name = config.registry.model_name
    version, _ = registry.register_once(client, name, trained["model_uri"], root)
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    return config


def _stream(tmp_path: Path, store: str, name: str, frame: pd.DataFrame, hour: pd.Timestamp) -> pd.DataFrame:
    """Score ``frame`` into the log; its labels."""
    score_window(tmp_path, store, name, frame, hour)
    return frame[["customer_id", "churned"]]


def _judge(tmp_path: Path, config: PipelineConfig, store: str, labels: str, hour: pd.Timestamp) -> dict:
    root = str(tmp_path / "monitor" / hour.strftime("%H"))
    overrides = {"labels": {"uri": labels}, "min_labelled_rows": 500}
    judged = config.model_copy(
        update={
            "monitoring": config.monitoring.model_copy(
                update={"performance": config.monitoring.performance.model_validate(overrides), "min_rows": 500}
            )
        }
    )
    performance.run(root, judged, store, (hour + pd.Timedelta(hours=1)).isoformat())
    return results.read_result(root, "performance")


def test_realized_and_estimated_performance_of_the_champion(champion: PipelineConfig, tmp_path: Path) -> None:
    store, labels = str(tmp_path / "predictions"), tmp_path / "labels"
    labels.mkdir()
    steady = _stream(tmp_path, store, "steady", generate_churn(ROWS, seed=31), HOUR)
    # The same customers' features, churning for other reasons (concept drift): the inputs do not move.
    later = HOUR + pd.Timedelta(hours=1)
    concept = _stream(tmp_path, store, "concept", generate_churn(ROWS, seed=32, concept_drift=1.0), later)
    pd.concat([steady, concept]).to_parquet(labels / "labels.parquet", index=False)

    quiet = _judge(tmp_path, champion, store, str(labels), HOUR)
    realized, estimated = quiet["realized"], quiet["estimated"]
    assert quiet["status"] == "ok" and quiet["task"] == "binary"
    assert realized["status"] == "ok" and realized["metric"] == "roc_auc" and realized["rows"] == ROWS
    assert realized["lower"] <= realized["value"] <= realized["upper"] and realized["drop"] is False
    assert realized["labels"]["labelled"] == ROWS and realized["labels"]["unlabelled"] == 0
    assert estimated["status"] == "ok" and estimated["drop"] is False and estimated["rows"] == ROWS
    assert abs(estimated["value"] - realized["value"]) < 3 * realized["sampling_error"]
    assert storage.read_json(quiet["report_uri"])["realized"]["value"] == realized["value"]

    dropped = _judge(tmp_path, champion, store, str(labels), later)
    assert dropped["realized"]["drop"] is True and dropped["realized"]["value"] < dropped["realized"]["lower"]
    assert dropped["estimated"]["drop"] is False, "estimation cannot see concept drift: the labels confirm it"
    assert "below" in dropped["realized"]["message"] or "outside" in dropped["realized"]["message"]


def test_label_problems_are_counted_not_used(champion: PipelineConfig, tmp_path: Path) -> None:
    store, labels = str(tmp_path / "predictions"), tmp_path / "labels"
    labels.mkdir()
    steady = _stream(tmp_path, store, "steady", generate_churn(ROWS, seed=33), HOUR)
    ids = steady["customer_id"].astype(str).tolist()
    problems = pd.DataFrame(
        {
            "customer_id": [ids[0], ids[0], ids[1], ids[1], ids[2], None],
            "churned": ["1", "1", "0", "1", "maybe", "0"],
        }
    )
    pd.concat([steady.iloc[3:].astype({"customer_id": str, "churned": str}), problems]).to_csv(
        labels / "labels.csv", index=False
    )

    judged = _judge(tmp_path, champion, store, str(labels), HOUR)["realized"]
    counts = judged["labels"]
    assert (counts["duplicates"], counts["conflicting"], counts["wrong_type"], counts["missing_id"]) == (1, 2, 1, 1)
    assert counts["labelled"] == ROWS - 3 + 1, "the duplicate counts once, the conflicting and wrong ones not at all"
    assert len(judged["label_problems"]) == 4 and judged["status"] == "ok"


def test_too_few_labels_are_not_judged_and_bad_labels_files_are_refused(
    champion: PipelineConfig, tmp_path: Path
) -> None:
    store, labels = str(tmp_path / "predictions"), tmp_path / "labels"
    labels.mkdir()
    steady = _stream(tmp_path, store, "steady", generate_churn(ROWS, seed=34), HOUR)
    none_yet = _judge(tmp_path, champion, store, str(labels), HOUR)["realized"]
    assert none_yet["status"] == "insufficient_labels" and "no label file under" in none_yet["message"]
    steady.head(100).to_parquet(labels / "few.parquet", index=False)
    few = _judge(tmp_path, champion, store, str(labels), HOUR)["realized"]
    assert few["status"] == "insufficient_labels" and few["drop"] is False and few["rows"] == 100

    steady.rename(columns={"churned": "label"}).to_csv(labels / "renamed.csv", index=False)
    broken = _judge(tmp_path, champion, store, str(labels), HOUR)
    assert broken["status"] == "ok" and broken["estimated"]["status"] == "ok", "the rest of the check goes on"
    assert broken["realized"]["status"] == "bad_labels" and broken["realized"]["drop"] is False
    assert re.search(r"renamed\.csv.*churned", broken["realized"]["message"])


def test_no_champion_yet_is_skipped(mlflow_tracking: str, tmp_path: Path) -> None:
    from mlsteps.config import load_pipeline_config

    payload = performance.run(str(tmp_path / "m"), load_pipeline_config(), str(tmp_path / "predictions"))
    assert payload["status"] == "skipped" and "no model version has alias 'champion'" in payload["message"]
