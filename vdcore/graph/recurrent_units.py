"""The units of ONNX ``LSTM`` and ``GRU`` nodes: one per hidden unit, read by the node itself (its recurrent
weights ``R``) and by the layers after it, and reading the node's input features (``W``).

A node has one ``hidden_size`` for both directions, so hidden unit ``j`` of the forward and of the backward
direction are one unit here: they go together. A unit with no incoming weights is not a constant, as a
feed-forward one is: its gates still integrate their biases over the steps, so what it outputs varies along the
sequence. Such units are kept unless their output is zero everywhere; units nobody reads go. An initial state
given as zeros (what exports write) is dropped from the shrunk node, which then starts from ONNX's default
zeros; any other initial state keeps every unit.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from vdcore.graph.tracer import NO_UNIT, Layer, Tracer, channel_slots

GATES = {"LSTM": 4, "GRU": 3}
INITIAL_STATES = (5, 6)  # initial_h, initial_c
# Nodes that pass a zero-filled tensor on as zeros, reading their data from the first input.
_ZERO_PRESERVING = {"Slice", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Tile", "Cast", "Gather",
                    "Transpose"}


def recurrent(t: Tracer, node: onnx.NodeProto) -> None:
    x = node.input[0]
    w, r = t.constants.get(node.input[1]), t.constants.get(node.input[2])
    if w is None or r is None or t.batch_axis(x) != 1:
        return t.opaque(node, "a recurrent node whose weights are computed or whose input is not time-major")
    directions, gate_rows, features = w.shape
    hidden = gate_rows // GATES[node.op_type]
    inputs = channel_slots(t, x, axis=1)  # ours: [batch, steps, features]
    if inputs is None:
        t.units.pin(t.slots(x), f"they reach {node.op_type} node {node.name!r} other than as its features")
        inputs = np.full(features, NO_UNIT, dtype=np.int64)
    rows = t.units.new(directions * hidden)
    for d in range(1, directions):
        t.units.merge(rows[:hidden], rows[d * hidden:(d + 1) * hidden])
    reads_input = _per_unit(w != 0, directions, node.op_type)
    recurrent_reads = _per_unit(r != 0, directions, node.op_type)  # [directions * hidden, hidden]
    reads_own = np.zeros((directions * hidden, directions * hidden), dtype=bool)
    for d in range(directions):
        block = slice(d * hidden, (d + 1) * hidden)
        reads_own[block, block] = recurrent_reads[block]
    kind = node.op_type.lower()
    t.map.layers.append(Layer(node, kind, rows, np.concatenate([inputs, rows]),
                              np.concatenate([reads_input, reads_own], axis=1)))
    t.map.unfoldable.update(int(slot) for slot in rows)
    for position in INITIAL_STATES:
        if position < len(node.input) and node.input[position] and not zeros(t, node.input[position]):
            t.units.pin(rows, f"{node.op_type} node {node.name!r} starts from an initial state the graph computes")
    for name in node.output:  # Y is ours [batch, steps, directions, hidden]; Y_h, Y_c [batch, directions, hidden]
        if name and name in t.values:
            t.set(name, np.broadcast_to(rows.reshape(directions, hidden), t.shape(name)[1:]))


def _per_unit(nonzero: np.ndarray, directions: int, op_type: str) -> np.ndarray:
    """``[directions, gates * hidden, columns]`` -> whether each hidden unit (any gate) reads each column."""
    gates = GATES[op_type]
    _, rows, columns = nonzero.shape
    return nonzero.reshape(directions, gates, rows // gates, columns).any(axis=1).reshape(-1, columns)


def zeros(t: Tracer, name: str) -> bool:
    """Whether ``name`` is zeros for every input: a zero constant, or ConstantOfShape of zero, passed on by
    nodes that keep zeros zeros (the exporters' ``torch.zeros(layers, batch, hidden)``)."""
    while name not in t.constants:
        node = t.producer.get(name)
        if node is None:
            return False
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return value is None or not numpy_helper.to_array(value).any()
        if node.op_type not in _ZERO_PRESERVING:
            return False
        name = node.input[0]
    return not np.any(t.constants[name])
