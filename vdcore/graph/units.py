"""Which unit each value of an ONNX graph carries: the map ``vdcore.graph.shrink`` cuts dead units by.

Every position of every tensor (its axes after the batch) gets a *slot*, the unit it belongs to. A weight
layer (Conv, Gemm, MatMul on a constant, Gather on a table) starts one slot per output unit; operators that act
on each position alone pass slots through (activations, pooling over space, reshapes that keep the batch
first); operators that combine two tensors position by position (a residual Add, a gating Mul) merge the slots
they combine, so that coupled units are removed together; a depthwise convolution keeps its input's slots.
An operator this module cannot follow *pins* what it reads: those units stay, and the reason is kept for the
report. Slots are merged with a union-find; the unit of a slot is its root.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from vdcore.graph.recurrent_units import recurrent
from vdcore.graph.shape_targets import feeds_own_reshapes, follows_own_shape
from vdcore.graph.tracer import NO_UNIT, Layer, Tracer, UnitMap, channel_slots, pin_varying, spread


def _same(t: Tracer, node: onnx.NodeProto) -> None:
    source, out = node.input[0], node.output[0]
    if source in t.values and out in t.values and t.shape(source) == t.shape(out):
        t.set(out, t.slots(source))
    else:
        t.opaque(node)


def _elementwise(t: Tracer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    shape = t.shape(out)[1:]
    merged = np.full(shape, NO_UNIT, dtype=np.int64)
    unmanaged = np.zeros(shape, dtype=bool)
    for position, name in enumerate(node.input):
        if name in t.constants:
            t.map.sliced_constants.append((node, position, None))
            continue
        if len(t.shape(name)) != len(t.shape(out)):
            t.opaque(node, "which broadcasts a value without its batch axis")
            return
        slots = np.broadcast_to(t.slots(name), shape)
        t.units.merge(merged, slots)
        unmanaged |= slots < 0
        merged = np.where(merged >= 0, merged, slots)
    t.units.pin(merged[unmanaged], f"{node.op_type} node {node.name!r} combines them with values of no unit")
    t.set(out, merged)


def _conv(t: Tracer, node: onnx.NodeProto) -> None:
    weight = t.constants.get(node.input[1])
    source, out = node.input[0], node.output[0]
    if weight is None:
        return t.opaque(node, "whose weight is not a constant")
    cols = channel_slots(t, source)
    if cols is None:
        t.units.pin(t.slots(source), f"they reach convolution {node.name!r} other than as its channels")
        cols = np.full(t.shape(source)[1], NO_UNIT, dtype=np.int64)
    groups, outputs, channels = int(t.attr(node, "group", 1)), weight.shape[0], cols.size
    nonzero = (weight != 0).reshape(outputs, weight.shape[1], -1).any(axis=2)
    if groups == 1:
        kind, rows, reads = "conv", t.units.new(outputs), nonzero
    else:
        per_group_in, per_group_out = channels // groups, outputs // groups
        reads = np.zeros((outputs, channels), dtype=bool)
        for o in range(outputs):
            start = (o // per_group_out) * per_group_in
            reads[o, start : start + per_group_in] = nonzero[o]
        if groups == channels == outputs:
            kind, rows = "depthwise", cols
        else:
            kind, rows = "grouped", t.units.new(outputs)
            why = f"they belong to grouped convolution {node.name!r}, whose groups must stay equal"
            t.units.pin(rows, why)
            t.units.pin(cols, why)
    t.map.layers.append(Layer(node, kind, rows, cols, reads))
    t.set(out, spread(rows, t.shape(out)[1:], 0))


def _gemm(t: Tracer, node: onnx.NodeProto) -> None:
    b = t.constants.get(node.input[1])
    if b is None or b.ndim != 2 or t.attr(node, "transA", 0) or len(t.shape(node.input[0])) != 2:
        return t.opaque(node, "which multiplies two computed values")
    weight = b if t.attr(node, "transB", 0) else b.T
    _linear(t, node, weight, t.slots(node.input[0]), "gemm")


def _matmul(t: Tracer, node: onnx.NodeProto) -> None:
    b = t.constants.get(node.input[1])
    if b is None:
        return _product(t, node)
    if b.ndim != 2:
        return t.opaque(node, "whose weight is not a matrix")
    source = node.input[0]
    cols = channel_slots(t, source, axis=len(t.shape(source)) - 2)
    if cols is None:
        t.units.pin(t.slots(source), f"they reach MatMul {node.name!r} other than as its features")
        cols = np.full(b.shape[0], NO_UNIT, dtype=np.int64)
    _linear(t, node, b.T, cols, "matmul")


def _product(t: Tracer, node: onnx.NodeProto) -> None:
    """A MatMul of two computed values, as attention's ``q @ k^T`` and ``scores @ v``. Units along the summed
    axis (a head's query and key features) are one unit, needed by the product: they go only as zeros. Units
    along the other axis of either side (a head's value features) carry into the output, where a layer may stop
    reading them; a constant among them does not fold (the product scales it). Neither side may lose a head."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    rank = len(t.shape(out))
    if len(t.shape(a)) != rank or len(t.shape(b)) != rank or rank < 3:
        return t.opaque(node, "which multiplies values of different ranks")
    # Slots axes: rank - 3 is A's rows and B's summed axis, rank - 2 is A's summed axis and B's columns.
    a_rows, b_cols = _along(t.slots(a), rank - 2), _along(t.slots(b), rank - 3)
    a_summed = None if a_rows is not None else _along(t.slots(a), rank - 3)
    b_summed = None if b_cols is not None else _along(t.slots(b), rank - 2)
    if (a_rows is None and a_summed is None) or (b_cols is None and b_summed is None):
        return t.opaque(node, "whose inputs carry units along both of their last axes")
    batch = t.shape(out)[1:-2]
    summed = [np.broadcast_to(s, (*batch, s.shape[-1])) for s in (a_summed, b_summed) if s is not None]
    if len(summed) == 2:
        t.units.merge(*summed)
    alone = [part >= 0 for part in summed] if len(summed) < 2 else [(summed[0] < 0) != (summed[1] < 0)] * 2
    for part, lonely in zip(summed, alone, strict=True):
        t.units.pin(part[lonely], f"MatMul node {node.name!r} sums them with values that carry no unit")
        t.map.used.update(int(slot) for slot in np.unique(part[part >= 0]))
    for name in (a, b):
        t.map.fixed_axes.setdefault(name, set()).update(range(1, rank - 2))
    carried = [(part, axis) for part, axis in ((a_rows, rank - 2), (b_cols, rank - 3))
               if part is not None and (part >= 0).any()]
    if len(carried) == 2:
        for part, _ in carried:
            t.units.pin(part, f"MatMul node {node.name!r} multiplies them with other units")
        return
    shape = t.shape(out)[1:]
    slots = np.full(shape, NO_UNIT, dtype=np.int64)
    for part, axis in carried:
        slots = np.broadcast_to(np.expand_dims(part, axis), shape)
        t.map.unfoldable.update(int(slot) for slot in np.unique(part[part >= 0]))
    t.set(out, slots)


def _along(slots: np.ndarray, axis: int) -> np.ndarray | None:
    """The slots with ``axis`` (of the slots array) dropped, if they are the same along it."""
    first = np.take(slots, [0], axis=axis)
    return None if (slots != first).any() else np.squeeze(first, axis=axis)


def _linear(t: Tracer, node: onnx.NodeProto, weight: np.ndarray, cols: np.ndarray, kind: str) -> None:
    rows = t.units.new(weight.shape[0])
    t.map.layers.append(Layer(node, kind, rows, cols, weight != 0))
    out = node.output[0]
    t.set(out, spread(rows, t.shape(out)[1:], len(t.shape(out)) - 2))


def _gather(t: Tracer, node: onnx.NodeProto) -> None:
    table = t.constants.get(node.input[0])
    if table is None:
        return _select(t, node)
    if table.ndim != 2 or t.attr(node, "axis", 0) != 0:
        return t.opaque(node)
    rows = t.units.new(table.shape[1])
    t.map.layers.append(Layer(node, "embedding", rows, np.full(table.shape[0], NO_UNIT), (table != 0).T))
    out = node.output[0]
    t.set(out, spread(rows, t.shape(out)[1:], len(t.shape(out)) - 2))


def _select(t: Tracer, node: onnx.NodeProto) -> None:
    """Positions picked along an axis other than the batch by constant indices (``out[:, -1]``, a sequence's
    last step): they keep their units."""
    source, indices = node.input[0], t.constants.get(node.input[1])
    axis = t.map.our_axis(source, int(t.attr(node, "axis", 0)) % len(t.shape(source)))
    if indices is None or axis == 0:
        return t.opaque(node, "which picks positions computed at run time or along the batch axis")
    t.set(node.output[0], np.take(t.slots(source), indices, axis=axis - 1))


def _per_channel(t: Tracer, node: onnx.NodeProto) -> None:
    """Batch normalisation and pooling: each channel on its own, over space."""
    source, out = node.input[0], node.output[0]
    cols = channel_slots(t, source)
    if cols is None:
        return t.opaque(node)
    t.set(out, spread(cols, t.shape(out)[1:], 0))
    if node.op_type == "BatchNormalization":
        t.map.sliced_constants.extend((node, position, 1) for position in range(1, 5))


def _normalise(axes_of: Callable[[Tracer, onnx.NodeProto], list[int]]) -> Callable[[Tracer, onnx.NodeProto], None]:
    """LayerNormalization and Softmax: the units along the axes they normalise over must stay."""

    def rule(t: Tracer, node: onnx.NodeProto) -> None:
        source = node.input[0]
        rank = len(t.shape(source))
        axes = [axis % rank for axis in axes_of(t, node)]
        if 0 in axes:
            return t.opaque(node)
        slots = t.slots(source)
        pin_varying(t, slots, [axis - 1 for axis in axes], f"{node.op_type} node {node.name!r} normalises over them")
        t.set(node.output[0], slots)
        t.map.sliced_constants.extend((node, position, None) for position in range(1, len(node.input)))

    return rule


def _layer_norm_axes(t: Tracer, node: onnx.NodeProto) -> list[int]:
    rank = len(t.shape(node.input[0]))
    return list(range(int(t.attr(node, "axis", -1)) % rank, rank))


def _reduce(t: Tracer, node: onnx.NodeProto) -> None:
    source, out = node.input[0], node.output[0]
    rank = len(t.shape(source))
    axes = t.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = t.constants.get(node.input[1])
        if axes is None:
            return t.opaque(node)
    axes = sorted({int(a) % rank for a in (range(rank) if axes is None or len(axes) == 0 else axes)})
    if 0 in axes:
        return t.opaque(node)
    slots = t.slots(source)
    pin_varying(t, slots, [a - 1 for a in axes], f"{node.op_type} node {node.name!r} reduces over them")
    reduced = slots
    for axis in axes:  # a sum over positions of several units carries none of them
        first = np.take(reduced, [0], axis=axis - 1)
        reduced = np.where((reduced != first).any(axis=axis - 1, keepdims=True), NO_UNIT, first)
    t.set(out, reduced.reshape(t.shape(out)[1:]))


def _reshape(t: Tracer, node: onnx.NodeProto) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze that keep the batch an axis of its own: positions keep their order.
    A target computed at run time fixes the sizes it gives, unless it is computed from the reshaped value's own
    shape (``x.view(*x.shape[:2], -1)``), which follows what the shrink leaves of it."""
    source, out = node.input[0], node.output[0]
    before = [t.map.batch_axis(name) for name in (source, out)]
    if None in before or math.prod(t.file_shape(source)[:before[0]]) != math.prod(t.file_shape(out)[:before[1]]):
        return t.opaque(node, "which merges the batch axis with others")
    shape = list(t.file_shape(out))
    shape[before[1]] = 1
    t.set(out, np.squeeze(t.file_slots(source).reshape(shape), before[1]))
    if node.op_type == "Reshape" and node.input[1] not in t.constants and not follows_own_shape(t, node):
        target = t.values.get(node.input[1])
        file_axes = range(len(shape)) if target is None else [
            axis for axis, size in enumerate(target.reshape(-1).tolist()) if size != -1]
        fixed = {t.map.our_axis(out, axis) for axis in file_axes} - {0}
        t.map.fixed_axes.setdefault(out, set()).update(fixed)


def _transpose(t: Tracer, node: onnx.NodeProto) -> None:
    """Any permutation, the batch axis included (a recurrent node's input and output are time-major)."""
    source, out = node.input[0], node.output[0]
    rank = len(t.shape(source))
    perm = list(t.attr(node, "perm", list(reversed(range(rank)))))
    batch = t.batch_axis(source)
    if batch is None or perm.index(batch) != t.batch_axis(out):
        return t.opaque(node, "which moves the batch axis")
    t.set(out, np.squeeze(t.file_slots(source).transpose(perm), perm.index(batch)))


def _concat(t: Tracer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    axis = t.map.our_axis(out, int(t.attr(node, "axis")) % len(t.shape(out)))
    if axis == 0 or any(name in t.constants or t.batch_axis(name) != t.batch_axis(out) for name in node.input):
        return t.opaque(node, "which joins values along the batch axis or joins constants")
    t.set(out, np.concatenate([t.slots(name) for name in node.input], axis=axis - 1))


def _split(t: Tracer, node: onnx.NodeProto) -> None:
    source = node.input[0]
    axis = t.map.our_axis(source, int(t.attr(node, "axis", 0)) % len(t.shape(source)))
    if axis == 0 or any(t.batch_axis(name) != t.batch_axis(source) for name in node.output):
        return t.opaque(node, "which splits the batch axis")
    slots, start = t.slots(source), 0
    for name in node.output:
        size = t.shape(name)[axis]
        t.set(name, np.take(slots, range(start, start + size), axis=axis - 1))
        start += size


def _shape(t: Tracer, node: onnx.NodeProto) -> None:
    """Reading only the batch size of a tensor (``x.view(x.size(0), -1)``), or reshaping the tensor by its own
    shape, lets its units go."""
    batch = t.batch_axis(node.input[0])
    readers = t.readers.get(node.output[0], [])
    batch_only = all(r.op_type == "Gather" and t.constants.get(r.input[1]) is not None
                     and t.constants[r.input[1]].size == 1 and int(t.constants[r.input[1]]) == batch for r in readers)
    start = int(t.attr(node, "start", 0))
    if not (batch_only or (batch == start == 0 and t.attr(node, "end") == 1) or feeds_own_reshapes(t, node)):
        t.opaque(node, "whose shape the graph computes with")


_POSITIONWISE = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf", "Clip", "HardSigmoid", "HardSwish", "Sqrt", "Neg",
    "Reciprocal", "Exp", "Abs", "Identity", "Dropout", "Cast",
)
RULES: dict[str, Callable[[Tracer, onnx.NodeProto], None]] = {
    **dict.fromkeys(_POSITIONWISE, _same),
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Sum", "Where"), _elementwise),
    **dict.fromkeys(("BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),
                    _per_channel),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax"), _reduce),
    **dict.fromkeys(("Reshape", "Flatten", "Squeeze", "Unsqueeze"), _reshape),
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Gather": _gather, "Transpose": _transpose,
    "Concat": _concat, "Split": _split, "Shape": _shape,
    "LayerNormalization": _normalise(_layer_norm_axes),
    "Softmax": _normalise(lambda t, node: [int(t.attr(node, "axis", -1))]),
    "LogSoftmax": _normalise(lambda t, node: [int(t.attr(node, "axis", -1))]),
    **dict.fromkeys(("LSTM", "GRU"), recurrent),
}
# The rules that read a value's batch where the file keeps it; the others see only batch-first values.
ANY_LAYOUT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Concat", "Split",
              "LSTM", "GRU"}


def map_units(graph: onnx.GraphProto, values: dict[str, np.ndarray], constants: dict[str, np.ndarray],
              batch_axes: dict[str, int | None]) -> UnitMap:
    """The units of ``graph``; ``values`` holds every runtime value of one run, batch first, ``batch_axes``
    where the file keeps the batch of those for which that is not the first axis (None: no batch), and
    ``constants`` the graph's constants. Units that reach the graph's outputs are pinned: the outputs keep their
    shape."""
    tracer = Tracer(graph, values, constants, batch_axes)
    for node in graph.node:
        named = [name for name in [*node.input, *node.output] if name and name not in constants]
        if not all(name in values and values[name].ndim for name in named):
            tracer.opaque(node)
        elif node.op_type not in ANY_LAYOUT and any(tracer.batch_axis(name) not in (0, None) for name in named):
            tracer.opaque(node, "which reads a value whose batch is not its first axis")
        else:
            RULES.get(node.op_type, Tracer.opaque)(tracer, node)
    for output in graph.output:
        tracer.units.pin(tracer.map.slots.get(output.name), "they are the model's output")
    return tracer.map
