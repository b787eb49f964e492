"""Dead units are cut out of a user's own graph, coupled units together, and the graph still computes what the
pruned network computes in onnxruntime."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import vdcore
from tests.vdcore.graph.nets import (
    AttentionClassifier,
    MobileNetish,
    ResNetish,
    RowReader,
    TokenReader,
    export,
    handmade_mlp,
)
from tests.vdcore.graph.nets import randomise_batchnorm as randomised
from vdcore.graph import load_onnx, shrink_onnx
from vdcore.graph.net import max_difference
from vdcore.graph.shrink import FIXED, RECTANGLE
from vdcore.shrink import layer_widths

EXPORTERS = ["dynamo", "torchscript"]


def _shrunk(model, tmp_path, exporter="dynamo", example=None):
    """Export ``model``, import and shrink it; check the written shrunk file against the unshrunk network."""
    path = export(model.eval(), tmp_path / "model.onnx", dynamo=exporter == "dynamo", example=example)
    net = load_onnx(path)
    result = shrink_onnx(net)
    written = result.save(tmp_path / "small.onnx")
    assert max(max_difference(net, written.path, batch) for batch in (1, 9)) < 1e-4
    original, small = onnx.load(str(path)), onnx.load(str(written.path))
    assert [i.name for i in small.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in small.graph.output] == [o.name for o in original.graph.output]
    assert not small.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "the batch stays dynamic"
    return net, result, written


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_residual_channel_goes_only_when_dead_on_both_branches(tmp_path, exporter):
    torch.manual_seed(0)
    model = randomised(ResNetish())
    with torch.no_grad():
        block = model.blocks[1]
        block.conv2.weight[[3, 5]] = 0  # channels 3 and 5 of the second block's residual branch make nothing...
        block.shortcut[0].weight[3] = 0  # ...and channel 3 of its shortcut: 3 is a constant, 5 still carries x
        model.blocks[0].conv1.weight[:3] = 0  # three constant channels inside the first block, before a padded conv
    net, result, written = _shrunk(model, tmp_path, exporter)
    # stem, block 1 (conv1, conv2), block 2 (conv1, conv2, shortcut), head
    assert layer_widths(net) == [8, 8, 8, 16, 16, 16, 10]
    assert layer_widths(result.net) == [8, 5, 8, 16, 15, 15, 10]
    assert result.removed == 4
    assert written.bytes < (tmp_path / "model.onnx").stat().st_size


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_depthwise_convolution_loses_its_channels_with_the_layers_on_both_sides(tmp_path, exporter):
    torch.manual_seed(0)
    model = randomised(MobileNetish())
    with torch.no_grad():
        model.features[4][3].weight[:, [0, 4]] = 0  # the last pointwise conv no longer reads channels 0 and 4
        model.features[0].weight[2] = 0  # channel 2 of the stem and of the depthwise conv after it: a constant
        model.features[3][0].weight[2] = 0
    net, result, _ = _shrunk(model, tmp_path, exporter)
    # stem, depthwise, pointwise, depthwise, pointwise, classifier
    assert layer_widths(net) == [8, 8, 16, 16, 32, 10]
    assert layer_widths(result.net) == [7, 7, 14, 14, 32, 10]
    groups = [next(a.i for a in n.attribute if a.name == "group") for n in result.net.read.graph.node
              if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert groups == [7, 14]


def test_attention_heads_lose_the_features_dead_in_every_head_and_reshapes_follow(tmp_path):
    torch.manual_seed(0)
    model = AttentionClassifier().eval()  # 16 features, 2 heads of 8
    with torch.no_grad():
        for projection in (model.q, model.k):  # query and key feature 1 of both heads are zeros
            projection.weight[[1, 9]] = 0
            projection.bias[[1, 9]] = 0
        model.q.weight[3], model.q.bias[3] = 0, 0  # feature 3 of head 0 only: the heads must stay equal
        model.out.weight[:, [2, 10, 5]] = 0  # value feature 2 of both heads and 5 of head 0 are never read
        model.mlp[0].weight[:7] = 0  # seven constant hidden units, folded into the next layer's bias
    _, result, _ = _shrunk(model, tmp_path)
    # embed, q, k, v, out, mlp (2), classifier
    assert layer_widths(result.net) == [16, 14, 14, 14, 16, 25, 16, 10]
    targets = [result.net.read.constants[n.input[1]].tolist() for n in result.net.read.graph.node
               if n.op_type == "Reshape"]
    assert [-1, 8, 2, 7] in targets and [-1, 8, 14] in targets
    assert any(RECTANGLE in note for note in result.notes), result.notes


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_units_a_layer_norm_or_a_computed_reshape_needs_stay_and_the_notes_say_why(tmp_path, exporter):
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    with torch.no_grad():
        for layer in (model.embed, model.out, model.mlp[2]):  # feature 4 of the residual stream is always zero,
            layer.weight[4], layer.bias[4] = 0, 0  # but LayerNorm normalises over it
        model.position[:, 4] = 0
        model.v.weight[[2, 10]], model.v.bias[[2, 10]] = 0, 0  # value feature 2 of both heads
        model.mlp[0].weight[:5] = 0
    _, result, _ = _shrunk(model, tmp_path, exporter)
    notes = " | ".join(result.notes)
    if exporter == "dynamo":
        assert layer_widths(result.net) == [16, 16, 16, 14, 16, 27, 16, 10]
        assert "1 dead unit(s) stay: LayerNormalization node" in notes and "normalises over them" in notes
    else:  # torch's older exporter computes the head size from the stream's shape at run time
        assert layer_widths(result.net) == [16, 16, 16, 16, 16, 27, 16, 10]
        assert f"2 dead unit(s) stay: {FIXED}" in notes and "Shape node" in notes


def _recurrent_nodes(result):
    return [n for n in result.model.graph.node if n.op_type in ("LSTM", "GRU")]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_recurrent_hidden_units_nobody_reads_go_from_both_directions(tmp_path, exporter, kind):
    torch.manual_seed(0)
    model = RowReader(kind, hidden=16, num_layers=2, bidirectional=True).eval()
    with torch.no_grad():
        for direction in ("", "_reverse"):  # hidden units 3 and 7 of the top layer: read by nobody
            getattr(model.rnn, f"weight_hh_l1{direction}")[:, [3, 7]] = 0
            getattr(model.rnn, f"weight_hh_l0{direction}")[:, 5] = 0  # unit 5 of the bottom layer, in both
            getattr(model.rnn, f"weight_ih_l1{direction}")[:, [5, 16 + 5, 9]] = 0  # directions; 9 forward only
            getattr(model.rnn, f"weight_hh_l0{direction}")[:, 9] = 0
        model.classifier.weight[:, [3, 7, 16 + 3, 16 + 7]] = 0
    net, result, written = _shrunk(model, tmp_path, exporter)
    assert layer_widths(net) == [16, 16, 10]
    assert layer_widths(result.net) == [15, 14, 10]  # the backward unit 9 still reads unit 9 of layer 0
    nodes = _recurrent_nodes(result)
    assert [next(a.i for a in n.attribute if a.name == "hidden_size") for n in nodes] == [15, 14]
    assert all(len(n.input) <= 4 for n in nodes), "the zero initial state is ONNX's default"
    assert written.bytes < (tmp_path / "model.onnx").stat().st_size


def test_a_recurrent_node_reading_constant_features_takes_them_into_its_bias(tmp_path):
    torch.manual_seed(0)
    model = TokenReader().eval()
    with torch.no_grad():
        model.project.weight[[2, 4]] = 0  # two constant features (relu of their bias), folded into the LSTM's
        model.project.bias[2] = 0.7
        model.rnn.weight_ih_l0[:, 6] = 0  # a feature the LSTM does not read
        model.rnn.weight_hh_l0[:, 1] = 0  # hidden unit 1: the classifier, reading h[-1], does not read it either
        model.classifier.weight[:, 1] = 0
    net, result, _ = _shrunk(model, tmp_path, example=torch.randint(0, 50, (2, 7)))
    # projection, LSTM, classifier
    assert layer_widths(net) == [12, 16, 3]
    assert layer_widths(result.net) == [9, 15, 3]
    vdcore.sparsify_(net)  # the table becomes an EmbeddingSVD: checks still draw ids from all its rows
    assert net.vocabulary == 50 and int(net.example_input(64).max()) > 1


def test_a_handmade_gemm_network_shrinks_its_hidden_layer(tmp_path):
    path = handmade_mlp(tmp_path / "handmade.onnx")
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name == "w1":  # [out, in], read with transB=1
            w1 = numpy_helper.to_array(tensor).copy()
            w1[:10] = 0
            w1[:, :20] = 0  # the first 20 pixels are never read, but the input keeps its shape
            tensor.CopyFrom(numpy_helper.from_array(w1, "w1"))
    onnx.save(model, str(path))
    net = load_onnx(path)
    result = shrink_onnx(net)
    assert layer_widths(result.net) == [22, 10]
    assert max_difference(net, result.net.read.model, 6) < 1e-4
    assert result.net.input_shape == net.input_shape


def test_a_network_with_nothing_dead_comes_back_as_it_was(tmp_path):
    torch.manual_seed(0)
    path = export(randomised(ResNetish()), tmp_path / "resnet.onnx")
    net = load_onnx(path)
    result = shrink_onnx(net)
    assert result.removed == 0 and layer_widths(result.net) == layer_widths(net)
    x = net.example_input(4)
    with torch.no_grad():
        np.testing.assert_allclose(result.net(x).numpy(), net(x).numpy(), atol=1e-6)


def test_filter_counts_can_be_rounded_up_for_onnxruntimes_fast_convolutions(tmp_path):
    torch.manual_seed(0)
    model = randomised(MobileNetish())
    with torch.no_grad():
        model.features[4][3].weight[:, :10] = 0  # 10 of the 16 channels between the two blocks are never read
    net, exact, _ = _shrunk(model, tmp_path)
    rounded = shrink_onnx(net, channel_multiple=4)
    assert layer_widths(exact.net) == [8, 8, 6, 6, 32, 10]
    assert layer_widths(rounded.net) == [8, 8, 8, 8, 32, 10]
    assert any("multiple of 4" in note for note in rounded.notes), rounded.notes
    assert max_difference(net, rounded.model, 5) < 1e-4
    with pytest.raises(ValueError, match="channel_multiple"):
        shrink_onnx(net, channel_multiple=0)
