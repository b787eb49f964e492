"""The method's math against independent references."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from vdcore import functional as VF


def kl_reference(log_alpha: float) -> float:
    """KL(N(theta, alpha theta^2) || log-uniform) by quadrature: -0.5 log a + E log|1 + sqrt(a) z| + (g + log 2)/2.

    The constant makes the KL vanish as alpha grows, as in Molchanov et al. 2017, eq. 8.
    """
    s = math.exp(0.5 * log_alpha)

    def integrand(z: float) -> float:
        return math.log(abs(1 + s * z) + 1e-300) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    singular = -1 / s  # log|1 + s z| -> -inf there; integrable, and quad handles it best at an endpoint
    left, _ = integrate.quad(integrand, -60, singular, limit=500)
    right, _ = integrate.quad(integrand, singular, 60, limit=500)
    expected_log = left + right
    return -0.5 * log_alpha + expected_log + (np.euler_gamma + math.log(2)) / 2


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # the endpoint log singularity
@pytest.mark.parametrize("log_alpha", [-6.0, -3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0])
def test_kl_approximation_matches_numerical_reference(log_alpha):
    approx = float(VF.kl_approx(torch.tensor(log_alpha, dtype=torch.float64)))
    assert approx == pytest.approx(kl_reference(log_alpha), abs=0.01)


def test_kl_vanishes_as_alpha_grows_and_decreases():
    log_alpha = torch.linspace(-8, 30, 200, dtype=torch.float64)
    kl = VF.kl_approx(log_alpha)
    assert float(kl[-1]) == pytest.approx(0.0, abs=1e-6)
    assert bool((kl[1:] <= kl[:-1]).all()), "the KL must fall as the dropout rate grows"
    assert bool((kl >= -1e-6).all())


def test_log_alpha_is_clipped_and_finite_for_zero_weights():
    theta = torch.tensor([0.0, 1e-3, 1.0])
    log_alpha = VF.log_alpha(theta, torch.full((3,), -10.0), clip=8.0)
    assert torch.isfinite(log_alpha).all()
    assert log_alpha[0] == 8.0 and log_alpha[2] == -8.0
    assert float(log_alpha[1]) == pytest.approx(-10 - math.log(1e-6), abs=1e-4)


def _weights(out_features=3, in_features=5):
    torch.manual_seed(0)
    theta = torch.randn(out_features, in_features, dtype=torch.float64)
    var = torch.rand(out_features, in_features, dtype=torch.float64) * 0.3 + 0.05
    return theta, var


def test_linear_local_reparameterization_matches_explicit_weight_sampling():
    theta, var = _weights()
    bias = torch.randn(3, dtype=torch.float64)
    x = torch.randn(1, 5, dtype=torch.float64)
    samples = 200_000
    torch.manual_seed(1)
    lrt = VF.linear_lrt(x.expand(samples, 5), theta, var, bias)
    weights = theta + var.sqrt() * torch.randn(samples, 3, 5, dtype=torch.float64)
    explicit = torch.einsum("i,soi->so", x[0], weights) + bias

    mean, variance = x @ theta.T + bias, (x * x) @ var.T
    for got in (lrt, explicit):
        assert torch.allclose(got.mean(0), mean[0], atol=0.02)
        assert torch.allclose(got.var(0), variance[0] + VF.VAR_EPS * (got is lrt), rtol=0.03)


def test_conv_local_reparameterization_matches_explicit_weight_sampling():
    torch.manual_seed(0)
    theta = torch.randn(2, 3, 3, 3, dtype=torch.float64) * 0.5
    var = torch.rand(2, 3, 3, 3, dtype=torch.float64) * 0.1 + 0.01
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    samples = 40_000
    torch.manual_seed(2)
    lrt = VF.conv2d_lrt(x.expand(samples, -1, -1, -1), theta, var, None, (1, 1), (1, 1), (1, 1), 1)
    weights = theta + var.sqrt() * torch.randn(samples, *theta.shape, dtype=torch.float64)
    patches = torch.nn.functional.unfold(x, 3, padding=1)[0]  # (27, 25)
    explicit = torch.einsum("sok,kp->sop", weights.reshape(samples, 2, 27), patches).reshape(samples, 2, 5, 5)

    mean = torch.nn.functional.conv2d(x, theta, padding=1)[0]
    variance = torch.nn.functional.conv2d(x * x, var, padding=1)[0]
    for got in (lrt, explicit):
        assert torch.allclose(got.mean(0), mean, atol=0.03)
        assert torch.allclose(got.var(0), variance, rtol=0.05, atol=1e-3)


def test_noise_variance_is_sigma2_where_alpha_is_not_clipped():
    theta = torch.tensor([0.5, -0.2], dtype=torch.float64)
    log_sigma2 = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    variance = VF.noise_variance(theta, VF.log_alpha(theta, log_sigma2, clip=8.0))
    assert torch.allclose(variance, log_sigma2.exp())
