"""Data-parallel training: the rank helpers, real torchrun runs on CPU (gloo), and the exit code of a failed pod."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from test_train import config_file, metric_steps, prepare_run

from mlsteps import results
from mlsteps.data import storage
from mlsteps.distributed import World, pod_exit_code
from mlsteps.errors import EXIT_USER_ERROR, ConfigError
from mlsteps.steps import train

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LAUNCHER = [sys.executable, "-m", "mlsteps.distributed"]
# The prepared run's train split: 70% of 3000 rows (time split, 15% validation, 15% holdout).
TRAIN_ROWS = 2100


def start_training(launcher: list[str], root: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Two training processes on this machine's CPU with the tiny training settings of ``prepare_run``; the
    environment carries the test's MLflow settings."""
    config = config_file(Path(root).parent)
    command = [*launcher, "--standalone", "--nnodes=1", "--nproc-per-node=2", "-m", "mlsteps", "train"]
    return subprocess.run(
        [*command, "--run-root", root, "--config", str(config), *options],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_process_not_started_by_torchrun_is_a_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    world = World.from_env()
    order = torch.randperm(7)

    assert world == World(rank=0, local_rank=0, size=1)
    assert not world.distributed and world.is_main
    assert torch.equal(world.shard(order), order)
    network = torch.nn.Linear(2, 1)
    assert world.wrap(network, torch.device("cpu")) is network
    assert world.place(torch.device("cuda")) == torch.device("cuda")


@pytest.mark.parametrize(("rows", "size", "repeated"), [(12, 2, 0), (12, 3, 0), (13, 4, 3)])
def test_shards_are_disjoint_and_cover_every_row(rows: int, size: int, repeated: int) -> None:
    order = torch.randperm(rows)
    shards = [World(rank=rank, local_rank=rank, size=size).shard(order) for rank in range(size)]

    assert [len(shard) for shard in shards] == [(rows + repeated) // size] * size
    # Every row once, plus the first `repeated` rows of the order again so that all ranks take equal steps.
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist() + order[:repeated].tolist())


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the message shown where rank 1 has no GPU")
def test_more_processes_than_gpus_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"local rank 1 has no GPU of its own.*--nproc-per-node="):
        World(rank=1, local_rank=1, size=2).place(torch.device("cuda"))


def test_a_step_error_on_any_rank_decides_the_pod_exit_code() -> None:
    assert pod_exit_code({0: EXIT_USER_ERROR, 1: -15}, first_failed_rank=0) == EXIT_USER_ERROR
    # The peer that lost its connection may be reported first; the StepError still names the cause.
    assert pod_exit_code({0: 1, 1: EXIT_USER_ERROR}, first_failed_rank=0) == EXIT_USER_ERROR
    assert pod_exit_code({0: 1, 1: -15}, first_failed_rank=0) == 1
    assert pod_exit_code({0: -15, 1: -9}, first_failed_rank=1) == 137


def test_torchrun_trains_data_parallel_and_resumes_from_the_checkpoint_dir(
    mlflow_tracking: str, tmp_path: Path
) -> None:
    root = str(tmp_path / "run")
    checkpoints = str(tmp_path / "volume" / "ml_retrain" / "run")
    prepare_run(root, rows=3000)

    finished = start_training([TORCHRUN], root, "--epochs", "2", "--checkpoint-dir", checkpoints)

    assert finished.returncode == 0, finished.stderr[-3000:]
    log = finished.stdout
    # Each rank trains on its own half of every epoch's rows (World.shard makes the halves disjoint).
    for rank in (0, 1):
        assert f"train: mlp rank {rank}/2 trains on {TRAIN_ROWS // 2} of {TRAIN_ROWS} train rows per epoch" in log
    # Only rank 0 reports epochs and results.
    assert log.count("epoch 1/2:") == 1 and log.count("train: mlp trained") == 1
    experiment = mlflow.get_experiment_by_name("churn-retraining")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    models = mlflow.search_logged_models([experiment.experiment_id], output_format="list")
    assert len(runs) == 1 and len(models) == 1
    payload = results.read_result(root, "train/mlp")
    assert payload["mlflow_run_id"] == runs[0].info.run_id and payload["model_uri"] == models[0].model_uri
    assert payload["world_size"] == 2
    assert payload["params"]["train_rows"] == TRAIN_ROWS and payload["metrics"]["epochs_run"] == 2
    assert runs[0].data.params["world_size"] == "2"
    assert storage.list_files(f"{checkpoints}/mlp")[-1] == f"{checkpoints}/mlp/epoch-002.pt"
    assert [Path(uri).name for uri in storage.list_files(f"{checkpoints}/mlp")] == ["epoch-001.pt", "epoch-002.pt"]
    assert storage.list_files(f"{root}/train/mlp/checkpoints") == []

    # Different batch order than one process, same data and step size: both learn, about equally well.
    single_root = str(tmp_path / "single")
    single = train.run(single_root, prepare_run(single_root, rows=3000, epochs=2))
    assert payload["metrics"]["val_roc_auc"] > 0.65 and single["metrics"]["val_roc_auc"] > 0.65
    assert abs(payload["metrics"]["val_roc_auc"] - single["metrics"]["val_roc_auc"]) < 0.03

    resumed = start_training([TORCHRUN], root, "--epochs", "3", "--checkpoint-dir", checkpoints)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"train: resuming after epoch 2 from {checkpoints}/mlp/epoch-002.pt") == 2
    assert "epoch 2/3:" not in resumed.stdout and resumed.stdout.count("epoch 3/3:") == 1
    again = results.read_result(root, "train/mlp")
    assert again["mlflow_run_id"] == payload["mlflow_run_id"] and again["metrics"]["epochs_run"] == 3
    assert [step for step, _ in metric_steps(again["mlflow_run_id"], "train_loss")] == [1, 2, 3]


def test_a_step_error_on_rank_0_alone_ends_the_pod_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "run")
    prepare_run(root, rows=2000)
    # Only rank 0 talks to MLflow, so only rank 0 fails; rank 1 is left waiting in the first epoch.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    failed = start_training(LAUNCHER, root, "--epochs", "2")

    assert failed.returncode == EXIT_USER_ERROR, failed.stderr[-3000:]
    assert failed.stderr.count("train failed: MLFLOW_TRACKING_URI is not set") == 1
