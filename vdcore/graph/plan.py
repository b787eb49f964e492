"""An ONNX file checked as a classifier to compress: the facts a job needs before any training."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vdcore.graph.net import OnnxNet, load_onnx
from vdcore.graph.read import OnnxError


@dataclass(frozen=True)
class OnnxPlan:
    """A classifier in an ONNX file: one input of a fixed example shape (float, or integer token ids that embedding
    tables look up), one output of ``num_classes`` scores per example. ``build()`` gives a fresh copy of the
    imported network, holding the file's weights."""

    path: Path
    input_shape: tuple[int, ...]
    num_classes: int
    parameters: int
    net: OnnxNet = field(repr=False, compare=False)
    vocabulary: int | None = None  # token ids the input may hold (the smallest table's rows); None: float input

    def build(self) -> OnnxNet:
        return copy.deepcopy(self.net)  # importing again would parse, fold and check the file again


def plan_onnx(path: str | os.PathLike[str], max_parameters: int | None = None) -> OnnxPlan:
    """Import ``path`` (``OnnxError`` saying what to change if it cannot be) and check it is a classifier."""
    net = load_onnx(path, max_parameters)
    vocabulary = None if net.input_dtype.is_floating_point else net.vocabulary
    if not net.input_dtype.is_floating_point and vocabulary is None:
        raise OnnxError(f"the model's input is of type {net.input_dtype} but no embedding table (Gather on a "
                        "weight) looks it up; a job feeds integer inputs only as token ids, else float32")
    if any(size is None for size in net.input_shape[1:]):
        raise OnnxError(
            f"the model's input {net.input_name!r} has sizes that are not fixed besides the batch "
            f"({['batch', *('?' if s is None else s for s in net.input_shape[1:])]}); export it with fixed sizes"
        )
    with torch.no_grad():
        outputs = net.eval()(net.example_input())
    if len(net.output_names) != 1 or outputs.dim() != 2:
        raise OnnxError(
            f"the model must have one output of class scores shaped [batch, classes]; it has {net.output_names}"
            + ("" if len(net.output_names) != 1 else f" shaped {['batch', *outputs.shape[1:]]}")
        )
    return OnnxPlan(Path(path), tuple(net.input_shape[1:]), int(outputs.shape[1]), net.read.parameters, net,
                    vocabulary)
