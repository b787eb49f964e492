"""Declarative architectures: presets build, bad specs are refused with messages that say what to fix."""

import pytest
import torch
from torch import nn

from vdcore.spec import SpecError, build_model, plan_model, preset_spec


@pytest.mark.parametrize(
    ("preset", "weights"),
    [("lenet-300-100", 266_200), ("lenet-5-caffe", 430_500)],
)
def test_presets_have_the_papers_sizes(preset, weights):
    model = build_model({"preset": preset})
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert sum(m.weight.numel() for m in layers) == weights
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_like_width_and_small_inputs():
    full = plan_model({"preset": "vgg-like"})
    assert 14_900_000 < full.parameters < 15_100_000
    small = build_model({"preset": "vgg-like", "width": 0.125, "input_shape": [1, 8, 8], "num_classes": 3})
    assert small.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_spec_infers_input_sizes_and_checks_declared_ones():
    spec = {
        "input_shape": [3, 16, 16],
        "num_classes": 4,
        "layers": [
            {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "batchnorm2d", "num_features": 8},
            {"type": "tanh"},
            {"type": "avgpool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "dropout", "p": 0.1},
            {"type": "linear", "in_features": 128, "out_features": 16, "bias": False},
            {"type": "batchnorm1d"},
            {"type": "relu"},
            {"type": "linear", "out_features": 4},
        ],
    }
    model = build_model(spec)
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert plan_model(spec).parameters == sum(p.numel() for p in model.parameters())


def _mlp(*layers, input_shape=(1, 8, 8), num_classes=10):
    return {"input_shape": list(input_shape), "num_classes": num_classes, "layers": list(layers)}


FLAT = {"type": "flatten"}
HEAD = {"type": "linear", "out_features": 10}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1, 2], "JSON object"),
        ({"preset": "resnet-50"}, "unknown preset 'resnet-50'"),
        ({"preset": 3}, "preset name"),
        ({"preset": "lenet-300-100", "depth": 3}, "not \\['depth'\\]"),
        (_mlp(FLAT, HEAD) | {"extra": 1}, "unknown spec key"),
        ({"input_shape": [1, 8, 8], "layers": [FLAT, HEAD]}, "needs 'num_classes'"),
        (_mlp(FLAT, HEAD, input_shape=[1, 0, 8]), "between 1 and"),
        (_mlp(FLAT, HEAD, input_shape="28x28"), "list of 1 to 3"),
        (_mlp(FLAT, HEAD, num_classes=1), "num_classes"),
        (_mlp(), "non-empty list"),
        (_mlp({"type": "transformer"}), r"layers\[0\] \(transformer\): unknown layer type"),
        (_mlp({"type": "lstm", "hidden_size": 8}, HEAD), r"layers\[0\] \(lstm\): needs an input of sequences"),
        (_mlp({"type": "rows"}, {"type": "lstm"}, HEAD), "'hidden_size' is required"),
        (_mlp({"type": "rows"}, {"type": "gru", "hidden_size": 8, "output": "max"}, HEAD), "'output' must be one of"),
        (_mlp({"type": "rows"}, {"type": "gru", "hidden_size": 8, "num_layers": 9}, HEAD), "at most 8"),
        (_mlp({"type": "rows"}, {"type": "lstm", "hidden_size": 8, "input_size": 7}, HEAD), "'input_size' is 7"),
        (_mlp(FLAT, {"type": "embedding", "num_embeddings": 5, "embedding_dim": 4}, HEAD), "must be the first"),
        (_mlp({"type": "embedding", "num_embeddings": 5, "embedding_dim": 4}, HEAD), r"token ids \[steps\]"),
        (_mlp({"kind": "linear"}), "string 'type'"),
        (_mlp(HEAD), r"layers\[0\] \(linear\): needs an input of flat features; put a flatten"),
        (_mlp(FLAT, {"type": "linear", "out_features": 10, "in_features": 63}), "'in_features' is 63 but"),
        (_mlp(FLAT, {"type": "linear", "out_features": "10"}), "must be an integer"),
        (_mlp(FLAT, {"type": "linear", "out_features": -1}), "between 1 and"),
        (_mlp(FLAT, {"type": "linear", "out_features": 10, "bias": "yes"}), "true or false"),
        (_mlp(FLAT, {"type": "linear", "out_features": 10, "activation": "relu"}), "unknown option"),
        (_mlp({"type": "conv2d", "out_channels": 4, "kernel_size": 9}, FLAT, HEAD), "larger than the padded input"),
        (_mlp({"type": "conv2d", "out_channels": 4}, FLAT, HEAD), "'kernel_size' is required"),
        (_mlp({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "groups": 2}, FLAT, HEAD), "groups=2"),
        (_mlp({"type": "conv2d", "out_channels": 4, "kernel_size": [3, 3, 3]}, FLAT, HEAD), "pair"),
        (_mlp({"type": "maxpool2d", "kernel_size": 2, "padding": 2}, FLAT, HEAD), "at most half"),
        (_mlp(FLAT, {"type": "dropout", "p": 1.5}, HEAD), "probability"),
        (_mlp(FLAT, {"type": "batchnorm2d"}, HEAD), r"batchnorm2d\): needs an input of shape \[channels"),
        (_mlp(FLAT, {"type": "linear", "out_features": 7}), "outputs shape \\[7\\]"),
        (_mlp(FLAT, {"type": "relu"}, num_classes=64), "no weight layer"),
        (_mlp(FLAT, *[{"type": "linear", "out_features": 60000}] * 3, HEAD), "more than 200,000,000 parameters"),
        (_mlp({"type": "relu"}, input_shape=[65536, 65536, 65536]), "values per example"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(SpecError, match=message):
        plan_model(spec)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ({"preset": "lstm-rows"}, (1, 28, 28)),
        ({"preset": "gru-rows", "hidden_size": 16, "input_shape": [3, 8, 8]}, (3, 8, 8)),
        ({"preset": "text-lstm", "vocabulary": 50, "embedding_dim": 8, "hidden_size": 16}, (64,)),
        (_mlp({"type": "rows"}, {"type": "lstm", "hidden_size": 6, "num_layers": 2, "bidirectional": True,
                                 "output": "mean"}, {"type": "relu"}, HEAD), (1, 8, 8)),
        ({"input_shape": [5, 3], "num_classes": 2, "layers": [{"type": "gru", "hidden_size": 4, "bias": False},
                                                              {"type": "linear", "out_features": 2}]}, (5, 3)),
    ],
)
def test_recurrent_specs_build_sequence_classifiers_of_the_planned_size(spec, shape):
    plan = plan_model(spec)
    model = plan.build().eval()
    assert plan.parameters == sum(p.numel() for p in model.parameters())
    x = torch.randint(0, 50, (2, *shape)) if plan.vocabulary else torch.randn(2, *shape)
    assert plan.vocabulary == (50 if spec.get("preset") == "text-lstm" else None)
    assert model(x).shape == (2, plan.num_classes)


def test_preset_spec_validates_input_shape_before_use():
    with pytest.raises(SpecError, match="input_shape"):
        preset_spec("vgg-like", input_shape=[3, "x", 2])
