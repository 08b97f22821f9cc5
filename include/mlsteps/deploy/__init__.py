"""Deploy a registered model version to a serving target, prove it serves, and roll back when it does not.

A target (``kubernetes``: the model's ``model-server-<model>`` Deployment; ``local``: a server process on this machine)
only knows how to make a version serve and how to go back. ``run_deploy`` is the one flow on top of every target: roll
out (or run a canary first, where the target can), smoke-test through the target's endpoint with the bundle's own smoke
rows, and on any failure put the previous version back, move ``champion`` back if it points at the failed version, and
raise ``DeployFailed`` naming the reason."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from mlsteps import registry
from mlsteps.config import ServingConfig
from mlsteps.errors import ConfigError, StepError

Strategy = Literal["rolling", "canary"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
ROLLBACK_REASON_PREFIX = "rollback: "

log = logging.getLogger(__name__)


class DeployFailed(StepError):
    """The new version did not serve well enough (rollout, smoke test or canary) and was rolled back.

    ``details`` carries what was measured up to the failure (a smoke or canary report, or the whole deploy result),
    so the step can still write its result before it exits.
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@runtime_checkable
class ServingTarget(Protocol):
    """Where a model version serves: make a version serve, say which serves, go back."""

    name: str

    def current_version(self) -> int | None:
        """The version that serves now; None when nothing is deployed yet."""
        ...

    def roll_out(self, version: int) -> None:
        """Make ``version`` serve everywhere; return once the rollout is complete.

        Raises:
            DeployFailed: the rollout itself failed (timed out, pods never became ready).
        """
        ...

    def roll_back(self, version: int | None) -> None:
        """Serve ``version`` again (None: stop serving), removing whatever the failed deploy added."""
        ...

    def endpoint(self) -> str:
        """Base URL that the smoke test calls, e.g. ``http://127.0.0.1:8081``."""
        ...


@runtime_checkable
class CanaryTarget(ServingTarget, Protocol):
    """A target that can serve a new version on a share of its capacity first."""

    def start_canary(self, version: int, share: float) -> None:
        """Serve ``version`` on a share of the capacity beside the current one; return once it is ready."""
        ...

    def canary_endpoints(self) -> list[str]:
        """Base URLs of the canary's own servers, so that a smoke test reaches the canary and nothing else."""
        ...

    def observe_canary(self) -> dict[str, Any]:
        """Watch the canary under live traffic and return its report.

        Raises:
            DeployFailed: the canary broke a limit (``details`` is the report).
        """
        ...

    def promote_canary(self, version: int) -> None:
        """Roll ``version`` out everywhere and remove the canary."""
        ...


