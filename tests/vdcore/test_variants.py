"""The Kingma et al. 2015 dropout variants: moments of the noisy forward, eval, the KL, the alpha cap, training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vdcore import (
    KINGMA_VARIANTS,
    BinaryDropoutLinear,
    GaussianDropoutLinearA,
    GaussianDropoutLinearB,
    NoisyLinear,
    VariationalDropoutLinearA,
    VariationalDropoutLinearA2,
    VariationalDropoutLinearB,
    cap_log_alpha,
    kingma_kl_divergence,
    kingma_linear,
    kingma_mlp,
    kl_kingma,
)
from vdcore.data import load_digits

NOISY = [
    BinaryDropoutLinear,
    GaussianDropoutLinearA,
    GaussianDropoutLinearB,
    VariationalDropoutLinearA,
    VariationalDropoutLinearA2,
    VariationalDropoutLinearB,
]
LEARNED = [VariationalDropoutLinearA, VariationalDropoutLinearA2, VariationalDropoutLinearB]

WEIGHT = torch.tensor([[1.0, 2.0, -1.0, 0.5], [1.5, 1.0, -0.5, 1.0], [0.5, -1.0, 2.0, 1.0]])
BIAS = torch.tensor([0.1, -0.2, 0.3])
X = torch.tensor([1.0, -2.0, 0.5, 1.5])


pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(cls, **kwargs):
    layer = cls(4, 3, **kwargs)
    with torch.no_grad():
        layer.weight.copy_(WEIGHT)
        layer.bias.copy_(BIAS)
    return layer


def _samples(layer, n=200_000):
    torch.manual_seed(0)
    with torch.no_grad():
        return layer.train()(X.expand(n, 4)).double()


def _check_moments(samples, alpha, correlated):
    """Sample mean and covariance against ``x W^T + b`` and ``W diag(alpha x^2) W^T`` (only its diagonal if B)."""
    w, x, alpha = WEIGHT.double(), X.double(), torch.as_tensor(alpha, dtype=torch.float64)
    mean = w @ x + BIAS.double()
    cov = w @ torch.diag(alpha * x * x) @ w.T if correlated else torch.diag((alpha * x * x) @ (w * w).T)
    scale = torch.sqrt(torch.outer(cov.diagonal(), cov.diagonal()))
    n = len(samples)
    assert torch.all((samples.mean(0) - mean).abs() < 5 * torch.sqrt(cov.diagonal() / n))
    assert torch.all((torch.cov(samples.T) - cov).abs() < 0.03 * scale)
    return cov, scale


@pytest.mark.parametrize("cls", [BinaryDropoutLinear, GaussianDropoutLinearA])
def test_fixed_rate_unit_noise_matches_the_formulas(cls):
    # Binary dropout has the moments of Gaussian dropout A at alpha = p / (1 - p): the paper's starting point.
    samples = _samples(_layer(cls, p=0.4))
    cov, scale = _check_moments(samples, 0.4 / 0.6, correlated=True)
    assert cov[0, 1].abs() > 0.3 * scale[0, 1]  # the shared input noise correlates the outputs


def test_gaussian_b_has_independent_outputs_with_the_lrt_variance():
    _check_moments(_samples(_layer(GaussianDropoutLinearB, p=0.4)), 0.4 / 0.6, correlated=False)


@pytest.mark.parametrize(
    ("cls", "log_alpha", "correlated"),
    [
        (VariationalDropoutLinearA, math.log(0.3), True),
        (VariationalDropoutLinearA2, [math.log(a) for a in (0.1, 0.5, 1.0, 0.25)], True),
        (VariationalDropoutLinearB, math.log(0.3), False),
    ],
)
def test_learned_rate_noise_matches_the_formulas(cls, log_alpha, correlated):
    layer = _layer(cls)
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor(log_alpha))
    _check_moments(_samples(layer), torch.tensor(log_alpha).exp(), correlated)


@pytest.mark.parametrize("cls", NOISY)
def test_eval_is_deterministic_and_equals_the_plain_linear(cls):
    torch.manual_seed(0)
    layer = cls(20, 7).eval()
    x = torch.randn(2, 5, 20)
    out = layer(x)
    assert out.shape == (2, 5, 7)
    assert torch.equal(out, layer(x))
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    assert not torch.equal(layer.train()(x), layer(x))


@pytest.mark.parametrize("cls", NOISY)
def test_from_dense_keeps_the_weights_and_the_eval_outputs(cls):
    dense = nn.Linear(6, 4)
    layer = cls.from_dense(dense).eval()
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), dense(x))
    expected = {"weight", "bias", "log_alpha"} if cls in LEARNED else {"weight", "bias"}
    assert set(layer.state_dict()) == expected


def test_repr_shows_the_hyperparameters():
    assert repr(BinaryDropoutLinear(784, 300)) == (
        "BinaryDropoutLinear(in_features=784, out_features=300, bias=True, p=0.5)"
    )
    assert repr(GaussianDropoutLinearB(5, 2, bias=False, p=0.2)) == (
        "GaussianDropoutLinearB(in_features=5, out_features=2, bias=False, p=0.2, alpha=0.25)"
    )
    assert repr(VariationalDropoutLinearA2(5, 2)) == (
        "VariationalDropoutLinearA2(in_features=5, out_features=2, bias=True, p=0.5, max_alpha=1)"
    )


def test_kl_is_the_polynomial_and_falls_as_alpha_grows():
    log_alpha = torch.linspace(-8.0, 0.0, 81, dtype=torch.float64, requires_grad=True)
    alpha = log_alpha.detach().exp()
    expected = -(0.5 * log_alpha.detach() + 1.16145124 * alpha - 1.50204118 * alpha**2 + 0.58629921 * alpha**3)
    kl = kl_kingma(log_alpha)
    assert torch.allclose(kl.detach(), expected, rtol=0, atol=1e-12)
    kl.sum().backward()
    assert bool((log_alpha.grad < 0).all())  # the KL alone always asks for more noise, up to the cap


@pytest.mark.parametrize(("cls", "count"), [
    (VariationalDropoutLinearA, 6), (VariationalDropoutLinearA2, 1), (VariationalDropoutLinearB, 6 * 4),
])
def test_layer_kl_has_one_term_per_noise_variable(cls, count):
    layer = cls(6, 4, p=0.2)
    assert torch.allclose(layer.kl(), count * kl_kingma(layer.log_alpha.detach()).sum())
    assert torch.equal(VariationalDropoutLinearA2(6, 4).kl(), VariationalDropoutLinearA(6, 4).kl())


def test_fixed_rates_have_no_kl_and_models_sum_theirs():
    assert float(GaussianDropoutLinearA(6, 4).kl()) == 0.0
    model = kingma_mlp("variational-b", 5, in_features=6, out_features=3)
    layers = [m for m in model if isinstance(m, NoisyLinear)]
    assert torch.allclose(kingma_kl_divergence(model), sum(layer.kl() for layer in layers))
    assert float(kingma_kl_divergence(kingma_mlp("none", 5))) == 0.0


@pytest.mark.parametrize("cls", LEARNED)
def test_learned_alphas_get_gradients_from_the_data_and_the_kl(cls):
    torch.manual_seed(0)
    layer = cls(8, 3, p=0.2)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    F.cross_entropy(layer(x), y).backward()
    data_grad = layer.log_alpha.grad.clone()
    assert torch.isfinite(data_grad).all() and bool((data_grad != 0).all())
    layer.zero_grad()
    layer.kl().backward()
    assert bool((layer.log_alpha.grad < 0).all())


@pytest.mark.parametrize("cls", LEARNED)
def test_alpha_is_capped_at_one(cls):
    layer = cls(8, 3)  # p = 0.5 starts at the cap, alpha = 1
    assert torch.allclose(layer.alpha, torch.ones(()))
    layer.kl().backward()  # the KL pushes outward: stopped at the cap
    assert bool((layer.log_alpha.grad == 0).all())
    with torch.no_grad():
        layer.log_alpha.fill_(0.7)
    assert bool((layer.alpha <= 1.0).all())
    layer.zero_grad()
    layer.alpha.sum().backward()  # a gradient that lowers alpha passes, even from above the cap
    assert bool((layer.log_alpha.grad > 0).all())


def test_kl_alone_drives_alpha_to_the_cap_and_no_further():
    layer = VariationalDropoutLinearB(8, 3, p=0.1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        layer.kl().backward()
        optimizer.step()
    assert float(layer.alpha.detach()) == pytest.approx(1.0)
    assert float(layer.log_alpha.detach()) < 0.2  # it stopped one step (about 0.12 here) past the cap


def test_cap_log_alpha_passes_gradients_below_the_cap():
    log_alpha = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    capped = cap_log_alpha(log_alpha, 0.0)
    assert capped.tolist() == [-1.0, 0.0, 0.0]
    capped.backward(torch.tensor([-1.0, -1.0, -1.0]))
    assert log_alpha.grad.tolist() == [-1.0, 0.0, 0.0]


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="max_alpha"):
        VariationalDropoutLinearA(4, 2, p=0.6)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GaussianDropoutLinearA(4, 2, p=0.0)
    with pytest.raises(ValueError, match="unknown variant"):
        kingma_linear("dropconnect", 4, 2)


def test_mlp_has_the_papers_shape():
    model = kingma_mlp("variational-a2", 100)
    linears = [m for m in model if isinstance(m, nn.Linear | NoisyLinear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 100), (100, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == 3
    assert all(type(m) is VariationalDropoutLinearA2 for m in linears)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert all(type(m) is nn.Linear for m in kingma_mlp("none", 10) if not isinstance(m, nn.Flatten | nn.ReLU))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("variant", KINGMA_VARIANTS)
def test_a_few_epochs_on_digits_learn(variant, digits):
    torch.manual_seed(0)
    model = kingma_mlp(variant, 64, in_features=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = digits.train
    start = [p.detach().clone() for n, p in model.named_parameters() if n.endswith("log_alpha")]
    for _ in range(6):
        model.train()
        for idx in torch.randperm(len(x)).split(50):
            loss = F.cross_entropy(model(x[idx]), y[idx]) + kingma_kl_divergence(model) / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert math.isfinite(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        accuracy = float((model(digits.x_val).argmax(1) == digits.y_val).float().mean())
    assert accuracy > 0.6, accuracy  # chance is 0.1; noise on the 64 pixels at p = 0.5 costs the A variants
    end = [p for n, p in model.named_parameters() if n.endswith("log_alpha")]
    assert all(not torch.equal(a, b) for a, b in zip(start, end, strict=True))
    assert all(bool((torch.exp(cap_log_alpha(b, 0.0)) <= 1).all()) for b in end)
