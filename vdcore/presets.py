"""The named architectures of the papers, as specs: LeNet-300-100, LeNet-5-Caffe, the VGG-like CNN, and the
recurrent classifiers of Bayesian sparsification of RNNs (an image read row by row, a text classifier).

Plain data: ``vdcore.spec.preset_spec`` checks a preset's name and options and reports their errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Spec = dict[str, Any]


def lenet_300_100(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> Spec:
    """The MLP of LeCun et al. 1998: two hidden layers of 300 and 100 ReLU units."""
    return {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 300},
            {"type": "relu"},
            {"type": "linear", "out_features": 100},
            {"type": "relu"},
            {"type": "linear", "out_features": num_classes},
        ],
    }


def lenet_5_caffe(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> Spec:
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, 500 ReLU units (431k weights on MNIST)."""
    return {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "layers": [
            {"type": "conv2d", "out_channels": 20, "kernel_size": 5},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "conv2d", "out_channels": 50, "kernel_size": 5},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 500},
            {"type": "relu"},
            {"type": "linear", "out_features": num_classes},
        ],
    }


# Channels of the CIFAR VGG-like net (Zagoruyko 2015) at width 1; "M" is a 2x2 max pooling.
_VGG_PLAN: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg_like(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0) -> Spec:
    """The VGG-like CNN of the Sparse VD paper: 13 conv-BN-ReLU blocks and a 512-unit head.

    ``width`` scales every channel count (the paper's k). A pooling that would shrink the image below 1 pixel
    is left out, so small inputs still build.
    """
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= 4:
        raise ValueError(f"vgg-like 'width' must be a number in (0, 4], got {width!r}")
    layers: list[dict[str, Any]] = []
    side = min(input_shape[1:]) if len(input_shape) == 3 else 0
    for item in _VGG_PLAN:
        if item == "M":
            if side >= 2:
                layers.append({"type": "maxpool2d", "kernel_size": 2})
                side //= 2
            continue
        channels = max(1, round(int(item) * width))
        layers += [
            {"type": "conv2d", "out_channels": channels, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d"},
            {"type": "relu"},
        ]
    hidden = max(1, round(512 * width))
    layers += [
        {"type": "flatten"},
        {"type": "linear", "out_features": hidden},
        {"type": "batchnorm1d"},
        {"type": "relu"},
        {"type": "linear", "out_features": num_classes},
    ]
    return {"input_shape": list(input_shape), "num_classes": num_classes, "layers": layers}


def _rows(kind: str) -> Callable[..., Spec]:
    def preset(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, hidden_size: int = 128) -> Spec:
        return {
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "layers": [
                {"type": "rows"},
                {"type": kind, "hidden_size": hidden_size},
                {"type": "linear", "out_features": num_classes},
            ],
        }

    preset.__doc__ = (f"An image read row by row (MNIST: 28 steps of 28 pixels) by one {kind.upper()} layer of "
                      f"``hidden_size`` units, its last state classified by a linear layer.")
    return preset


def text_lstm(
    input_shape: Sequence[int] = (64,),
    num_classes: int = 2,
    vocabulary: int = 10000,
    embedding_dim: int = 64,
    hidden_size: int = 128,
) -> Spec:
    """A text classifier: token ids (``input_shape`` is ``[steps]``) -> an embedding -> an LSTM -> its last state
    -> a linear layer, as in Lobacheva et al. 2017's IMDb model."""
    return {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "layers": [
            {"type": "embedding", "num_embeddings": vocabulary, "embedding_dim": embedding_dim},
            {"type": "lstm", "hidden_size": hidden_size},
            {"type": "linear", "out_features": num_classes},
        ],
    }


PRESETS: dict[str, Callable[..., Spec]] = {
    "lenet-300-100": lenet_300_100,
    "lenet-5-caffe": lenet_5_caffe,
    "vgg-like": vgg_like,
    "lstm-rows": _rows("lstm"),
    "gru-rows": _rows("gru"),
    "text-lstm": text_lstm,
}

