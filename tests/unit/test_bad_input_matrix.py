"""Every case of the bad-input matrix (``tests/bad_input_cases.py``) against one world of earlier runs: the entry point
answers as the case says, naming the problem, and the champion, the registry's versions, the served bundle and every
earlier artifact are unchanged (sha256 of each file). The committed ``docs/bad-input-matrix.md`` is the rendering.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from bad_input_cases import CASES, DOCS_PAGE, REGENERATE, USUAL_ROWS, Case, World, render
from mlflow import MlflowClient

CATEGORIES = {
    "dataset files",
    "configs",
    "DAG params",
    "labels files",
    "queue messages",
    "serving requests",
    "step options",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, serving_bundle_dir: Path) -> Iterator[World]:
    """One earlier run (snapshot and validation of churn data), a registry of two versions with version 1 as
    champion, and version 1's bundle served as the local runtime records it; MLflow on SQLite in the same folder."""
    import mlflow
    from fake_models import MODEL_NAME

    from mlsteps import registry, tracking
    from mlsteps.config import load_pipeline_config
    from mlsteps.data.datasets import generate_churn
    from mlsteps.data.snapshots import write_table
    from mlsteps.deploy.local import STATE_FILE, ServerRecord
    from mlsteps.steps import snapshot, validate
    from orchestration.models import DEFAULT_MODELS_DIR
    from orchestration.settings import load_settings

    root = tmp_path_factory.mktemp("world")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        env.setenv("MLFLOW_ARTIFACT_LOCATION", (root / "mlartifacts").as_uri())
        env.setenv("ML_STATE_DIR", str(root / "state"))
        for name in ("ML_ARTIFACT_ROOT", "ML_MODELS_DIR", "MLSTEPS_CONFIG"):
            env.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        artifact_root, serving_dir = root / "artifacts", root / "serving"
        client = tracking.client()
        client.create_registered_model(MODEL_NAME)
        for version in (1, 2):
            source = root / "mlartifacts" / f"model-{version}"
            source.mkdir(parents=True)
            client.create_model_version(MODEL_NAME, source=source.as_uri())
        registry.move_alias(client, MODEL_NAME, registry.CHAMPION, 1, actor="earlier-1", reason="first model")

        input_uri = str(root / "inputs" / "churn.csv")
        write_table(generate_churn(USUAL_ROWS, seed=3), input_uri)
        config, earlier = load_pipeline_config(), str(artifact_root / "runs" / "earlier-1")
        snapshot.run(earlier, config, input_uri, str(artifact_root / "snapshots"))
        validate.run(earlier, config)

        shutil.copytree(serving_bundle_dir, serving_dir / "v1")
        record = ServerRecord(pid=1, port=8081, model_name=MODEL_NAME, log=str(serving_dir / "server.log"))
        (serving_dir / STATE_FILE).write_text(json.dumps(asdict(record)))

        yield World(
            root=root,
            registry_state=_registry_state(client, MODEL_NAME),
            artifact_root=artifact_root,
            serving_dir=serving_dir,
            mlflow_uri=uri,
            model_name=MODEL_NAME,
            champion_version=1,
            settings=load_settings(str(DEFAULT_MODELS_DIR / "churn.yaml")),
        )
        mlflow.set_tracking_uri(None)


def _checksums(world: World) -> dict[str, str]:
    """sha256 of every file of the world's artifacts, serving folder and registry database, by relative path."""
    files = [world.root / "mlflow.db"]
    for folder in (world.artifact_root, world.serving_dir, world.root / "mlartifacts"):
        files += sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(world.root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def _registry_state(client: Any, model_name: str) -> dict[str, Any]:
    """The aliases (champion among them), every version with its tags, and the model's tags (the alias history)."""
    model = client.get_registered_model(model_name)
    versions = client.search_model_versions(f"name='{model_name}'")
    return {
        "aliases": dict(model.aliases),
        "versions": sorted((int(v.version), sorted(v.tags.items())) for v in versions),
        "model_tags": sorted(model.tags.items()),
    }


def _params() -> list[Any]:
    return [
        pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [])
        for case in CASES
    ]


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_answered_at_its_entry_point_and_changes_nothing_earlier(
    world: World, case: Case, tmp_path: Path
) -> None:
    before = _checksums(world)

    observed = case.produce(world, tmp_path)

    after = _checksums(world)
    assert observed.outcome == case.outcome, observed
    assert case.fragment in observed.message, observed
    assert _registry_state(MlflowClient(world.mlflow_uri), world.model_name) == world.registry_state
    assert world.registry_state["aliases"] == {"champion": world.champion_version}
    assert {path: after.get(path) for path in before} == before, "an earlier artifact changed or disappeared"
    added = sorted(set(after) - set(before))
    own = (str(Path(world.run_root(tmp_path)).relative_to(world.root)) + "/", "artifacts/snapshots/")
    assert [path for path in added if not (case.writes and path.startswith(own))] == [], "written outside the run"


def test_the_matrix_covers_every_category_with_unique_cases() -> None:
    assert {case.category for case in CASES} == CATEGORIES
    assert len({case.id for case in CASES}) == len(CASES) >= 40


def test_the_docs_page_is_the_rendered_matrix() -> None:
    assert DOCS_PAGE.read_text() == render(), f"docs/bad-input-matrix.md is stale: regenerate it with {REGENERATE}"
