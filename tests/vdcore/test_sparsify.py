"""Swapping layers in place, the KL over a model, the sparsity report and pruning."""

import pytest
import torch
from torch import nn

import vdcore
from vdcore import Conv2dSVD, LinearSVD


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    ).eval()


class Custom(nn.Module):
    """A user's own module with layers at several depths, not a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"a": nn.Linear(8, 16), "b": nn.Linear(16, 16)})
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.encoder["b"](torch.relu(self.encoder["a"](x)))))


def test_swap_counts_and_keeps_outputs_of_a_cnn():
    model = cnn()
    x = torch.randn(5, 1, 7, 7)
    before = model(x)
    assert vdcore.sparsify_(model) is model
    kinds = [type(m) for _, m in vdcore.svd_layers(model)]
    assert kinds == [Conv2dSVD, Conv2dSVD, LinearSVD]
    assert torch.allclose(model.eval()(x), before, atol=1e-5)


def test_swap_in_a_custom_module_and_filter():
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(4, 8)
    before = model(x)
    vdcore.sparsify_(model, filter_fn=lambda module, fqn: fqn != "head")
    assert [name for name, _ in vdcore.svd_layers(model)] == ["encoder.a", "encoder.b"]
    assert type(model.head) is nn.Linear
    assert torch.allclose(model.eval()(x), before, atol=1e-5)


def test_swapping_twice_changes_nothing_and_a_bare_layer_is_returned():
    model = vdcore.sparsify_(cnn())
    layers = [id(m) for _, m in vdcore.svd_layers(model)]
    vdcore.sparsify_(model)
    assert [id(m) for _, m in vdcore.svd_layers(model)] == layers
    assert isinstance(vdcore.sparsify_(nn.Linear(3, 2)), LinearSVD)
    assert not vdcore.is_sparsified(cnn())


def test_kl_divergence_sums_layers_and_loss_scales_it():
    model = vdcore.sparsify_(cnn())
    total = vdcore.kl_divergence(model)
    assert torch.allclose(total, sum(layer.kl() for _, layer in vdcore.svd_layers(model)))
    logits = model.train()(torch.randn(3, 1, 7, 7))
    target = torch.tensor([0, 1, 2])
    loss, data, kl = vdcore.elbo_loss(logits, target, model, dataset_size=1000, kl_weight=0.5)
    assert torch.allclose(loss, data + 0.5 * kl / 1000)
    assert float(vdcore.kl_divergence(nn.Linear(2, 2))) == 0.0
    with pytest.raises(ValueError, match="dataset_size"):
        vdcore.elbo_loss(logits, target, model, dataset_size=0)


def _drop_half(model: nn.Module) -> None:
    with torch.no_grad():
        for _, layer in vdcore.svd_layers(model):
            flat = layer.log_sigma2.view(-1)
            flat[::2] = 20.0


def test_sparsity_report_and_prune():
    model = vdcore.sparsify_(cnn())
    _drop_half(model)
    report = vdcore.sparsity_report(model)
    assert [layer.weights for layer in report.layers] == [36, 216, 540]
    assert report.nonzero == 18 + 108 + 270
    assert report.compression == pytest.approx(2.0)
    assert "compression 2.0x" in str(report)

    x = torch.randn(5, 1, 7, 7)
    pruned = vdcore.prune(model)
    assert not vdcore.is_sparsified(pruned) and vdcore.is_sparsified(model)
    assert not pruned.training
    assert torch.allclose(pruned(x), model.eval()(x), atol=1e-6)
    assert vdcore.sparsity_report(pruned).nonzero == report.nonzero
