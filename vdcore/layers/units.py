"""Variational dropout on whole units: one learned dropout rate per output feature (Linear) or filter (Conv2d).

Each unit's pre-activation is multiplied by a random scale, ``out_j = (x . w_j + b_j) * s_j`` with
``s_j ~ N(unit_theta_j, sigma_j^2)``, under the log-uniform prior with the KL approximation of Sparse VD (one scale
per unit or filter as in Structured Bayesian Pruning, Neklyudov et al. 2017). The scale has Sparse VD's additive
parameterization, ``alpha_j = sigma_j^2 / unit_theta_j^2``: a unit is switched off by shrinking its scale, which
removes its noise with it. With the rate itself as the parameter (``s_j ~ N(1, alpha_j)``), a unit could only
become noise, which hurts the next layer as long as it reads the unit; on MNIST no unit went then.

The KL of one scale is a single term against a data term summed over the whole training set, too weak to free
units on its own; it counts ``cost ** kl_exponent`` times (default 0.5), where a unit's cost is its multiply-adds
per example: its fan-in, times its output positions for a filter. On MNIST LeNet-300-100 (10 epochs of 20k
examples): exponent 0 kept 290-85 units, 0.5 kept 78-84, 1 kept 3-13 and lost most of the accuracy. A filter's
data term sums over its whole feature map, and it costs that many multiply-adds: weighted by its fan-in alone
(25 in LeNet-5's first convolution, against 800 for a unit of its dense layer) few filters went. On LeNet-5 with
10 epochs of 20k examples after 3 dense ones, fan-in weighting kept filters 19-26 of 20-50 (1.86% error), cost
weighting 11-8 (2.29%); the dense layer kept 68 of 500 units both ways.
At evaluation a unit with ``log_alpha > threshold`` outputs 0: its weight row and its bias are zeroed, so
``vdcore.shrink`` removes the unit from both layers it touches; a kept unit's scale is folded into its row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcore import functional as VF
from vdcore.config import SVDConfig
from vdcore.layers.base import SVDLayer
from vdcore.layers.conv2d import Conv2dShape
from vdcore.layers.linear import LinearShape


class UnitScale:
    """A random scale on each output unit: its parameters, rate, KL, mask and sampling, for the layers that have one.

    The layer declares ``theta`` (units on axis 0), ``threshold``, ``log_alpha_clip``, ``train_mask``,
    ``kl_exponent`` and ``spatial_dims`` (how many axes follow the unit axis in its output: 0 for Linear, 2 for
    Conv2d), and calls ``_init_unit_scale`` in its constructor. ``unit_positions`` is the number of output values
    per unit and example, 1 until a training forward has seen a filter's feature map.
    """

    theta: nn.Parameter
    threshold: float
    log_alpha_clip: float
    train_mask: bool
    init_log_alpha: float
    kl_exponent: float
    spatial_dims: int
    unit_theta: nn.Parameter
    unit_log_sigma2: nn.Parameter
    unit_positions: int

    def _init_unit_scale(self, units: int, init_log_alpha: float, kl_exponent: float, **factory: Any) -> None:
        self.init_log_alpha = init_log_alpha
        self.kl_exponent = kl_exponent
        self.unit_positions = 1
        self.unit_theta = nn.Parameter(torch.ones(units, **factory))
        self.unit_log_sigma2 = nn.Parameter(torch.full((units,), init_log_alpha, **factory))

    @property
    def unit_log_alpha(self) -> Tensor:
        """``log(sigma^2 / unit_theta^2)`` per unit, ``(units,)``, clipped to ``[-clip, clip]``."""
        return VF.log_alpha(self.unit_theta, self.unit_log_sigma2, self.log_alpha_clip)

    def unit_cost(self) -> int:
        """Multiply-adds of one unit per example: its fan-in times its output positions (1 for Linear)."""
        return self.theta[0].numel() * self.unit_positions

    def unit_kl(self) -> Tensor:
        """One ``kl_approx`` per unit, each counted ``unit_cost() ** kl_exponent`` times."""
        return VF.kl_approx(self.unit_log_alpha).sum() * self.unit_cost() ** self.kl_exponent

    def unit_mask(self) -> Tensor:
        """1 for each unit kept at evaluation, 0 for each dropped one; ``(units,)``."""
        return VF.keep_mask(self.unit_log_alpha, self.threshold)

    @torch.no_grad()
    def _reset_unit_scale(self, log_alpha: float) -> None:
        """Scale 1 and ``log_alpha`` for every unit: the layer computes what it did without the scales."""
        self.unit_theta.fill_(1.0)
        self.unit_log_sigma2.fill_(log_alpha)

    def _per_row(self, per_unit: Tensor) -> Tensor:
        """``(units,)`` reshaped to broadcast against ``theta``."""
        return per_unit.view(-1, *[1] * (self.theta.dim() - 1))

    def _unit_scaled(self, tensor: Tensor, per_row: bool) -> Tensor:
        """``tensor`` (weights if ``per_row``, else a bias) scaled by each unit's mean scale, dropped units zeroed."""
        scale = self.unit_theta * self.unit_mask()
        return tensor * (self._per_row(scale) if per_row else scale)

    def _scale_sample(self, pre: Tensor) -> Tensor:
        """The training output from a pre-activation: one scale drawn per example and unit (or feature map)."""
        shape = (-1, *[1] * self.spatial_dims)
        self.unit_positions = math.prod(pre.shape[pre.dim() - self.spatial_dims :])
        log_alpha = self.unit_log_alpha
        mean = self.unit_theta * VF.keep_mask(log_alpha, self.threshold) if self.train_mask else self.unit_theta
        std = self.unit_theta.abs() * torch.exp(0.5 * log_alpha)  # from the clipped alpha, like the KL
        noise_shape = (*pre.shape[: pre.dim() - self.spatial_dims], *[1] * self.spatial_dims)
        return VF.unit_scale_sample(pre, mean.view(shape), std.view(shape), noise_shape)

    @staticmethod
    def unit_config_args(config: SVDConfig) -> dict[str, Any]:
        return {"init_log_alpha": config.init_log_alpha, "kl_exponent": config.unit_kl_exponent}


