"""The evaluate, register and promote steps against a real MLflow registry on SQLite.

Each "run" logs a small pyfunc model whose probability is a logistic score of a few churn features, so the tests
decide which model is better: GOOD reaches about 0.74 holdout ROC AUC, WORSE about 0.72 (a drop above the allowed
0.01), WEAK about 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from fake_models import GOOD, MODEL_NAME, PIPELINE, WEAK, WORSE, log_model
from typer.testing import CliRunner

from mlsteps import registry, results, tracking
from mlsteps.cli import app
from mlsteps.data import storage
from mlsteps.data.datasets import generate_churn
from mlsteps.errors import ConfigError, DataError, RegistryConflict, StepError
from mlsteps.steps import evaluate, promote, register

NewRun = Callable[..., str]
FAMILY = PIPELINE.training.model


@pytest.fixture
def holdout_uri(tmp_path: Path) -> str:
    uri = str(tmp_path / "holdout.parquet")
    storage.write_parquet(generate_churn(1500, seed=3), uri)
    return uri


def _write_upstream(run_root: str, holdout_uri: str, weights: dict[str, float], family: str = FAMILY) -> None:
    results.write_result(run_root, "snapshot", {"snapshot_id": "snap-42", "dataset": "churn"})
    results.write_result(run_root, "preprocess", {"holdout_uri": holdout_uri, "snapshot_id": "snap-42"})
    _write_candidate(run_root, weights, family)


def _write_candidate(run_root: str, weights: dict[str, float], family: str) -> None:
    """The train result of one candidate family, with a model of the weights."""
    run_id, model_uri = log_model(weights)
    train = {"mlflow_run_id": run_id, "model_uri": model_uri, "family": family, "task": "binary"}
    results.write_result(run_root, results.candidate_step(family), train)


def _train(run_root: str, family: str = FAMILY) -> dict:
    return results.read_result(run_root, results.candidate_step(family))


@pytest.fixture
def new_run(tmp_path: Path, mlflow_tracking: str, holdout_uri: str) -> NewRun:
    """Make a run root whose snapshot, preprocess and train results are written, with a model of the weights."""

    def make(name: str, weights: dict[str, float], family: str = FAMILY) -> str:
        run_root = str(tmp_path / "runs" / name)
        _write_upstream(run_root, holdout_uri, weights, family)
        return run_root

    return make


def _champion() -> int | None:
    return registry.alias_version_number(tracking.client(), MODEL_NAME, registry.CHAMPION)


def _evaluate_register(run_root: str, **thresholds: float) -> dict:
    evaluate.main(run_root=run_root, **thresholds)
    register.main(run_root=run_root)
    return results.read_result(run_root, "evaluate")


def test_evaluate_without_champion_judges_the_minimum_only(
    s3_bucket: str, mlflow_tracking: str, tmp_path: Path
) -> None:
    holdout_uri = f"{s3_bucket}/data/holdout.parquet"
    storage.write_parquet(generate_churn(1500, seed=3), holdout_uri)
    run_root = f"{s3_bucket}/runs/ct/first"
    _write_upstream(run_root, holdout_uri, GOOD)

    evaluate.main(run_root=run_root)

    result = results.read_result(run_root, "evaluate")
    assert result["model_name"] == MODEL_NAME and result["snapshot_id"] == "snap-42"
    assert result["champion"] is None
    metrics = result["challenger"]["metrics"]
    assert metrics["rows"] == 1500 and metrics["roc_auc"] > 0.72
    assert set(result["challenger"]["slices"]) == {"plan", "region"}
    assert result["challenger"]["slices"]["region"]["north"]["rows"] >= 30
    assert result["gate"]["passed"] is True
    gate = result["gate"]
    assert gate["primary_metric"] == "roc_auc" and gate["higher_is_better"] is True
    assert gate["threshold"] == 0.70 and gate["max_degradation"] == 0.01 and gate["degradation"] == "absolute"
    assert gate["reasons"] == [
        f"challenger roc_auc={metrics['roc_auc']:.6g} >= threshold 0.7",
        "no champion yet: judged on the threshold only",
    ]
    assert result["report_uri"] == f"{run_root}/evaluate/report.json"
    report = storage.read_json(result["report_uri"])
    assert {key: value for key, value in report["challenger"].items() if key != "curves"} == result["challenger"]
    assert set(report["challenger"]["curves"]) == {"roc", "calibration"} and report["gate"] == result["gate"]
    page = storage.read_text(result["report_html_uri"])
    assert "no champion yet" in page and "region" in page
    assert "<title>ROC curve</title>" in page and "<title>Calibration (reliability)</title>" in page


def test_cli_gate_overrides_decide_the_gate(new_run: NewRun) -> None:
    run_root = new_run("strict", GOOD)
    outcome = CliRunner().invoke(app, ["evaluate", "--run-root", run_root, "--threshold", "0.99"])
    assert outcome.exit_code == 0, outcome.output  # a failed gate is a decision, not a step failure
    gate = results.read_result(run_root, "evaluate")["gate"]
    assert gate["passed"] is False and gate["threshold"] == 0.99
    assert "< threshold 0.99" in gate["reasons"][0]
    override = ["--primary-metric", "log_loss", "--threshold", "5", "--max-degradation", "0.2"]
    outcome = CliRunner().invoke(app, ["evaluate", "--run-root", run_root, *override])
    assert outcome.exit_code == 0, outcome.output
    gate = results.read_result(run_root, "evaluate")["gate"]
    assert gate["passed"] is True and gate["primary_metric"] == "log_loss" and gate["higher_is_better"] is False
    assert gate["max_degradation"] == 0.2 and " <= threshold 5" in gate["reasons"][0]
    outcome = CliRunner().invoke(
        app, ["evaluate", "--run-root", run_root, "--threshold", "none", "--degradation", "relative"]
    )
    assert outcome.exit_code == 0, outcome.output
    gate = results.read_result(run_root, "evaluate")["gate"]
    assert gate["threshold"] is None and gate["degradation"] == "relative"
    assert gate["reasons"][0].endswith("no threshold set (evaluation.threshold is null)")
    with pytest.raises(ConfigError, match=r"threshold 1.5 is outside the range of roc_auc"):
        evaluate.main(run_root=run_root, threshold=1.5)
    outcome = CliRunner().invoke(app, ["evaluate", "--run-root", run_root, "--primary-metric", "rmse"])
    assert outcome.exit_code == 2
    assert "evaluation.primary_metric: 'rmse' is not a binary metric" in outcome.output


def test_the_best_candidate_becomes_the_challenger(new_run: NewRun) -> None:
    run_root = new_run("candidates", WEAK, family="mlp")
    _write_candidate(run_root, GOOD, "gbdt")
    outcome = CliRunner().invoke(app, ["evaluate", "--run-root", run_root, "--candidates", "mlp,gbdt"])
    assert outcome.exit_code == 0, outcome.output
    result = results.read_result(run_root, "evaluate")
    assert [candidate["family"] for candidate in result["candidates"]] == ["mlp", "gbdt"]
    weak, good = (candidate["metrics"]["roc_auc"] for candidate in result["candidates"])
    assert good > weak
    assert (
        result["challenger"]["family"] == "gbdt"
        and result["challenger"]["model_uri"] == _train(run_root, "gbdt")["model_uri"]
    )
    assert result["challenger"]["metrics"]["roc_auc"] == good
    assert "gbdt is the challenger" in outcome.output
    # Each candidate's holdout metrics also land on its own MLflow training run, beside its training metrics.
    for candidate in result["candidates"]:
        run = mlflow.get_run(_train(run_root, candidate["family"])["mlflow_run_id"])
        assert run.data.metrics["holdout_roc_auc"] == candidate["metrics"]["roc_auc"]
        assert run.data.tags["challenger"] == str(candidate["family"] == "gbdt").lower()
    page = storage.read_text(result["report_html_uri"])
    assert "<h2>Candidates</h2>" in page and _train(run_root, "mlp")["model_uri"] in page
    with pytest.raises(StepError, match=r"train/xgb"):
        evaluate.main(run_root=run_root, candidates="mlp,xgb:Trainer")


def test_register_twice_for_one_run_root_creates_one_version(new_run: NewRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODE_VERSION", "abc123")
    monkeypatch.setenv("STEP_IMAGE", "ghcr.io/example/mlsteps:0.1.0")
    run_root = new_run("once", GOOD)
    evaluate.main(run_root=run_root)
    register.main(run_root=run_root)
    first = results.read_result(run_root, "register")
    monkeypatch.chdir(Path(run_root).parent)
    register.main(run_root="once")  # the same run root, spelled relative to the working directory
    second = results.read_result(run_root, "register")

    assert first == second
    assert first["version"] == 1 and first["model_uri"] == f"models:/{MODEL_NAME}/1"
    assert first["aliases"] == ["challenger"]
    client = tracking.client()
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 1
    train = _train(run_root)
    assert first["source_run_id"] == train["mlflow_run_id"]
    tags = client.get_model_version(MODEL_NAME, "1").tags
    roc_auc = results.read_result(run_root, "evaluate")["challenger"]["metrics"]["roc_auc"]
    assert tags == {
        "run_root": run_root,
        "source_model_uri": train["model_uri"],
        "snapshot_id": "snap-42",
        "dataset": "churn",
        "mlflow_run_id": train["mlflow_run_id"],
        "gate_passed": "true",
        "family": FAMILY,
        "task": "binary",
        "primary_metric": "roc_auc",
        "roc_auc": str(roc_auc),
        "code_version": "0.1.0+abc123",
        "image": "ghcr.io/example/mlsteps:0.1.0",
        "serving_bundle_uri": f"runs:/{train['mlflow_run_id']}/serving_bundle/v1",
        "serving_bundle_sha256": first["serving_bundle_sha256"],
    }


def test_register_refuses_a_model_that_was_not_evaluated(new_run: NewRun, holdout_uri: str) -> None:
    run_root = new_run("retrained", GOOD)
    evaluate.main(run_root=run_root)
    _write_upstream(run_root, holdout_uri, WEAK)  # train re-ran after evaluate
    with pytest.raises(StepError, match="is not the model evaluate judged .* re-run evaluate"):
        register.main(run_root=run_root)


def test_a_version_whose_bundle_cannot_be_made_is_deleted_and_a_rerun_registers_it_whole(
    new_run: NewRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsteps import serving_bundle

    run_root = new_run("no-bundle", GOOD)
    evaluate.main(run_root=run_root)
    export = serving_bundle.export_bundle

    def refuse(*args: object, **kwargs: object) -> str:
        raise serving_bundle.BundleError("the ONNX model gives non-finite outputs on the smoke rows")

    monkeypatch.setattr(serving_bundle, "export_bundle", refuse)
    with pytest.raises(StepError, match="non-finite outputs"):
        register.main(run_root=run_root)
    client = tracking.client()
    assert client.search_model_versions(f"name='{MODEL_NAME}'") == []  # no version without its bundle
    assert results.optional_result(run_root, "register") is None

    monkeypatch.setattr(serving_bundle, "export_bundle", export)
    register.main(run_root=run_root)
    (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert (
        version.tags[serving_bundle.BUNDLE_SHA256_TAG]
        == results.read_result(run_root, "register")["serving_bundle_sha256"]
    )


def test_promote_sets_champion_and_the_next_run_compares_against_it(
    new_run: NewRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-01-05")
    first = new_run("first", GOOD)
    _evaluate_register(first)
    promote.main(run_root=first)

    promoted = results.read_result(first, "promote")
    assert promoted["version"] == 1 and promoted["alias"] == "champion"
    assert promoted["previous_champion"] is None and promoted["forced"] is False
    assert _champion() == 1
    tags = tracking.client().get_model_version(MODEL_NAME, "1").tags
    assert tags["promoted_by"] == "scheduled__2026-01-05"
    assert tags["previous_champion"] == "none" and tags["forced"] == "false"
    assert tags["promoted_at"].startswith("20")

    promote.main(run_root=first)  # a retry changes nothing
    assert results.read_result(first, "promote") == promoted
    assert tracking.client().get_model_version(MODEL_NAME, "1").tags == tags

    second = new_run("second", GOOD)
    evaluation = _evaluate_register(second)
    champion = evaluation["champion"]
    assert champion["version"] == 1 and champion["model_uri"] == f"models:/{MODEL_NAME}/1"
    assert champion["run_id"] == _train(first)["mlflow_run_id"]
    assert champion["metrics"] == evaluation["challenger"]["metrics"]  # same weights, same holdout
    assert evaluation["gate"]["passed"] is True
    assert any(
        "vs champion" in reason and "equal, within the allowed worsening 0.01" in reason
        for reason in evaluation["gate"]["reasons"]
    )
    promote.main(run_root=second)
    assert _champion() == 2
    assert results.read_result(second, "promote")["previous_champion"] == 1


def test_better_champion_fails_the_gate_and_promote_refuses(new_run: NewRun) -> None:
    first = new_run("first", GOOD)
    _evaluate_register(first)
    promote.main(run_root=first)

    second = new_run("second", WORSE)
    evaluation = _evaluate_register(second)
    assert evaluation["gate"]["passed"] is False
    challenger, champion = evaluation["challenger"]["metrics"]["roc_auc"], evaluation["champion"]["metrics"]["roc_auc"]
    assert champion - challenger > 0.01
    assert (
        f"challenger roc_auc={challenger:.6g} vs champion {champion:.6g}: worse by" in evaluation["gate"]["reasons"][1]
    )
    assert tracking.client().get_model_version(MODEL_NAME, "2").tags["gate_passed"] == "false"

    with pytest.raises(
        StepError, match=r"gate failed for churn-classifier v2, champion stays v1: .*beyond the allowed worsening 0.01"
    ):
        promote.main(run_root=second)
    outcome = CliRunner().invoke(app, ["promote", "--run-root", second])
    assert outcome.exit_code == 2
    assert "promote failed: gate failed" in outcome.output and "--force" in outcome.output
    assert _champion() == 1
    assert not storage.exists(results.result_uri(second, "promote"))


def test_champion_moved_since_evaluation_is_a_conflict(new_run: NewRun) -> None:
    first = new_run("first", GOOD)
    _evaluate_register(first)
    promote.main(run_root=first)
    second = new_run("second", GOOD)
    _evaluate_register(second)
    third = new_run("third", GOOD)
    _evaluate_register(third)
    promote.main(run_root=third)  # another run promotes between second's evaluate and promote
    assert _champion() == 3

    with pytest.raises(RegistryConflict, match="champion of churn-classifier moved from v1 to v3 since evaluation"):
        promote.main(run_root=second)
    assert _champion() == 3


def test_champion_appearing_since_evaluation_is_a_conflict(new_run: NewRun) -> None:
    first = new_run("first", GOOD)
    second = new_run("second", GOOD)
    _evaluate_register(first)
    _evaluate_register(second)
    promote.main(run_root=second)
    with pytest.raises(RegistryConflict, match="moved from none to v2"):
        promote.main(run_root=first)
    assert _champion() == 2


def test_force_promotes_a_failing_challenger_and_records_it(new_run: NewRun) -> None:
    first = new_run("first", GOOD)
    _evaluate_register(first)
    promote.main(run_root=first)
    weak = new_run("weak", WEAK)
    evaluation = _evaluate_register(weak)
    assert evaluation["gate"]["passed"] is False

    promote.main(run_root=weak, force=True)

    result = results.read_result(weak, "promote")
    assert result["forced"] is True and result["previous_champion"] == 1 and result["version"] == 2
    assert result["reasons"][:2] == evaluation["gate"]["reasons"]
    assert result["reasons"][-1] == "forced: promoted although 2 check(s) failed"
    assert _champion() == 2
    tags = tracking.client().get_model_version(MODEL_NAME, "2").tags
    assert tags["forced"] == "true" and tags["previous_champion"] == "1" and tags["promoted_by"] == "cli"


def test_evaluate_rejects_a_holdout_without_a_feature(new_run: NewRun, tmp_path: Path) -> None:
    run_root = new_run("broken", GOOD)
    holdout = generate_churn(200, seed=1).drop(columns=["tenure_months", "plan"])
    broken_uri = str(tmp_path / "broken.parquet")
    storage.write_parquet(holdout, broken_uri)
    results.write_result(run_root, "preprocess", {"holdout_uri": broken_uri, "snapshot_id": "snap-42"})
    with pytest.raises(DataError, match=r"holdout \S*broken.parquet lacks column\(s\) \['tenure_months', 'plan'\]"):
        evaluate.main(run_root=run_root)


def test_evaluate_rejects_unknown_target_values(new_run: NewRun, tmp_path: Path) -> None:
    run_root = new_run("labels", GOOD)
    holdout = generate_churn(200, seed=1)
    holdout.loc[:2, "churned"] = 7
    odd_uri = str(tmp_path / "odd.parquet")
    storage.write_parquet(holdout, odd_uri)
    results.write_result(run_root, "preprocess", {"holdout_uri": odd_uri, "snapshot_id": "snap-42"})
    with pytest.raises(
        DataError,
        match=r"odd.parquet: binary target column 'churned' has 3 value\(s\) outside the declared classes \[0, 1\], "
        r"e.g. \[7\]",
    ):
        evaluate.main(run_root=run_root)


def test_tracking_client_needs_a_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI is not set"):
        tracking.client()
