"""The training loop of the tabular network: seeds, device, the Trainer and its validation metrics.

Torch, numpy and scikit-learn only (no MLflow, typer or pydantic): the train step (``mlsteps.steps.train``) wraps
it with data loading, MLflow tracking and checkpoints, and ``benchmarks/gpu_check.py`` runs the same loop on CUDA
and CPU. Single-process or data-parallel under torchrun, through ``mlsteps.distributed.World``.

A split reaches the loop as (numeric, categories, labels): the feature arrays may be memory-mapped files of any size
(the train step's) or tensors, and are read a window of about ``batch_rows`` rows at a time, training through
``mlsteps.training.mlp.GlobalBatches`` and evaluation in contiguous chunks. Each epoch's order is a function of the
seed and the epoch (``mlsteps.training.streaming.BlockShuffle``), so a resumed run and any number of ranks train on
the same global batches.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlsteps.data.features import TabularPreprocessor
from mlsteps.distributed import World
from mlsteps.errors import ConfigError
from mlsteps.training.streaming import DEFAULT_BATCH_ROWS, read_rows

if TYPE_CHECKING:
    import torch

# numeric (rows x columns, float32), categories (rows x columns, int64): numpy, memory-mapped or torch arrays;
# labels: a tensor on the training device.
Split = tuple[Any, Any, "torch.Tensor"]


class TrainingSettings(Protocol):
    """What the loop reads of the training settings; ``mlsteps.config.TrainingConfig`` provides it."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    hidden_units: Sequence[int]
    dropout: float
    max_embedding_dim: int
    patience: int
    seed: int


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a retry continues exactly here."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_roc_auc: float = math.nan
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def finished(self, training: TrainingSettings) -> bool:
        """Whether the epoch budget is spent or early stopping has triggered."""
        return self.epoch >= training.epochs or self.stopped_early(training)

    def stopped_early(self, training: TrainingSettings) -> bool:
        """Whether validation loss has not improved for ``patience`` epochs."""
        return self.epochs_without_improvement >= training.patience


class Trainer:
    """The network, optimizer, random streams and progress of one run: everything a checkpoint must hold."""

    def __init__(
        self,
        preprocessor: TabularPreprocessor,
        training: TrainingSettings,
        device: torch.device,
        world: World,
        outputs: int = 1,
        task: str = "binary",
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        import torch

        from mlsteps.training.mlp import NetworkSpec, TabularNet

        seed_everything(training.seed)
        spec = NetworkSpec(
            numeric_features=len(preprocessor.numeric_columns),
            cardinalities=preprocessor.cardinalities,
            hidden_units=list(training.hidden_units),
            dropout=training.dropout,
            max_embedding_dim=training.max_embedding_dim,
            outputs=outputs,
        )
        self.training = training
        self.task = task
        self.device = device
        self.world = world
        self.network = TabularNet(spec).to(device)
        # Checkpoints, evaluation and the logged model use the plain network; only training steps go through
        # the wrapper, which averages gradients over the ranks of a distributed run.
        self.model = world.wrap(self.network, device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
        )
        self.batch_rows = batch_rows
        self.progress = Progress()
        self.best_weights = self._copy_weights()

    def _copy_weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.network.state_dict().items()}

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores (loadable with ``torch.load(weights_only=True)``)."""
        import torch

        # Only this process's GPU: reading every visible one would open a CUDA context on each from every rank.
        cuda = self.device.type == "cuda"
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_weights,
            "progress": asdict(self.progress),
            "random": {
                "torch": torch.get_rng_state(),
                "cuda": [torch.cuda.get_rng_state(self.device)] if cuda else [],
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state, random streams included, as if training had never stopped."""
        import torch

        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_weights = {name: tensor.to(self.device) for name, tensor in state["best_model"].items()}
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["random"]["torch"])
        if self.device.type == "cuda" and state["random"]["cuda"]:
            torch.cuda.set_rng_state(state["random"]["cuda"][0], self.device)

    def fit(
        self,
        criterion: torch.nn.Module,
        train: Split,
        validation: Split,
        after_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
    ) -> None:
        """Train until the epoch budget is spent or early stopping triggers; nothing when a checkpoint says so."""
        while not self.progress.finished(self.training):
            after_epoch(self.fit_epoch(criterion, train, validation))

    def fit_epoch(self, criterion: torch.nn.Module, train: Split, validation: Split) -> dict[str, float]:
        """Train one epoch, evaluate on validation, and keep the weights if validation loss improved.

        Every rank of a distributed run gets the same metrics, so all make the same early-stopping decision.
        """
        epoch = self.progress.epoch + 1
        train_loss = self._train_pass(criterion, train, f"epoch {epoch}/{self.training.epochs}")
        val_loss, val_roc_auc = loss_and_roc_auc(
            self.network,
            criterion,
            validation,
            self.world,
            with_roc_auc=self.task == "binary",
            chunk_rows=self.batch_rows,
        )
        progress = self.progress
        progress.epoch = epoch
        metrics = {"train_loss": train_loss, "val_loss": val_loss}
        if not math.isnan(val_roc_auc):
            metrics["val_roc_auc"] = val_roc_auc
        progress.history.append({"epoch": epoch, **metrics})
        if val_loss < progress.best_val_loss:
            progress.best_epoch, progress.best_val_loss, progress.best_val_roc_auc = epoch, val_loss, val_roc_auc
            progress.epochs_without_improvement = 0
            self.best_weights = self._copy_weights()
        else:
            progress.epochs_without_improvement += 1
        return metrics

    def _train_pass(self, criterion: torch.nn.Module, data: Split, description: str) -> float:
        """One pass over the train split in the epoch's order; returns the mean train loss over all its rows.

        Every step is one global batch of ``batch_size`` rows, each rank training on its part of it
        (``GlobalBatches``), so an optimizer step sees the same rows and gradients on any number of ranks.
        """
        import torch
        from torch.utils.data import DataLoader

        from mlsteps.training.mlp import GlobalBatches

        numeric, categories, labels = data
        self.model.train()
        batches = GlobalBatches(
            numeric,
            categories,
            labels,
            self.training.batch_size,
            self.world,
            self.training.seed,
            epoch=self.progress.epoch + 1,
            batch_rows=self.batch_rows,
        )
        total = torch.zeros((), device=self.device)
        rows_seen = 0
        cuda = self.device.type == "cuda"
        # batch_size=None: the dataset yields whole steps; one process reads them, in order (no worker processes).
        for step_numeric, step_categories, step_labels, factor in _progress_bar(
            DataLoader(batches, batch_size=None), len(batches), description
        ):
            step_numeric = step_numeric.to(self.device, non_blocking=True)
            step_categories = step_categories.to(self.device, non_blocking=True)
            # bf16 autocast only on CUDA: on CPU it is slower for layers this small and changes the numbers.
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = self.model(step_numeric, step_categories)
            loss = criterion(logits.float(), step_labels)
            self.optimizer.zero_grad(set_to_none=True)
            (loss if factor == 1.0 else loss * factor).backward()
            self.optimizer.step()
            if factor:
                total += loss.detach() * len(step_labels)
                rows_seen += len(step_labels)
        sums = torch.stack([total.double(), torch.tensor(rows_seen, dtype=torch.float64, device=self.device)])
        loss_sum, rows_seen = self.world.all_reduce_sum(sums).tolist()
        return loss_sum / rows_seen


