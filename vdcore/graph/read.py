"""Reading a user's ONNX file into a checked, self-contained graph whose constant parts are already computed.

Nothing in the file is executed: it is parsed by protobuf, checked by ``onnx.checker``, and constant subgraphs
(weights transposed or built by ConstantOfShape, shape chains of older exports) are evaluated by onnx's own
reference implementation of each standard operator, as onnxruntime folds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper, reference, shape_inference, version_converter

# The opsets accepted; files older than ``CONVERTED_FROM_BELOW`` are converted up to it, so that the operators
# have one meaning each (Softmax's axis, Squeeze's axes as an input, ...).
MIN_OPSET, CONVERTED_FROM_BELOW = 9, 13
MAX_OPSET = onnx.defs.onnx_opset_version()
# Operators whose result depends on more than their inputs: never folded, and refused (see ops.py).
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


class OnnxError(ValueError):
    """An ONNX file that cannot be imported; the message says what is wrong and what to change."""


@dataclass(frozen=True)
class ReadGraph:
    """A graph ready to import: one input, its constants by name (initializers and folded results)."""

    model: onnx.ModelProto
    constants: dict[str, np.ndarray]
    opset: int

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    @property
    def parameters(self) -> int:
        """Values in the graph's constants: its weights, and the few shapes and scalars beside them."""
        return sum(int(np.prod(value.shape)) for value in self.constants.values())


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How messages name a node: its name when it has one, else its position, and its operator."""
    return f"node {node.name or f'#{index}'} ({node.op_type})"


def read_onnx(data: bytes) -> ReadGraph:
    """Parse, check, convert and fold an ONNX file's bytes, or raise ``OnnxError`` saying what to fix."""
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise OnnxError(f"this is not an ONNX file ({error}); export it with torch.onnx.export") from None
    if not model.graph.node:
        raise OnnxError("the ONNX file holds no graph (or is truncated); export the model again")
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise OnnxError(
            f"the weights {external[:3]} live in a separate data file; save them inside the model "
            "(torch.onnx.export(..., external_data=False), or onnx.save(model, path, save_as_external_data=False))"
        )
    opset = _default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxError(f"opset {opset} is not supported; export with an opset from {MIN_OPSET} to {MAX_OPSET}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise OnnxError(f"the ONNX file fails onnx.checker: {_first_line(error)}") from None
    if opset < CONVERTED_FROM_BELOW:
        try:
            model = version_converter.convert_version(model, CONVERTED_FROM_BELOW)
        except Exception as error:  # the converter raises bare RuntimeErrors and more
            raise OnnxError(
                f"opset {opset} could not be converted to {CONVERTED_FROM_BELOW} ({_first_line(error)}); export "
                f"with opset {CONVERTED_FROM_BELOW} or later"
            ) from None
        opset = CONVERTED_FROM_BELOW
    model = shape_inference.infer_shapes(model)
    return _fold_constants(model, opset)


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise OnnxError("the ONNX file imports no standard operator set; export it with torch.onnx.export")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _fold_constants(model: onnx.ModelProto, opset: int) -> ReadGraph:
    """Evaluate every node whose inputs are all constants and drop it, keeping its outputs as constants."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise OnnxError(
                f"{node_label(node, index)} is from the operator domain {node.domain!r}; only standard ONNX "
                "operators are supported (export without custom operators)"
            )
        foldable = node.op_type not in _NONDETERMINISTIC and not _has_subgraph(node)
        if foldable and all(name == "" or name in constants for name in node.input):
            outputs = _evaluate(node, [constants.get(name) for name in node.input], opset, index)
            constants.update(zip(node.output, outputs, strict=True))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    folded = [o.name for o in graph.output if o.name in constants]
    if folded:
        raise OnnxError(f"the outputs {folded} do not depend on the input; export a model that uses its input")
    constants = {name: value for name, value in constants.items() if name in used}
    initializers = {t.name for t in graph.initializer}  # older exports list them among the inputs too
    inputs = [i for i in graph.input if i.name not in constants and i.name not in initializers]
    new_graph = helper.make_graph(
        kept, graph.name or "graph", inputs, list(graph.output),
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
        value_info=[v for v in graph.value_info if v.name not in constants],
    )
    new_model = helper.make_model(
        new_graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=model.ir_version,
        producer_name=model.producer_name or "vdcompress",
    )
    return ReadGraph(model=new_model, constants=constants, opset=opset)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute)


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int, index: int) -> list[np.ndarray]:
    """One node's outputs, computed by onnx's reference implementation at the file's opset."""
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for name, value in zip(names, values, strict=True) if name and value is not None
    ]
    outputs = [helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(len(node.output))]
    single = helper.make_node(node.op_type, names, [o.name for o in outputs], domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "fold", inputs, outputs)
    try:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        evaluator = reference.ReferenceEvaluator(model)
        feeds = {name: value for name, value in zip(names, values, strict=True) if name and value is not None}
        return [np.asarray(result) for result in evaluator.run(None, feeds)]
    except Exception as error:  # the reference implementation raises whatever numpy raises
        raise OnnxError(
            f"{node_label(node, index)} cannot be computed from its constants: {_first_line(error)}"
        ) from None
