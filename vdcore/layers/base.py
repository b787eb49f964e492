"""What every Sparse VD layer shares: the additive parameterization, the KL, the evaluation mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vdcore import functional as VF


class SVDLayer(nn.Module):
    """Base of the layers whose weights carry a learned dropout rate.

    A subclass declares ``theta`` (the weight means), ``log_sigma2`` (same shape) and ``bias``, and sets
    ``threshold``, ``log_alpha_clip`` and ``train_mask``; it then only maps weights to outputs.
    """

    theta: nn.Parameter
    log_sigma2: nn.Parameter
    bias: nn.Parameter | None
    threshold: float
    log_alpha_clip: float
    train_mask: bool

    @property
    def log_alpha(self) -> Tensor:
        """``log(sigma^2 / theta^2)`` per weight, clipped; high means the weight is noise."""
        return VF.log_alpha(self.theta, self.log_sigma2, self.log_alpha_clip)

    def kl(self) -> Tensor:
        """This layer's KL divergence to the log-uniform prior, summed over its weights."""
        return VF.kl_approx(self.log_alpha).sum()

    def mask(self) -> Tensor:
        """1 for each weight kept at evaluation, 0 for each dropped one."""
        return VF.keep_mask(self.log_alpha, self.threshold)

    def masked_weight(self) -> Tensor:
        """The deterministic weight used at evaluation and exported: ``theta`` with dropped weights zeroed."""
        return self.theta * self.mask()

    def weight_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of the weights for a training forward."""
        log_alpha = self.log_alpha
        mean = self.theta * VF.keep_mask(log_alpha, self.threshold) if self.train_mask else self.theta
        return mean, VF.noise_variance(self.theta, log_alpha)

    def empty_dense(self) -> nn.Linear | nn.Conv2d:
        """The plain layer of the same shape, uninitialised; each layer type says which."""
        raise NotImplementedError

    @torch.no_grad()
    def to_dense(self) -> nn.Linear | nn.Conv2d:
        """A plain layer holding the masked weights: what this layer computes at evaluation."""
        dense = self.empty_dense()
        dense.weight.copy_(self.masked_weight())
        if dense.bias is not None and self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    @torch.no_grad()
    def init_from_dense(self, weight: Tensor, bias: Tensor | None, init_log_alpha: float) -> None:
        """Start from pretrained weights: ``theta`` copies them and every weight gets ``init_log_alpha``.

        Setting alpha rather than sigma keeps even tiny weights below the threshold, so the swapped network
        computes what the dense one did.
        """
        self.theta.copy_(weight)
        self.log_sigma2.copy_(init_log_alpha + torch.log(weight * weight + VF.THETA2_EPS))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)

    def _svd_repr(self) -> str:
        return f"threshold={self.threshold}"
