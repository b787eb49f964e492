"""The dropout variants compared by Kingma, Salimans & Welling 2015, as drop-in ``nn.Linear`` replacements.

"Variational Dropout and the Local Reparameterization Trick" (Figure 1) compares, on fully connected networks:

========================  ==========================================================================================
``none``                  plain ``nn.Linear``
``binary``                ``BinaryDropoutLinear``: ``nn.Dropout(p)`` on the layer's input units
``gaussian-a``            ``GaussianDropoutLinearA``: input units times ``N(1, alpha)``, ``alpha = p / (1 - p)`` fixed
``gaussian-b``            ``GaussianDropoutLinearB``: the same rate on each weight independently, sampled by local
                          reparameterization: output mean ``x W^T + b``, variance ``alpha (x^2) (W^2)^T``
``variational-a``         ``VariationalDropoutLinearA``: as ``gaussian-a`` with one learned ``alpha`` per layer
``variational-a2``        ``VariationalDropoutLinearA2``: as ``gaussian-a`` with a learned ``alpha`` per input unit
``variational-b``         ``VariationalDropoutLinearB``: as ``gaussian-b`` with one learned ``alpha`` per layer
========================  ==========================================================================================

A (noise on the input units) makes the output units of one example share noise; B (noise on each weight) makes
them independent. Both have the same mean and per-unit variance, and so has binary dropout at the same ``p``.

The learned variants carry the KL to the log-uniform (scale-invariant) prior in the paper's polynomial
approximation, ``-KL ~= const + 0.5 log alpha + c1 alpha + c2 alpha^2 + c3 alpha^3``, with ``alpha`` capped at 1 as
the paper does (the approximation is fitted for ``alpha <= 1``). The constant is left out: it moves no gradient,
so ``kl()`` is the KL up to an additive constant and may be negative. There is one KL term per noise variable:
per input unit for A and A2, per weight for B. The fixed-rate variants have a constant KL and report 0.

Every layer computes ``F.linear(x, weight, bias)`` in eval mode: the noise has mean 1, and binary dropout scales
in training as ``nn.Dropout`` does. Training code adds ``kingma_kl_divergence(model) / N`` to the mean NLL.

    model = kingma_mlp("variational-a2", width=1024)     # 784 -> 1024 -> 1024 -> 1024 -> 10, ReLU
    loss = F.cross_entropy(model(x), y) + kingma_kl_divergence(model) / len(train_set)
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcore import functional as VF

# Kingma et al. 2015, section 4.3: the KL's polynomial approximation in alpha.
C1, C2, C3 = 1.16145124, -1.50204118, 0.58629921

KINGMA_VARIANTS = (
    "none",
    "binary",
    "gaussian-a",
    "gaussian-b",
    "variational-a",
    "variational-a2",
    "variational-b",
)


# --- the formulas -----------------------------------------------------------------------------------------------


def kl_kingma(log_alpha: Tensor) -> Tensor:
    """Per noise variable ``KL(N(1, alpha) || log-uniform)`` up to a constant, as in Kingma et al. 2015.

    ``-(0.5 log alpha + c1 alpha + c2 alpha^2 + c3 alpha^3)``: decreasing in alpha on ``(0, 1]``, so the KL asks
    for more noise and the data term for less. Meant for ``alpha <= 1`` (see ``cap_log_alpha``).
    """
    alpha = torch.exp(log_alpha)
    return -(0.5 * log_alpha + alpha * (C1 + alpha * (C2 + alpha * C3)))


class _CapLogAlpha(torch.autograd.Function):
    """``min(log_alpha, cap)`` whose gradient, at or above the cap, passes only when it points back inside."""

    @staticmethod
    def forward(ctx: Any, log_alpha: Tensor, cap: float) -> Tensor:
        ctx.save_for_backward(log_alpha)
        ctx.cap = cap
        return log_alpha.clamp(max=cap)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (log_alpha,) = ctx.saved_tensors
        # A descent step moves log_alpha by -grad: grad > 0 lowers it, which is allowed everywhere.
        return grad * ((log_alpha < ctx.cap) | (grad > 0)).to(grad.dtype), None


def cap_log_alpha(log_alpha: Tensor, max_log_alpha: float) -> Tensor:
    """``log_alpha`` capped at ``max_log_alpha``, with the gradient of a projection onto ``log_alpha <= cap``.

    A plain clamp would pass no gradient above the cap: the KL always asks for a larger alpha, so a parameter that
    once crossed the cap would stay there even when the data term later wants less noise. Here a gradient that
    would push the parameter further out is dropped, and one that pulls it back in passes.
    """
    return _CapLogAlpha.apply(log_alpha, max_log_alpha)


def gaussian_dropout_a(x: Tensor, weight: Tensor, bias: Tensor | None, alpha: Tensor | float) -> Tensor:
    """``(x * xi) W^T + b`` with ``xi ~ N(1, alpha)`` per example and input unit (``alpha`` broadcasts over x)."""
    std = alpha**0.5 if isinstance(alpha, float) else torch.sqrt(alpha)
    return F.linear(x * (1 + std * torch.randn_like(x)), weight, bias)


def gaussian_dropout_b(x: Tensor, weight: Tensor, bias: Tensor | None, alpha: Tensor | float) -> Tensor:
    """Independent ``N(w, alpha w^2)`` weights, sampled by local reparameterization (one draw per output)."""
    return VF.linear_lrt(x, weight, alpha * weight * weight, bias)


def _rate_to_alpha(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"the dropout rate p must be in (0, 1), got {p}")
    return p / (1.0 - p)


# --- the layers ---------------------------------------------------------------------------------------------------


class NoisyLinear(nn.Module):
    """Base of the variants: ``nn.Linear``'s parameters and initialisation, a noisy training forward, ``kl()``.

    A subclass sets its hyperparameters before calling ``super().__init__``, declares any parameter of its own in
    ``_declare()`` and initialises it in ``reset_parameters()``; ``forward`` in training mode is its one job.

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.

    Attributes:
        weight: ``(out_features, in_features)``, initialised as ``nn.Linear`` does; the noise's mean.
        bias: ``(out_features,)`` or ``None``; deterministic.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._declare(factory)
        self.reset_parameters()

    def _declare(self, factory: dict[str, Any]) -> None:
        """Declare the subclass's own parameters, uninitialised."""

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation for ``weight`` and ``bias``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        return self.noisy_forward(x)

    def noisy_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def kl(self) -> Tensor:
        """This layer's KL term (up to a constant); 0 for a fixed dropout rate."""
        return self.weight.new_zeros(())

    @classmethod
    def from_dense(cls, linear: nn.Linear, **kwargs: Any) -> NoisyLinear:
        """A layer with ``linear``'s weights (and options ``kwargs``): same outputs in eval mode."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if layer.bias is not None and linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def _linear_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def extra_repr(self) -> str:
        return self._linear_repr()


class BinaryDropoutLinear(NoisyLinear):
    """``nn.Linear`` after ``nn.Dropout(p)`` on its inputs: training keeps each input with ``1 - p``, scaled.

    Examples:
        >>> BinaryDropoutLinear(784, 300).eval()(torch.randn(2, 784)).shape
        torch.Size([2, 300])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"the dropout rate p must be in [0, 1), got {p}")
        self.p = p
        super().__init__(in_features, out_features, bias, device, dtype)

    def noisy_forward(self, x: Tensor) -> Tensor:
        return F.linear(F.dropout(x, self.p, training=True), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self._linear_repr()}, p={self.p}"


