"""A user's ONNX graph as a trainable PyTorch module: its nodes run in the file's order, its weight-bearing
nodes as ``nn.Linear``/``nn.Conv2d``/... layers that ``vdcore.sparsify_`` swaps like any other."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from vdcore.export import onnx_session
from vdcore.graph import ops
from vdcore.graph.ops import ONNX_DTYPES, NodeContext, Source, Step
from vdcore.graph.read import OnnxError, ReadGraph, node_label, read_onnx
from vdcore.graph.recurrent import RECURRENT_CONVERTERS
from vdcore.layers import EmbeddingSVD

CONVERTERS = {**ops.CONVERTERS, **RECURRENT_CONVERTERS}
OPERATORS = tuple(sorted(CONVERTERS))  # what an imported file may hold, for messages and the README
# Largest tolerated |onnxruntime - PyTorch| when a file is imported; beyond it the import is wrong.
IMPORT_TOLERANCE = 1e-4
# Sizes given to the input's symbolic dimensions other than the batch when an import is checked.
CHECK_BATCH, CHECK_OTHER_DIM = 3, 5


class OnnxNet(nn.Module):
    """The graph of ``read`` in PyTorch. ``layers`` holds the trainable layers by node, ``sources`` where each
    one's tensors go back in the graph (``vdcore.graph.write_onnx``); every other constant is a buffer."""

    def __init__(self, read: ReadGraph, steps: list[Step], input_shape: list[int | None]) -> None:
        super().__init__()
        self.read = read
        self.steps = steps
        self.input_name = read.graph.input[0].name
        self.input_dtype = ONNX_DTYPES[read.graph.input[0].type.tensor_type.elem_type]
        self.input_shape = input_shape  # None for a symbolic dimension; the first is the batch
        self.output_names = [output.name for output in read.graph.output]
        self.layers = nn.ModuleDict()
        self.sources: dict[str, Source] = {}
        self.layer_of: dict[int, str] = {}  # step index -> key in layers
        for index, step in enumerate(steps):
            if step.layer is not None:
                key = _module_key(step.node, self.layers)
                self.layers[key] = step.layer
                self.sources[key] = step.source  # type: ignore[assignment]
                self.layer_of[index] = key
                step.layer = None  # the module lives in ``layers``, where sparsify_ may replace it
        owned = {name for source in self.sources.values() for name in source.tensors.values()}
        self.constant_of: dict[str, str] = {}
        for name, value in read.constants.items():
            if name not in owned and any(name in step.inputs for step in steps):
                attribute = f"constant_{len(self.constant_of)}"
                self.register_buffer(attribute, torch.from_numpy(np.array(value, copy=True)), persistent=False)
                self.constant_of[name] = attribute

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        values: dict[str, Tensor] = {self.input_name: x}
        values.update({name: getattr(self, attribute) for name, attribute in self.constant_of.items()})
        for index, step in enumerate(self.steps):
            layer = self.layers[self.layer_of[index]] if index in self.layer_of else None
            result = step.run(layer, *(values[name] if name else None for name in step.inputs))
            results = result if isinstance(result, tuple) else (result,)
            values.update((name, value) for name, value in zip(step.outputs, results, strict=False) if name)
        outputs = tuple(values[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    @property
    def vocabulary(self) -> int | None:
        """The rows of the smallest embedding table (what integer inputs may index), or None without tables; a
        table swapped for Sparse VD (``EmbeddingSVD``) counts as well."""
        tables = [layer.num_embeddings for layer in self.layers.values()
                  if isinstance(layer, nn.Embedding | EmbeddingSVD)]
        return min(tables, default=None)

    def example_input(self, batch: int = CHECK_BATCH, seed: int = 0) -> Tensor:
        """A random input of the graph's shape (symbolic sizes filled in), for checks: indices stay within the
        smallest embedding table that reads them."""
        generator = torch.Generator().manual_seed(seed)
        shape = [batch, *(CHECK_OTHER_DIM if size is None else size for size in self.input_shape[1:])]
        if self.input_dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(self.input_dtype)
        return torch.randint(0, self.vocabulary or 2, shape, generator=generator).to(self.input_dtype)


def _module_key(node: str, taken: nn.ModuleDict) -> str:
    key = re.sub(r"\W", "_", node).strip("_") or "layer"
    key = f"n_{key}" if key[0].isdigit() else key
    while key in taken:
        key += "_"
    return key


def load_onnx(source: str | os.PathLike[str] | bytes, max_parameters: int | None = None) -> OnnxNet:
    """The ONNX file ``source`` (a path or its bytes) as a trainable ``OnnxNet`` holding the file's weights.

    Only standard operators in ``vdcore.graph.OPERATORS`` are accepted, one input, weights inside the file,
    opsets 9 and later; anything else raises ``OnnxError`` naming what to change. The import is checked:
    onnxruntime's outputs on the same file and PyTorch's agree within ``IMPORT_TOLERANCE``.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    read = _named_nodes(read_onnx(data))
    if max_parameters is not None and read.parameters > max_parameters:
        raise OnnxError(f"the model holds {read.parameters:,} weights, more than the {max_parameters:,} allowed")
    inputs = list(read.graph.input)
    if len(inputs) != 1:
        raise OnnxError(f"the model takes {len(inputs)} inputs ({[i.name for i in inputs]}); only models with one "
                        "input are supported")
    input_type = inputs[0].type.tensor_type
    if input_type.elem_type not in ONNX_DTYPES or not input_type.HasField("shape"):
        raise OnnxError("the model's input must be a tensor of a known rank and of a numeric type")
    input_shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in input_type.shape.dim]
    if not input_shape:
        raise OnnxError("the model's input has no batch dimension; export it with one")
    read = _untie_constants(_dynamic_batch(read))
    net = OnnxNet(read, _convert(read), [None, *input_shape[1:]])
    _check_against_onnxruntime(net)
    return net


def _named_nodes(read: ReadGraph) -> ReadGraph:
    """Give every node a unique name, so that layers and messages can refer to it."""
    seen: Counter[str] = Counter()
    for index, node in enumerate(read.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        seen[name] += 1
        node.name = name if seen[name] == 1 else f"{name}_{seen[name]}"
    return read


def _untie_constants(read: ReadGraph) -> ReadGraph:
    """Give each node its own copy of a float constant that several nodes read, so that each can own it as a
    weight: exporters share identical initializers (two LayerNorms' ones), and a genuinely tied weight then
    trains as two."""
    taken: set[str] = set()
    constants = dict(read.constants)
    for node in read.graph.node:
        for position, name in enumerate(node.input):
            value = read.constants.get(name)
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            if name in taken:
                copy_name = f"{name}__{node.name}_{position}"
                constants[copy_name] = value
                node.input[position] = copy_name
                read.graph.initializer.append(numpy_helper.from_array(value, copy_name))
            taken.add(name)
    return ReadGraph(read.model, constants, read.opset)


def _dynamic_batch(read: ReadGraph) -> ReadGraph:
    """The first dimension of the input and outputs made symbolic: a file exported for one batch size still
    serves any, if its graph does not bake that size in (the import check finds out)."""
    for value in [read.graph.input[0], *read.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    return read


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return shapes


def _convert(read: ReadGraph) -> list[Step]:
    graph = read.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    weight_names = {
        name for name, value in read.constants.items()
        if len(readers.get(name, [])) == 1 and name not in outputs  # one node reads it, once
        and value.dtype == np.float32
    }
    shapes = _shapes(graph)
    steps: list[Step] = []
    absorbed: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name in absorbed:
            continue
        converter = CONVERTERS.get(node.op_type)
        if converter is None:
            raise OnnxError(
                f"{node_label(node, index)} is not supported. Supported operators: {', '.join(OPERATORS)}. "
                "Export the model without it, or replace it by supported operators"
            )
        step = converter(NodeContext(node, index, read.constants, shapes, readers, weight_names))
        absorbed.update(step.absorbs)
        steps.append(step)
    return steps


@torch.no_grad()
def max_difference(net: OnnxNet, path_or_model: str | os.PathLike[str] | onnx.ModelProto, batch: int) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over the outputs of ``net`` and an ONNX model of it, on one random
    input of ``batch`` examples."""
    x = net.example_input(batch)
    model = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else path_or_model
    try:
        got = onnx_session(model).run(None, {net.input_name: x.numpy()})
    except Exception as error:  # onnxruntime raises its own exception types for graphs it cannot run
        raise OnnxError(f"onnxruntime cannot run the model at batch {batch}: {str(error).splitlines()[0]}; if the "
                        "graph fixes its batch size, export it with a dynamic batch dimension") from None
    expected = net.eval()(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    diffs = [float(np.max(np.abs(g - e.numpy()), initial=0.0)) for g, e in zip(got, expected, strict=True)]
    return max(diffs, default=0.0)


def _check_against_onnxruntime(net: OnnxNet) -> None:
    with torch.no_grad():
        outputs = net.eval()(net.example_input(CHECK_BATCH))
    for name, output in zip(net.output_names, outputs if isinstance(outputs, tuple) else (outputs,), strict=True):
        if output.dim() == 0 or output.shape[0] != CHECK_BATCH:
            raise OnnxError(
                f"the output {name!r} has shape {list(output.shape)} for a batch of {CHECK_BATCH}: the graph fixes "
                "its batch size; export the model with a dynamic batch dimension (torch.onnx.export's "
                "dynamic_shapes or dynamic_axes)"
            )
    for batch in (CHECK_BATCH, 1):
        diff = max_difference(net, net.read.model, batch)
        if not diff <= IMPORT_TOLERANCE:
            raise OnnxError(
                f"the imported model differs from onnxruntime on the same file by {diff:.3g} (> {IMPORT_TOLERANCE}); "
                "this is a bug in the importer: please report it with the file"
            )
