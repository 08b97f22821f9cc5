"""Running the render command as ``make render`` does, on the project's config or a variant of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .policy import load_documents

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "include" / "config" / "pipeline.yaml"
# What a cluster deployment sets: object storage and an MLflow server that pods reach.
CLUSTER_ENV = {
    "ML_RUNTIME": "kubernetes",
    "ML_ARTIFACT_ROOT": "s3://ml-artifacts/continuous-training",
    "ML_DATASET_URI": "s3://ml-datasets/{dataset}/{dataset}.parquet",
    "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc.cluster.local:5000",
}


def variant_config(tmp_path: Path, runtime: dict[str, Any]) -> Path:
    """The project's pipeline config with parts of its runtime section replaced (nested keys merged one level), and a
    models folder beside it whose one model (churn) extends it; ``render`` uses both."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["dataset"] = str(CONFIG.parent / raw["dataset"])
    for key, value in runtime.items():
        current = raw["runtime"].get(key)
        raw["runtime"][key] = {**current, **value} if isinstance(current, dict) else value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    # The deployment's one model on these defaults, as include/config/models/churn.yaml names it.
    (tmp_path / "models").mkdir(exist_ok=True)
    churn = yaml.safe_load((CONFIG.parent / "models" / "churn.yaml").read_text())
    model = {**churn, "extends": str(path), "dataset": str(CONFIG.parent / "datasets" / "churn.yaml")}
    (tmp_path / "models" / "churn.yaml").write_text(yaml.safe_dump(model))
    return path


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        merged[key] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return merged


def add_model(config: Path, model_file: str, overrides: dict[str, Any]) -> Path:
    """Write one of the project's model configs (``include/config/models/<model_file>``), with ``overrides`` merged
    into it, into the models folder of a ``variant_config``, extending that variant."""
    model = yaml.safe_load((CONFIG.parent / "models" / model_file).read_text())
    dataset = (CONFIG.parent / "models" / model["dataset"]).resolve()
    path = config.parent / "models" / model_file
    path.write_text(yaml.safe_dump(_merged({**model, "extends": str(config), "dataset": str(dataset)}, overrides)))
    return path


def render(
    out: Path, tmp_path: Path, config: Path | None = None, without: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m orchestration.render``, optionally on a config variant and without some variables."""
    env = {**os.environ, **CLUSTER_ENV, "ML_STATE_DIR": str(tmp_path / "state")}
    if config:
        env |= {"MLSTEPS_CONFIG": str(config), "ML_MODELS_DIR": str(config.parent / "models")}
    env = {name: value for name, value in env.items() if name not in without}
    return subprocess.run(
        [sys.executable, "-m", "orchestration.render", "--out", str(out)], env=env, capture_output=True, text=True
    )


def rendered_pods(out: Path) -> dict[str, dict[str, Any]]:
    """The rendered pods by ``<dag_id>.<task_id>``."""
    return {f"{path.parent.name}.{path.stem}": load_documents(path)[0] for path in sorted(out.glob("pods/*/*.yaml"))}