def _label(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def _recorded(reports: dict[str, Any], key: str, check: Callable[[], Any]) -> Any:
    """Run a check and keep its report under ``key``, also when it raises ``DeployFailed`` (with the report)."""
    try:
        reports[key] = check()
    except DeployFailed as failure:
        reports[key] = failure.details
        raise
    return reports[key]


def _deliver(
    target: ServingTarget,
    bundle: Any,
    version: int,
    *,
    strategy: str,
    share: float,
    settings: ServingConfig,
    reports: dict[str, Any],
) -> None:
    """Make ``version`` serve by the strategy and smoke-test it; reports fill in as each check finishes."""
    from mlsteps.deploy.smoke import smoke_test  # smoke imports DeployFailed from this module

    if strategy == "canary":
        assert isinstance(target, CanaryTarget)  # run_deploy checked it
        target.start_canary(version, share)
        for number, url in enumerate(target.canary_endpoints()):
            _recorded(
                reports,
                f"canary_smoke_{number}",
                lambda url=url: smoke_test(url, bundle.model_name, bundle, settings.smoke),
            )
        _recorded(reports, "canary", target.observe_canary)
        target.promote_canary(version)
    else:
        target.roll_out(version)
    _recorded(reports, "smoke", lambda: smoke_test(target.endpoint(), bundle.model_name, bundle, settings.smoke))


def _restore_champion(
    client: Any, model_name: str, version: int, previous: int | None, *, actor: str, reason: str
) -> dict[str, Any] | None:
    """Move ``champion`` off the failed version, back to what serves again; untouched if it points elsewhere."""
    champion = registry.alias_version_number(client, model_name, registry.CHAMPION)
    if champion != version:
        return None
    event = registry.move_alias(
        client, model_name, registry.CHAMPION, previous, actor=actor, reason=ROLLBACK_REASON_PREFIX + reason
    )
    log.info("%s of %s moved back: v%s -> %s", registry.CHAMPION, model_name, version, _label(previous))
    return None if event is None else {"from": event.from_version, "to": event.to_version}


def run_deploy(
    target: ServingTarget,
    client: Any,
    model_name: str,
    version: int,
    *,
    strategy: str,
    canary_share: float,
    settings: ServingConfig,
    actor: str,
    champion_lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Deploy one model version to a target, smoke-test it, and roll back on failure.

    Args:
        target: where the model serves.
        client: an MLflow client (the bundle is fetched from the registry; ``champion`` may move back).
        model_name: registered model name.
        version: the version to serve.
        strategy: ``rolling`` (the whole target at once) or ``canary`` (a share first; kubernetes only).
        canary_share: share of the capacity the canary gets (strategy canary).
        settings: the ``serving:`` config (smoke test, canary limits).
        actor: who deploys (DAG run id or ``cli``); recorded when ``champion`` moves back.
        champion_lock: makes the lock held while ``champion`` is checked and moved back, so a promotion in between
            is never undone (the deploy step passes ``registry.champion_lock``).

    Returns:
        The deploy result: model_name, version, previous_version, target, strategy, outcome (``deployed`` or
        ``unchanged``), smoke (the smoke report), reason, plus canary reports for strategy canary.

    Raises:
        ConfigError: unknown strategy, or canary on a target that cannot run one.
        BundleError: the version has no valid serving bundle (nothing was changed).
        DeployFailed: the version failed and was rolled back; ``details`` is the result with outcome
            ``rolled_back``, message and ``reason`` say why.
    """
    from mlsteps.serving_bundle import fetch_bundle

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown deploy strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "canary" and not isinstance(target, CanaryTarget):
        raise ConfigError(
            f"strategy canary needs a target that can run a canary (kubernetes); target {target.name!r} cannot: "
            "use --strategy rolling"
        )
    previous = target.current_version()
    result: dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "previous_version": previous,
        "target": target.name,
        "strategy": strategy,
        "smoke": {},
    }
    if previous == version:
        reason = f"{model_name} v{version} already serves on {target.name}"
        log.info("%s: nothing to change", reason)
        return {**result, "outcome": "unchanged", "reason": reason}

    log.info("deploying %s v%s to %s (%s), replacing %s", model_name, version, target.name, strategy, _label(previous))
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="deploy-bundle-") as folder:
        # Fetched before the target changes: a version without a valid bundle leaves everything as it was.
        bundle = fetch_bundle(client, model_name, version, Path(folder))
        try:
            _deliver(target, bundle, version, strategy=strategy, share=canary_share, settings=settings, reports=reports)
        except Exception as failure:
            # Whatever went wrong, the previous version must serve again before anything else happens.
            reason = str(failure) if isinstance(failure, StepError) else f"{type(failure).__name__}: {failure}"
            log.error("deploy of %s v%s failed: %s; rolling back to %s", model_name, version, reason, _label(previous))
            try:
                target.roll_back(previous)
            except Exception as rollback_failure:
                raise DeployFailed(
                    f"deploy of {model_name} v{version} to {target.name} failed ({reason}) and the rollback to "
                    f"{_label(previous)} failed too ({rollback_failure}): check the target by hand",
                    details={**result, **reports, "outcome": "rollback_failed", "reason": reason},
                ) from rollback_failure
            if not isinstance(failure, DeployFailed):
                # Not the version's fault (infrastructure, permissions, config): champion stays for the retry or fix.
                raise
            with champion_lock():
                champion = _restore_champion(client, model_name, version, previous, actor=actor, reason=reason)
            failed = {**result, **reports, "outcome": "rolled_back", "reason": reason, "champion_moved": champion}
            raise DeployFailed(
                f"{model_name} v{version} was rolled back on {target.name}, {_label(previous)} serves again: {reason}",
                details=failed,
            ) from None
    smoke = reports["smoke"]
    reason = (
        f"{model_name} v{version} serves on {target.name}: smoke test passed, p99 {smoke['p99_ms']:.1f} ms <= "
        f"budget {smoke['latency_budget_ms']:.0f} ms, largest {smoke['difference']} of {smoke['compared']} "
        f"{smoke['max_difference']:.2e} <= {smoke['tolerance']:.0e}"
    )
    log.info(reason)
    return {**result, **reports, "outcome": "deployed", "reason": reason}
