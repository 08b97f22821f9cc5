"""Checkpoints of one training run: one file per epoch under the run's checkpoint folder (local or ``s3://``).

A retry of the train step resumes from the latest checkpoint of the same run, if the settings that shape the model
did not change (``fingerprint``, ``check_resumable``); otherwise it refuses to mix two models in one run.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from mlsteps.config import TrainingConfig
from mlsteps.data import storage
from mlsteps.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"epoch-(\d+)\.pt$")
# A retry may change these and still resume its checkpoint; any other change would mix two different models in
# one run. The device setting is among them because a retry may land on another kind of node.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "device"})


def checkpoint_uri(checkpoints: str, epoch: int) -> str:
    """Where the checkpoint of one epoch lives."""
    return storage.join(checkpoints, f"epoch-{epoch:03d}.pt")


def latest_checkpoint(checkpoints: str) -> str | None:
    """The checkpoint with the highest epoch in the checkpoint folder, or None before the first epoch ends."""
    found = {
        int(match.group(1)): uri for uri in storage.list_files(checkpoints) if (match := CHECKPOINT_NAME.search(uri))
    }
    return found[max(found)] if found else None


def save_checkpoint(payload: dict[str, Any], uri: str) -> None:
    """torch.save to a local file, then upload it, so local and S3 run roots work alike."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(payload, path)
        storage.upload_file(path, uri)


def load_checkpoint(uri: str) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (random states must be CPU tensors; weights move when loaded)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        return torch.load(
            storage.download_file(uri, Path(tmp) / "checkpoint.pt"), map_location="cpu", weights_only=True
        )


def fingerprint(training: TrainingConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """What must not change between an attempt and its retry for a checkpoint to be resumed: the settings and the
    run's inputs (``snapshot_id``, ``preprocessor``; the run root is checked on its own, with its own message)."""
    settings = {
        f"training.{key}": value for key, value in training.model_dump().items() if key not in RESUMABLE_CHANGES
    }
    return {**settings, **{key: value for key, value in inputs.items() if key != "run_root"}}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], uri: str) -> None:
    """Raise one ConfigError naming every setting that differs from the checkpoint's."""
    changed = [key for key in current if saved.get(key) != current[key]]
    if changed:
        details = "; ".join(
            "the preprocess output changed"
            if key == "preprocessor"
            else f"{key}: {saved.get(key)!r} -> {current[key]!r}"
            for key in changed
        )
        raise ConfigError(
            f"checkpoint {uri} was written with different settings ({details}). A retry may only change "
            f"{sorted(RESUMABLE_CHANGES)}: restore the settings, or use a new --run-root to train from scratch"
        )
