"""Unit dropout (SVDConfig(granularity="unit")): one rate per unit or filter, whole units pruned and shrunk away."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import vdcore
from vdcore import Conv2dSVD, Conv2dUnitSVD, LinearSVD, LinearUnitSVD, SVDConfig, UnitSVDLayer
from vdcore import functional as VF
from vdcore.data import load_digits
from vdcore.export import onnx_session

UNITS = SVDConfig(granularity="unit")


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10))


def cnn(batchnorm: bool = False) -> nn.Sequential:
    """Input (1, 12, 12): conv 10x10, maxpool 5x5, conv 3x3, so 9 features per channel after the flatten."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(6)] if batchnorm else []
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3), *norm, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(72, 10),
    )
    if batchnorm:
        with torch.no_grad():
            bn = net[1]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.1, 0.3)  # a dropped filter becomes a nonzero constant after the batch norm
    return net.eval()


def unit_layers(model: nn.Module) -> list[UnitSVDLayer]:
    return [layer for _, layer in vdcore.svd_layers(model) if isinstance(layer, UnitSVDLayer)]


@torch.no_grad()
def set_log_alpha(layer: UnitSVDLayer, log_alpha: torch.Tensor) -> None:
    """Scale 1 and variance ``exp(log_alpha)`` for every unit."""
    layer.unit_theta.fill_(1.0)
    layer.unit_log_sigma2.copy_(log_alpha)


@torch.no_grad()
def drop(layer: UnitSVDLayer, units: list[int]) -> None:
    layer.unit_log_sigma2[units] = 20.0  # log_alpha clipped to 8, above the threshold 3


