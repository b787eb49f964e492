"""The training objective: the negative evidence lower bound (ELBO) per training example."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcore.sparsify import svd_layers


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of the KL terms of all Sparse VD layers of ``model`` (0 if it has none)."""
    terms = [layer.kl() for _, layer in svd_layers(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def elbo_loss(
    logits: Tensor, target: Tensor, model: nn.Module, dataset_size: int, kl_weight: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Negative ELBO per example, ``mean NLL + kl_weight * KL / dataset_size``.

    Dividing the KL by the training-set size makes a mini-batch's loss an unbiased estimate of the full
    objective divided by N. Returns ``(loss, data_term, kl)`` so that both halves can be logged.
    """
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be the number of training examples, got {dataset_size}")
    data_term = F.cross_entropy(logits, target)
    kl = kl_divergence(model).to(data_term.device)
    return data_term + kl_weight * kl / dataset_size, data_term, kl
