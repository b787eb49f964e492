"""Sparse VD layers: shapes, modes, the swap from dense layers, repr, gradients."""

import pytest
import torch
from torch import nn

from vdcore import Conv2dSVD, LinearSVD, SVDConfig


def test_linear_shapes_and_repr():
    layer = LinearSVD(784, 300, threshold=2.5)
    assert layer(torch.randn(7, 784)).shape == (7, 300)
    assert layer.eval()(torch.randn(2, 5, 784)).shape == (2, 5, 300)
    assert repr(layer) == "LinearSVD(in_features=784, out_features=300, bias=True, threshold=2.5)"
    assert {n for n, _ in layer.named_parameters()} == {"theta", "log_sigma2", "bias"}


def test_eval_is_deterministic_and_training_is_noisy():
    layer = LinearSVD(20, 10, init_log_sigma2=-2.0)
    x = torch.randn(4, 20)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_eval_zeroes_weights_above_threshold():
    layer = LinearSVD(3, 2, bias=False).eval()
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        layer.log_sigma2.fill_(-20.0)
        layer.log_sigma2[0, 1] = 10.0  # log_alpha = 10 - log 4 > 3: dropped
    assert torch.equal(layer.mask(), torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    assert torch.equal(layer(torch.ones(1, 3)), torch.tensor([[4.0, 15.0]]))


def test_kl_is_a_positive_scalar_with_gradients():
    layer = LinearSVD(10, 5)
    kl = layer.kl()
    assert kl.ndim == 0 and float(kl.detach()) > 0
    kl.backward()
    assert layer.log_sigma2.grad is not None and layer.theta.grad is not None


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_from_dense_keeps_outputs_even_for_tiny_weights(scale):
    torch.manual_seed(0)
    dense = nn.Linear(30, 8)
    with torch.no_grad():
        dense.weight.mul_(scale)
    layer = LinearSVD.from_dense(dense, SVDConfig()).eval()
    x = torch.randn(5, 30)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)
    assert bool(layer.mask().all())


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"stride": 2, "padding": 1},
        {"padding": 2, "dilation": 2},
        {"groups": 2, "bias": False},
        {"padding": "same"},
        {"kernel_size": (3, 1), "stride": (1, 2)},
    ],
)
def test_conv_matches_nn_conv2d(kwargs):
    torch.manual_seed(0)
    kwargs = {"kernel_size": 3} | kwargs
    dense = nn.Conv2d(4, 6, **kwargs)
    layer = Conv2dSVD.from_dense(dense).eval()
    x = torch.randn(2, 4, 9, 9)
    assert torch.allclose(layer(x), dense(x), atol=1e-5)
    assert layer.train()(x).shape == dense(x).shape
    assert isinstance(layer.to_dense(), nn.Conv2d)


def test_conv_repr_reads_like_nn_conv2d():
    layer = Conv2dSVD(1, 20, 5, padding=2, bias=False)
    assert repr(layer) == (
        "Conv2dSVD(1, 20, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), bias=False, threshold=3.0)"
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="groups"):
        Conv2dSVD(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding"):
        Conv2dSVD(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="zero padding"):
        Conv2dSVD.from_dense(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="threshold"):
        SVDConfig(threshold=9.0)


def test_weights_below_the_lower_clip_still_feel_the_kl():
    """A pretrained start sits at log_alpha = -clip; a plain clamp there would freeze those weights forever."""
    layer = LinearSVD(4, 3, log_alpha_clip=8.0)
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(layer.theta**2) - 12.0)  # log_alpha = -12, below the clip
    assert float(layer.log_alpha.detach().min()) == -8.0
    layer.kl().backward()
    assert bool((layer.log_sigma2.grad < 0).all()), "the KL must push log_sigma2 (so alpha) up"


def test_training_forward_gradients_reach_both_parameters():
    layer = Conv2dSVD(2, 3, 3, init_log_sigma2=-4.0)
    layer(torch.randn(2, 2, 6, 6)).sum().backward()
    assert float(layer.theta.grad.abs().sum()) > 0
    assert float(layer.log_sigma2.grad.abs().sum()) > 0


def test_dtype_and_device_arguments():
    layer = LinearSVD(3, 2, dtype=torch.float64, device="cpu")
    assert layer.theta.dtype == torch.float64
    assert layer.eval()(torch.randn(1, 3, dtype=torch.float64)).dtype == torch.float64