def assert_same_outputs(expected: nn.Module, got: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(got.eval()(x), expected.eval()(x), atol=1e-4, rtol=0)


def test_layers_have_one_log_alpha_per_unit_and_read_as_specs():
    linear = LinearUnitSVD(784, 300, threshold=2.5)
    assert repr(linear) == "LinearUnitSVD(in_features=784, out_features=300, bias=True, threshold=2.5)"
    assert {n for n, _ in linear.named_parameters()} == {"theta", "unit_theta", "unit_log_sigma2", "bias"}
    assert linear.log_alpha.shape == (300,) and linear.mask().shape == (300, 784)
    assert linear(torch.randn(7, 784)).shape == (7, 300)
    assert linear.eval()(torch.randn(2, 5, 784)).shape == (2, 5, 300)
    conv = Conv2dUnitSVD(1, 20, 5, padding=2, bias=False)
    assert repr(conv) == (
        "Conv2dUnitSVD(1, 20, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), bias=False, threshold=3.0)"
    )
    assert conv.log_alpha.shape == (20,) and conv(torch.randn(2, 1, 8, 8)).shape == (2, 20, 8, 8)
    with pytest.raises(ValueError, match="groups"):
        Conv2dUnitSVD(3, 4, 3, groups=2)
    with pytest.raises(NotImplementedError, match="samples its units"):
        linear.weight_moments()


@pytest.mark.parametrize(("make", "shape"), [(mlp, (1, 8, 8)), (cnn, (1, 12, 12))])
def test_swap_keeps_outputs_and_leaves_the_classifier_per_weight(make, shape):
    model = make().eval()
    x = torch.randn(5, *shape)
    before = model(x)
    assert vdcore.sparsify_(model, UNITS) is model
    kinds = [type(layer) for _, layer in vdcore.svd_layers(model)]
    hidden = LinearUnitSVD if make is mlp else Conv2dUnitSVD
    assert kinds == [hidden, hidden, LinearSVD]
    torch.testing.assert_close(model.eval()(x), before, atol=1e-5, rtol=0)
    assert all(bool((layer.log_alpha == UNITS.init_log_alpha).all()) for layer in unit_layers(model))


def test_classifier_rule_for_a_bare_layer_a_filter_and_a_second_call():
    assert type(vdcore.sparsify_(nn.Linear(3, 2), UNITS)) is LinearSVD  # a lone layer is the output layer
    assert type(vdcore.sparsify_(nn.Conv2d(3, 2, 1), UNITS)) is Conv2dSVD
    model = vdcore.sparsify_(mlp(), UNITS, filter_fn=lambda module, fqn: fqn != "5")
    assert [type(layer) for _, layer in vdcore.svd_layers(model)] == [LinearUnitSVD, LinearUnitSVD]
    assert type(model[5]) is nn.Linear
    vdcore.sparsify_(model, UNITS)  # the classifier is still the output layer when swapped on its own later
    assert type(model[5]) is LinearSVD
    with pytest.raises(ValueError, match="granularity"):
        SVDConfig(granularity="filter")  # type: ignore[arg-type]
    assert SVDConfig.from_dict(UNITS.to_dict()) == UNITS


def _monte_carlo(layer: UnitSVDLayer, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample mean and variance of the training output for one input, and the deterministic pre-activation."""
    layer.train()
    with torch.no_grad():
        out = layer(x.expand(samples, *x.shape[1:]))
        pre = layer.eval()(x)  # every unit kept: the eval output is x . w + b
    return out.mean(0, keepdim=True), out.var(0, keepdim=True), pre


def test_linear_training_output_has_the_formula_mean_and_variance():
    torch.manual_seed(0)
    layer = LinearUnitSVD(6, 5)
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])
    set_log_alpha(layer, log_alpha)
    x = torch.randn(1, 6)
    mean, var, pre = _monte_carlo(layer, x, samples=200_000)
    alpha = log_alpha.exp()
    # The sample mean's standard error is sqrt(alpha / n) |pre|; the variance's relative one sqrt(2 / n).
    torch.testing.assert_close(mean, pre, atol=float(5 * (alpha / 200_000).sqrt().max() * pre.abs().max()), rtol=0)
    torch.testing.assert_close(var, alpha * pre**2, rtol=0.03, atol=1e-6)


def test_conv_training_output_has_the_formula_moments_and_one_noise_per_feature_map():
    torch.manual_seed(0)
    layer = Conv2dUnitSVD(2, 3, 3, padding=1)
    log_alpha = torch.tensor([-2.0, 0.0, 1.0])
    set_log_alpha(layer, log_alpha)
    with torch.no_grad():
        layer.bias.fill_(0.5)  # keep every pre-activation away from 0 so that ratios are well defined
    x = torch.rand(1, 2, 4, 4)
    mean, var, pre = _monte_carlo(layer, x, samples=100_000)
    alpha = log_alpha.exp().view(3, 1, 1)
    torch.testing.assert_close(mean, pre, atol=0.05 * float(pre.abs().max()), rtol=0)
    torch.testing.assert_close(var, alpha * pre**2, rtol=0.03, atol=1e-6)
    with torch.no_grad():
        out = layer.train()(x.expand(4, -1, -1, -1))
    z = (out * pre).sum(dim=(2, 3), keepdim=True) / (pre * pre).sum(dim=(2, 3), keepdim=True)  # per map
    torch.testing.assert_close(out, z * pre, rtol=0, atol=1e-5)  # one noise factor scales the whole map
    assert not torch.allclose(z[0], z[1]), "each example draws its own noise"


def test_a_unit_above_the_threshold_has_zero_mean_in_training_and_outputs_zero_in_eval():
    torch.manual_seed(0)
    layer = LinearUnitSVD(4, 3)
    set_log_alpha(layer, torch.tensor([-8.0, 4.0, -8.0]))
    x = torch.randn(1, 4)
    mean, var, _ = _monte_carlo(layer, x, samples=200_000)
    pre = torch.nn.functional.linear(x, layer.theta, layer.bias)
    pre = pre.detach()
    assert abs(float(mean[0, 1])) < 5 * math.exp(2.0) * float(pre[0, 1].abs()) / math.sqrt(200_000)
    assert float(var[0, 1]) == pytest.approx(math.exp(4.0) * float(pre[0, 1]) ** 2, rel=0.03)
    out = layer.eval()(torch.randn(6, 4))
    assert bool((out[:, 1] == 0).all()) and bool((out[:, [0, 2]] != 0).all())
    assert torch.equal(layer.unit_mask(), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(layer.mask(), torch.tensor([1.0, 0.0, 1.0]).view(3, 1).expand(3, 4))
    dense = layer.to_dense()
    assert bool((dense.weight[1] == 0).all()) and bool(dense.bias[1] == 0)
    assert vdcore.sparsity_report(layer).nonzero == 8


def test_kl_is_one_kl_approx_term_per_unit_weighted_by_fan_in_and_pushes_alpha_up_even_below_the_clip():
    layer = Conv2dUnitSVD(16, 5, 3)  # fan-in 144, 5 units: each term counts sqrt(144) = 12 times
    expected = 12 * 5 * VF.kl_approx(torch.tensor(-8.0))
    torch.testing.assert_close(layer.kl(), expected)
    set_log_alpha(layer, torch.tensor([-12.0, -3.0, 0.0, 3.5, 30.0]))
    clipped = torch.tensor([-8.0, -3.0, 0.0, 3.5, 8.0])
    assert torch.equal(layer.log_alpha.detach(), clipped)
    torch.testing.assert_close(layer.kl(), 12 * VF.kl_approx(clipped).sum())
    plain = Conv2dUnitSVD.from_dense(nn.Conv2d(16, 5, 3), SVDConfig(granularity="unit", unit_kl_exponent=0.0))
    torch.testing.assert_close(plain.kl(), 5 * VF.kl_approx(torch.tensor(-8.0)))
    model = nn.Sequential(layer, nn.Flatten(), LinearSVD(5, 2))
    torch.testing.assert_close(vdcore.kl_divergence(model), layer.kl() + model[2].kl())
    layer.kl().backward()
    grad = layer.unit_log_sigma2.grad
    assert bool((grad[:4] < 0).all()), "the KL must push every unclipped log_alpha up, the lower clip included"
    assert float(grad[4]) == 0.0
    assert bool((layer.unit_theta.grad[:4] > 0).all()), "and shrink the scales of those units"
    with pytest.raises(ValueError, match="unit_kl_exponent"):
        SVDConfig(granularity="unit", unit_kl_exponent=2.0)


def test_a_filters_kl_counts_its_multiply_adds_once_a_training_forward_saw_its_feature_map():
    layer = Conv2dUnitSVD(4, 3, 3, kl_exponent=0.5)  # fan-in 36
    before = layer.kl()
    layer.train()(torch.randn(2, 4, 8, 8))  # 6 x 6 outputs per filter
    assert layer.unit_positions == 36 and layer.unit_cost() == 36 * 36
    torch.testing.assert_close(layer.kl(), before * 6)  # sqrt(36 * 36) against sqrt(36)
    linear = LinearUnitSVD(9, 2, kl_exponent=0.5)
    linear.train()(torch.randn(5, 9))
    assert linear.unit_cost() == 9


@torch.no_grad()
def test_a_kept_units_scale_is_folded_into_its_row_and_bias():
    layer = LinearUnitSVD(4, 3)
    layer.unit_theta.copy_(torch.tensor([0.5, 2.0, -1.0]))
    x = torch.randn(6, 4)
    expected = torch.nn.functional.linear(x, layer.theta, layer.bias) * layer.unit_theta
    torch.testing.assert_close(layer.eval()(x), expected)
    torch.testing.assert_close(layer.to_dense()(x), expected)


def test_a_short_run_on_digits_prunes_whole_units_and_keeps_accuracy():
    data = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fast = {"batch_size": 50, "lr": 1e-2, "device": "cpu"}
    vdcore.train(model, data.train, None, vdcore.TrainConfig(epochs=5, **fast))
    dense_accuracy = vdcore.evaluate(model, data.val)
    vdcore.sparsify_(model, UNITS)
    history = vdcore.train(model, data.train, None, vdcore.TrainConfig(epochs=10, **fast))
    small = vdcore.shrink(model, data.x[:1])
    assert_same_outputs(vdcore.prune(model), small, data.x_val)
    assert vdcore.layer_widths(small)[-1] == 10
    assert sum(vdcore.layer_widths(small)) < sum(vdcore.layer_widths(model)), "whole units must be removed"
    assert vdcore.evaluate(small, data.val) >= dense_accuracy - 0.03
    assert history[-1].kl > 0
    for layer in unit_layers(model):  # the KL moved every unit's rate up from the start, none is left behind
        assert float(layer.log_alpha.detach().mean()) > UNITS.init_log_alpha + 1


@torch.no_grad()
def test_pruned_mlp_and_shrunk_mlp_agree_and_dropped_units_are_gone():
    model = vdcore.sparsify_(mlp(), UNITS)
    first, second, classifier = (layer for _, layer in vdcore.svd_layers(model))
    drop(first, [0, 5, 6, 23])
    drop(second, [2, 3])
    classifier.log_sigma2[:, 7] = 20.0  # the classifier stops reading unit 7 of the second layer
    pruned = vdcore.prune(model)
    assert bool((pruned[1].weight[[0, 5, 6, 23]] == 0).all()) and bool((pruned[1].bias[[0, 5, 6, 23]] == 0).all())
    x = torch.randn(9, 1, 8, 8)
    small = vdcore.shrink(pruned, x[:1])
    assert_same_outputs(pruned, small, x)
    assert_same_outputs(model, small, x)
    assert vdcore.layer_widths(small) == [20, 13, 10]
    assert vdcore.layer_widths(vdcore.shrink(model, x[:1])) == [20, 13, 10]  # shrink prunes a sparsified model


@pytest.mark.parametrize("batchnorm", [False, True])
@torch.no_grad()
def test_pruned_cnn_and_shrunk_cnn_agree_and_dropped_filters_are_gone(batchnorm, tmp_path):
    model = vdcore.sparsify_(cnn(batchnorm), UNITS)
    conv1, conv2, _ = (layer for _, layer in vdcore.svd_layers(model))
    drop(conv1, [1, 4])  # zero -> ReLU -> maxpool: 0 read by conv2, or a constant after the batch norm, folded
    drop(conv2, [0, 3, 7])  # zero -> ReLU -> flatten: 9 columns of the classifier each
    x = torch.randn(6, 1, 12, 12)
    pruned = vdcore.prune(model)
    small = vdcore.shrink(pruned, x[:1])
    assert_same_outputs(pruned, small, x)
    assert vdcore.layer_widths(small) == [4, 5, 10]
    assert [tuple(m.weight.shape) for m in small if isinstance(m, nn.Conv2d | nn.Linear)] == [
        (4, 1, 3, 3), (5, 4, 3, 3), (10, 45)
    ]
    if not batchnorm:
        return  # one ONNX export is enough: the exporter is the slow part
    result = vdcore.export_onnx(small, tmp_path / "small.onnx", x[:1])
    assert result.max_abs_diff <= 1e-4
    got = onnx_session(result.path).run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), atol=1e-4, rtol=0)


def test_state_dict_round_trip_copy_and_training_forward_in_a_copy():
    model = vdcore.sparsify_(cnn(), UNITS)
    drop(unit_layers(model)[0], [2])
    clone = vdcore.sparsify_(cnn(), UNITS)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 12, 12)
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))
    twin = copy.deepcopy(model.train())
    twin(x).sum().backward()
    assert all(layer.unit_log_sigma2.grad is not None for layer in unit_layers(twin))
