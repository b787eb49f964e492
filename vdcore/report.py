"""How sparse a network is: weights and non-zero weights per layer, and the compression ratio."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from vdcore.layers import SVDLayer, weight_names


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of weights that are zero (dropped)."""
        return 1 - self.nonzero / self.weights if self.weights else 0.0


@dataclass(frozen=True)
class SparsityReport:
    layers: list[LayerSparsity]

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.weights if self.weights else 0.0

    @property
    def compression(self) -> float:
        """All weights / non-zero weights, the ratio the papers report (biases not counted)."""
        return self.weights / self.nonzero if self.nonzero else float("inf")

    def to_dict(self) -> dict[str, object]:
        return {
            "layers": [
                asdict(layer) | {"shape": list(layer.shape), "sparsity": layer.sparsity} for layer in self.layers
            ],
            "weights": self.weights,
            "nonzero": self.nonzero,
            "sparsity": self.sparsity,
            "compression": self.compression,
        }

    def __str__(self) -> str:
        rows = [f"{'layer':<24}{'weights':>12}{'non-zero':>12}{'sparsity':>10}"]
        rows += [f"{x.name:<24}{x.weights:>12}{x.nonzero:>12}{x.sparsity:>10.2%}" for x in self.layers]
        rows.append(f"{'total':<24}{self.weights:>12}{self.nonzero:>12}{self.sparsity:>10.2%}")
        rows.append(f"compression {self.compression:.1f}x")
        return "\n".join(rows)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Weights and non-zeros of each weight layer: Sparse VD layers count their evaluation mask, plain
    ``nn.Linear``/``nn.Conv2d``/``nn.Embedding``/``nn.LSTM``/``nn.GRU`` count their exact zeros (as after ``prune``;
    a recurrent layer's weight matrices count as one layer, biases aside)."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, SVDLayer):
            weight = module.masked_weight()
        elif isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
            weight = module.weight
        elif isinstance(module, nn.LSTM | nn.GRU):
            weight = torch.cat([getattr(module, name).flatten() for name in weight_names(module)])
        else:
            continue
        layers.append(
            LayerSparsity(
                name=name or type(module).__name__,
                kind=type(module).__name__,
                shape=tuple(weight.shape),
                weights=weight.numel(),
                nonzero=int(torch.count_nonzero(weight)),
            )
        )
    return SparsityReport(layers)
