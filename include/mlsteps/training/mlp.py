"""The tabular network: categorical embeddings and numeric inputs into an MLP with one logit.

Torch only (no MLflow): the train step, the model package (``mlsteps.model``, which re-exports these names),
the serving bundle and ``benchmarks/gpu_check.py`` all build the network from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

PREDICT_BATCH_ROWS = 65536


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
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Logits of the positive class, shape (rows,)."""
        embedded = [embedding(categories[:, position]) for position, embedding in enumerate(self.embeddings)]
        return self.mlp(torch.cat([numeric, *embedded], dim=1)).squeeze(1)


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
