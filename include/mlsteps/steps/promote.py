"""promote: move the ``champion`` alias to this run's registered version when the gate passed (or when forced).

The gate is judged against the champion that was current at evaluation; if another run moved ``champion``
since, the comparison is stale and the step refuses with ``RegistryConflict``. The check and the move happen under
the model's champion lock (``registry.champion_lock``), so of two runs that evaluated against the same champion
exactly one promotes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from mlsteps import registry, results, tracking
from mlsteps.cli_options import ConfigUri, RunRoot
from mlsteps.config import PipelineConfig, load_pipeline_config
from mlsteps.errors import ConfigError, RegistryConflict, StepError
from mlsteps.evaluation.metrics import GateDecision, gate_decision

STEP = "promote"
DAG_RUN_ENV_VAR = "AIRFLOW_CTX_DAG_RUN_ID"


def _version_label(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _check_model_names(pipeline: PipelineConfig, evaluation: dict[str, Any], registered: dict[str, Any]) -> str:
    """The model name, after checking that config, evaluate and register all speak of the same model."""
    model_name = pipeline.registry.model_name
    mismatches = [
        f"{step} result names {result['model_name']!r}"
        for step, result in (("evaluate", evaluation), ("register", registered))
        if result["model_name"] != model_name
    ]
    if mismatches:
        raise ConfigError(
            f"registry.model_name is {model_name!r} but {' and '.join(mismatches)}: "
            "run promote with the --config that evaluate and register used"
        )
    return model_name


def _recorded_gate(pipeline: PipelineConfig, evaluation: dict[str, Any], force: bool) -> GateDecision:
    """The gate again, from the metrics and the rule recorded at evaluation, with ``force`` applied."""
    gate = evaluation["gate"]
    rule = pipeline.evaluation.model_copy(
        update={key: gate[key] for key in ("threshold", "max_degradation", "degradation")}
    )
    champion = evaluation["champion"]
    return gate_decision(
        evaluation["challenger"]["metrics"],
        champion["metrics"] if champion else None,
        rule,
        gate["primary_metric"],
        evaluation["task"],
        force,
    )


def _previous_promotion(tags: dict[str, str]) -> tuple[int | None, bool]:
    """previous_champion and forced as an earlier attempt recorded them on the version."""
    previous = tags.get("previous_champion", "none")
    return (None if previous == "none" else int(previous)), tags.get("forced") == "true"


def _promote_under_lock(
    client: Any, model_name: str, version: int, evaluation: dict[str, Any], decision: GateDecision, actor: str
) -> tuple[int | None, bool]:
    """Check that ``champion`` is still what evaluation saw, then move it; the caller holds the champion lock.

    Returns:
        previous_champion and forced, as recorded on the version (an earlier attempt's when it already promoted).
    """
    current = registry.alias_version_number(client, model_name, registry.CHAMPION)
    if current == version:
        previous, forced = _previous_promotion(client.get_model_version(model_name, str(version)).tags)
        print(f"{STEP}: v{version} is already {registry.CHAMPION} of {model_name}: nothing to change", flush=True)
        return previous, forced
    evaluated = evaluation["champion"]["version"] if evaluation["champion"] else None
    if current != evaluated:
        raise RegistryConflict(
            f"cannot promote v{version}: {registry.CHAMPION} of {model_name} moved from {_version_label(evaluated)} "
            f"to {_version_label(current)} since evaluation; re-run evaluate so the gate compares against it"
        )
    if not decision.passed:
        raise StepError(
            f"gate failed for {model_name} v{version}, {registry.CHAMPION} stays {_version_label(current)}: "
            f"{'; '.join(decision.reasons)}. Improve the model, or re-run promote with --force to override"
        )
    promotion = {
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "promoted_by": actor,
        "previous_champion": current,
        "forced": decision.forced,
    }
    # Tags before the alias: a crash in between leaves the alias unmoved, so the retry promotes again.
    registry.set_version_tags(client, model_name, version, promotion)
    verdict = "forced" if decision.forced else "gate passed"
    registry.move_alias(
        client,
        model_name,
        registry.CHAMPION,
        version,
        actor=actor,
        reason=f"promote ({verdict}): {'; '.join(decision.reasons)}",
    )
    suffix = " (forced)" if decision.forced else ""
    print(f"{STEP}: {registry.CHAMPION} of {model_name}: {_version_label(current)} -> v{version}{suffix}", flush=True)
    return current, decision.forced


def run(run_root: str, config: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """Move ``champion`` to this run's registered version when the recorded gate passed (or ``force``).

    Args:
        run_root: folder of this run's artifacts; evaluate and register must have run for it.
        config: the pipeline config; ``registry.model_name`` must be the model evaluate and register used.
        force: promote even if the gate failed; the version is tagged forced=true.

    Returns:
        The payload written to ``result.json``.

    Raises:
        ConfigError: the config names another model than the evaluate or register result.
        StepError: the gate failed and ``force`` is not set.
        RegistryConflict: ``champion`` is no longer the version evaluate compared against.
        LockTimeout: another process held the champion lock longer than promote waits (a retry may pass).
    """
    evaluation = results.read_result(run_root, "evaluate")
    registered = results.read_result(run_root, "register")
    model_name = _check_model_names(config, evaluation, registered)
    version = registered["version"]
    decision = _recorded_gate(config, evaluation, force)

    client = tracking.client()
    actor = os.environ.get(DAG_RUN_ENV_VAR) or "cli"
    # The check and the move under one lock: two runs evaluated against the same champion cannot both move it.
    with registry.champion_lock(run_root, model_name, actor):
        previous, forced = _promote_under_lock(client, model_name, version, evaluation, decision, actor)
    payload = {
        "model_name": model_name,
        "version": version,
        "alias": registry.CHAMPION,
        "model_uri": registry.model_uri(model_name, version),
        "previous_champion": previous,
        "forced": forced,
        "reasons": decision.reasons,
    }
    results.write_result(run_root, STEP, payload)
    return payload


def main(
    run_root: RunRoot,
    config: ConfigUri = None,
    force: Annotated[
        bool,
        typer.Option("--force/--no-force", help="promote even if the gate failed; recorded as forced=true"),
    ] = False,
) -> None:
    """Point the ``champion`` alias at this run's version if the gate passed (or --force).

    Reads the evaluate and register results. Refuses when the gate failed
    (unless --force) or when ``champion`` moved since evaluation. Tags the
    version with promoted_at, promoted_by ($AIRFLOW_CTX_DAG_RUN_ID or "cli"),
    previous_champion and forced, and records the move in the alias history
    with the gate summary as its reason. A retry after a promotion changes
    nothing.

    Args:
        run_root: folder of this run's artifacts.
        config: pipeline config YAML.
        force: promote even if the gate failed; the version is tagged forced=true.

    Raises:
        StepError: the gate failed and --force was not given.
        RegistryConflict: ``champion`` is no longer the version evaluate compared against.

    Examples:
        python -m mlsteps promote --run-root /tmp/runs/r1

        python -m mlsteps promote --run-root /tmp/runs/r1 --force
    """
    run(run_root, load_pipeline_config(config), force)
