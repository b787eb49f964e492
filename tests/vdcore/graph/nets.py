"""Real architectures for the ONNX importer's tests, built with torch and exported with ``torch.onnx.export``
(no torchvision), plus a file written by hand with ``onnx.helper``. Inputs are 8x8 digits, 1 channel."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

INPUT_SHAPE = (1, 8, 8)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batchnorm, and a strided 1x1 shortcut when the shape
    changes."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetish(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def separable(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_in, 3, stride, 1, groups=channels_in, bias=False),
        nn.BatchNorm2d(channels_in), nn.ReLU6(),
        nn.Conv2d(channels_in, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU6(),
    )


class MobileNetish(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            separable(8, 16, 1), separable(16, 32, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AttentionClassifier(nn.Module):
    """A one-block transformer over the image's 8 rows as tokens: LayerNorm, q/k/v projections, two heads,
    Softmax, an MLP with GELU, mean over tokens."""

    def __init__(self, dim: int = 16, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(8, dim) * 0.1)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(-1, 8, 8)) + self.position
        n, t, d = tokens.shape
        h = self.norm1(tokens)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(n, t, d)
        tokens = tokens + self.out(mixed)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.classifier(tokens.mean(dim=1))


class RowReader(nn.Module):
    """An image's rows (28 or 8 steps of pixels) through an LSTM or GRU, its last output classified: the
    row-by-row classifier as a user writes it, with the recurrent layer inside a graph of their own."""

    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU] = nn.LSTM, hidden: int = 16, side: int = 8,
                 classes: int = 10, **shape) -> None:
        super().__init__()
        self.rnn = kind(side, hidden, batch_first=True, **shape)
        self.classifier = nn.Linear(hidden * (2 if self.rnn.bidirectional else 1), classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(pixels[:, 0])
        return self.classifier(out[:, -1])


class TokenReader(nn.Module):
    """Token ids -> embedding -> a projection -> LSTM, its final hidden state ``h[-1]`` classified: a text
    classifier reading the recurrent node's state output rather than its sequence."""

    def __init__(self, vocabulary: int = 50, width: int = 12, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.project = nn.Linear(width, width)
        self.rnn = nn.LSTM(width, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(torch.relu(self.project(self.embed(ids))))
        return self.classifier(h[-1])


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batchnorm statistics and affine terms away from 1 and 0, so that an importer that drops them fails."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def export(model: nn.Module, path: Path, dynamo: bool = True, opset: int | None = None,
           input_shape: tuple[int, ...] = INPUT_SHAPE, example: torch.Tensor | None = None) -> Path:
    """``torch.onnx.export`` as a user calls it: one file, a dynamic batch (``example``: a batch of two other than
    pixels, such as token ids)."""
    model = model.eval()
    example = torch.randn(2, *input_shape) if example is None else example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), input_names=["pixels"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, dynamo=True,
                              opset_version=opset, verbose=False)
        else:
            torch.onnx.export(model, (example,), str(path), input_names=["pixels"], output_names=["scores"],
                              dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False,
                              opset_version=opset or 13)
    return path


def handmade_mlp(path: Path, opset: int = 11, seed: int = 0) -> Path:
    """A file written with ``onnx.helper``, as converters write them: a Reshape to [-1, 64] by a constant shape,
    then Gemm with transB=1, Relu, and Gemm without."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (32, 64)).astype(np.float32)  # [out, in]: read with transB=1
    b1 = rng.normal(0, 0.1, (32,)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (32, 10)).astype(np.float32)  # [in, out]
    b2 = rng.normal(0, 0.1, (1, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], alpha=1.0, beta=1.0),
    ]
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        initializer=[numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
                     numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
