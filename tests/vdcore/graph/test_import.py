"""Users' ONNX files become trainable PyTorch modules that compute what onnxruntime computes on the file,
and their trained weights go back into the same graph."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import vdcore
from tests.vdcore.graph.conftest import ARCHITECTURES
from tests.vdcore.graph.nets import INPUT_SHAPE, export
from vdcore.config import SVDConfig
from vdcore.graph import OnnxError, OnnxNet, load_onnx, write_onnx
from vdcore.graph.net import max_difference

CASES = [(name, exporter) for name in ARCHITECTURES for exporter in ("dynamo", "torchscript")]
# The weight-bearing layers each architecture has: convolutions and linear layers (a Linear from Gemm or from
# a MatMul on a constant), and, where the exporter keeps them whole, LayerNorms.
LAYERS = {"resnet": (6, 1), "mobilenet": (5, 1), "attention": (0, 8)}


def _kinds(net: OnnxNet) -> tuple[int, int]:
    layers = list(net.layers.values())
    return sum(isinstance(m, nn.Conv2d) for m in layers), sum(isinstance(m, nn.Linear) for m in layers)


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_an_exported_network_imports_with_its_layers_and_computes_what_torch_did(exported, name, exporter):
    model, path = exported[name, exporter]
    net = load_onnx(path)
    assert _kinds(net) == LAYERS[name]
    x = torch.randn(7, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-4)
    assert (net.input_name, net.output_names, net.input_shape) == ("pixels", ["scores"], [None, *INPUT_SHAPE])


def test_a_handmade_file_with_gemm_transb_and_a_constant_reshape_imports(exported):
    _, path = exported["handmade", "helper"]
    net = load_onnx(path)
    assert [type(m) for m in net.layers.values()] == [nn.Linear, nn.Linear]
    assert net.read.opset == 13, "opset 11 is converted"
    assert max_difference(net, onnx.load(str(path)), batch=5) < 1e-5


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))


def test_an_opset_9_export_with_a_shape_chain_imports(tmp_path):
    """``x.view(x.size(0), -1)`` exported at opset 9: Shape, Gather, Unsqueeze and Concat feed the Reshape."""
    torch.manual_seed(0)
    model = _Flat().eval()
    path = export(model, tmp_path / "flat.onnx", dynamo=False, opset=9)
    assert "Shape" in {node.op_type for node in onnx.load(str(path)).graph.node}
    net = load_onnx(path)
    x = torch.randn(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)


@pytest.mark.parametrize(("name", "exporter"), [("resnet", "dynamo"), ("mobilenet", "torchscript"),
                                                ("attention", "dynamo"), ("handmade", "helper")])
def test_trained_weights_go_back_into_the_users_graph(exported, tmp_path, name, exporter):
    _, path = exported[name, exporter]
    net = load_onnx(path)
    vdcore.sparsify_(net, SVDConfig())
    with torch.no_grad():
        for _, layer in vdcore.svd_layers(net):
            layer.log_sigma2.add_(torch.randn_like(layer.log_sigma2) * 6)  # drop some weights
    result = write_onnx(net, tmp_path / "trained.onnx")
    assert result.max_abs_diff < 1e-4
    original, written = onnx.load(str(path)), onnx.load(str(result.path))
    assert [i.name for i in written.graph.input] == [i.name for i in original.graph.input if i.name == net.input_name]
    assert [o.name for o in written.graph.output] == [o.name for o in original.graph.output]
    assert not written.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "the batch stays dynamic"
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in written.graph.initializer)
    assert zeros > 0, "the pruned weights are zero in the file"
    session = ort.InferenceSession(str(result.path))
    x = net.example_input(11)
    with torch.no_grad():
        expected = vdcore.prune(net)(x).numpy()
    np.testing.assert_allclose(session.run(None, {net.input_name: x.numpy()})[0], expected, atol=1e-4)


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _tensor(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _weight(name, *shape):
    return numpy_helper.from_array(np.random.default_rng(0).normal(size=shape).astype(np.float32), name)


def test_a_weight_computed_from_constants_is_folded_into_a_layer():
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    model = _model(nodes, [_tensor("x", ["n", 6])], [_tensor("y", ["n", 4])], [_weight("w", 4, 6)])
    net = load_onnx(model.SerializeToString())
    assert [type(m) for m in net.layers.values()] == [nn.Linear]


def test_a_weight_read_by_two_nodes_is_untied():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])]
    model = _model(nodes, [_tensor("x", ["n", 5])], [_tensor("y", ["n", 5])], [_weight("w", 5, 5)])
    net = load_onnx(model.SerializeToString())
    assert len(net.layers) == 2


def _bad(model: onnx.ModelProto | bytes, message: str) -> None:
    with pytest.raises(OnnxError, match=message):
        load_onnx(model if isinstance(model, bytes) else model.SerializeToString())


def test_what_cannot_be_imported_is_refused_saying_what_to_change(exported, tmp_path):
    _bad(b"not a model at all", "not an ONNX file")
    whole = exported["resnet", "dynamo"][1].read_bytes()
    _bad(whole[: len(whole) // 3], "not an ONNX file|truncated|fails onnx.checker")
    relu = helper.make_node("Relu", ["x"], ["y"])
    _bad(_model([relu], [_tensor("x", ["n", 3])], [_tensor("y", ["n", 3])], opset=7), "opset 7 is not supported")
    unknown = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    model = _model([unknown], [_tensor("x", ["n", 3])], [_tensor("y", ["n", 3])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    _bad(model, "domain 'com.example'")
    topk = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="pick")
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    _bad(_model([topk], [_tensor("x", ["n", 3])], [_tensor("y", ["n", 2]), _tensor("i", ["n", 2], TensorProto.INT64)],
                [k]), r"node pick \(TopK\) is not supported. Supported operators: Abs, Add")
    add = helper.make_node("Add", ["x", "z"], ["y"])
    _bad(_model([add], [_tensor("x", ["n", 3]), _tensor("z", ["n", 3])], [_tensor("y", ["n", 3])]), "2 inputs")
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)
    _bad(_model([bn], [_tensor("x", ["n", 3])], [_tensor("y", ["n", 3])],
                [_weight(name, 3) for name in "sbmv"]), "training mode")
    external = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_tensor("x", ["n", 4])],
                      [_tensor("y", ["n", 4])], [_weight("w", 4, 4)])
    onnx.save(external, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    _bad((tmp_path / "ext.onnx").read_bytes(), "separate data file")
    wrong = _model([helper.make_node("Relu", ["x"], ["y"])], [_tensor("x", ["n", 3])], [_tensor("nothing", ["n", 3])])
    _bad(wrong, "fails onnx.checker")
    with pytest.raises(OnnxError, match="more than the 10 allowed"):
        load_onnx(exported["resnet", "dynamo"][1], max_parameters=10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_graph_that_fixes_its_batch_size_is_refused(tmp_path):
    """Exported without a dynamic batch, a view(2, -1) bakes the size in: other batches cannot run."""

    class Fixed(nn.Module):
        def forward(self, x):
            return x.reshape(2, -1)

    path = tmp_path / "fixed.onnx"
    torch.onnx.export(Fixed(), (torch.randn(2, *INPUT_SHAPE),), str(path), dynamo=False, opset_version=13)
    with pytest.raises(OnnxError, match="dynamic batch"):
        load_onnx(path)
