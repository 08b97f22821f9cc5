"""Every task end to end on the embedded default, as `make demo` runs a model config of include/config/models/.

For the multiclass model (tiers.yaml: two candidates, mlp and gbdt, trained as mapped tasks) and the regression
model (claims.yaml: gbdt): ml_retrain runs, its best candidate becomes the champion, then ml_deploy serves it, and
the server answers for the task through the Open Inference Protocol and MLflow's scoring format with the values the
model package gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ports import free_port

from mlsteps import results
from mlsteps.config import DEFAULT_CONFIG_PATH, load_pipeline_config
from mlsteps.data.snapshots import read_table
from mlsteps.deploy.local import LocalTarget

pytestmark = pytest.mark.e2e

MODELS = {"multiclass": "models/tiers.yaml", "regression": "examples/claims.yaml"}


class TaskLoop:
    """One model's state folder, config (the shipped one, with a free port and short training) and runs."""

    def __init__(self, state_dir: Path, shipped: str, port: int) -> None:
        self.state_dir = state_dir
        (state_dir / "models").mkdir()
        self.config = state_dir / "models" / "model.yaml"
        overrides = {
            "extends": str(DEFAULT_CONFIG_PATH.parent / shipped),
            "training": {"epochs": 4},
            "serving": {"local": {"port": port}, "smoke": {"requests": 10}},
        }
        self.config.write_text(yaml.safe_dump(overrides))
        self.pipeline = load_pipeline_config(str(self.config))
        self.model = self.pipeline.registry.model_name
        self.server = LocalTarget(self.model, state_dir / "serving" / self.model, port=port)

    def run(self, purpose: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "orchestration.embedded", "run", "--purpose", purpose, "--rows", "6000"],
            env={**os.environ, "ML_STATE_DIR": str(self.state_dir), "ML_MODELS_DIR": str(self.config.parent)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        outcomes = sorted((self.state_dir / "logs").glob(f"{self.model}.{purpose}-*.json"))
        assert outcomes, done.stdout[-3000:] + done.stderr[-3000:]
        return done, json.loads(outcomes[-1].read_text())

    def run_root(self, purpose: str, run_id: str) -> str:
        return results.run_root(str(self.state_dir / "artifacts"), f"{self.model}.{purpose}", run_id)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.server.endpoint()}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module", params=sorted(MODELS))
def loop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskLoop]:
    task = request.param
    state = TaskLoop(tmp_path_factory.mktemp(task), MODELS[task], free_port())
    try:
        yield state
    finally:
        state.server.stop()


@pytest.fixture(scope="module")
def runs(loop: TaskLoop) -> dict[str, Any]:
    """One retraining run and one deploy, in order. (A second run gated against the first's champion is the binary
    model's, tests/e2e/test_ml_retrain.py; how each task's gate decides is covered case by case in
    tests/unit/test_evaluation.py.)"""
    return {"retrain": loop.run("retrain"), "deploy": loop.run("deploy")}


def test_a_retraining_run_trains_every_candidate_and_gates_the_best(loop: TaskLoop, runs: dict[str, Any]) -> None:
    task, metric = loop.pipeline.dataset.target.task, loop.pipeline.primary_metric
    families = loop.pipeline.training.candidate_families
    done, outcome = runs["retrain"]
    assert outcome["state"] == "success", done.stdout[-3000:] + done.stderr[-3000:]
    evaluation = results.read_result(loop.run_root("retrain", outcome["run_id"]), "evaluate")
    assert evaluation["task"] == task and evaluation["gate"]["primary_metric"] == metric
    assert sorted(candidate["family"] for candidate in evaluation["candidates"]) == sorted(families)
    assert evaluation["challenger"]["family"] in families
    for candidate in evaluation["candidates"]:
        train = results.read_result(loop.run_root("retrain", outcome["run_id"]), f"train/{candidate['family']}")
        assert train["task"] == task and train["export_check"]["rows"] > 0
    assert evaluation["champion"] is None and evaluation["gate"]["passed"]


def test_the_champion_serves_the_task_through_both_protocols(loop: TaskLoop, runs: dict[str, Any]) -> None:
    done, outcome = runs["deploy"]
    assert outcome["state"] == "success", done.stdout[-3000:] + done.stderr[-3000:]
    deploy = results.read_result(loop.run_root("deploy", outcome["run_id"]), "deploy")
    assert deploy["outcome"] == "deployed" and deploy["smoke"]["passed"]

    dataset, target = loop.pipeline.dataset, loop.pipeline.dataset.target
    frame = read_table(str(loop.state_dir / "datasets" / f"{dataset.name}.csv")).head(4)
    columns = [spec.name for spec in dataset.features]
    rows = json.loads(frame[columns].to_json(orient="split", index=False))
    name = loop.pipeline.registry.model_name
    mlflow_answer = loop.post("/invocations", {"dataframe_split": rows})["predictions"]
    inputs = [
        {
            "name": spec.name,
            "shape": [len(frame)],
            "datatype": "FP64" if spec.type == "numeric" else "BYTES",
            "data": [None if value is None else value for value in frame[spec.name].astype(object).tolist()],
        }
        for spec in dataset.features
    ]
    v2 = {output["name"]: output for output in loop.post(f"/v2/models/{name}/infer", {"inputs": inputs})["outputs"]}
    predictions = [record["prediction"] for record in mlflow_answer]
    assert v2["prediction"]["data"] == predictions
    if target.task == "regression":
        assert all(np.isfinite(predictions))
    else:
        assert set(predictions) <= set(target.classes)
        probabilities = np.asarray(v2["probabilities"]["data"]).reshape(len(frame), len(target.classes))
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert [target.classes[i] for i in probabilities.argmax(axis=1)] == predictions
