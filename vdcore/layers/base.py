"""What every Sparse VD layer shares: the additive parameterization, the KL, the evaluation mask."""

from __future__ import annotations

from typing import Any, Self

import torch
from torch import Tensor, nn

from vdcore import functional as VF
from vdcore.config import SVDConfig


class _KLCache:
    """The KL of the last training forward, valid while the parameters it came from are unchanged."""

    __slots__ = ("flag", "kl", "params", "state")

    def __init__(self, layer: SVDLayer, kl: Tensor, flag: VF.BackwardFlag) -> None:
        self.kl = kl
        self.flag = flag
        self.params = (layer.theta, layer.log_sigma2)
        self.state = self._state(layer)

    @staticmethod
    def _state(layer: SVDLayer) -> tuple[int | float, ...]:
        # _version moves on every in-place change (optimizer steps, copy_, load_state_dict); the data pointers
        # catch ``.data`` assignment and moves.
        theta, log_sigma2 = layer.theta, layer.log_sigma2
        return (theta._version, log_sigma2._version, theta.data_ptr(), log_sigma2.data_ptr(), layer.log_alpha_clip)

    def matches(self, layer: SVDLayer) -> bool:
        theta, log_sigma2 = self.params
        return layer.theta is theta and layer.log_sigma2 is log_sigma2 and self._state(layer) == self.state


class SVDLayer(nn.Module):
    """Base of the layers whose weights carry a learned dropout rate.

    A subclass declares ``theta`` (the weight means), ``log_sigma2`` (same shape) and ``bias``, and sets
    ``threshold``, ``log_alpha_clip`` and ``train_mask``; it then only maps weights to outputs.

    A training forward computes the weight moments and the KL in one fused autograd node
    (``vdcore.functional``) and keeps the KL for ``kl()`` (a plain attribute, not in the state dict, dropped
    by copies and pickles).
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
        """This layer's KL divergence to the log-uniform prior, summed over its weights.

        Right after a training forward this is the KL that forward computed alongside the weight moments, at
        no cost, so call it after the forward. Otherwise (parameters changed since, no forward yet, or a
        gradient wanted from a graph that has none or was already used by a backward) the plain formulas
        compute it.
        """
        cache: _KLCache | None = self.__dict__.get("_kl_cache")
        if cache is not None and cache.matches(self):
            if not torch.is_grad_enabled():
                return cache.kl.detach()
            if not cache.flag.is_set and (cache.kl.requires_grad or not self._wants_grad()):
                return cache.kl
        return VF.kl_approx(self.log_alpha).sum()

    def mask(self) -> Tensor:
        """1 for each weight kept at evaluation, 0 for each dropped one."""
        return VF.keep_mask(self.log_alpha, self.threshold)

    def masked_weight(self) -> Tensor:
        """The deterministic weight used at evaluation and exported: ``theta`` with dropped weights zeroed."""
        return self.theta * self.mask()

    def weight_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of the weights for a training forward; the KL comes along for ``kl()``."""
        flag = VF.BackwardFlag()
        mean, var, kl = VF.weight_stats(
            self.theta, self.log_sigma2, self.log_alpha_clip, self.threshold, self.train_mask, flag
        )
        self._remember_kl(kl, flag)
        return mean, var

    def _reference_moments(self) -> tuple[Tensor, Tensor]:
        """The weight moments by the plain formulas, through autograd: for tracers such as torch.compile."""
        log_alpha = self.log_alpha
        mean = self.theta * VF.keep_mask(log_alpha, self.threshold) if self.train_mask else self.theta
        return mean, VF.noise_variance(self.theta, log_alpha)

    def _remember_kl(self, kl: Tensor, flag: VF.BackwardFlag) -> None:
        """Keep the KL a training forward computed, for the ``kl()`` call of the same step."""
        self._kl_cache = _KLCache(self, kl, flag)

    def _wants_grad(self) -> bool:
        return torch.is_grad_enabled() and (self.theta.requires_grad or self.log_sigma2.requires_grad)

    def _replicate_for_data_parallel(self) -> Self:
        replica = super()._replicate_for_data_parallel()
        replica.__dict__.pop("_kl_cache", None)  # a replica's forward keeps its own
        return replica

    def __getstate__(self) -> dict[str, Any]:
        # The cached KL is a graph output, which deepcopy and pickle refuse; it is stale in a copy anyway.
        state = super().__getstate__()
        state.pop("_kl_cache", None)
        return state

    @staticmethod
    def config_args(config: SVDConfig) -> dict[str, Any]:
        """The constructor arguments that ``config`` sets for this kind of layer."""
        return {
            "threshold": config.threshold,
            "log_alpha_clip": config.log_alpha_clip,
            "init_log_sigma2": config.init_log_sigma2,
            "train_mask": config.train_mask,
        }

    def empty_dense(self) -> nn.Linear | nn.Conv2d | nn.Embedding:
        """The plain layer of the same shape, uninitialised; each layer type says which."""
        raise NotImplementedError

    def masked_bias(self) -> Tensor | None:
        """The bias used at evaluation: the bias itself here; layers that drop whole units zero theirs."""
        return self.bias

    @torch.no_grad()
    def to_dense(self) -> nn.Linear | nn.Conv2d | nn.Embedding:
        """A plain layer holding the masked weights and bias: what this layer computes at evaluation."""
        dense = self.empty_dense()
        dense.weight.copy_(self.masked_weight())
        bias = self.masked_bias()
        if getattr(dense, "bias", None) is not None and bias is not None:
            dense.bias.copy_(bias)
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
