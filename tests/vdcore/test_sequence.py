"""Sequence classifiers as plain stacks: shrink cuts a recurrent layer's dead hidden units (folding those that
only add a constant) and the embedding columns it does not read, and the result exports to ONNX LSTM/GRU nodes
that onnxruntime runs with the same outputs."""

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import vdcore
from vdcore.data import DataError, from_arrays
from vdcore.sequence import ImageRows, RecurrentFeatures

HIDDEN, DEAD, FOLDED = 12, [3, 7], 9


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


@torch.no_grad()
def _with_dead_units(kind: type[nn.RNNBase], reduce: str, **shape) -> nn.Sequential:
    """Embedding -> recurrent layer -> ReLU -> Linear, with units 3 and 7 read by nobody, unit 9 of the last layer
    without inputs (and read by no recurrence), embedding column 2 zero and input feature 5 read by nobody."""
    torch.manual_seed(0)
    rnn = kind(8, HIDDEN, batch_first=True, **shape)
    directions, gates = 2 if rnn.bidirectional else 1, 4 if kind is nn.LSTM else 3
    model = nn.Sequential(nn.Embedding(30, 8), RecurrentFeatures(rnn, reduce), nn.ReLU(),
                          nn.Linear(HIDDEN * directions, 5)).eval()
    model[0].weight[:, 2] = 0
    last = rnn.num_layers - 1
    for layer in range(rnn.num_layers):
        for direction in range(directions):
            suffix = _suffix(layer, direction)
            getattr(rnn, "weight_hh" + suffix)[:, DEAD] = 0
            readers = [getattr(rnn, "weight_ih" + _suffix(layer + 1, d)) for d in range(directions)] \
                if layer < last else [model[3].weight]
            for weight in readers:
                weight[:, [direction * HIDDEN + u for u in DEAD]] = 0
            if layer == 0:
                getattr(rnn, "weight_ih" + suffix)[:, 5] = 0
            if layer == last:
                rows = [g * HIDDEN + FOLDED for g in range(gates)]
                getattr(rnn, "weight_ih" + suffix)[rows] = 0
                getattr(rnn, "weight_hh" + suffix)[rows] = 0
                getattr(rnn, "weight_hh" + suffix)[:, FOLDED] = 0
    return model


@pytest.mark.parametrize(("kind", "shape", "reduce", "kept"), [
    (nn.LSTM, {}, "last", HIDDEN - 3),
    (nn.GRU, {}, "mean", HIDDEN - 3),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}, "mean", HIDDEN - 2),  # the first layer has no unit to fold
    (nn.GRU, {"num_layers": 2, "bidirectional": True}, "last", HIDDEN - 2),
])
def test_dead_hidden_units_and_unread_embedding_columns_are_cut_and_the_outputs_stay(kind, shape, reduce, kept,
                                                                                     tmp_path):
    model = _with_dead_units(kind, reduce, **shape)
    tokens = torch.randint(0, 30, (4, 6))
    small = vdcore.shrink(model, tokens)
    rnn = small[1].rnn
    assert type(rnn) is kind and rnn.hidden_size == kept
    assert small[0].weight.shape == (30, 6) and rnn.input_size == 6, "column 2 (zero) and feature 5 (unread) go"
    assert torch.allclose(small(tokens), model(tokens), atol=1e-6)
    result = vdcore.export_onnx(small, tmp_path / "small.onnx", tokens[:1])
    ops = collections.Counter(node.op_type for node in onnx.load(str(result.path)).graph.node)
    assert ops[kind.__name__] == rnn.num_layers and result.max_abs_diff < 1e-5


def test_units_that_every_layer_and_direction_cannot_lose_stay():
    model = _with_dead_units(nn.LSTM, "last", bidirectional=True)
    with torch.no_grad():
        model[1].rnn.weight_hh_l0_reverse[0, DEAD[0]] = 1.0  # the backward direction reads its unit 3 again
    small = vdcore.shrink(model, torch.randint(0, 30, (2, 6)))
    assert small[1].rnn.hidden_size == HIDDEN - 2, "each direction loses as many as the backward one can"


def test_a_row_by_row_classifier_trains_sparse_and_shrinks():
    data = vdcore.load_builtin("digits")
    torch.manual_seed(0)
    model = nn.Sequential(ImageRows(), RecurrentFeatures(nn.LSTM(8, 24, batch_first=True)), nn.Linear(24, 10))
    vdcore.train(model, data.train, data.val, vdcore.TrainConfig(epochs=3, batch_size=50, lr=1e-2))
    vdcore.sparsify_(model)
    assert isinstance(model[1].rnn, vdcore.LSTMSVD)
    vdcore.train(model, data.train, data.val, vdcore.TrainConfig(epochs=6, batch_size=50, lr=1e-2))
    pruned = vdcore.prune(model)
    small = vdcore.shrink(pruned, data.x[:1])
    assert vdcore.sparsity_report(pruned).compression > 2
    assert torch.allclose(small(data.x_val), pruned(data.x_val), atol=1e-5)
    assert vdcore.evaluate(small, data.val) > 0.8


def test_token_datasets_hold_integer_ids_within_the_table():
    tokens = {"x": np.array([[1, 2, 3], [4, 0, 2]]), "y": np.array([0, 1])}
    dataset = from_arrays(tokens, [3], 2, vocabulary=5)
    assert dataset.x.dtype == torch.int64 and dataset.x.tolist() == [[1, 2, 3], [4, 0, 2]]
    with pytest.raises(DataError, match=r"token ids from 0 to 4, but the model's embedding has 4 rows"):
        from_arrays(tokens, [3], 2, vocabulary=4)
    with pytest.raises(DataError, match="looks up token ids"):
        from_arrays({"x": tokens["x"].astype(np.float32), "y": tokens["y"]}, [3], 2, vocabulary=5)
    with pytest.raises(DataError, match=r"shape \[2, 3\], but the model takes examples of shape \[4\]"):
        from_arrays(tokens, [4], 2, vocabulary=5)
