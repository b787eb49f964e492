"""Fine-tuning a pruned network with its structure held, so the deterministic network that ships fits the data.

Sparse VD trains weight means under multiplicative noise and a KL term; the exported network runs the means
without either. A few epochs on the data term alone fit the surviving weights to that network. What they may
not touch is the pruning's result: every zero weight (``hold="weights"``, the compression kept exactly), or only
the removed units and unread inputs (``hold="units"``: the kept units train all their weights, so the network is
denser but has the same shape after ``shrink``, hence the same speed, and fits better).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from vdcore.config import TrainConfig
from vdcore.layers import weight_names
from vdcore.sparsify import is_sparsified
from vdcore.train import Data, EpochMetrics, OnEpoch, ShouldStop, train

MASKED_LAYERS = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LSTM, nn.GRU)
Hold = Literal["weights", "units"]
HOLDS: tuple[Hold, ...] = ("weights", "units")


def held_mask(weight: Tensor, hold: Hold) -> Tensor:
    """Where a pruned layer's ``weight`` may train: its non-zeros, or (``"units"``) every weight whose output unit
    has a non-zero weight and whose input has a non-zero weight in this layer.

    Units with an all-zero row and inputs with an all-zero column are what ``shrink`` removes (or folds into a
    bias); holding them keeps the shrunk shapes.
    """
    nonzero = weight.detach() != 0
    if hold == "weights":
        return nonzero
    rows = nonzero.flatten(1).any(dim=1)
    columns = nonzero.transpose(0, 1).flatten(1).any(dim=1)
    spatial = (1,) * (weight.dim() - 2)
    return (rows.view(-1, 1, *spatial) & columns.view(1, -1, *spatial)).expand_as(weight).clone()


def finetune(
    model: nn.Module,
    train_data: Data,
    val: Data | None = None,
    config: TrainConfig | None = None,
    on_epoch: OnEpoch | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    should_stop: ShouldStop | None = None,
    hold: Hold = "weights",
) -> list[EpochMetrics]:
    """Train a pruned plain network (``vdcore.prune``'s result) on the data term, in place, the weights of its
    linear, conv, embedding and recurrent layers masked by ``held_mask(weight, hold)``; returns the metrics of each
    epoch as ``train`` does.

    The masks are ``torch.nn.utils.prune``'s (``weight_orig`` and ``weight_mask`` during training) and are
    baked in before returning, so the model keeps its plain parameters. Biases train freely.
    """
    if is_sparsified(model):
        raise ValueError("finetune takes a pruned plain network: call vdcore.prune(model) first")
    if hold not in HOLDS:
        raise ValueError(f"hold must be one of {HOLDS}, got {hold!r}")
    held = [(m, name) for m in model.modules() if isinstance(m, MASKED_LAYERS) for name in _weight_names(m)]
    with torch.no_grad():
        for layer, name in held:
            weight = getattr(layer, name)
            table = isinstance(layer, nn.Embedding)  # a table's units are its columns
            prune.custom_from_mask(layer, name, held_mask(weight.T, hold).T if table else held_mask(weight, hold))
    try:
        return train(model, train_data, val, config, on_epoch, checkpoint, should_stop)
    finally:
        for layer, name in held:
            prune.remove(layer, name)


def _weight_names(layer: nn.Module) -> list[str]:
    """The weight tensors of a masked layer: ``weight``, or a recurrent layer's ``weight_ih_l0``, ...."""
    return weight_names(layer) if isinstance(layer, nn.LSTM | nn.GRU) else ["weight"]
