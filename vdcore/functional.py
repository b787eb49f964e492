"""The math of Sparse Variational Dropout, stateless: layers hold parameters, this module holds formulas.

Each weight has the posterior ``q(w) = N(theta, sigma^2)`` with ``sigma^2 = exp(log_sigma2)`` (the additive
parameterization of Molchanov et al. 2017); the dropout rate is derived, ``alpha = sigma^2 / theta^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Coefficients of the KL approximation to the log-uniform prior (Molchanov et al. 2017, eq. 14).
K1, K2, K3 = 0.63576, 1.87320, 1.48695
# Keeps log(theta^2) finite for exact zeros; far below any weight that matters in float32.
THETA2_EPS = 1e-16
# Keeps the standard deviation differentiable where the variance is zero.
VAR_EPS = 1e-8


def log_alpha(theta: Tensor, log_sigma2: Tensor, clip: float) -> Tensor:
    """``log(sigma^2 / theta^2)`` clipped to ``[-clip, clip]``, so that huge alphas stop moving the KL."""
    return torch.clamp(log_sigma2 - torch.log(theta * theta + THETA2_EPS), -clip, clip)


def kl_approx(log_alpha: Tensor) -> Tensor:
    """Per-weight ``KL(q || log-uniform prior)``, approximated as in Molchanov et al. 2017.

    Positive, decreasing in alpha, and tends to 0 as ``log_alpha`` grows (the weight is dropped for free).
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def keep_mask(log_alpha: Tensor, threshold: float) -> Tensor:
    """1 for the weights kept at evaluation (``log_alpha <= threshold``), 0 for the dropped ones."""
    return (log_alpha <= threshold).to(log_alpha.dtype)


def noise_variance(theta: Tensor, log_alpha: Tensor) -> Tensor:
    """``alpha * theta^2`` from the clipped alpha, as in the published recipe.

    Equal to ``sigma^2`` where alpha is not clipped; where it is, the noise shrinks with the weight instead of
    staying large around a weight that is already gone.
    """
    return torch.exp(log_alpha) * theta * theta


def lrt_sample(mean: Tensor, var: Tensor) -> Tensor:
    """Local reparameterization: one Gaussian sample of each pre-activation, ``mean + sqrt(var) * N(0, 1)``."""
    return mean + torch.sqrt(var + VAR_EPS) * torch.randn_like(mean)


def linear_lrt(x: Tensor, weight_mean: Tensor, weight_var: Tensor, bias: Tensor | None) -> Tensor:
    """Sampled output of a linear layer with independent Gaussian weights; the bias adds no variance."""
    return lrt_sample(F.linear(x, weight_mean, bias), F.linear(x * x, weight_var))


def conv2d_lrt(
    x: Tensor,
    weight_mean: Tensor,
    weight_var: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """Sampled output of a 2-d convolution with independent Gaussian weights."""
    mean = F.conv2d(x, weight_mean, bias, stride, padding, dilation, groups)
    var = F.conv2d(x * x, weight_var, None, stride, padding, dilation, groups)
    return lrt_sample(mean, var)
