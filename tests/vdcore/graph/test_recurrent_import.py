"""ONNX LSTM and GRU nodes (as torch.onnx.export writes them, and as a converter might) import as nn.LSTM and
nn.GRU, train sparse, and go back into the user's graph; options PyTorch's layers do not compute are refused."""

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import vdcore
from tests.vdcore.graph.nets import RowReader, export
from vdcore.graph import OnnxError, load_onnx, shrink_onnx, write_onnx


@pytest.mark.parametrize(("kind", "shape", "dynamo"), [
    (nn.LSTM, {}, True), (nn.GRU, {}, True), (nn.LSTM, {}, False), (nn.GRU, {"num_layers": 2, "bidirectional": True},
                                                                    True),
])
def test_an_exported_recurrent_classifier_imports_trains_sparse_and_goes_back_into_its_graph(kind, shape, dynamo,
                                                                                             tmp_path):
    torch.manual_seed(0)
    path = export(RowReader(kind, **shape), tmp_path / "rows.onnx", dynamo=dynamo)
    net = load_onnx(path)  # checked against onnxruntime on the same file
    recurrent = [layer for layer in net.layers.values() if isinstance(layer, kind)]
    assert len(recurrent) == shape.get("num_layers", 1)
    data = vdcore.load_builtin("digits")
    few = (data.x[:300], data.y[:300])
    vdcore.sparsify_(net)
    assert sum(isinstance(layer, vdcore.RecurrentSVD) for layer in net.layers.values()) == len(recurrent)
    vdcore.train(net, few, None, vdcore.TrainConfig(epochs=2, batch_size=50, lr=1e-2))
    written = write_onnx(net, tmp_path / "trained.onnx")
    model = onnx.load(str(written.path))
    assert collections.Counter(n.op_type for n in model.graph.node)[kind.__name__] == len(recurrent)
    assert written.max_abs_diff < 1e-4
    shrunk = shrink_onnx(vdcore.prune(net))
    assert shrunk.save(tmp_path / "small.onnx").max_abs_diff < 1e-4


def _handmade(tmp_path, kind: str = "LSTM", **attributes) -> str:
    """An LSTM or GRU node written with onnx.helper: [n, 5, 4] -> steps first -> Y_h -> batch first -> Gemm."""
    rng = np.random.default_rng(0)
    gates, hidden = (4 if kind == "LSTM" else 3), 6
    tensors = {"W": rng.normal(0, 0.3, (1, gates * hidden, 4)), "R": rng.normal(0, 0.3, (1, gates * hidden, hidden)),
               "B": rng.normal(0, 0.1, (1, 2 * gates * hidden)), "w": rng.normal(0, 0.3, (3, hidden)),
               "b": np.zeros(3)}
    options = {"hidden_size": hidden} | ({"linear_before_reset": 1} if kind == "GRU" else {})
    nodes = [helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0, 2]),
             helper.make_node(kind, ["steps", "W", "R", "B"], ["", "h"], name="recurrent", **(options | attributes)),
             helper.make_node("Transpose", ["h"], ["batch"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["batch"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    path = str(tmp_path / f"{kind}.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_handmade_node_imports_and_is_written_back(kind, tmp_path):
    net = load_onnx(_handmade(tmp_path, kind))
    assert write_onnx(net, tmp_path / "back.onnx").max_abs_diff < 1e-5


@pytest.mark.parametrize(("kind", "attributes", "message"), [
    ("LSTM", {"direction": "reverse"}, "direction 'reverse' is not supported"),
    ("GRU", {"layout": 1}, "layout=1"),
    ("LSTM", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget=1"),
    ("LSTM", {"activations": ["Relu", "Tanh", "Tanh"]}, r"activations \['Relu', 'Tanh', 'Tanh'\]"),
    ("GRU", {"linear_before_reset": 0}, "linear_before_reset=0"),
])
def test_recurrent_options_pytorch_does_not_compute_are_refused_naming_the_node(kind, attributes, message, tmp_path):
    with pytest.raises(OnnxError, match=message) as refused:
        load_onnx(_handmade(tmp_path, kind, **attributes))
    assert "recurrent" in str(refused.value)