class UnitSVDLayer(UnitScale, SVDLayer):
    """Base of the layers with one learned dropout rate per output unit; the ``SVDLayer`` contract holds.

    A subclass declares ``theta`` (the weights, deterministic) and ``bias``, sets ``threshold``,
    ``log_alpha_clip`` and ``train_mask``, and sets up its ``UnitScale``.

    Differences from a per-weight layer: ``log_alpha`` has one entry per unit; ``mask()`` is still one entry per
    weight (each unit's value repeated along its row), so weight counts read the same; the bias is masked too
    (``masked_bias()``).
    """

    @property
    def log_alpha(self) -> Tensor:
        """The units' rates: ``unit_log_alpha``."""
        return self.unit_log_alpha

    def kl(self) -> Tensor:
        """This layer's KL term: the units'."""
        return self.unit_kl()

    @staticmethod
    def config_args(config: SVDConfig) -> dict[str, Any]:
        return {
            "threshold": config.threshold,
            "log_alpha_clip": config.log_alpha_clip,
            "train_mask": config.train_mask,
            **UnitScale.unit_config_args(config),
        }

    def mask(self) -> Tensor:
        """1 for each weight kept at evaluation: the unit mask repeated along each unit's weights."""
        return self._per_row(self.unit_mask()).expand_as(self.theta).contiguous()

    def masked_weight(self) -> Tensor:
        """The rows scaled by their unit's mean scale, dropped rows zeroed."""
        return self._unit_scaled(self.theta, per_row=True)

    def masked_bias(self) -> Tensor | None:
        """The bias scaled like the rows, dropped units zeroed, so that a dropped unit outputs exactly 0."""
        return None if self.bias is None else self._unit_scaled(self.bias, per_row=False)

    def weight_moments(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} samples its units' outputs, not independent weights")

    def _reference_moments(self) -> tuple[Tensor, Tensor]:
        return self.weight_moments()

    @torch.no_grad()
    def init_from_dense(self, weight: Tensor, bias: Tensor | None, init_log_alpha: float) -> None:
        """Start from pretrained weights: ``theta`` and ``bias`` copy them, every unit gets scale 1 and
        ``init_log_alpha``."""
        self.theta.copy_(weight)
        self._reset_unit_scale(init_log_alpha)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)


