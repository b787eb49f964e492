"""shrink: dead units leave the layers, and the smaller network still computes the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vdcore.export import export_onnx
from vdcore.layout import pad_channels, round_units_
from vdcore.prune import prune
from vdcore.shrink import GatherInput, layer_widths, shrink
from vdcore.sparsify import is_sparsified, sparsify_

BATCH = 7


def assert_same_outputs(expected: nn.Module, got: nn.Module, input_shape: tuple[int, ...]) -> None:
    x = torch.randn(BATCH, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(got(x), expected.eval()(x), atol=1e-4, rtol=0)


def weight_sizes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@torch.no_grad()
def make_mlp() -> nn.Sequential:
    """Input (1, 8, 8); each dead unit below is named after the rule that removes it."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5)
    )
    first, second, last = net[1], net[3], net[5]
    first.weight[:, [0, 7, 8, 63]] = 0  # four pixels nobody reads -> GatherInput
    first.weight[7] = 0  # no inputs, ReLU(-1) = 0: constant zero -> removed
    first.bias[7] = -1.0
    second.weight[8] = 0  # no inputs, tanh(0.7) != 0: folded into the last layer's bias
    second.bias[8] = 0.7
    # Unit 5 of the second layer is read by nobody, and only it reads unit 3 of the first layer:
    # removing 5 leaves 3 unread, which only a second pass finds.
    last.weight[:, 5] = 0
    second.weight[:, 3] = 0
    second.weight[5, 3] = 0.5
    return net


