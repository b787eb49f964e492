"""A threshold's network deployed: the bytes and latency of the file a job would ship, for every kind of model."""

import torch
from torch import nn

import vdcore
from tests.vdcore.graph.nets import INPUT_SHAPE, export
from vdcore.deployed import deploy
from vdcore.graph import load_onnx, shrink_onnx
from vdcore.graph.shrink import keep_units
from vdcore.tradeoff import at_threshold


def test_an_imported_graph_is_deployed_shrunk_in_its_own_graph(tmp_path):
    torch.manual_seed(0)
    side = INPUT_SHAPE[-1]
    mine = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * side * side, 10))
    with torch.no_grad():
        mine[0].weight[:4] = 0  # four filters that compute nothing: a zero weight's alpha is huge
        mine[0].bias[:4] = 0
    net = load_onnx(export(mine, tmp_path / "mine.onnx"))
    vdcore.sparsify_(net)
    example = net.example_input(1)
    with at_threshold(net, 3.0):
        deployed = deploy(net, example, batch=3)
        shrunk = shrink_onnx(vdcore.prune(net)).save(tmp_path / "small.onnx")
        whole = keep_units(vdcore.prune(net)).save(tmp_path / "whole.onnx")
    assert deployed.file_bytes == shrunk.path.stat().st_size < whole.path.stat().st_size
    assert deployed.latency_ms > 0 and deployed.batch == 3


def test_a_recurrent_stack_is_deployed_with_its_dead_units_cut():
    torch.manual_seed(0)
    model = nn.Sequential(vdcore.ImageRows(), vdcore.RecurrentFeatures(nn.LSTM(8, 16, batch_first=True)),
                          nn.Linear(16, 10))
    example = torch.rand(1, 1, 8, 8)
    dense = deploy(model, example)
    with torch.no_grad():
        model[1].rnn.weight_hh_l0[:, 8:] = 0  # half the hidden units read by nothing: the classifier drops them
        model[2].weight[:, 8:] = 0
    assert deploy(model, example).file_bytes < dense.file_bytes