class LinearUnitSVD(LinearShape, UnitSVDLayer):
    """``nn.Linear`` whose output units have learned Gaussian dropout, one rate per unit.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        threshold: units with ``log_alpha`` above it output 0 at evaluation.
        log_alpha_clip, init_log_alpha, train_mask: see ``SVDConfig``.
        kl_exponent: each unit's KL term counts ``in_features ** kl_exponent`` times
            (``SVDConfig.unit_kl_exponent``).

    Shape:
        Input ``(*, in_features)``, output ``(*, out_features)``.

    Attributes:
        theta: weights, ``(out_features, in_features)``.
        unit_theta, unit_log_sigma2: mean and log variance of each output unit's scale, ``(out_features,)``.
        bias: ``(out_features,)`` or ``None``; scaled by the unit's noise like the rest of its pre-activation.

    Examples:
        >>> layer = LinearUnitSVD(784, 300)
        >>> layer.eval()(torch.randn(2, 784)).shape
        torch.Size([2, 300])
    """

    spatial_dims = 0

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = 3.0,
        log_alpha_clip: float = 8.0,
        init_log_alpha: float = -8.0,
        kl_exponent: float = 0.5,
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
        self.train_mask = train_mask
        self.theta = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self._init_unit_scale(out_features, init_log_alpha, kl_exponent, **factory)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation for ``theta`` and ``bias``; ``init_log_alpha`` for every unit."""
        nn.init.kaiming_uniform_(self.theta, a=math.sqrt(5))
        self._reset_unit_scale(self.init_log_alpha)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.masked_weight(), self.masked_bias())
        return self._scale_sample(F.linear(x, self.theta, self.bias))


class Conv2dUnitSVD(Conv2dShape, UnitSVDLayer):
    """``nn.Conv2d`` whose output filters have learned Gaussian dropout, one rate per filter.

    One noise value per example and filter scales the filter's whole feature map, as a random scale on the
    filter would; each output value then has mean ``m`` and variance ``alpha * m^2``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for ``nn.Conv2d``
            (zero padding only).
        threshold, log_alpha_clip, init_log_alpha, train_mask: see ``SVDConfig``.
        kl_exponent: each filter's KL term counts ``(fan_in * H_out * W_out) ** kl_exponent`` times, its
            multiply-adds per example (``SVDConfig.unit_kl_exponent``); the output size is the last training
            forward's.

    Shape:
        Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)`` as for ``nn.Conv2d``.

    Attributes:
        theta: weights, ``(out_channels, in_channels / groups, kH, kW)``.
        unit_theta, unit_log_sigma2: mean and log variance of each filter's scale, ``(out_channels,)``.
        bias: ``(out_channels,)`` or ``None``.
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        threshold: float = 3.0,
        log_alpha_clip: float = 8.0,
        init_log_alpha: float = -8.0,
        kl_exponent: float = 0.5,
        train_mask: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        factory = {"device": device, "dtype": dtype}
        self.threshold = threshold
        self.log_alpha_clip = log_alpha_clip
        self.train_mask = train_mask
        self.theta = nn.Parameter(torch.empty((out_channels, in_channels // groups, *self.kernel_size), **factory))
        self._init_unit_scale(out_channels, init_log_alpha, kl_exponent, **factory)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for ``theta`` and ``bias``; ``init_log_alpha`` for every filter."""
        nn.init.kaiming_uniform_(self.theta, a=math.sqrt(5))
        self._reset_unit_scale(self.init_log_alpha)
        if self.bias is not None:
            fan_in = self.theta[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._conv_forward(x, self.masked_weight(), self.masked_bias())
        return self._scale_sample(self._conv_forward(x, self.theta, self.bias))
