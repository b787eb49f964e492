"""Per-weight rates and unit scales in one layer (SVDConfig(granularity="weight+unit")): compression and speed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vdcore
from vdcore import Conv2dScaledSVD, LinearScaledSVD, LinearSVD, SVDConfig
from vdcore import functional as VF
from vdcore.data import load_digits
from vdcore.export import onnx_session

BOTH = SVDConfig(granularity="weight+unit")


pytestmark = pytest.mark.usefixtures("one_thread")


def cnn() -> nn.Sequential:
    """Input (1, 12, 12): conv 10x10, batch norm, maxpool 5x5, conv 3x3, so 9 features per channel."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(72, 10),
    )
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.uniform_(0.1, 0.3)  # a dropped filter becomes a nonzero constant after the batch norm
    return net.eval()


def test_swap_keeps_outputs_and_the_kl_sums_weights_and_units():
    model = cnn()
    x = torch.randn(4, 1, 12, 12)
    before = model(x)
    vdcore.sparsify_(model, BOTH)
    assert [type(layer) for _, layer in vdcore.svd_layers(model)] == [Conv2dScaledSVD, Conv2dScaledSVD, LinearSVD]
    torch.testing.assert_close(model.eval()(x), before, atol=1e-5, rtol=0)
    conv = model[0]
    assert {n for n, _ in conv.named_parameters()} == {"theta", "log_sigma2", "bias", "unit_theta", "unit_log_sigma2"}
    weights = VF.kl_approx(conv.log_alpha).sum()
    units = VF.kl_approx(conv.unit_log_alpha).sum() * 9**0.5  # fan-in 1 x 3 x 3
    torch.testing.assert_close(conv.kl(), weights + units)
    assert SVDConfig.from_dict(BOTH.to_dict()) == BOTH


@torch.no_grad()
def test_training_output_is_the_sampled_pre_activation_times_an_independent_unit_scale():
    """``P ~ N(mu, v)`` (local reparameterization) times ``S ~ N(m, s^2)``: mean ``mu m``, variance
    ``v (m^2 + s^2) + mu^2 s^2``."""
    torch.manual_seed(0)
    layer = LinearScaledSVD(6, 3)
    layer.log_sigma2.copy_(torch.log(layer.theta**2) - 1.0)  # every weight at alpha = e^-1
    layer.unit_theta.copy_(torch.tensor([1.0, 0.5, 2.0]))
    layer.unit_log_sigma2.copy_(torch.tensor([-2.0, -1.0, 0.0]))
    x = torch.randn(1, 6)
    out = layer.train()(x.expand(200_000, 6))
    mu = torch.nn.functional.linear(x, layer.theta, layer.bias)[0]
    v = torch.nn.functional.linear(x**2, layer.theta**2 * torch.exp(torch.tensor(-1.0)))[0]
    m, s2 = layer.unit_theta, layer.unit_log_sigma2.exp()
    torch.testing.assert_close(out.mean(0), mu * m, atol=0.03, rtol=0)
    torch.testing.assert_close(out.var(0), v * (m**2 + s2) + mu**2 * s2, rtol=0.03, atol=1e-6)
    torch.testing.assert_close(layer.eval()(x)[0], mu * m)


@torch.no_grad()
def test_dropped_weights_and_dropped_units_both_go_and_shrink_and_onnx_agree(tmp_path):
    model = vdcore.sparsify_(cnn(), BOTH)
    conv1, conv2, _ = (layer for _, layer in vdcore.svd_layers(model))
    conv1.unit_log_sigma2[[1, 4]] = 20.0  # whole filters
    conv2.unit_log_sigma2[[0, 3, 7]] = 20.0
    conv2.unit_theta[1] = 0.5  # a kept filter's scale is folded into its row
    conv2.log_sigma2[2, :, 0, 0] = 20.0  # single weights
    assert int(conv1.mask().sum()) == 4 * 9 and int(conv2.mask().sum()) == 5 * 54 - 6
    pruned = vdcore.prune(model)
    assert bool((pruned[0].weight[[1, 4]] == 0).all()) and bool((pruned[0].bias[[1, 4]] == 0).all())
    x = torch.randn(6, 1, 12, 12)
    torch.testing.assert_close(pruned(x), model.eval()(x), atol=1e-5, rtol=0)
    small = vdcore.shrink(pruned, x[:1])
    torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=0)
    assert vdcore.layer_widths(small) == [4, 5, 10]
    result = vdcore.export_onnx(small, tmp_path / "small.onnx", x[:1])
    got = onnx_session(result.path).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=0)


def test_a_short_run_on_digits_compresses_and_removes_whole_units():
    data = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fast = {"batch_size": 50, "lr": 1e-2, "device": "cpu"}
    vdcore.train(model, data.train, None, vdcore.TrainConfig(epochs=5, **fast))
    dense_accuracy = vdcore.evaluate(model, data.val)
    vdcore.sparsify_(model, BOTH)
    vdcore.train(model, data.train, None, vdcore.TrainConfig(epochs=10, **fast))
    small = vdcore.shrink(model, data.x[:1])
    assert vdcore.sparsity_report(model).compression > 3
    assert sum(vdcore.layer_widths(small)) < sum(vdcore.layer_widths(model)), "whole units must be removed"
    assert vdcore.evaluate(small, data.val) >= dense_accuracy - 0.03
