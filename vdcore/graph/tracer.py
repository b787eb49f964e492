"""The bookkeeping of the unit map: slots merged into units (a union-find), the weight layers, and the tracer
that the rules of ``vdcore.graph.units`` fill in, one node at a time.

Every value is seen *batch first*: ``vdcore.graph.shrink`` runs the graph twice, at two batch sizes, finds each
value's batch axis, and moves it to the front, so a rule reads ``shape[1:]`` whatever the layout. Where an
operator's attributes name axes (a Transpose's ``perm``, a Reshape's target), ``Tracer.actual_slots`` and
``Tracer.batch_first`` translate between the file's layout and ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

NO_UNIT = -1  # a position that carries no unit (the model's input, a computed shape): always kept


class Units:
    """Slots and the unit each belongs to (union-find), with the units that must stay and why."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pins: dict[int, str] = {}

    def new(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, slot: int) -> int:
        root = slot
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[slot] != root:
            self.parent[slot], slot = root, self.parent[slot]
        return root

    def merge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Make the slots at the same positions of ``a`` and ``b`` one unit."""
        both = (a >= 0) & (b >= 0)
        for x, y in {(int(x), int(y)) for x, y in zip(a[both], b[both], strict=True)}:
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if ry in self.pins:
                    self.pins.setdefault(rx, self.pins.pop(ry))

    def pin(self, slots: np.ndarray | None, reason: str) -> None:
        if slots is not None:
            for slot in np.unique(slots[slots >= 0]):
                self.pins.setdefault(self.find(int(slot)), reason)

    def roots(self) -> np.ndarray:
        return np.array([self.find(slot) for slot in range(len(self.parent))], dtype=np.int64)


@dataclass
class Layer:
    """A node holding weights, as ``[outputs, inputs]``: which slot each output unit and each input column is,
    and which weights between them are non-zero (a depthwise convolution's as a diagonal)."""

    node: onnx.NodeProto
    kind: str  # "conv", "depthwise", "grouped", "gemm", "matmul" or "embedding"
    rows: np.ndarray
    cols: np.ndarray
    reads: np.ndarray  # bool [rows, cols]


@dataclass
class UnitMap:
    """The slots of each runtime tensor (shaped like the tensor without its batch axis), the weight layers,
    the constants to slice with the tensors they act on (node, input position, and the output axis of the
    constant's first axis, or None where it broadcasts as numpy aligns shapes), and the axes that must keep
    their size (those of a Reshape target computed at run time)."""

    units: Units
    slots: dict[str, np.ndarray]
    layers: list[Layer]
    sliced_constants: list[tuple[onnx.NodeProto, int, int | None]] = field(default_factory=list)
    fixed_axes: dict[str, set[int]] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)  # slots an operator other than a layer needs the value of
    unfoldable: set[int] = field(default_factory=set)  # slots whose constant a product does not pass as one
    batch_axes: dict[str, int | None] = field(default_factory=dict)  # the file's, where not 0 (None: no batch)

    def batch_axis(self, name: str) -> int | None:
        return self.batch_axes.get(name, 0)

    def file_axis(self, name: str, axis: int) -> int:
        """The file's axis of ``name`` that is our ``axis`` (batch first)."""
        batch = self.batch_axis(name) or 0
        return batch if axis == 0 else axis - 1 if axis <= batch else axis

    def our_axis(self, name: str, axis: int) -> int:
        """Our axis (batch first) of ``name`` that is the file's ``axis``."""
        batch = self.batch_axis(name) or 0
        return 0 if axis == batch else axis + 1 if axis < batch else axis


class Tracer:
    def __init__(self, graph: onnx.GraphProto, values: dict[str, np.ndarray], constants: dict[str, np.ndarray],
                 batch_axes: dict[str, int | None]) -> None:
        self.graph, self.values, self.constants = graph, values, constants
        self.map = UnitMap(Units(), {}, [], batch_axes=batch_axes)
        self.producer = {name: node for node in graph.node for name in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    @property
    def units(self) -> Units:
        return self.map.units

    def slots(self, name: str) -> np.ndarray:
        """The slots of a runtime value (NO_UNIT where it has none)."""
        found = self.map.slots.get(name)
        return found if found is not None else np.full(self.values[name].shape[1:], NO_UNIT, dtype=np.int64)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.values[name].shape)

    def batch_axis(self, name: str) -> int | None:
        return self.map.batch_axis(name)

    def file_shape(self, name: str) -> tuple[int, ...]:
        """The shape of ``name`` in the file's layout (its batch where the file keeps it)."""
        shape = list(self.shape(name))
        return tuple([*shape[1:self.map.file_axis(name, 0) + 1], shape[0], *shape[self.map.file_axis(name, 0) + 1:]])

    def file_slots(self, name: str) -> np.ndarray:
        """The slots of ``name`` in the file's layout, its batch an axis of size 1."""
        return np.expand_dims(self.slots(name), self.map.file_axis(name, 0))

    def attr(self, node: onnx.NodeProto, name: str, default: object = None) -> object:
        for attribute in node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def runtime_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name and name not in self.constants]

    def opaque(self, node: onnx.NodeProto, why: str = "which the shrink does not follow") -> None:
        for name in self.runtime_inputs(node):
            if name in self.values:
                self.units.pin(self.map.slots.get(name), f"they reach {node.op_type} node {node.name!r}, {why}")

    def set(self, name: str, slots: np.ndarray) -> None:
        self.map.slots[name] = np.ascontiguousarray(slots)


def channel_slots(t: Tracer, name: str, axis: int = 0) -> np.ndarray | None:
    """One slot per index of ``axis`` (of the slots array) if the slots do not vary along the other axes."""
    slots = t.slots(name)
    lines = np.moveaxis(slots, axis, 0).reshape(slots.shape[axis], -1)
    if not (lines == lines[:, :1]).all():
        return None
    return lines[:, 0]


def spread(per_unit: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Slots ``per_unit`` along ``axis`` of an array of ``shape`` (without batch), the same along the others."""
    view = [1] * len(shape)
    view[axis] = per_unit.size
    return np.broadcast_to(per_unit.reshape(view), shape)


def pin_varying(t: Tracer, slots: np.ndarray, axes: list[int], why: str) -> None:
    """Pin the slots that differ along any of ``axes`` (operators that mix those positions)."""
    for axis in axes:
        first = np.take(slots, [0], axis=axis)
        varying = np.broadcast_to((slots != first).any(axis=axis, keepdims=True), slots.shape)
        t.units.pin(slots[varying], why)


