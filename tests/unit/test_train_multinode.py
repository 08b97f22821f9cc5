"""Training on several nodes: two torchrun agents, as the pods of an Indexed Job run them, meet at a c10d rendezvous
hosted by node 0 and train (gloo on CPU) the same model as one process with the same seed and global batch size."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ports import free_port
from test_train import config_file, metric_steps, prepare_run

from mlsteps import results
from mlsteps.distributed import NODE_INDEX_ENV_VAR, rendezvous_conf
from mlsteps.steps import train
from mlsteps.training.checkpoints import latest_checkpoint, load_checkpoint

NODES = 2
ROWS = 2000  # 1400 train rows (time split, 15% validation, 15% holdout): 700 per node
# No dropout: each rank draws its own masks for its half of a batch, one process draws them for the whole batch.
TRAINING = {"epochs": 2, "dropout": 0.0}
# The two runs step on the same rows with the same gradients, averaged over the ranks in one run and over the batch
# in the other: float32 sums in another order, 1.2e-7 apart at most after two epochs of AdamW (weights up to 3.7).
# Steps of 64 rows instead of 128 end 0.16 apart.
TOLERANCE = 1e-5


def start_node(index: int, endpoint: str, root: str, config: Path, checkpoints: str) -> subprocess.Popen[str]:
    """One node's torchrun agent with one CPU process, started as each pod of the Job starts it."""
    command = [
        *(sys.executable, "-m", "mlsteps.distributed"),
        *(f"--nnodes={NODES}", "--nproc-per-node=1", "--rdzv-backend=c10d"),
        *(f"--rdzv-endpoint={endpoint}", "--rdzv-id=multinode-test"),
        *("-m", "mlsteps", "train", "--run-root", root, "--config", str(config), "--checkpoint-dir", checkpoints),
    ]
    return subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1", NODE_INDEX_ENV_VAR: str(index)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(node: subprocess.Popen[str], deadline: float) -> tuple[int, str, str]:
    try:
        out, err = node.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        node.kill()
        out, err = node.communicate()
    return node.returncode, out, err


def test_the_first_node_hosts_the_rendezvous_store() -> None:
    assert rendezvous_conf("c10d", "", "0") == "is_host=True"
    assert rendezvous_conf("c10d", "join_timeout=900", "3") == "join_timeout=900,is_host=False"
    # Said explicitly, not on a Job's pod, or another backend: left to torchrun.
    assert rendezvous_conf("c10d", "is_host=1", "3") == "is_host=1"
    assert rendezvous_conf("c10d", "read_timeout=60", None) == "read_timeout=60"
    assert rendezvous_conf("static", "", "0") == ""


def test_two_nodes_train_the_model_one_process_trains(mlflow_tracking: str, tmp_path: Path) -> None:
    root, checkpoints = str(tmp_path / "run"), str(tmp_path / "volume" / "run")
    prepare_run(root, rows=ROWS, **TRAINING)
    config = config_file(tmp_path, **TRAINING)
    endpoint = f"127.0.0.1:{free_port()}"
    deadline = time.monotonic() + 300

    # Node 1 first: it waits for node 0's store as a pod that starts before the first one does.
    nodes = [start_node(index, endpoint, root, config, checkpoints) for index in (1, 0)]
    (code_1, out_1, err_1), (code_0, out_0, err_0) = (finish(node, deadline) for node in nodes)

    assert (code_0, code_1) == (0, 0), f"node 0:\n{err_0[-3000:]}\nnode 1:\n{err_1[-3000:]}"
    log = out_0 + out_1
    # One world over both nodes: each rank trains on half the rows and half of each 128-row step.
    for rank in range(NODES):
        assert f"train: mlp rank {rank}/{NODES} trains on 700 of 1400 train rows per epoch, 64 rows per step" in log
    assert log.count("train: mlp trained") == 1, "only rank 0 logs the model and writes the result"
    payload = results.read_result(root, "train/mlp")
    assert payload["world_size"] == NODES and payload["metrics"]["epochs_run"] == 2

    single_root = str(tmp_path / "single")
    single = train.run(single_root, prepare_run(single_root, rows=ROWS, **TRAINING))

    assert single["world_size"] == 1
    distributed_state = load_checkpoint(latest_checkpoint(f"{checkpoints}/mlp"))
    single_state = load_checkpoint(latest_checkpoint(single["checkpoint_dir"]))
    for weights in ("model", "best_model"):
        assert distributed_state[weights].keys() == single_state[weights].keys()
        for name, tensor in single_state[weights].items():
            torch.testing.assert_close(distributed_state[weights][name], tensor, rtol=0, atol=TOLERANCE, msg=name)
    for metric in ("train_loss", "val_loss", "val_roc_auc"):
        curves = [metric_steps(run["mlflow_run_id"], metric) for run in (payload, single)]
        assert [step for step, _ in curves[0]] == [step for step, _ in curves[1]] == [1, 2]
        assert [value for _, value in curves[0]] == pytest.approx([value for _, value in curves[1]], abs=TOLERANCE)
