"""The mlp family: categorical embeddings and numeric inputs into an MLP, trained with ``mlsteps.training.trainer``.

The network has one logit (binary: the positive class; regression: the standardised target) or one per class
(multiclass). ``MlpTrainer`` is the family's ``mlsteps.training.api.TabularTrainer``: it resumes from its epoch
checkpoints, trains data-parallel under torchrun, and exports the network with its output head (sigmoid, softmax or
the target's scale) to ONNX. Torch only (no MLflow): ``benchmarks/gpu_check.py`` builds the network from here too.

The network is fed from ``GlobalBatches``, a ``torch.utils.data.IterableDataset`` that streams the split's arrays
(memory-mapped files in the train step, see ``mlsteps.training.streaming``) window by window in a seeded order, so
training holds about ``processing.batch_rows`` rows of features at a time whatever the size of the split, and one
process and N data-parallel ranks step on the same global batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from mlsteps.training.api import TrainerContext, TrainingData
from mlsteps.training.streaming import DEFAULT_BATCH_ROWS, BlockShuffle, rank_part, read_rows

if TYPE_CHECKING:
    from mlsteps.distributed import World

PREDICT_BATCH_ROWS = 65536
# One training step's rows on this rank: numeric, categories, labels, and the factor that makes the mean loss of
# this rank's part count as its share of the global batch (see GlobalBatches).
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]


def embedding_width(cardinality: int, max_embedding_dim: int) -> int:
    """Width of a categorical embedding: grows with the vocabulary, capped by ``max_embedding_dim``."""
    return min(max_embedding_dim, (cardinality + 1) // 2 + 1)


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the network before loading its weights."""

    numeric_features: int
    cardinalities: list[int]
    hidden_units: list[int]
    dropout: float
    max_embedding_dim: int
    outputs: int = 1


class TabularNet(nn.Module):
    """Embeddings for categorical columns, concatenated with the numeric inputs, then an MLP with one logit."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        # Row 0 of each embedding is the missing/unseen category, rows 1..cardinality the train categories.
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality + 1, embedding_width(cardinality, spec.max_embedding_dim))
            for cardinality in spec.cardinalities
        )
        width = spec.numeric_features + sum(embedding.embedding_dim for embedding in self.embeddings)
        layers: list[nn.Module] = []
        for units in spec.hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = units
        layers.append(nn.Linear(width, spec.outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Logits: shape (rows,) with one output, (rows, outputs) with several."""
        embedded = [embedding(categories[:, position]) for position, embedding in enumerate(self.embeddings)]
        logits = self.mlp(torch.cat([numeric, *embedded], dim=1))
        return logits.squeeze(1) if self.spec.outputs == 1 else logits


def as_tensor(rows: Any) -> torch.Tensor:
    """Rows read from a split (numpy or torch) as a torch tensor, without a copy where one is not needed (a
    read-only memory map's rows are copied: torch tensors are writable)."""
    if isinstance(rows, torch.Tensor):
        return rows
    return torch.from_numpy(np.ascontiguousarray(rows) if rows.flags.writeable else np.array(rows))


def _take(rows: Any, positions: np.ndarray) -> Any:
    """``rows[positions]`` for numpy and torch rows (torch indexes on the rows' own device)."""
    if isinstance(rows, torch.Tensor):
        return rows[torch.from_numpy(positions).to(rows.device)]
    return rows[positions]