def _progress_bar(steps: Iterable[Any], total: int, description: str) -> Iterable[Any]:
    """The batches with a tqdm bar on a terminal; plain in a log, or where tqdm is not installed (a bare GPU node)."""
    if not sys.stderr.isatty():
        return steps
    try:
        from tqdm import tqdm
    except ImportError:
        return steps
    return tqdm(steps, total=total, desc=description, unit="batch", file=sys.stderr)


def select_device(requested: str) -> torch.device:
    """CUDA for ``auto`` when present, else CPU.

    Raises:
        ConfigError: ``cuda`` was requested but no CUDA device is visible.
    """
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device is 'cuda' but torch sees no CUDA device: set training.device to auto or cpu, "
            "or run the step on a GPU node"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch and ask for deterministic kernels, so the same seed gives the same model."""
    import torch

    # cuBLAS needs this workspace setting for deterministic matmuls; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def loss_and_roc_auc(
    network: torch.nn.Module,
    criterion: torch.nn.Module,
    data: Split,
    world: World,
    with_roc_auc: bool = True,
    chunk_rows: int = DEFAULT_BATCH_ROWS,
) -> tuple[float, float]:
    """Loss (as in training) and, for a binary network, ROC AUC of one split, without dropout; ROC AUC is NaN
    when ``with_roc_auc`` is false (multiclass and regression).

    The rows are read in contiguous chunks of ``chunk_rows`` (sequential reads of a memory-mapped split), each rank
    predicting every ``size``-th chunk from chunk ``rank``; the logits are summed over the ranks into one tensor, so
    every rank computes the same numbers from all rows, and they do not depend on the number of ranks.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from mlsteps.training.mlp import as_tensor, predict_logits

    numeric, categories, labels = data
    outputs = network.spec.outputs
    logits = torch.zeros((len(labels), outputs) if outputs > 1 else len(labels), device=labels.device)
    for chunk, start in enumerate(range(0, len(labels), chunk_rows)):
        if chunk % world.size != world.rank:
            continue
        stop = min(start + chunk_rows, len(labels))
        logits[start:stop] = predict_logits(
            network,
            as_tensor(read_rows(numeric, start, stop)).to(labels.device),
            as_tensor(read_rows(categories, start, stop)).to(labels.device),
        )
    world.all_reduce_sum(logits)
    loss = float(criterion(logits, labels))
    roc_auc = float(roc_auc_score(labels.cpu().numpy(), logits.cpu().numpy())) if with_roc_auc else math.nan
    return loss, roc_auc
