"""Writing an imported network's trained weights back into its own ONNX graph.

The user's graph stays as it was read (its input and output names, dtypes, dynamic dimensions and operators);
only the tensors the layers hold are replaced, so what onnxruntime runs is the file the user sent, retrained.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from vdcore.export import PARITY_TOLERANCE, ExportError, ExportResult
from vdcore.files import atomic_path
from vdcore.graph.net import CHECK_BATCH, OnnxNet, max_difference
from vdcore.graph.ops import Source
from vdcore.graph.recurrent import RECURRENT_CONVERTERS, onnx_tensors
from vdcore.prune import prune
from vdcore.sparsify import is_sparsified


def graph_tensors(layer: nn.Module, source: Source) -> dict[str, np.ndarray]:
    """The initializers ``layer`` fills, by name, in the layout its node reads them."""
    if source.layout in RECURRENT_CONVERTERS:
        return onnx_tensors(layer, source)
    tensors = {}
    for attribute, name in source.tensors.items():
        value = getattr(layer, attribute).detach().cpu().numpy()
        if attribute == "weight" and source.layout == "matmul":
            value = value.T
        elif attribute == "weight" and source.layout == "conv1d":
            value = value[:, :, 0, :]
        tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors


def trained_model(net: OnnxNet) -> onnx.ModelProto:
    """The graph ``net`` was read from, holding ``net``'s current weights (Sparse VD layers pruned first)."""
    net = pruned_net(net)
    model = copy.deepcopy(net.read.model)
    replaced: dict[str, np.ndarray] = {}
    gemms, reshaped = set(), set()  # a Gemm's B is written as [out, in] (transB=1), whatever it was
    for key, source in net.sources.items():
        replaced.update(graph_tensors(net.layers[key], source))
        if source.layout == "gemm":
            gemms.add(source.node)
            reshaped.add(source.tensors["weight"])
    for node in model.graph.node:
        if node.name in gemms:  # the layer holds alpha * B (transposed to [out, in]) and beta * C
            keep = [a for a in node.attribute if a.name not in ("alpha", "beta", "transB")]
            del node.attribute[:]
            node.attribute.extend([*keep, helper.make_attribute("transB", 1)])
    for tensor in model.graph.initializer:
        if tensor.name in replaced:
            value = replaced[tensor.name]
            value = value if tensor.name in reshaped else value.reshape(tuple(tensor.dims))  # e.g. a bias [1, out]
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return model


def pruned_net(net: OnnxNet) -> OnnxNet:
    """``net`` with its Sparse VD layers pruned into plain ones (a copy), or ``net`` if it has none."""
    return prune(net) if is_sparsified(net) else net  # type: ignore[return-value]


def write_onnx(net: OnnxNet, path: str | os.PathLike[str]) -> ExportResult:
    """Write ``trained_model(net)`` to ``path`` and prove it computes what ``net`` computes (``save_checked``)."""
    reference = pruned_net(net).eval().cpu()
    return save_checked(trained_model(reference), reference, path)


def save_checked(model: onnx.ModelProto, reference: OnnxNet, path: str | os.PathLike[str]) -> ExportResult:
    """Write ``model`` to ``path`` once it passes ``onnx.checker`` and onnxruntime running it agrees with
    ``reference`` within ``PARITY_TOLERANCE`` at two batch sizes (else ``ExportError``). The file appears at
    ``path`` only once it is complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        diff = max(max_difference(reference, tmp, batch) for batch in (CHECK_BATCH + 2, 1))
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {PARITY_TOLERANCE})")
    return ExportResult(path=path, bytes=path.stat().st_size, max_abs_diff=diff)
