"""Reshape targets that a graph computes from the reshaped value's own shape, and so follow any shrink of it.

The dynamo exporter writes ``out.reshape(steps, batch, -1)`` after a recurrent node as ``Shape(out)`` sliced,
multiplied and concatenated into the target. Such a target is not fixed: when the shrink leaves ``out`` fewer
units, its Shape is smaller and the target follows. We check that by running the target's own subgraph (shape
arithmetic only, with onnx's reference evaluator) on the value's shape with each axis one smaller: the target
must then still describe as many elements as the value holds.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from vdcore.graph.tracer import Tracer

SHAPE_ARITHMETIC = {"Slice", "Gather", "Concat", "Mul", "Div", "Add", "Sub", "Unsqueeze", "Squeeze", "Cast",
                    "Identity", "Reshape"}


def follows_own_shape(t: Tracer, reshape: onnx.NodeProto) -> bool:
    """Whether ``reshape``'s computed target is shape arithmetic on its data input's own shape (and constants)
    that stays consistent when that shape shrinks."""
    source = reshape.input[0]
    nodes = _target_nodes(t, reshape.input[1], source)
    if nodes is None or not any(n.op_type == "Shape" for n in nodes):
        return False
    order = {id(node): i for i, node in enumerate(t.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    used = {name for n in nodes for name in n.input if name in t.constants}
    graph = helper.make_graph(
        nodes, "target", [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(reshape.input[1], onnx.TensorProto.INT64, None)],
        initializer=[numpy_helper.from_array(np.asarray(t.constants[name]), name) for name in sorted(used)],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph))
    shape = list(t.file_shape(source))
    batch = t.batch_axis(source)
    for axis, size in enumerate(shape):
        if axis == batch or size < 2:
            continue
        smaller = [*shape[:axis], size - 1, *shape[axis + 1:]]
        try:
            target = evaluator.run(None, {source: np.zeros(smaller, np.float32)})[0].reshape(-1).tolist()
        except Exception:  # the evaluator raises many kinds: any means the target does not follow
            return False
        if not _describes(target, smaller):
            return False
    return True


def feeds_own_reshapes(t: Tracer, shape_node: onnx.NodeProto) -> bool:
    """Whether everything ``shape_node``'s output flows into, through shape arithmetic, is the target of a
    Reshape of the value it measures, one that follows its shape."""
    source, pending, seen = shape_node.input[0], [shape_node.output[0]], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for reader in t.readers.get(name, []):
            if reader.op_type == "Reshape" and reader.input[1] == name:
                if reader.input[0] != source or not follows_own_shape(t, reader):
                    return False
            elif reader.op_type in SHAPE_ARITHMETIC:
                pending.extend(reader.output)
            else:
                return False
        if any(o.name == name for o in t.graph.output):
            return False
    return True


def _target_nodes(t: Tracer, target: str, source: str) -> list[onnx.NodeProto] | None:
    """The nodes computing ``target`` from constants and ``Shape(source)``; None if anything else feeds it."""
    nodes: dict[int, onnx.NodeProto] = {}
    pending = [target]
    while pending:
        name = pending.pop()
        if not name or name in t.constants:
            continue
        node = t.producer.get(name)
        if node is None:
            return None
        if id(node) in nodes:
            continue
        if node.op_type == "Shape":
            if node.input[0] != source:
                return None
        elif node.op_type not in SHAPE_ARITHMETIC:
            return None
        else:
            pending.extend(node.input)
        nodes[id(node)] = node
    return list(nodes.values())


def _describes(target: list[int], shape: list[int]) -> bool:
    """Whether a Reshape target (0 copies an axis, -1 is inferred) fits as many elements as ``shape`` holds."""
    sizes = [shape[i] if size == 0 and i < len(shape) else size for i, size in enumerate(target)]
    known, total = math.prod(s for s in sizes if s != -1), math.prod(shape)
    if sizes.count(-1) > 1 or known <= 0:
        return False
    return total % known == 0 if -1 in sizes else known == total
