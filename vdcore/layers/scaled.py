"""Sparse VD on every weight and a random scale on every output unit, in one layer: compression and speed.

Per-weight rates make a network small but rarely free whole units; a unit scale (``UnitScale``) frees units
but compresses little. Here each weight keeps its own rate and local reparameterization, and the sampled
output of each unit is then multiplied by its scale ``s_j ~ N(unit_theta_j, sigma_j^2)`` (the hierarchy of
Bayesian Compression, Louizos et al. 2017, with Sparse VD's prior and KL on both levels). At evaluation a weight
goes when its own rate is above the threshold, a whole unit when its scale's rate is; a kept unit's mean scale
is folded into its row and bias.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vdcore.config import SVDConfig
from vdcore.layers.base import SVDLayer
from vdcore.layers.conv2d import Conv2dSVD
from vdcore.layers.linear import LinearSVD
from vdcore.layers.units import UnitScale


class ScaledSVDLayer(UnitScale, SVDLayer):
    """What a per-weight layer with unit scales adds to its per-weight base (listed after it in the bases).

    The constructor takes the base's arguments plus ``init_log_alpha`` (the units' starting rate, scale 1) and
    ``kl_exponent`` (each unit's KL term counts ``unit_cost() ** kl_exponent`` times, ``SVDConfig.unit_kl_exponent``).
    ``log_alpha`` stays per weight; ``unit_log_alpha`` is per unit. ``mask()`` combines both, the KL sums both.
    """

    def __init__(self, *args: Any, init_log_alpha: float = -8.0, kl_exponent: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        factory = {"device": self.theta.device, "dtype": self.theta.dtype}
        self._init_unit_scale(self.theta.shape[0], init_log_alpha, kl_exponent, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """The base's forward (its evaluation path reads ``masked_weight`` and ``masked_bias``), each unit's
        sampled output then scaled by its own noise in training."""
        out = super().forward(x)
        return self._scale_sample(out) if self.training else out

    def kl(self) -> Tensor:
        """The weights' KL plus the units'."""
        return super().kl() + self.unit_kl()

    @staticmethod
    def config_args(config: SVDConfig) -> dict[str, Any]:
        return {**SVDLayer.config_args(config), **UnitScale.unit_config_args(config)}

    def mask(self) -> Tensor:
        """1 for each weight kept at evaluation: its own rate below the threshold and its unit's too."""
        return super().mask() * self._per_row(self.unit_mask())

    def masked_weight(self) -> Tensor:
        """The masked weights, each row scaled by its unit's mean scale."""
        return self.theta * self.mask() * self._per_row(self.unit_theta)

    def masked_bias(self) -> Tensor | None:
        """The bias scaled like the rows, dropped units zeroed, so that a dropped unit outputs exactly 0."""
        return None if self.bias is None else self._unit_scaled(self.bias, per_row=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # type: ignore[misc]
        if "unit_theta" in self._parameters:  # the base's constructor calls this before the scales exist
            self._reset_unit_scale(self.init_log_alpha)

    @torch.no_grad()
    def init_from_dense(self, weight: Tensor, bias: Tensor | None, init_log_alpha: float) -> None:
        """The per-weight start (every weight at ``init_log_alpha``), and every unit at scale 1 and the same."""
        super().init_from_dense(weight, bias, init_log_alpha)
        self._reset_unit_scale(init_log_alpha)

    def _svd_repr(self) -> str:
        return f"{super()._svd_repr()}, kl_exponent={self.kl_exponent}"


class LinearScaledSVD(ScaledSVDLayer, LinearSVD):
    """``LinearSVD`` whose output units also have a learned random scale, so whole units can go.

    Args:
        as for ``LinearSVD``, and ``init_log_alpha``, ``kl_exponent`` (see ``ScaledSVDLayer``).

    Attributes:
        theta, log_sigma2, bias: as for ``LinearSVD``.
        unit_theta, unit_log_sigma2: mean and log variance of each output unit's scale, ``(out_features,)``.

    Examples:
        >>> layer = LinearScaledSVD(784, 300, kl_exponent=0.25)
        >>> layer.eval()(torch.randn(2, 784)).shape
        torch.Size([2, 300])
    """

    spatial_dims = 0


class Conv2dScaledSVD(ScaledSVDLayer, Conv2dSVD):
    """``Conv2dSVD`` whose filters also have a learned random scale (one draw per example and feature map).

    Args:
        as for ``Conv2dSVD``, and ``init_log_alpha``, ``kl_exponent`` (see ``ScaledSVDLayer``).

    Attributes:
        theta, log_sigma2, bias: as for ``Conv2dSVD``.
        unit_theta, unit_log_sigma2: mean and log variance of each filter's scale, ``(out_channels,)``.
    """

    spatial_dims = 2