@torch.no_grad()
def make_cnn() -> nn.Sequential:
    """Input (3, 14, 14): conv 12x12, maxpool 6x6, conv 4x4, avgpool 2x2, so 4 features per channel."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
        nn.ReLU(),
        nn.Linear(10, 4),
    )
    conv1, bn, conv2, fc1, fc2 = net[0], net[1], net[4], net[8], net[10]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-0.2, 0.2)
    conv1.weight[:, 1] = 0  # input channel 1 unread -> GatherInput over channels
    conv2.weight[:, 2] = 0  # conv1 channel 2 unread by conv2
    conv1.weight[5] = 0  # constant after BN + ReLU + maxpool, folded into conv2 (no padding)
    bn.bias[5] = 1.0
    fc1.weight[:, 4:8] = 0  # conv2 channel 1 unread through the flatten
    conv2.weight[4] = 0  # constant relu(0.3) = 0.3, folded into fc1 through avgpool and flatten
    conv2.bias[4] = 0.3
    fc2.weight[:, 7] = 0  # fc1 unit 7 unread
    return net


def test_mlp_dead_units_go_and_outputs_match() -> None:
    net = make_mlp()
    small = shrink(net, torch.randn(1, 1, 8, 8))
    assert_same_outputs(net, small, (1, 8, 8))
    assert layer_widths(small) == [14, 10, 5]
    assert weight_sizes(small) == [(14, 60), (10, 14), (5, 10)]
    assert isinstance(small[0], GatherInput) and small[0].indices.numel() == 60
    assert not any(isinstance(m, nn.Flatten) for m in small)
    assert not small.training


def test_without_gathering_inputs_the_first_layer_keeps_unread_inputs_as_zero_columns() -> None:
    net = make_mlp()
    small = shrink(net, torch.randn(1, 1, 8, 8), gather_inputs=False)
    assert_same_outputs(net, small, (1, 8, 8))
    assert not any(isinstance(m, GatherInput) for m in small)
    assert weight_sizes(small) == [(14, 64), (10, 14), (5, 10)]
    assert (small[1].weight[:, [0, 7, 8, 63]] == 0).all()


def test_cnn_dead_channels_go_and_outputs_match() -> None:
    net = make_cnn()
    small = shrink(net, torch.randn(2, 3, 14, 14))
    assert_same_outputs(net, small, (3, 14, 14))
    assert layer_widths(small) == [6, 4, 9, 4]
    assert weight_sizes(small) == [(6, 2, 3, 3), (4, 6, 3, 3), (9, 16), (4, 9)]
    assert isinstance(small[0], GatherInput) and not small[0].flatten
    bn = next(m for m in small if isinstance(m, nn.BatchNorm2d))
    assert bn.num_features == 6 and bn.running_mean.shape == (6,)


def test_shrinking_twice_changes_nothing_more() -> None:
    net = make_cnn()
    once = shrink(net, torch.randn(1, 3, 14, 14))
    twice = shrink(once, torch.randn(1, 3, 14, 14))
    assert weight_sizes(twice) == weight_sizes(once)
    assert_same_outputs(net, twice, (3, 14, 14))


@torch.no_grad()
def test_padded_conv_keeps_a_nonzero_constant_channel_but_drops_a_zero_one() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 5)
    )
    net[0].weight[1] = 0  # constant 0.5, but the padding of the next conv sees zeros at the border
    net[0].bias[1] = 0.5
    net[0].weight[2] = 0  # constant ReLU(-0.5) = 0: reads as zero padding would
    net[0].bias[2] = -0.5
    small = shrink(net, torch.randn(1, 2, 4, 4))
    assert_same_outputs(net, small, (2, 4, 4))
    assert layer_widths(small) == [3, 3, 5]


@torch.no_grad()
def test_batch_norm_between_linears_is_sliced_and_its_constant_folded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    net[1].running_mean.uniform_(-1.0, 1.0)
    net[1].running_var.uniform_(0.5, 2.0)
    net[1].bias.fill_(0.5)
    net[0].weight[2] = 0  # no bias, yet batch norm turns its zero into a nonzero constant
    small = shrink(net, torch.randn(1, 6))
    assert_same_outputs(net, small, (6,))
    assert layer_widths(small) == [4, 3]
    assert small[1].num_features == 4


@torch.no_grad()
def test_batch_norm_after_flatten_loses_a_block_of_features_per_channel() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 4))
    net[3].running_mean.uniform_(-1.0, 1.0)
    net[3].running_var.uniform_(0.5, 2.0)
    net[3].weight.uniform_(0.5, 1.5)
    net[4].weight[:, 4:8] = 0  # channel 1 = features 4..7 unread
    net[0].weight[0] = 0  # channel 0 constant, made different per feature by the batch norm; still folded
    small = shrink(net, torch.randn(1, 2, 4, 4))
    assert_same_outputs(net, small, (2, 4, 4))
    assert layer_widths(small) == [1, 4]
    assert small[3].num_features == 4
    torch.testing.assert_close(small[3].running_mean, net[3].running_mean[8:])


@torch.no_grad()
def test_a_layer_whose_units_are_all_dead_keeps_one() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net[3].weight.zero_()  # the output is the last bias whatever the input
    small = shrink(net, torch.randn(1, 2, 3))
    assert_same_outputs(net, small, (2, 3))
    assert layer_widths(small) == [1, 3]


@torch.no_grad()
def test_grouped_conv_keeps_its_channels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2))
    net[2].weight[:, 0] = 0  # conv1 channel 0 unread, but the grouped conv's channels are fixed
    small = shrink(net, torch.randn(1, 2, 4, 4))
    assert_same_outputs(net, small, (2, 4, 4))
    assert weight_sizes(small) == weight_sizes(net)


@torch.no_grad()
def test_sparse_vd_model_is_pruned_first_and_left_unchanged() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    sparsify_(net)
    net[2].log_sigma2[:, 4] = 20.0  # log_alpha clipped to 8 > threshold: every weight reading unit 4 masked
    net[0].log_sigma2[9] = 20.0  # unit 9 loses all its inputs
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small = shrink(net, torch.randn(1, 20))
    assert_same_outputs(net, small, (20,))
    assert_same_outputs(prune(net), small, (20,))
    assert layer_widths(small) == [14, 8, 3]
    assert not is_sparsified(small)
    assert is_sparsified(net) and layer_widths(net) == [16, 8, 3]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_input_model_is_not_changed() -> None:
    net = make_cnn().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shrink(net, torch.randn(1, 3, 14, 14))
    assert net.training
    assert weight_sizes(net) == weight_sizes(make_cnn())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_nested_sequentials_are_flattened() -> None:
    net = make_mlp()
    nested = nn.Sequential(nn.Sequential(*net[:3]), nn.Sequential(*net[3:]))
    small = shrink(nested, torch.randn(1, 1, 8, 8))
    assert_same_outputs(net, small, (1, 8, 8))
    assert layer_widths(small) == [14, 10, 5]


def test_non_sequential_model_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(ValueError, match=r"nn\.Sequential.*build_model.*got Net"):
        shrink(Net(), torch.randn(1, 4))


def test_unsupported_layer_is_named() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.LSTM(4, 4)))
    with pytest.raises(ValueError, match=r"layer 2 \('1\.1'\) of type LSTM; supported layers are nn\.Linear"):
        shrink(net, torch.randn(1, 4))


def test_batch_norm_without_running_stats_is_refused() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="running statistics"):
        shrink(net, torch.randn(2, 4))


def test_layer_widths_reads_plain_and_sparse_vd_layers() -> None:
    net = nn.Sequential(nn.Conv2d(1, 17, 3), nn.Flatten(), nn.Linear(17, 32), nn.Linear(32, 10))
    assert layer_widths(net) == [17, 32, 10]
    assert layer_widths(sparsify_(net)) == [17, 32, 10]


@pytest.mark.parametrize(("make", "input_shape"), [(make_mlp, (1, 8, 8)), (make_cnn, (3, 14, 14))])
def test_shrunk_model_exports_to_onnx(make, input_shape, tmp_path) -> None:
    example = torch.randn(1, *input_shape)
    small = shrink(make(), example)
    result = export_onnx(small, tmp_path / "m.onnx", example)
    assert result.max_abs_diff <= 1e-4


@torch.no_grad()
def test_padding_rounds_hidden_convolutions_up_and_computes_the_same() -> None:
    example = torch.randn(1, 3, 14, 14)
    small = shrink(make_cnn(), example)
    assert layer_widths(small) == [6, 4, 9, 4]
    padded = pad_channels(small, example, 8)
    # Both convolutions round up to 8; the Linear layers keep their widths (the runtime's GEMM takes any size).
    assert layer_widths(padded) == [8, 8, 9, 4]
    assert next(m for m in padded if isinstance(m, nn.BatchNorm2d)).num_features == 8
    linear = next(m for m in padded if isinstance(m, nn.Linear))
    assert linear.in_features == 8 * 4  # a block of 4 features per channel after the flatten
    assert_same_outputs(small, padded, (3, 14, 14))
    assert layer_widths(small) == [6, 4, 9, 4]  # the input model is not changed


@torch.no_grad()
def test_padding_an_aligned_network_or_to_one_changes_nothing() -> None:
    example = torch.randn(1, 3, 14, 14)
    small = shrink(make_cnn(), example)
    for multiple, widths in ((1, [6, 4, 9, 4]), (2, [6, 4, 9, 4]), (4, [8, 4, 9, 4])):
        assert layer_widths(pad_channels(small, example, multiple)) == widths
    with pytest.raises(ValueError, match="multiple must be 1 or more"):
        pad_channels(small, example, 0)


@torch.no_grad()
def test_padding_before_a_flattened_batch_norm_adds_a_neutral_block_per_channel() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 4))
    net[3].running_mean.uniform_(-1.0, 1.0)
    net[3].running_var.uniform_(0.5, 2.0)
    net[3].weight.uniform_(0.5, 1.5)
    net[3].bias.uniform_(-0.5, 0.5)
    net.eval()
    padded = pad_channels(net, torch.randn(1, 2, 4, 4), 4)
    assert layer_widths(padded) == [4, 4]
    assert padded[3].num_features == 16
    assert_same_outputs(net, padded, (2, 4, 4))


@torch.no_grad()
def test_padded_model_exports_to_onnx(tmp_path) -> None:
    example = torch.randn(1, 3, 14, 14)
    padded = pad_channels(shrink(make_cnn(), example), example, 8)
    assert export_onnx(padded, tmp_path / "m.onnx", example).max_abs_diff <= 1e-4


@torch.no_grad()
def make_conv_stack(filters: int) -> nn.Sequential:
    """Input (1, 8, 8): conv 6x6 -> maxpool 3x3 -> flatten -> linear; filter k's weights all equal k + 1."""
    net = nn.Sequential(nn.Conv2d(1, filters, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(filters * 9, 3))
    for k in range(filters):
        net[0].weight[k] = k + 1.0
    net[4].weight.fill_(0.1)
    return net


@torch.no_grad()
def test_round_units_drops_the_weakest_filters_down_to_the_multiple() -> None:
    net = make_conv_stack(11)
    net[0].weight[4] = 0  # a dead filter does not count: 10 kept, 10 = 8 + 2 -> the 2 weakest go
    assert round_units_(net, torch.randn(1, 1, 8, 8), 8) == [8]
    alive = (net[0].weight.flatten(1) != 0).any(dim=1)
    assert int(alive.sum()) == 8
    assert not alive[:2].any() and alive[2:4].all()  # filters 0 and 1 (the smallest norms) went
    read = net[4].weight.view(3, 11, 9)
    assert (read[:, :2] == 0).all() and (read[:, 2:4] != 0).all()
    assert layer_widths(shrink(net, torch.randn(1, 1, 8, 8))) == [8, 3]


@torch.no_grad()
@pytest.mark.parametrize(("filters", "multiple", "kept"), [(12, 8, 12), (16, 8, 16), (7, 8, 7), (11, 1, 11)])
def test_round_units_leaves_counts_it_would_cut_by_half_or_more(filters, multiple, kept) -> None:
    net = make_conv_stack(filters)
    before = net[0].weight.clone()
    assert round_units_(net, torch.randn(1, 1, 8, 8), multiple) == [kept]
    assert torch.equal(net[0].weight, before)


def test_round_units_refuses_a_network_still_in_training_form() -> None:
    net = sparsify_(make_cnn())
    with pytest.raises(ValueError, match="pruned plain"):
        round_units_(net, torch.randn(1, 3, 14, 14), 8)
    with pytest.raises(ValueError, match="multiple must be 1 or more"):
        round_units_(make_cnn(), torch.randn(1, 3, 14, 14), 0)
