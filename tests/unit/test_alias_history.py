"""Alias history in the MLflow registry (SQLite): every move recorded as a registered-model tag, read back in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlsteps import registry, results, tracking
from mlsteps.steps import promote

MODEL = "churn-classifier"


@pytest.fixture
def client(mlflow_tracking: str) -> Any:
    """A registry with MODEL and three versions (their sources need not exist for alias bookkeeping)."""
    mlflow_client = tracking.client()
    mlflow_client.create_registered_model(MODEL)
    for number in range(3):
        mlflow_client.create_model_version(MODEL, source=f"s3://models/churn/{number + 1}")
    return mlflow_client


def _history_tags(client: Any) -> dict[str, str]:
    tags = client.get_registered_model(MODEL).tags
    return {key: value for key, value in tags.items() if key.startswith(registry.ALIAS_HISTORY_PREFIX)}


def test_each_move_is_one_event_oldest_first_and_a_repeat_records_nothing(client: Any) -> None:
    first = registry.move_alias(client, MODEL, "champion", 1, actor="run-a", reason="gate passed")
    second = registry.move_alias(client, MODEL, "champion", 2, actor="run-b", reason="gate passed, better auc")
    repeat = registry.move_alias(client, MODEL, "champion", 2, actor="run-c", reason="retry")

    assert repeat is None
    assert registry.alias_version_number(client, MODEL, "champion") == 2
    history = registry.alias_history(client, MODEL, "champion")
    assert history == [first, second]
    assert [(event.from_version, event.to_version, event.actor) for event in history] == [
        (None, 1, "run-a"),
        (1, 2, "run-b"),
    ]
    assert history[0].at < history[1].at and history[1].at.tzinfo is not None
    # One tag per event, keyed by alias and UTC time; the value is compact JSON.
    tags = _history_tags(client)
    assert len(tags) == 2
    key = next(iter(sorted(tags)))
    assert key.startswith("alias_history.champion.") and key.endswith("Z")
    assert json.loads(tags[key]) == {
        "from": None,
        "to": 1,
        "actor": "run-a",
        "reason": "gate passed",
        "at": first.at.isoformat(),
    }


def test_histories_of_different_aliases_stay_apart(client: Any) -> None:
    registry.move_alias(client, MODEL, "champion", 1, actor="cli", reason="first")
    registry.move_alias(client, MODEL, "challenger", 3, actor="cli", reason="latest candidate")

    assert [event.to_version for event in registry.alias_history(client, MODEL, "champion")] == [1]
    assert [event.to_version for event in registry.alias_history(client, MODEL, "challenger")] == [3]


def test_alias_version_at_answers_what_served_at_a_moment(client: Any) -> None:
    before_any = datetime.now(UTC) - timedelta(seconds=1)
    one = registry.move_alias(client, MODEL, "champion", 1, actor="cli", reason="first")
    two = registry.move_alias(client, MODEL, "champion", 2, actor="cli", reason="second")
    removed = registry.move_alias(client, MODEL, "champion", None, actor="cli", reason="rollback: nothing serves")

    def at(moment: datetime) -> int | None:
        return registry.alias_version_at(client, MODEL, "champion", moment)

    assert at(before_any) is None
    assert at(one.at) == 1
    assert at(one.at + (two.at - one.at) / 2) == 1
    assert at(two.at) == 2
    assert at(removed.at) is None
    # A naive datetime is read as UTC.
    assert at(two.at.replace(tzinfo=None)) == 2
    assert registry.alias_version_number(client, MODEL, "champion") is None
    assert removed.from_version == 2 and removed.to_version is None


def test_a_long_reason_is_shortened_to_fit_the_registry(client: Any) -> None:
    reason = "rollback: " + "smoke row failed; " * 1000 + "END"

    event = registry.move_alias(client, MODEL, "champion", 1, actor="ml_deploy__manual", reason=reason)

    [value] = _history_tags(client).values()
    assert len(value) <= registry.MAX_EVENT_VALUE_CHARS
    [stored] = registry.alias_history(client, MODEL, "champion")
    assert stored.reason.startswith("rollback: smoke row failed;") and stored.reason.endswith("[truncated]")
    assert "END" not in stored.reason
    assert event.reason == reason  # the caller's event keeps the whole reason


def test_history_of_a_model_that_does_not_exist_is_empty(mlflow_tracking: str) -> None:
    client = tracking.client()
    assert registry.alias_history(client, "no-such-model", "champion") == []
    assert registry.alias_version_at(client, "no-such-model", "champion", datetime.now(UTC)) is None


def _write_gate_results(run_root: str, version: int, *, champion: int | None, passed: bool) -> None:
    roc_auc = 0.8 if passed else 0.6
    results.write_result(
        run_root,
        "evaluate",
        {
            "model_name": MODEL,
            "task": "binary",
            "challenger": {"metrics": {"roc_auc": roc_auc}},
            "champion": None if champion is None else {"version": champion, "metrics": {"roc_auc": 0.75}},
            "gate": {
                "primary_metric": "roc_auc",
                "higher_is_better": True,
                "threshold": 0.7,
                "max_degradation": 0.01,
                "degradation": "absolute",
            },
        },
    )
    results.write_result(run_root, "register", {"model_name": MODEL, "version": version})


def test_promote_records_the_move_with_actor_and_gate_summary(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = str(tmp_path / "r1"), str(tmp_path / "r2")
    _write_gate_results(first, 1, champion=None, passed=True)
    _write_gate_results(second, 2, champion=1, passed=False)

    monkeypatch.setenv(promote.DAG_RUN_ENV_VAR, "scheduled__2025-06-02T03:00:00+00:00")
    promote.main(run_root=first)
    monkeypatch.delenv(promote.DAG_RUN_ENV_VAR)
    promote.main(run_root=second, force=True)
    promote.main(run_root=second, force=True)  # a retry: champion already there, nothing recorded

    history = registry.alias_history(client, MODEL, registry.CHAMPION)
    assert [(event.from_version, event.to_version) for event in history] == [(None, 1), (1, 2)]
    assert history[0].actor == "scheduled__2025-06-02T03:00:00+00:00"
    assert history[0].reason.startswith("promote (gate passed): challenger roc_auc=0.8 >= threshold 0.7")
    assert history[1].actor == "cli"
    assert history[1].reason.startswith("promote (forced): challenger roc_auc=0.6 < threshold 0.7")
    assert "forced: promoted although 2 check(s) failed" in history[1].reason
