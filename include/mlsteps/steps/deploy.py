"""deploy: serve a model version, smoke-test it through the server, and roll back when it does not serve well.

The flow is ``mlsteps.deploy.run_deploy``; this step resolves what to serve, builds the serving target (the cluster's
``model-server-<model>`` Deployment, or a server process on this machine) and records the outcome in
``deploy/result.json``.
Deploying the version that already serves changes nothing, so a re-run for the same run root reports ``unchanged``.
Deploys of one model to one kind of target take turns (``locks``): a second waits for the first, then resolves
``--model`` and deploys, so what serves in the end is what the last deploy asked for.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from mlsteps import locks, registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot, above_zero
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.deploy import Strategy
from mlsteps.errors import ConfigError
from mlsteps.steps.promote import DAG_RUN_ENV_VAR

STEP = "deploy"
TargetKind = Literal["kubernetes", "local"]
# A deploy (rollout, canary, smoke test) takes minutes; a waiting deploy gives up after half an hour, and a lock on
# S3 whose holder crashed expires after an hour (a local one is released as soon as its holder exits).
DEPLOY_LOCK_WAIT_S = 1800.0
DEPLOY_LOCK_LEASE_S = 3600.0


def build_target(
    kind: TargetKind, pipeline: PipelineConfig, state_dir: Path | None, prediction_store: str | None
) -> Any:
    """The ``ServingTarget`` of a kind, configured from the ``serving:`` section.

    Raises:
        ConfigError: ``local`` without ``--state-dir``.
    """
    serving = pipeline.serving
    model_name = pipeline.registry.model_name
    if kind == "kubernetes":
        from mlsteps.deploy.kube import KubernetesTarget

        return KubernetesTarget(model_name, serving)
    if state_dir is None:
        raise ConfigError(
            "--target local needs --state-dir: the folder where the local model server's pid, port and log are kept "
            "(the local runtime passes <state>/serving)"
        )
    from mlsteps.deploy.local import LocalTarget

    return LocalTarget.from_config(model_name, serving, state_dir, prediction_store)


def run(
    run_root: str,
    config: PipelineConfig,
    target: TargetKind = "kubernetes",
    model: str = "champion",
    strategy: Strategy = "rolling",
    canary_share: float | None = None,
    state_dir: Path | None = None,
    prediction_store: str | None = None,
) -> dict[str, Any]:
    """Serve a model version on a target, smoke-test it, roll back on failure, and write the result.

    Args:
        run_root: folder of this run's artifacts.
        config: the pipeline config (its ``serving:`` section configures the targets and the smoke test).
        target: kubernetes or local.
        model: alias (champion) or version number to serve.
        strategy: rolling or canary.
        canary_share: share of pods that run the canary; default: ``serving.canary.share``.
        state_dir: folder of the local server's state (target local).
        prediction_store: prediction log of the local server (target local); None: not logged.

    Returns:
        The payload written to ``result.json`` (outcome ``deployed`` or ``unchanged``).

    Raises:
        ConfigError: target local without ``state_dir``, strategy canary on a target that cannot run one, or no
            shared place for the locks (``locks.lock_root``).
        StepError: the model or alias does not exist or the version has no serving bundle.
        DeployFailed: the deploy failed and was rolled back (or the rollback failed too); ``result.json`` records
            what happened before it is raised.
        LockTimeout: another deploy of the model to this kind of target held the lock longer than this one waits.
    """
    from mlsteps.deploy import DeployFailed, run_deploy
    from mlsteps.serving_bundle import resolve_version

    model_name = config.registry.model_name
    serving_target = build_target(target, config, state_dir, prediction_store)
    actor = os.environ.get(DAG_RUN_ENV_VAR) or "cli"
    deploy_lock = locks.lock_uri(locks.lock_root(run_root), model_name, f"{STEP}-{target}")
    # Resolved under the lock: a deploy that waited serves what --model names after the one before it finished.
    with locks.held(deploy_lock, actor, wait_s=DEPLOY_LOCK_WAIT_S, lease_s=DEPLOY_LOCK_LEASE_S):
        client = tracking.client()
        version = resolve_version(client, model_name, model)
        print(f"{STEP}: {model_name} {model} is v{version}; target {target}, strategy {strategy}", flush=True)
        share = config.serving.canary.share if canary_share is None else canary_share
        try:
            outcome = run_deploy(
                serving_target,
                client,
                model_name,
                version,
                strategy=strategy,
                canary_share=share,
                settings=config.serving,
                actor=actor,
                champion_lock=functools.partial(registry.champion_lock, run_root, model_name, actor),
            )
        except DeployFailed as failure:
            if "outcome" in failure.details:  # rolled back (or the rollback failed too): record what happened
                results.write_result(run_root, STEP, failure.details)
            raise
    results.write_result(run_root, STEP, outcome)
    print(f"{STEP}: {model_name} v{version} {outcome['outcome']} on {target}", flush=True)
    return outcome


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    target: Annotated[
        TargetKind,
        typer.Option(
            "--target", help="where to serve: kubernetes (the model-server-<model> Deployment) or local (a process)"
        ),
    ] = "kubernetes",
    model: Annotated[
        str, typer.Option("--model", help="what to serve: an alias such as champion, or a version number")
    ] = "champion",
    strategy: Annotated[
        Strategy,
        typer.Option("--strategy", help="rolling: replace every server; canary: a share of pods first (kubernetes)"),
    ] = "rolling",
    canary_share: Annotated[
        float | None,
        typer.Option(
            "--canary-share",
            max=1.0,
            callback=above_zero,
            help="share of pods that run the canary, above 0; default: serving.canary.share",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="--target local: folder of the server's pid, port and log"),
    ] = None,
    prediction_store: Annotated[
        str | None,
        typer.Option("--prediction-store", help="--target local: where the server logs its predictions (path or URI)"),
    ] = None,
) -> None:
    """Serve a model version, smoke-test it through the server, and roll back when it fails.

    Resolves --model in the registry, rolls it out to the target (rolling, or
    a canary on kubernetes), then sends the version's bundled smoke rows
    through the serving endpoint: every probability must match the bundle's
    and the p99 latency stay within serving.smoke.latency_budget_ms. On any
    failure the previous version serves again, champion moves back to it when
    it pointed at the failed version (recorded in the alias history), and the
    step exits 2 with the reason. Writes deploy/result.json (outcome deployed,
    unchanged or rolled_back). Deploying what already serves changes nothing.

    Args:
        run_root: folder of this run's artifacts.
        config: pipeline config YAML (its serving: section configures the targets).
        target: kubernetes or local.
        model: alias (champion) or version number to serve.
        strategy: rolling or canary.
        canary_share: share of pods that run the canary; default from serving.canary.share.
        state_dir: folder of the local server's state (--target local).
        prediction_store: prediction log of the local server (--target local); unset: not logged.

    Raises:
        StepError: the model or alias does not exist, the version has no serving bundle, or the deploy failed
            and was rolled back (the message says why).

    Examples:
        python -m mlsteps deploy --run-root /tmp/runs/d1 --target local --state-dir /tmp/serving

        python -m mlsteps deploy --run-root /tmp/runs/d2 --target local --state-dir /tmp/serving --model 3

        python -m mlsteps deploy --run-root s3://bucket/runs/d3 --target kubernetes --strategy canary --canary-share 0.2
    """
    run(
        run_root,
        load_pipeline_config(config),
        target=target,
        model=model,
        strategy=strategy,
        canary_share=canary_share,
        state_dir=state_dir,
        prediction_store=prediction_store,
    )
