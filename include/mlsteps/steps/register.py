"""register: add the evaluated challenger to the MLflow model registry and point the ``challenger`` alias at it.

Registration is idempotent per run root: a retry reuses the version its first attempt created. Nothing is left
half-written: the serving bundle is uploaded before its sha256 tag (set last of the version's tags), the alias moves
only to a version with a bundle, and ``result.json`` is written last. A version whose registration failed for good
(a ``StepError``) is deleted; one cut short by an unreachable registry (``StoreUnavailable``, retried by MLflow's
client first: see ``mlsteps.tracking``) stays without a bundle tag, which marks it unfinished, and the task's retry
completes it.
"""

from __future__ import annotations

import os
from typing import Any

from mlsteps import registry, results, serving_bundle, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.errors import StepError

STEP = "register"


def _complete(
    client: Any,
    model_name: str,
    number: int,
    snapshot: dict[str, Any],
    evaluation: dict[str, Any],
    train: dict[str, Any],
) -> str:
    """Tag a registered version, publish its serving bundle and point ``challenger`` at it; returns the bundle's
    sha256. Every call is idempotent, so a retry after a failure anywhere here completes the version."""
    challenger = evaluation["challenger"]
    tags = {
        "snapshot_id": snapshot["snapshot_id"],
        "dataset": snapshot["dataset"],
        "mlflow_run_id": train["mlflow_run_id"],
        "gate_passed": evaluation["gate"]["passed"],
        "family": challenger["family"],
        "task": train["task"],
        "primary_metric": evaluation["gate"]["primary_metric"],
        evaluation["gate"]["primary_metric"]: challenger["metrics"][evaluation["gate"]["primary_metric"]],
        "code_version": registry.code_version(),
    }
    if os.environ.get(registry.IMAGE_ENV_VAR):
        tags["image"] = os.environ[registry.IMAGE_ENV_VAR]
    # Why this version was trained (cron, a person, a drift report) travels from the training run to the version.
    run_tags = client.get_run(train["mlflow_run_id"]).data.tags
    tags |= {key: run_tags[key] for key in registry.TRIGGER_TAGS if key in run_tags}
    registry.set_version_tags(client, model_name, number, tags)
    # The bundle before the alias: a version that is a challenger can always be served.
    run_id, model_uri = train["mlflow_run_id"], train["model_uri"]
    bundle_sha256 = serving_bundle.publish_bundle(client, model_name, number, model_uri, run_id)
    client.set_registered_model_alias(model_name, registry.CHALLENGER, str(number))
    return bundle_sha256


def run(run_root: str, config: PipelineConfig) -> dict[str, Any]:
    """Register the challenger evaluate chose, publish its serving bundle and point ``challenger`` at it.

    Args:
        run_root: folder of this run's artifacts; snapshot, evaluate and the challenger's train must have run.
        config: the pipeline config (``registry.model_name`` names the model).

    Returns:
        The payload written to ``result.json``.

    Raises:
        StepError: the challenger's train result no longer names the model evaluate judged, or the version's
            bundle cannot be made (the version is then deleted).
        RegistryError: the registry refused for good (no permission, credentials it does not accept).
        StoreUnavailable: the registry or its artifact store did not answer through every retry; the version, if
            created, is completed by a re-run.
    """
    model_name = config.registry.model_name
    snapshot = results.read_result(run_root, "snapshot")
    evaluation = results.read_result(run_root, "evaluate")
    challenger = evaluation["challenger"]
    # The challenger is the candidate evaluate chose; its train result must still name the model evaluate judged.
    train = results.read_result(run_root, results.candidate_step(challenger["family"]))
    model_uri = train["model_uri"]
    if model_uri != challenger["model_uri"]:
        raise StepError(
            f"train result model_uri {model_uri} is not the model evaluate judged ({challenger['model_uri']}): "
            "re-run evaluate for this --run-root, then register"
        )

    client = tracking.client()
    version, created = registry.register_once(client, model_name, model_uri, run_root)
    number = int(version.version)
    try:
        with tracking.mlflow_errors():
            bundle_sha256 = _complete(client, model_name, number, snapshot, evaluation, train)
    except StepError:
        if registry.delete_unfinished(client, model_name, number):
            print(f"{STEP}: deleted {model_name} v{number}: its registration failed", flush=True)
        raise
    aliases = sorted(client.get_model_version(model_name, str(number)).aliases)
    action = "registered" if created else "reused (registered by an earlier attempt)"
    print(f"{STEP}: {action} {model_name} v{number} from {model_uri}; aliases {aliases}", flush=True)
    payload = {
        "model_name": model_name,
        "version": number,
        "aliases": aliases,
        "model_uri": registry.model_uri(model_name, number),
        "source_run_id": version.run_id,
        "serving_bundle_sha256": bundle_sha256,
    }
    results.write_result(run_root, STEP, payload)
    return payload


def main(run_root: RunRoot, config: ConfigUri = None) -> None:
    r"""Register the challenger evaluate chose as a version of registry.model_name, alias ``challenger``.

    Reads the snapshot and evaluate results and the chosen candidate's train
    result. Tags the version with run_root, snapshot_id, dataset,
    mlflow_run_id, gate_passed, family, task, primary_metric and its value,
    code_version ($CODE_VERSION appended) and image ($STEP_IMAGE), when set.
    Publishes the serving bundle (the package's ONNX model, preprocessor,
    smoke rows) next to the training run's artifacts and records its sha256
    on the version.
    Re-running for the same run root reuses the version it registered.

    Args:
        run_root: folder of this run's artifacts.
        config: pipeline config YAML; registry.model_name names the model.

    Examples:
        python -m mlsteps register --run-root /tmp/runs/r1

        MLFLOW_TRACKING_URI=http://mlflow:5000 \
            python -m mlsteps register --run-root s3://ml/runs/r1
    """
    run(run_root, load_pipeline_config(config))
