"""A fully connected layer with Sparse Variational Dropout on every weight."""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcore import functional as VF
from vdcore.config import SVDConfig
from vdcore.layers.base import SVDLayer


class LinearShape:
    """What every linear Sparse VD layer shares with ``nn.Linear``: its dense twin and its description."""

    in_features: int
    out_features: int
    theta: nn.Parameter
    bias: nn.Parameter | None

    @classmethod
    def from_dense(cls, linear: nn.Linear, config: SVDConfig | None = None) -> Self:
        """A layer of this kind that computes what ``linear`` does, ready to fine-tune."""
        config = config or SVDConfig()
        layer = cls(  # type: ignore[call-arg]
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            **cls.config_args(config),  # type: ignore[attr-defined]
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.init_from_dense(linear.weight, linear.bias, config.init_log_alpha)  # type: ignore[attr-defined]
        return layer

    def empty_dense(self) -> nn.Linear:
        return nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.theta.device,
            dtype=self.theta.dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._svd_repr()}"
        )


class LinearSVD(LinearShape, SVDLayer):
    """``nn.Linear`` whose weights have learned Gaussian dropout, sampled by local reparameterization.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        threshold: weights with ``log_alpha`` above it are zeroed at evaluation.
        log_alpha_clip, init_log_sigma2, train_mask: see ``SVDConfig``.

    Shape:
        Input ``(*, in_features)``, output ``(*, out_features)``.

    Attributes:
        theta: weight means, ``(out_features, in_features)``.
        log_sigma2: log weight variances, same shape.
        bias: ``(out_features,)`` or ``None``; deterministic.

    Examples:
        >>> layer = LinearSVD(784, 300)
        >>> layer.eval()(torch.randn(2, 784)).shape
        torch.Size([2, 300])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = 3.0,
        log_alpha_clip: float = 8.0,
        init_log_sigma2: float = -10.0,
        train_mask: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold
        self.log_alpha_clip = log_alpha_clip
        self.init_log_sigma2 = init_log_sigma2
        self.train_mask = train_mask
        self.theta = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.log_sigma2 = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation for ``theta`` and ``bias``; ``init_log_sigma2`` for the variances."""
        nn.init.kaiming_uniform_(self.theta, a=math.sqrt(5))
        nn.init.constant_(self.log_sigma2, self.init_log_sigma2)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.masked_weight(), self.masked_bias())
        if torch.compiler.is_compiling():  # the compiler fuses the plain formulas better than it traces ours
            return VF.linear_lrt(x, *self._reference_moments(), self.bias)
        if torch.is_autocast_enabled(x.device.type):  # the fused node would bypass autocast's casts
            return VF.linear_lrt(x, *self.weight_moments(), self.bias)
        flag = VF.BackwardFlag()
        out, kl = VF.linear_svd(
            x, self.theta, self.log_sigma2, self.bias, self.log_alpha_clip, self.threshold, self.train_mask, flag
        )
        self._remember_kl(kl, flag)
        return out
