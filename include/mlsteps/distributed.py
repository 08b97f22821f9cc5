"""Data-parallel training over the GPUs of one pod: who this process is, and a torchrun that keeps exit codes.

torchrun starts one process per GPU and tells each its place through ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``. Without them (a plain ``python -m mlsteps train``), or with a world of one, nothing here touches
``torch.distributed`` and training is an ordinary single process.

torchrun itself exits 1 whenever a worker fails, which would hide a ``StepError``'s exit code 2 from the
orchestrator (a retry cannot fix bad input). Run it through this module instead, with torchrun's own arguments::

    python -m mlsteps.distributed --standalone --nnodes=1 --nproc-per-node=4 -m mlsteps train --run-root ...

On several nodes (the pods of an Indexed Job), every node runs the same command with a c10d rendezvous at the first
node; the node whose ``JOB_COMPLETION_INDEX`` is 0 hosts the rendezvous store (``rendezvous_conf``)::

    python -m mlsteps.distributed --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d \
        --rdzv-endpoint=<first node>:29400 --rdzv-id=<run> -m mlsteps train --run-root ...
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from mlsteps.errors import EXIT_USER_ERROR, ConfigError

if TYPE_CHECKING:
    import torch

# Set by Kubernetes in every pod of an Indexed Job: the pod's place in the Job, 0 to completions - 1.
NODE_INDEX_ENV_VAR = "JOB_COMPLETION_INDEX"

# Long enough for rank 0 to start the MLflow run before the first epoch and to log the model after the last
# one while the other ranks wait in a collective; a rank that dies is noticed sooner, as torchrun stops the rest.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes of one pod, or of every pod of a multi-node run."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> World:
        """The place torchrun gave this process; a world of one when it was not started by torchrun."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            size=int(os.environ.get("WORLD_SIZE", "1")),
        )

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only one that talks to MLflow and writes checkpoints and results."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """This rank's own GPU (``cuda:LOCAL_RANK``) in a distributed CUDA run, else ``device`` unchanged.

        Raises:
            ConfigError: torchrun started more processes on this node than there are visible GPUs.
        """
        import torch

        if device.type != "cuda" or not self.distributed:
            return device
        visible = torch.cuda.device_count()
        if self.local_rank >= visible:
            raise ConfigError(
                f"local rank {self.local_rank} has no GPU of its own: torch sees {visible} CUDA device(s). "
                f"Start torchrun with --nproc-per-node={visible} or fewer (one process per GPU)"
            )
        return torch.device("cuda", self.local_rank)

    def share(self, count: int) -> int:
        """Each rank's part of ``count`` items split evenly, rounded up (rows per epoch, rows per step)."""
        return math.ceil(count / self.size)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``order``: every ``size``-th entry from position ``rank``.

        For work split by rows over a whole epoch; the mlp training loop instead splits every global batch over the
        ranks (``mlsteps.training.mlp.GlobalBatches``), so that its steps are those of one process.

        Ranks get disjoint rows that together cover ``order``. As in ``DistributedSampler``, the first entries
        are repeated until every rank has ``share(len(order))`` rows, because DDP needs every rank to take the
        same number of optimizer steps.
        """
        import torch

        padding = self.share(len(order)) * self.size - len(order)
        return torch.cat([order, order[:padding]])[self.rank :: self.size]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (in place); ``tensor`` itself for one process."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def wrap(self, network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train: ``network`` itself for one process, else wrapped in DistributedDataParallel.

        The wrapper averages the gradients over the ranks in every backward pass, so all ranks step alike.
        """
        if not self.distributed:
            return network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    @contextlib.contextmanager
    def process_group(self, device: torch.device) -> Iterator[None]:
        """Join the torchrun process group for the block: nccl on CUDA, gloo on CPU; nothing for one process.

        A block that ends normally ends at a barrier, so ranks > 0 exit only after rank 0 has logged the model
        and written the result. The group is destroyed on the way out, also when the block fails.
        """
        if not self.distributed:
            yield
            return
        import torch
        import torch.distributed as dist

        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT, device_id=device if cuda else None
        )
        try:
            yield
            dist.barrier()
        finally:
            dist.destroy_process_group()


def pod_exit_code(exit_codes: dict[int, int], first_failed_rank: int) -> int:
    """The exit code for the whole pod from the failed ranks' exit codes.

    A ``StepError`` on any rank wins: the ranks still waiting for it in a collective fail or are stopped as a
    consequence, and a retry cannot help. Otherwise the first failure's code, as a shell reports a signal
    (128 + signal number) when the rank was killed.

    Args:
        exit_codes: exit code of every failed rank; negative for a rank killed by that signal.
        first_failed_rank: the rank that failed first, by torchrun's account.

    Returns:
        ``EXIT_USER_ERROR`` or the first failure's code, always positive.
    """
    if EXIT_USER_ERROR in exit_codes.values():
        return EXIT_USER_ERROR
    code = exit_codes[first_failed_rank]
    return code if code > 0 else 128 - code


def rendezvous_conf(backend: str, conf: str, node_index: str | None) -> str:
    """torchrun's ``--rdzv-conf`` with ``is_host`` set from this node's index: the first node hosts the c10d store.

    Without it torch guesses, matching the endpoint's host name against this machine's names and addresses; on
    Kubernetes the first pod's DNS record may not be published yet when it starts, the guess says no on every node,
    and no node hosts the store. An ``is_host`` already in ``conf`` is kept; without an index (not a Job's pod) or
    with another backend, ``conf`` is returned as it is.

    Args:
        backend: torchrun's ``--rdzv-backend``.
        conf: torchrun's ``--rdzv-conf``, ``key=value`` pairs separated by commas.
        node_index: ``JOB_COMPLETION_INDEX`` of this pod, if any.

    Returns:
        The configuration to start torchrun with.
    """
    keys = {item.split("=", 1)[0].strip() for item in conf.split(",")}
    if backend != "c10d" or node_index is None or "is_host" in keys:
        return conf
    return ",".join(filter(None, [conf.strip(), f"is_host={int(node_index) == 0}"]))


def launch(argv: list[str]) -> int:
    """Run torchrun and return the exit code the pod should end with; torchrun's own is 1 for any failure.

    Args:
        argv: torchrun's command line without the program name, e.g. ``["--nproc-per-node=4", "-m", "mlsteps",
            "train", "--run-root", "s3://..."]``.

    Returns:
        0 when every rank succeeded, else ``pod_exit_code`` of the failed ranks.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    args.rdzv_conf = rendezvous_conf(args.rdzv_backend, args.rdzv_conf, os.environ.get(NODE_INDEX_ENV_VAR))
    try:
        run(args)
    except ChildFailedError as failed:
        print(failed.format_msg(), file=sys.stderr, flush=True)
        first_rank, _ = failed.get_first_failure()
        return pod_exit_code({rank: failure.exitcode for rank, failure in failed.failures.items()}, first_rank)
    return 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
