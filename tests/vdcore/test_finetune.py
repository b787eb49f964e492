"""Fine-tuning a pruned network: zeros stay zero, the rest fits the data, plain layers come back, resumable."""

import pytest
import torch
from torch import nn

import vdcore
from vdcore import TrainConfig
from vdcore.data import load_digits
from vdcore.finetune import held_mask
from vdcore.presets import lenet_300_100
from vdcore.spec import build_model

CONFIG = TrainConfig(epochs=3, batch_size=64, lr=1e-3, lr_decay_start=0.0, device="cpu")


@pytest.fixture(scope="module")
def pruned():
    """A LeNet-300-100 on digits, trained dense, then with Sparse VD, and pruned: sparse (12x), not refitted."""
    data = load_digits()
    torch.manual_seed(0)
    model = build_model(lenet_300_100((1, 8, 8)))
    vdcore.train(model, data.train, config=TrainConfig(epochs=5, batch_size=64, lr=3e-3, device="cpu"))
    vdcore.sparsify_(model)
    vdcore.train(model, data.train, config=TrainConfig(epochs=10, batch_size=64, lr=3e-3, device="cpu"))
    return vdcore.prune(model)


def _data_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data[0]), data[1]))


def _copy(model: nn.Module) -> nn.Module:
    copy = build_model(lenet_300_100((1, 8, 8)))
    copy.load_state_dict(model.state_dict())
    return copy


def test_zeros_stay_zero_and_the_rest_fits_the_data(pruned):
    data = load_digits()
    model = _copy(pruned)
    loss_before, accuracy_before = _data_loss(model, data.train), vdcore.evaluate(model, data.val)
    history = vdcore.finetune(model, data.train, data.val, CONFIG)
    assert [m.epoch for m in history] == [1, 2, 3] and [m.kl for m in history] == [0.0, 0.0, 0.0]
    tuned = model.state_dict()
    for name, old in pruned.state_dict().items():
        new = tuned[name]
        if name.endswith("weight"):
            assert torch.equal(new == 0, old == 0), f"{name}: the pruned weights must stay exactly zero"
            assert not torch.equal(new, old), f"{name}: the kept weights train"
    assert vdcore.sparsity_report(model).compression == vdcore.sparsity_report(pruned).compression > 5
    assert _data_loss(model, data.train) < loss_before
    assert history[-1].val_accuracy >= accuracy_before - 0.02  # 297 validation digits: a few may flip either way


def test_the_masks_are_baked_in_as_plain_parameters(pruned):
    model = _copy(pruned)
    vdcore.finetune(model, load_digits().train, config=TrainConfig(epochs=1, device="cpu"))
    assert sorted(model.state_dict()) == sorted(pruned.state_dict())
    assert all(isinstance(p, nn.Parameter) for p in (model[1].weight, model[3].weight))


def test_an_interrupted_finetune_resumes_where_it_stopped(pruned, tmp_path):
    data = load_digits()
    whole = _copy(pruned)
    vdcore.finetune(whole, data.train, data.val, CONFIG)
    stopped, checkpoint = _copy(pruned), tmp_path / "finetune.ckpt"
    vdcore.finetune(stopped, data.train, data.val, CONFIG, checkpoint=checkpoint, should_stop=lambda: True)
    resumed = _copy(pruned)
    history = vdcore.finetune(resumed, data.train, data.val, CONFIG, checkpoint=checkpoint)
    assert len(history) == 3
    for name, value in whole.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], value, atol=1e-6), name


def test_a_network_still_in_training_form_is_refused():
    model = vdcore.sparsify_(build_model(lenet_300_100((1, 8, 8))))
    with pytest.raises(ValueError, match=r"call vdcore.prune\(model\) first"):
        vdcore.finetune(model, load_digits().train)


def test_holding_units_frees_the_kept_units_weights_only():
    weight = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # unit 1 gone, input 2 unread
    assert held_mask(weight, "weights").tolist() == (weight != 0).tolist()
    assert held_mask(weight, "units").tolist() == [[True, True, False], [False] * 3, [True, True, False]]
    conv = torch.zeros(3, 2, 2, 2)
    conv[0, 1, 0, 0] = conv[2, 1, 1, 1] = 1.0  # filter 1 gone, input channel 0 unread
    mask = held_mask(conv, "units")
    assert mask.shape == conv.shape and mask[:, 1].flatten(1).tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert not mask[:, 0].any() and not mask[1].any()


def test_holding_units_keeps_the_shrunk_shape_and_trains_inside_it(pruned):
    data = load_digits()
    model = _copy(pruned)
    vdcore.finetune(model, data.train, data.val, CONFIG, hold="units")
    example = data.x[:1]
    assert vdcore.layer_widths(vdcore.shrink(model, example)) == vdcore.layer_widths(vdcore.shrink(pruned, example))
    assert vdcore.sparsity_report(model).compression < vdcore.sparsity_report(pruned).compression
    with pytest.raises(ValueError, match="hold must be one of"):
        vdcore.finetune(_copy(pruned), data.train, config=CONFIG, hold="rows")
