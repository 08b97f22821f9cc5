"""Preemption: the real train CLI killed with SIGKILL in the middle of an epoch, then retried with the same command.

The retry must resume from the last checkpoint of the same run, repeat at most the one epoch that was cut short,
and end with the same model as an uninterrupted run with the same seed. Only the mlp family checkpoints: gbdt
(XGBoost) trains in seconds and a retry simply trains it again.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY_TRAINING, config_file, prepare_run

from mlsteps import results
from mlsteps.config import load_pipeline_config
from mlsteps.data import storage
from mlsteps.data.features import TabularPreprocessor
from mlsteps.steps.train import training_data
from mlsteps.training.api import TrainingData
from mlsteps.training.families import trainer_context
from mlsteps.training.mlp import MlpTrainer, TabularNet, load_network, predict_logits

EPOCHS = 3
# Small steps make an epoch last long enough (a few hundred optimizer steps) that the kill lands inside it.
BATCH_SIZE = 8
DEADLINE_S = 120
# Same CPU, same thread count, same seed and deterministic kernels, and a checkpoint restores weights, optimizer
# moments and both random streams bit for bit: the resumed model should equal the uninterrupted one exactly. The
# tolerance only allows float32 rounding (a few ulps of a probability); a repeated, skipped or reshuffled step
# moves the predictions by orders of magnitude more.
PROBABILITY_TOLERANCE = 1e-6


def _train_command(root: Path) -> list[str]:
    config = config_file(root.parent, epochs=EPOCHS, batch_size=BATCH_SIZE)
    return [sys.executable, "-m", "mlsteps", "train", "--run-root", str(root), "--config", str(config)]


def _environment(root: Path) -> dict[str, str]:
    """MLflow on a SQLite file of the test; one thread, as the uninterrupted run uses, so the float arithmetic of
    all runs is alike."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root.parent / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_LOCATION": (root.parent / "mlartifacts").as_uri(),
    }


def _kill_once_epoch_started(command: list[str], env: dict[str, str], epoch: int) -> str:
    """Start training with stderr on a terminal, so its progress bar announces each epoch as it begins; SIGKILL
    the process as soon as epoch ``epoch`` has begun. Returns what it wrote to its terminal."""
    terminal, process_side = pty.openpty()
    # A terminal of zero columns would hide the bar.
    fcntl.ioctl(process_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=process_side)
    os.close(process_side)
    seen = ""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while f"epoch {epoch}/{EPOCHS}" not in seen:
            assert process.poll() is None, f"training ended (exit {process.returncode}) before epoch {epoch}:\n{seen}"
            assert time.monotonic() < deadline, f"epoch {epoch} did not start within {DEADLINE_S} s:\n{seen}"
            if select.select([terminal], [], [], 1.0)[0]:
                seen += os.read(terminal, 65536).decode(errors="replace")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    assert process.returncode == -signal.SIGKILL
    return seen


def _validation_split(root: Path) -> tuple[TabularPreprocessor, TrainingData, TrainingData]:
    upstream = results.read_result(str(root), "preprocess")
    preprocessor = TabularPreprocessor.from_dict(storage.read_json(upstream["preprocessor_uri"]))
    dataset = load_pipeline_config().dataset
    train, validation = (
        training_data(storage.read_parquet(upstream[f"{name}_uri"]), preprocessor, dataset, name)
        for name in ("train", "validation")
    )
    return preprocessor, train, validation


def _probabilities(network: TabularNet, validation: TrainingData) -> np.ndarray:
    logits = predict_logits(network, torch.from_numpy(validation.numeric), torch.from_numpy(validation.categories))
    return torch.sigmoid(logits).numpy()


def _uninterrupted_network(root: Path, tmp_path: Path) -> tuple[TabularNet, dict[str, float]]:
    """The same training loop and seed in this process, on one thread like the CLI runs, never stopped."""
    config = load_pipeline_config(overrides={"training": {**TINY_TRAINING, "epochs": EPOCHS, "batch_size": BATCH_SIZE}})
    preprocessor, train, validation = _validation_split(root)
    context = trainer_context(
        config.training,
        "mlp",
        config.dataset.target,
        preprocessor,
        "cpu",
        work_dir=str(tmp_path),
        log_metrics=lambda metrics, step=None: None,
        checkpoint_dir=str(tmp_path / "uninterrupted-checkpoints"),
        resume_key={"run_root": str(root)},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = MlpTrainer(context)
        metrics = trainer.fit(train, validation)
    finally:
        torch.set_num_threads(threads)
    return trainer.network, metrics


def test_a_run_killed_mid_epoch_resumes_and_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    root = tmp_path / "run"
    prepare_run(str(root), epochs=EPOCHS, batch_size=BATCH_SIZE)
    command = _train_command(root)
    checkpoints = root / "train" / "mlp" / "checkpoints"

    terminal_log = _kill_once_epoch_started(command, _environment(root), epoch=2)

    assert "epoch 1/3:" in terminal_log
    # Killed inside epoch 2: epoch 1 is saved, epoch 2 never was, and no result was written.
    assert [Path(uri).name for uri in storage.list_files(str(checkpoints))] == ["epoch-001.pt"]
    assert results.optional_result(str(root), "train/mlp") is None

    retry = subprocess.run(command, env=_environment(root), capture_output=True, text=True, timeout=DEADLINE_S)

    assert retry.returncode == 0, retry.stderr[-3000:]
    assert f"train: resuming after epoch 1 from {checkpoints}/epoch-001.pt" in retry.stdout
    # Only epoch 2, cut short by the kill, is trained again.
    assert "epoch 1/3:" not in retry.stdout
    assert retry.stdout.count("epoch 2/3:") == 1 and retry.stdout.count("epoch 3/3:") == 1
    resumed = results.read_result(str(root), "train/mlp")
    assert resumed["metrics"]["epochs_run"] == EPOCHS
    uninterrupted, metrics = _uninterrupted_network(root, tmp_path)
    assert resumed["metrics"] == pytest.approx(metrics, abs=PROBABILITY_TOLERANCE)
    resumed_network = load_network(next((tmp_path / "mlartifacts").rglob("native_model/network.pt")))
    _, _, validation = _validation_split(root)
    difference = np.abs(_probabilities(resumed_network, validation) - _probabilities(uninterrupted, validation))
    assert difference.max() <= PROBABILITY_TOLERANCE
