"""A 2-d convolution with Sparse Variational Dropout on every weight."""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from vdcore import functional as VF
from vdcore.config import SVDConfig
from vdcore.layers.base import SVDLayer


class Conv2dShape:
    """What every convolutional Sparse VD layer shares with ``nn.Conv2d``: the convolution with given weights,
    its dense twin and its description."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    theta: nn.Parameter
    bias: nn.Parameter | None

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, config: SVDConfig | None = None) -> Self:
        """A layer of this kind that computes what ``conv`` does, ready to fine-tune."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, this conv uses padding_mode={conv.padding_mode!r}")
        config = config or SVDConfig()
        layer = cls(  # type: ignore[call-arg]
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            **cls.config_args(config),  # type: ignore[attr-defined]
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.init_from_dense(conv.weight, conv.bias, config.init_log_alpha)  # type: ignore[attr-defined]
        return layer

    def _set_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int] | str,
        dilation: int | tuple[int, int],
        groups: int,
    ) -> None:
        """Check and keep the convolution's geometry, as ``nn.Conv2d`` would."""
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must be positive and divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def empty_dense(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,  # type: ignore[arg-type]
            stride=self.stride,  # type: ignore[arg-type]
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,  # type: ignore[arg-type]
            groups=self.groups,
            bias=self.bias is not None,
            device=self.theta.device,
            dtype=self.theta.dtype,
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        )
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return f"{text}, {self._svd_repr()}"


class Conv2dSVD(Conv2dShape, SVDLayer):
    """``nn.Conv2d`` whose weights have learned Gaussian dropout, sampled by local reparameterization.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for ``nn.Conv2d``
            (zero padding only).
        threshold, log_alpha_clip, init_log_sigma2, train_mask: see ``SVDConfig``.

    Shape:
        Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)`` as for ``nn.Conv2d``.

    Attributes:
        theta: weight means, ``(out_channels, in_channels / groups, kH, kW)``.
        log_sigma2: log weight variances, same shape.
        bias: ``(out_channels,)`` or ``None``; deterministic.
    """

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
        init_log_sigma2: float = -10.0,
        train_mask: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        factory = {"device": device, "dtype": dtype}
        self.threshold = threshold
        self.log_alpha_clip = log_alpha_clip
        self.init_log_sigma2 = init_log_sigma2
        self.train_mask = train_mask
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.theta = nn.Parameter(torch.empty(shape, **factory))
        self.log_sigma2 = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for ``theta`` and ``bias``; ``init_log_sigma2`` for the variances."""
        nn.init.kaiming_uniform_(self.theta, a=math.sqrt(5))
        nn.init.constant_(self.log_sigma2, self.init_log_sigma2)
        if self.bias is not None:
            fan_in = self.theta[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._conv_forward(x, self.masked_weight(), self.masked_bias())
        if torch.compiler.is_compiling():  # the compiler fuses the plain formulas better than it traces ours
            mean, var = self._reference_moments()
        else:
            flag = VF.BackwardFlag()
            mean, var, kl = VF.weight_stats(
                self.theta, self.log_sigma2, self.log_alpha_clip, self.threshold, self.train_mask, flag
            )
            self._remember_kl(kl, flag)
        return VF.conv2d_lrt(x, mean, var, self.bias, self.stride, self.padding, self.dilation, self.groups)