def _concatenate(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


class GlobalBatches(IterableDataset):
    """This rank's part of every global batch of one epoch, streamed from the split's arrays window by window.

    The epoch's rows come in ``BlockShuffle``'s order (a function of the seed and the epoch alone), cut into global
    batches of ``batch_size`` rows; rank r takes the r-th contiguous part of each (``rank_part``). One process and N
    ranks therefore step on the same global batches, every rank takes the same number of steps (the last, shorter
    batch included: no rank runs out of data while another waits in a collective), and a resumed run repeats the
    epoch exactly. Each part comes with the factor ``len(part) * ranks / len(batch)`` for its mean loss: the
    gradients DistributedDataParallel averages over the ranks are then those of the global batch's mean loss, also
    when the batch does not split evenly. A rank whose part is empty (a batch of fewer rows than ranks) steps on one
    row with factor 0, as DDP needs every rank in every backward pass.

    Features are read a window of blocks at a time (``read_rows``: sequential file reads of a memory-mapped split);
    ``labels`` is the split's target as a tensor, one number per row, held whole.
    """

    def __init__(
        self,
        numeric: Any,
        categories: Any,
        labels: torch.Tensor,
        batch_size: int,
        world: World,
        seed: int,
        epoch: int = 1,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        super().__init__()
        self.numeric, self.categories, self.labels = numeric, categories, labels
        self.batch_size, self.world, self.epoch = batch_size, world, epoch
        self.order = BlockShuffle.for_memory(len(labels), batch_rows, seed)

    def set_epoch(self, epoch: int) -> None:
        """Stream the order of epoch ``epoch`` (1-based) next."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank."""
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Step]:
        pending: list[tuple[Any, Any, np.ndarray]] = []
        pending_rows = 0
        for ranges, positions in self.order.windows(self.epoch):
            numeric = _take(_concatenate([read_rows(self.numeric, *rows) for rows in ranges]), positions)
            categories = _take(_concatenate([read_rows(self.categories, *rows) for rows in ranges]), positions)
            row_ids = np.concatenate([np.arange(start, stop) for start, stop in ranges])[positions]
            pending.append((numeric, categories, row_ids))
            pending_rows += len(row_ids)
            if pending_rows < self.batch_size:
                continue
            numeric, categories, row_ids = (_concatenate([part[field] for part in pending]) for field in range(3))
            full = len(row_ids) - len(row_ids) % self.batch_size
            for start in range(0, full, self.batch_size):
                stop = start + self.batch_size
                yield self._part(numeric[start:stop], categories[start:stop], row_ids[start:stop])
            pending = [(numeric[full:], categories[full:], row_ids[full:])]
            pending_rows = len(row_ids) - full
        if pending_rows:
            numeric, categories, row_ids = (_concatenate([part[field] for part in pending]) for field in range(3))
            yield self._part(numeric, categories, row_ids)

    def _part(self, numeric: Any, categories: Any, row_ids: np.ndarray) -> Step:
        """This rank's rows of one global batch, and their loss factor."""
        start, stop = rank_part(len(row_ids), self.world.rank, self.world.size)
        factor = (stop - start) * self.world.size / len(row_ids)
        if stop == start:
            stop = start + 1  # one row (of another rank's part) with factor 0: a backward pass that changes nothing
        labels = self.labels[torch.from_numpy(row_ids[start:stop]).to(self.labels.device)]
        return as_tensor(numeric[start:stop]), as_tensor(categories[start:stop]), labels, factor


def save_network(network: TabularNet, path: Path) -> Path:
    """Write the architecture and the weights (as CPU tensors) to one file."""
    state = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    torch.save({"spec": asdict(network.spec), "state_dict": state}, path)
    return path


def load_network(path: Path | str, device: str | torch.device = "cpu") -> TabularNet:
    """Rebuild a network written by ``save_network``, in eval mode on ``device``."""
    payload = torch.load(path, map_location=device, weights_only=True)
    network = TabularNet(NetworkSpec(**payload["spec"]))
    network.load_state_dict(payload["state_dict"])
    return network.to(device).eval()


@torch.no_grad()
def predict_logits(network: TabularNet, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
    """Logits for all rows in eval mode (no dropout), in batches that bound memory for large inputs."""
    network.eval()
    chunks = [
        network(numeric[start : start + PREDICT_BATCH_ROWS], categories[start : start + PREDICT_BATCH_ROWS])
        for start in range(0, len(numeric), PREDICT_BATCH_ROWS)
    ]
    return torch.cat(chunks).float() if chunks else torch.zeros(0, device=numeric.device)


class OutputHead(nn.Module):
    """The network and the task's output: class probabilities (rows x classes) or the target in its units (rows).

    Exported with the network, so the ONNX model gives what the package contract asks without post-processing.
    """

    def __init__(self, network: TabularNet, task: str, target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        self.network, self.task = network, task
        self.target_mean, self.target_std = target_mean, target_std

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Probabilities or predictions of the rows, in float32."""
        logits = self.network(numeric, categories).float()
        if self.task == "binary":
            positive = torch.sigmoid(logits)
            return torch.stack([1.0 - positive, positive], dim=1)
        if self.task == "multiclass":
            return torch.softmax(logits, dim=1)
        return logits * self.target_std + self.target_mean


def export_onnx(module: nn.Module, numeric: torch.Tensor, categories: torch.Tensor, output: str) -> Any:
    """The module as an ``onnx.ModelProto`` (torch.export-based exporter), with rows as a dynamic dimension."""
    import logging
    import warnings

    from mlsteps.evaluation.tasks import ONNX_INPUTS

    rows = torch.export.Dim("rows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notes (deprecations inside torch, optional torchvision ops)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module.cpu().eval(),
            (numeric.cpu(), categories.cpu()),
            input_names=list(ONNX_INPUTS),
            output_names=[output],
            dynamic_shapes=({0: rows}, {0: rows}),
            dynamo=True,
            verbose=False,
        )
    return program.model_proto


class MlpTrainer:
    """The mlp family (``training.model: mlp``): the network trained epoch by epoch with early stopping on
    validation loss, resumable from the checkpoint of every epoch, data-parallel under torchrun.

    Binary trains on binary cross-entropy, multiclass on cross-entropy, regression on the mean squared error of the
    standardised target. Unweighted losses keep the probabilities calibrated.
    """

    def __init__(self, context: TrainerContext) -> None:
        from mlsteps.config import TrainingConfig
        from mlsteps.distributed import World

        self.context = context
        self.training = TrainingConfig.model_validate(context.params)
        self.world = World.from_env()
        self.device = torch.device(context.device)
        self.target_mean, self.target_std = 0.0, 1.0
        self.network: TabularNet | None = None
        self.history: dict[str, Any] = {}

    def _split(self, data: TrainingData, target: np.ndarray) -> tuple[Any, Any, torch.Tensor]:
        """The split as the loop reads it: the feature arrays as they are (read a block at a time, never copied
        whole) and the labels, one number per row, as a tensor on the device."""
        task = self.context.task
        if task == "multiclass":
            labels = torch.from_numpy(target).long()
        elif task == "regression":
            labels = torch.from_numpy((target - self.target_mean) / self.target_std).float()
        else:
            labels = torch.from_numpy(target).float()
        return data.numeric, data.categories, labels.to(self.device)

    def fit(self, train: TrainingData, validation: TrainingData) -> dict[str, float]:
        """Train (or resume) until the epoch budget is spent or validation loss stops improving; keep the best."""
        from mlsteps.training.checkpoints import checkpoint_uri, fingerprint, save_checkpoint
        from mlsteps.training.trainer import Trainer

        context, training = self.context, self.training
        train_target, validation_target = (
            np.asarray(read_rows(data.target, 0, len(data))) for data in (train, validation)
        )
        if context.task == "regression":
            self.target_mean = float(np.mean(train_target))
            self.target_std = float(np.std(train_target)) or 1.0
        outputs = context.num_classes if context.task == "multiclass" else 1
        shape = _Shape(list(context.numeric_columns), list(context.cardinalities))
        trainer = Trainer(
            shape, training, self.device, self.world, outputs=outputs, task=context.task, batch_rows=context.batch_rows
        )
        expected = fingerprint(training, context.resume_key)
        self._resume(trainer, expected)
        criterion = {"binary": nn.BCEWithLogitsLoss, "multiclass": nn.CrossEntropyLoss}.get(context.task, nn.MSELoss)()
        train_split = self._split(train, train_target)
        validation_split = self._split(validation, validation_target)
        print(
            f"train: mlp rank {self.world.rank}/{self.world.size} trains on {self.world.share(len(train))} of "
            f"{len(train)} train rows per epoch, {self.world.share(training.batch_size)} rows per step on "
            f"{self.device}",
            flush=True,
        )
        progress = trainer.progress

        def record_epoch(metrics: dict[str, float]) -> None:
            if not self.world.is_main:
                return
            context.log_metrics(metrics, step=progress.epoch)
            state = {**trainer.state(), "fingerprint": expected, "run_root": context.resume_key.get("run_root")}
            save_checkpoint(state, checkpoint_uri(context.checkpoint_dir, progress.epoch))
            print(
                f"epoch {progress.epoch}/{training.epochs}: "
                + " ".join(f"{name}={value:.4f}" for name, value in metrics.items())
                + f" (best val_loss={progress.best_val_loss:.4f} at epoch {progress.best_epoch})",
                flush=True,
            )

        trainer.fit(criterion, train_split, validation_split, record_epoch)
        if progress.stopped_early(training):
            print(
                f"train: early stop after epoch {progress.epoch}: val_loss did not improve on "
                f"{progress.best_val_loss:.4f} (epoch {progress.best_epoch}) for "
                f"{progress.epochs_without_improvement} epochs >= patience {training.patience}",
                flush=True,
            )
        trainer.network.load_state_dict(trainer.best_weights)
        self.network = trainer.network.eval()
        self.history = {"best_epoch": progress.best_epoch, "epochs": progress.history}
        metrics = {"best_epoch": progress.best_epoch, "epochs_run": progress.epoch, "val_loss": progress.best_val_loss}
        if context.task == "binary":
            metrics["val_roc_auc"] = progress.best_val_roc_auc
        return metrics

    def _resume(self, trainer: Any, expected: dict[str, Any]) -> None:
        """Restore the latest checkpoint, if any; every rank reads the same file, so all continue from one state.

        Raises:
            ConfigError: the checkpoint belongs to another run root, or a retry changed settings it depends on.
        """
        from mlsteps.errors import ConfigError
        from mlsteps.training.checkpoints import check_resumable, latest_checkpoint, load_checkpoint

        uri = latest_checkpoint(self.context.checkpoint_dir)
        if uri is None:
            return
        state = load_checkpoint(uri)
        run_root = self.context.resume_key.get("run_root")
        owner = state.get("run_root", run_root)
        if owner != run_root:
            raise ConfigError(
                f"checkpoint {uri} belongs to run root {owner!r}, not {run_root!r}: give every run its own "
                "--checkpoint-dir (for example <volume>/<dag id>/<run id>)"
            )
        check_resumable(state["fingerprint"], expected, uri)
        trainer.restore(state)
        print(f"train: resuming after epoch {trainer.progress.epoch} from {uri}", flush=True)

    def _head(self) -> OutputHead:
        if self.network is None:
            raise RuntimeError("MlpTrainer.fit must run before predict or to_onnx")
        return OutputHead(self.network, self.context.task, self.target_mean, self.target_std)

    def predict(self, numeric: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Probabilities (rows x classes) or predictions (rows) of the best weights, in batches."""
        head = self._head().eval()
        device = next(self.network.parameters()).device
        with torch.no_grad():
            chunks = [
                head(
                    as_tensor(read_rows(numeric, start, start + PREDICT_BATCH_ROWS)).to(device),
                    as_tensor(read_rows(categories, start, start + PREDICT_BATCH_ROWS)).to(device),
                )
                for start in range(0, len(numeric), PREDICT_BATCH_ROWS)
            ]
        return torch.cat(chunks).cpu().double().numpy()

    def to_onnx(self, numeric: np.ndarray, categories: np.ndarray) -> Any:
        """The network and its output head as ONNX, in the contract's inputs and output."""
        from mlsteps.evaluation.tasks import onnx_output

        head = self._head()
        model = export_onnx(head, as_tensor(numeric), as_tensor(categories), onnx_output(self.context.task))
        self.network.to(self.device)
        return model

    def save(self, folder: Path) -> None:
        """The native model: the network file and its learning curve."""
        import json

        save_network(self._head().network, folder / "network.pt")
        (folder / "learning_curve.json").write_text(json.dumps(self.history, indent=1))


@dataclass(frozen=True)
class _Shape:
    """The preprocessor's shape as the network needs it (``Trainer`` reads these two attributes)."""

    numeric_columns: list[str]
    cardinalities: list[int]