class _FixedRate(NoisyLinear):
    """Gaussian dropout at the fixed rate of binary dropout with ``p``: ``alpha = p / (1 - p)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        self.p = p
        self.alpha = _rate_to_alpha(p)
        super().__init__(in_features, out_features, bias, device, dtype)

    def extra_repr(self) -> str:
        return f"{self._linear_repr()}, p={self.p}, alpha={self.alpha:g}"


class GaussianDropoutLinearA(_FixedRate):
    """Gaussian dropout A (Srivastava et al. 2014): each input unit times ``N(1, alpha)``, fixed ``alpha``.

    One noise value per example and input unit, shared by all the weights leaving that unit.
    """

    def noisy_forward(self, x: Tensor) -> Tensor:
        return gaussian_dropout_a(x, self.weight, self.bias, self.alpha)


class GaussianDropoutLinearB(_FixedRate):
    """Gaussian dropout B (Wang & Manning 2013): independent ``N(w, alpha w^2)`` weights, fixed ``alpha``.

    Sampled by local reparameterization: each output is ``N(x W^T + b, alpha (x^2) (W^2)^T)``, independently.
    """

    def noisy_forward(self, x: Tensor) -> Tensor:
        return gaussian_dropout_b(x, self.weight, self.bias, self.alpha)


class _Learned(NoisyLinear):
    """A learned ``log_alpha`` of shape ``_alpha_shape()``, started at ``log(p / (1 - p))`` and capped."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                 max_alpha: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if max_alpha <= 0:
            raise ValueError(f"max_alpha must be positive, got {max_alpha}")
        if _rate_to_alpha(p) > max_alpha:
            raise ValueError(f"the initial alpha p / (1 - p) = {_rate_to_alpha(p):g} is above max_alpha={max_alpha}")
        self.p = p
        self.max_alpha = max_alpha
        super().__init__(in_features, out_features, bias, device, dtype)

    def _alpha_shape(self) -> tuple[int, ...]:
        return ()

    def _noise_count(self) -> int:
        """Noise variables per entry of ``log_alpha``: each carries one KL term."""
        raise NotImplementedError

    def _declare(self, factory: dict[str, Any]) -> None:
        self.log_alpha = nn.Parameter(torch.empty(self._alpha_shape(), **factory))

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation, and ``alpha = p / (1 - p)``."""
        super().reset_parameters()
        nn.init.constant_(self.log_alpha, math.log(_rate_to_alpha(self.p)))

    @property
    def alpha(self) -> Tensor:
        """The dropout rate in use: ``exp(log_alpha)`` capped at ``max_alpha``; differentiable."""
        return torch.exp(self.capped_log_alpha())

    def capped_log_alpha(self) -> Tensor:
        return cap_log_alpha(self.log_alpha, math.log(self.max_alpha))

    def kl(self) -> Tensor:
        """``sum(kl_kingma(log_alpha))`` over all noise variables of the layer, with the capped alpha."""
        return kl_kingma(self.capped_log_alpha()).sum() * self._noise_count()

    def extra_repr(self) -> str:
        return f"{self._linear_repr()}, p={self.p}, max_alpha={self.max_alpha:g}"


class VariationalDropoutLinearA(_Learned):
    """Variational dropout A: Gaussian dropout A with one learned ``alpha`` for the layer.

    Attributes:
        log_alpha: ``()``; the KL counts one term per input unit.
    """

    def _noise_count(self) -> int:
        return self.in_features

    def noisy_forward(self, x: Tensor) -> Tensor:
        return gaussian_dropout_a(x, self.weight, self.bias, self.alpha)


class VariationalDropoutLinearA2(_Learned):
    """Variational dropout A2: Gaussian dropout A with a learned ``alpha`` per input unit.

    Attributes:
        log_alpha: ``(in_features,)``; one KL term each.
    """

    def _alpha_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def _noise_count(self) -> int:
        return 1

    def noisy_forward(self, x: Tensor) -> Tensor:
        return gaussian_dropout_a(x, self.weight, self.bias, self.alpha)


class VariationalDropoutLinearB(_Learned):
    """Variational dropout B: Gaussian dropout B (independent weight noise) with one learned ``alpha``.

    Attributes:
        log_alpha: ``()``; the KL counts one term per weight.
    """

    def _noise_count(self) -> int:
        return self.in_features * self.out_features

    def noisy_forward(self, x: Tensor) -> Tensor:
        return gaussian_dropout_b(x, self.weight, self.bias, self.alpha)


# --- networks -----------------------------------------------------------------------------------------------------

_LAYER_FOR: dict[str, type[NoisyLinear]] = {
    "binary": BinaryDropoutLinear,
    "gaussian-a": GaussianDropoutLinearA,
    "gaussian-b": GaussianDropoutLinearB,
    "variational-a": VariationalDropoutLinearA,
    "variational-a2": VariationalDropoutLinearA2,
    "variational-b": VariationalDropoutLinearB,
}


def kingma_linear(variant: str, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A fully connected layer of ``variant`` (one of ``KINGMA_VARIANTS``); ``p`` sets the (initial) rate."""
    if variant == "none":
        return nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
    if variant not in _LAYER_FOR:
        raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(KINGMA_VARIANTS)}")
    return _LAYER_FOR[variant](in_features, out_features, bias, p=p, device=device, dtype=dtype)


def kingma_mlp(variant: str, width: int, depth: int = 3, in_features: int = 784, out_features: int = 10,
               p: float = 0.5, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> nn.Sequential:
    """The MLP of the paper's Figure 1: ``in -> width (x depth, ReLU) -> out``, every layer of ``variant``.

    The input is flattened first, so images ``(N, 1, 28, 28)`` go in as they are. Each layer's noise acts on its
    own inputs, the pixels included.

    Examples:
        >>> kingma_mlp("variational-b", 100)(torch.randn(5, 1, 28, 28)).shape
        torch.Size([5, 10])
    """
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
    sizes = [in_features, *[width] * depth, out_features]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(kingma_linear(variant, n_in, n_out, p=p, device=device, dtype=dtype))
        if i < depth:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kingma_kl_divergence(model: nn.Module) -> Tensor:
    """Sum of the ``kl()`` of all variant layers of ``model`` (0 if it has none or only fixed rates)."""
    terms = [module.kl() for module in model.modules() if isinstance(module, NoisyLinear)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
