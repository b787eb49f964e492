"""Making an imported network physically smaller: the units sparsity left dead are cut out of its own graph.

``vdcore.graph.units`` says which unit every value carries and which units are coupled. A unit goes when no
layer reads it (its outgoing weights are all zero), or when every layer making it has zero incoming weights:
then it is a constant, and what it adds to the layers reading it is folded into their biases (or, where a
padded convolution's border makes it vary over space, into a small constant subgraph added after them).
Removals stay rectangular (a tensor loses whole rows, columns or channels), each tensor keeps at least one
unit, and the shrunk graph is checked against the network it came from; units that must stay are counted in
the notes, with the reason.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vdcore.export import PARITY_TOLERANCE, ExportResult, onnx_session
from vdcore.graph.net import OnnxNet, load_onnx, max_difference
from vdcore.graph.read import OnnxError
from vdcore.graph.recurrent import cut_recurrent
from vdcore.graph.recurrent_units import INITIAL_STATES
from vdcore.graph.tracer import NO_UNIT, Layer, UnitMap
from vdcore.graph.units import map_units
from vdcore.graph.write import pruned_net, save_checked, trained_model

RECTANGLE = "a tensor they are part of can only lose whole rows, columns or channels"
FIXED = "a Reshape computed at run time fixes their number"
LAST = "every tensor keeps at least one unit"
ROUNDED = "they round a convolution's filters up to a multiple of {multiple}, for onnxruntime's fast convolutions"


@dataclass(frozen=True)
class GraphShrink:
    """The shrunk graph to write (``model``), the network it computes (imported from it; the pruned network
    itself when nothing could go), how many units went, and what a report's reader should know about those that
    stayed."""

    net: OnnxNet
    model: onnx.ModelProto
    removed: int
    notes: tuple[str, ...]

    def save(self, path: str | os.PathLike[str]) -> ExportResult:
        """Write ``model``, checked against ``net`` (``save_checked``). Not ``net``'s own graph: import computes
        the graph's constant parts, which can be larger than the nodes computing them."""
        return save_checked(self.model, self.net, path)


@dataclass
class _Removal:
    unit_of: np.ndarray  # slot -> unit
    removed: np.ndarray  # by unit
    folded: np.ndarray  # by unit: removed as a constant, folded into the layers reading it
    blocked: dict[int, str]  # unit -> why it stays

    def units(self, slots: np.ndarray) -> np.ndarray:
        return np.where(slots >= 0, self.unit_of[np.maximum(slots, 0)], NO_UNIT)

    def kept(self, slots: np.ndarray) -> np.ndarray:
        units = self.units(slots)
        return (units < 0) | ~self.removed[np.maximum(units, 0)]


def shrink_onnx(net: OnnxNet, channel_multiple: int = 1) -> GraphShrink:
    """``net`` (Sparse VD layers pruned first) with its dead units removed from its graph.

    With ``channel_multiple`` above 1, a convolution keeps a few dead filters where that makes its count a
    multiple (unless it keeps them all): onnxruntime runs convolutions in its fast blocked layout only for
    channel counts that are multiples of the CPU's vector width (8 floats with AVX2, 16 with AVX-512), so a
    shrunk network can otherwise run slower than the dense one.
    """
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple must be 1 or more, got {channel_multiple}")
    reference = pruned_net(net).eval().cpu()
    model = trained_model(reference)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values, batch_axes = _batch_first_values(model, reference)
    unit_map = map_units(model.graph, values, constants, batch_axes)
    removal = _decide(unit_map, values, channel_multiple)
    notes = _kept_notes(unit_map, values, removal)
    count = int(removal.removed.sum())
    if not count:
        return GraphShrink(reference, model, 0, notes)
    small = _rewrite(model, unit_map, removal, values, constants)
    try:
        onnx.checker.check_model(small, full_check=True)
        diff = max(max_difference(reference, small, batch) for batch in (1, 4))
        if not diff <= PARITY_TOLERANCE:
            raise OnnxError(f"it differs from the pruned network by {diff:.3g}")
        shrunk = load_onnx(small.SerializeToString())
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OnnxError) as error:
        why = str(error).splitlines()[0]
        failed = f"no unit was removed: the shrunk graph failed its check ({why})"
        return GraphShrink(reference, model, 0, (*notes, failed))
    return GraphShrink(shrunk, small, count, notes)


def keep_units(net: OnnxNet) -> GraphShrink:
    """``net`` pruned and written back with every unit kept: the form to race a shrunk one against."""
    reference = pruned_net(net).eval().cpu()
    notes = ("every dead unit stays: this is the graph unshrunk, with the file's shapes",)
    return GraphShrink(reference, trained_model(reference), 0, notes)


def _batch_first_values(model: onnx.ModelProto, net: OnnxNet) -> tuple[dict[str, np.ndarray], dict[str, int | None]]:
    """Every runtime value of ``model`` on two examples, its batch axis moved first, and where the file keeps
    the batch of those for which that is not the first axis (None: the value has none). The batch axis is the
    one whose size follows the batch: the values of a run on three examples tell."""
    values = _all_values(model, net.example_input(2).numpy())
    other = _all_values(model, net.example_input(3).numpy())
    batch_axes: dict[str, int | None] = {}
    for name, value in values.items():
        changed = [axis for axis, (a, b) in enumerate(zip(value.shape, other[name].shape, strict=True)) if a != b]
        axis = changed[0] if len(changed) == 1 else None
        if axis != 0:
            batch_axes[name] = axis
        if axis:
            values[name] = np.moveaxis(value, axis, 0)
    return values, batch_axes


def _all_values(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every runtime value of ``model`` on the input ``x``, by name (onnxruntime, all outputs exposed)."""
    probe = copy.deepcopy(model)
    types = {v.name: v.type.tensor_type.elem_type for v in probe.graph.value_info}
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known and name in types:
                probe.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
                known.add(name)
    session = onnx_session(probe.SerializeToString())
    input_name = probe.graph.input[0].name
    names = [o.name for o in session.get_outputs()]
    return {input_name: x, **dict(zip(names, session.run(names, {input_name: x}), strict=True))}


# --- which units go -----------------------------------------------------------------------------------------


RECURRENT = ("lstm", "gru")
FEATURES_LAST = ("matmul", "embedding", *RECURRENT)


def _read_axis(layer: Layer, rank: int) -> int:
    return rank - 1 if layer.kind in FEATURES_LAST else 1


def _decide(unit_map: UnitMap, values: dict[str, np.ndarray], channel_multiple: int) -> _Removal:
    """Remove every unit that can go, then block those whose removal is not rectangular (or would leave a
    convolution's filters off ``channel_multiple``) and start again, until nothing more has to stay."""
    unit_of = unit_map.units.roots()
    size = unit_of.size
    blocked = {unit: why for unit, why in unit_map.units.pins.items()}
    while True:
        removal = _Removal(unit_of, np.zeros(size, bool), np.zeros(size, bool), blocked)
        _remove_dead(unit_map, values, removal)
        more = _not_rectangular(unit_map, removal) or _off_multiple(unit_map, removal, channel_multiple)
        if not more:
            return removal
        blocked.update(more)


def _off_multiple(unit_map: UnitMap, removal: _Removal, multiple: int) -> dict[int, str]:
    """Removed filters to keep so that each convolution's filter count is a multiple of ``multiple`` (or all)."""
    keep: dict[int, str] = {}
    for layer in unit_map.layers:
        if multiple == 1 or layer.kind not in ("conv", "depthwise") or keep:
            continue
        kept = removal.kept(layer.rows)
        short = -int(kept.sum()) % multiple
        gone = list(dict.fromkeys(int(u) for u in removal.units(layer.rows)[~kept] if u >= 0))
        if short and len(gone) >= short:
            keep.update(dict.fromkeys(gone[:short], ROUNDED.format(multiple=multiple)))
    return keep


class _Liveness:
    """Whether a unit can go, given what is removed so far: its readers and makers among the layers, and what
    the graph does with it otherwise."""

    def __init__(self, unit_map: UnitMap, values: dict[str, np.ndarray], removal: _Removal) -> None:
        self.values, self.removal = values, removal
        self.readers: dict[int, list[tuple[Layer, np.ndarray]]] = {}
        self.producers: dict[int, list[tuple[Layer, np.ndarray]]] = {}
        for layer in unit_map.layers:
            rows, cols = removal.units(layer.rows), removal.units(layer.cols)
            for unit in np.unique(rows[rows >= 0]):
                self.producers.setdefault(int(unit), []).append((layer, np.flatnonzero(rows == unit)))
            if layer.kind != "depthwise":  # its inputs and outputs are one unit
                for unit in np.unique(cols[cols >= 0]):
                    self.readers.setdefault(int(unit), []).append((layer, np.flatnonzero(cols == unit)))
        # An operator other than a layer needs the value of these (a pin means one does too).
        self.used = {int(removal.unit_of[slot]) for slot in unit_map.used} | set(unit_map.units.pins)
        self.unfoldable = self.used | {int(removal.unit_of[slot]) for slot in unit_map.unfoldable}
        self.tensors = [(name, removal.units(slots)) for name, slots in unit_map.slots.items()]

    def removable(self, unit: int) -> bool:
        if unit not in self.used and self._dead_out(unit):
            return True
        return self._dead_in(unit) and self._constant(unit) and (unit not in self.unfoldable or self._zero(unit))

    def dead(self, unit: int) -> bool:
        """No weight makes it, or none reads it: it would go, but for what the rest of the graph needs."""
        return self._dead_in(unit) or (unit not in self.used and self._dead_out(unit))

    def _dead_out(self, unit: int) -> bool:
        kept = self.removal.kept
        return all(not layer.reads[kept(layer.rows)][:, cols].any() for layer, cols in self.readers.get(unit, []))

    def _dead_in(self, unit: int) -> bool:
        kept = self.removal.kept
        return all(not layer.reads[rows][:, kept(layer.cols)].any() for layer, rows in self.producers[unit])

    def _constant(self, unit: int) -> bool:
        """A check of what ``_dead_in`` implies: every layer reading the unit sees the same value for every
        example."""
        for layer, cols in self.readers.get(unit, []):
            value = self.values[layer.node.input[0]]
            if layer.kind in RECURRENT:  # the same for every example and step; its own units are not constants
                cols = cols[cols < value.shape[-1]]
                value = value.reshape(-1, value.shape[-1])
            seen = np.take(value, cols, axis=_read_axis(layer, value.ndim))
            if not np.allclose(seen, seen[:1], rtol=1e-5, atol=1e-6):
                return False
        return True

    def _zero(self, unit: int) -> bool:
        """Zero everywhere: a constant that any operator passes on as nothing."""
        return all(not self.values[name][:, units == unit].any() for name, units in self.tensors)

    def folds(self, unit: int) -> bool:
        """Whether a removable unit goes as a constant (folded into its readers) rather than as unread."""
        return unit in self.used or not self._dead_out(unit)


def _remove_dead(unit_map: UnitMap, values: dict[str, np.ndarray], removal: _Removal) -> None:
    """Remove every unit that can go, again and again, since each removal can free more."""
    liveness = _Liveness(unit_map, values, removal)
    candidates = sorted(unit for unit in liveness.producers if unit not in removal.blocked)
    changed = True
    while changed:
        changed = False
        for unit in candidates:
            if not removal.removed[unit] and liveness.removable(unit):
                removal.removed[unit] = changed = True
                removal.folded[unit] = liveness.folds(unit)


def _not_rectangular(unit_map: UnitMap, removal: _Removal) -> dict[int, str]:
    """Units to keep so that every tensor loses whole slices only, keeps its fixed axes and one unit at least."""
    keep: dict[int, str] = {}
    for name, slots in unit_map.slots.items():
        kept = removal.kept(slots)
        if kept.all():
            continue
        units = removal.units(slots)
        if not kept.any():
            keep.setdefault(int(units.reshape(-1)[0]), LAST)
            continue
        projections = _projections(kept)
        closure = np.ones(kept.shape, bool)
        for axis, along in enumerate(projections):
            view = [1] * kept.ndim
            view[axis] = along.size
            closure &= along.reshape(view)
        for unit in np.unique(units[closure & ~kept]):
            keep.setdefault(int(unit), RECTANGLE)
        for axis in unit_map.fixed_axes.get(name, ()):
            lost = ~projections[axis - 1]
            for unit in np.unique(np.compress(lost, units, axis=axis - 1)):
                if unit >= 0:
                    keep.setdefault(int(unit), FIXED)
    return keep


def _projections(kept: np.ndarray) -> list[np.ndarray]:
    """Along each axis, the indices where anything is kept."""
    return [kept.any(axis=tuple(a for a in range(kept.ndim) if a != axis)) for axis in range(kept.ndim)]


def _kept_notes(unit_map: UnitMap, values: dict[str, np.ndarray], removal: _Removal) -> tuple[str, ...]:
    """How many dead units stay, grouped by why they must."""
    liveness = _Liveness(unit_map, values, removal)
    reasons = Counter(why for unit, why in removal.blocked.items()
                      if unit in liveness.producers and liveness.dead(unit))
    return tuple(f"{count} dead unit(s) stay: {why}" for why, count in reasons.most_common())


# --- the shrunk graph ---------------------------------------------------------------------------------------


class _Editor:
    """Changes to a copy of the graph: constants replaced (a copy for a node when others read the same one)
    and nodes inserted after others."""

    def __init__(self, model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> None:
        self.model = copy.deepcopy(model)
        self.graph = self.model.graph
        self.constants = dict(constants)
        self.readers = Counter(name for node in self.graph.node for name in node.input)
        self.node = {node.name: node for node in self.graph.node}

    def set_constant(self, node: onnx.NodeProto, position: int, value: np.ndarray) -> None:
        node = self.node[node.name]
        name = node.input[position] if position < len(node.input) else ""
        if not name or self.readers[name] > 1:
            name = f"{name or node.output[0]}__{node.name}_{position}"
            while position >= len(node.input):
                node.input.append("")
            node.input[position] = name
            self.readers[name] = 1
        self.constants[name] = value
        for tensor in self.graph.initializer:
            if tensor.name == name:
                tensor.CopyFrom(numpy_helper.from_array(value, name))
                return
        self.graph.initializer.append(numpy_helper.from_array(value, name))

    def constant(self, name: str, value: np.ndarray) -> str:
        """A new initializer holding ``value``; its name."""
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.constants[name] = value
        self.readers[name] = 1
        return name

    def add_after(self, node: onnx.NodeProto, addend: str, making: tuple[onnx.NodeProto, ...] = ()) -> onnx.NodeProto:
        """An Add of the value ``addend`` (computed by the nodes ``making``) to the output of ``node``, under that
        output's name."""
        node = self.node[node.name]
        output = node.output[0]
        node.output[0] = f"{output}__before_{node.name}"
        add = helper.make_node("Add", [node.output[0], addend], [output], name=f"{node.name}__added")
        index = list(self.graph.node).index(node)
        for offset, new in enumerate([*making, add], start=1):
            self.graph.node.insert(index + offset, new)
            self.node[new.name] = self.graph.node[index + offset]
        return self.node[add.name]

    def add_border(self, node: onnx.NodeProto, weight: np.ndarray, spatial: tuple[int, ...]) -> None:
        """Add to a convolution's output what it makes of a constant plane of ones through ``weight``
        (``[outputs, 1, *kernel]``): the removed constant channels with the padding's border. ConstantOfShape
        and Conv on constants are computed once when onnxruntime loads the file, and cost the file nothing."""
        shape = self.constant(f"{node.name}__plane_shape", np.array([1, 1, *spatial], np.int64))
        plane = helper.make_node("ConstantOfShape", [shape], [f"{node.name}__plane"], name=f"{node.name}__plane",
                                 value=helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [1.0]))
        border = helper.make_node("Conv", [plane.output[0], self.constant(f"{node.name}__border_w", weight)],
                                  [f"{node.name}__border"], name=f"{node.name}__border")
        border.attribute.extend(a for a in node.attribute if a.name != "group")
        self.add_after(node, border.output[0], (plane, border))


def _rewrite(model: onnx.ModelProto, unit_map: UnitMap, removal: _Removal, values: dict[str, np.ndarray],
             constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    editor = _Editor(model, constants)
    sliced = list(unit_map.sliced_constants)
    for layer in unit_map.layers:
        added = _shrink_layer(editor, layer, removal, values)
        if added is not None:
            sliced.append((added, 1, None))
    kept = {name: _projections(removal.kept(slots)) for name, slots in unit_map.slots.items()}
    for node, position, axis in sliced:
        node = editor.node[node.name]
        value = editor.constants.get(node.input[position]) if position < len(node.input) else None
        if value is not None and node.output[0] in kept:
            editor.set_constant(node, position, _slice_constant(value, kept[node.output[0]], axis,
                                                                len(values[node.output[0]].shape)))
    for node in list(editor.graph.node):
        out = node.output[0]
        if node.op_type == "Reshape" and out in kept and node.input[1] in editor.constants:
            target = editor.constants[node.input[1]].copy()
            for axis, along in enumerate(kept[out], start=1):
                if target[unit_map.file_axis(out, axis)] != -1:
                    target[unit_map.file_axis(out, axis)] = int(along.sum())
            editor.set_constant(node, 1, target)
        elif node.op_type == "Split":
            _resize_split(editor, node, kept, values, unit_map)
    _drop_unread(editor.graph)
    del editor.graph.value_info[:]
    return editor.model


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nothing reads any more (the zeros of an initial state the shrunk recurrent node no
    longer takes), and the constants only they read."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [node for node in graph.node if not any(name in read for name in node.output if name)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def _slice_constant(value: np.ndarray, kept: list[np.ndarray], axis: int | None, rank: int) -> np.ndarray:
    """``value`` without the positions the tensor it acts on (of ``rank`` axes, kept indices ``kept`` along
    each but the batch) lost: its first axis lies along tensor axis ``axis``, or it broadcasts as numpy does."""
    if axis is not None:
        return value[np.flatnonzero(kept[axis - 1])] if value.ndim and value.shape[0] > 1 else value
    for own in range(value.ndim):
        tensor_axis = own + rank - value.ndim
        if tensor_axis >= 1 and value.shape[own] > 1:
            value = np.take(value, np.flatnonzero(kept[tensor_axis - 1]), axis=own)
    return value


def _resize_split(editor: _Editor, node: onnx.NodeProto, kept: dict[str, list[np.ndarray]],
                  values: dict[str, np.ndarray], unit_map: UnitMap) -> None:
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    axis = unit_map.our_axis(node.input[0], axis % values[node.input[0]].ndim)
    sizes = [int(kept[name][axis - 1].sum()) if name in kept else values[name].shape[axis] for name in node.output]
    if len(node.input) > 1 and node.input[1]:
        editor.set_constant(node, 1, np.array(sizes, dtype=np.int64))
    for attribute in node.attribute:
        if attribute.name == "split":
            attribute.CopyFrom(helper.make_attribute("split", sizes))


def _shrink_layer(editor: _Editor, layer: Layer, removal: _Removal,
                  values: dict[str, np.ndarray]) -> onnx.NodeProto | None:
    """Cut ``layer``'s removed rows and columns, fold the constants of the removed ones it read into its bias
    (or an Add after it, returned, for a constant that varies over space)."""
    node = layer.node
    if layer.kind in RECURRENT:
        return _shrink_recurrent(editor, layer, removal, values)
    rows, cols = np.flatnonzero(removal.kept(layer.rows)), np.flatnonzero(removal.kept(layer.cols))
    if layer.kind == "grouped" or (rows.size == layer.rows.size and cols.size == layer.cols.size):
        return None
    weight = editor.constants[node.input[0 if layer.kind == "embedding" else 1]]
    folded = removal.units(layer.cols)
    folded = (folded >= 0) & removal.folded[np.maximum(folded, 0)]
    shift = None
    if layer.kind != "depthwise" and folded.any():
        shift = _contribution(editor, layer, weight, values[node.input[0]][:1], folded)
    if layer.kind == "conv":
        editor.set_constant(node, 1, weight[rows][:, cols])
    elif layer.kind == "depthwise":
        editor.set_constant(node, 1, weight[rows])
        _set_attribute(editor.node[node.name], "group", int(rows.size))
    elif layer.kind == "gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        editor.set_constant(node, 1, weight[rows][:, cols] if trans_b else weight[cols][:, rows])
    elif layer.kind == "matmul":
        editor.set_constant(node, 1, weight[cols][:, rows])
    else:  # an embedding table, [vocabulary, units]
        editor.set_constant(node, 0, weight[:, rows])
    if shift is None:
        return _cut_bias(editor, layer, rows)
    uniform = _uniform_shift(shift, layer)
    if uniform is not None:
        return _cut_bias(editor, layer, rows, uniform)
    _cut_bias(editor, layer, rows)
    x = values[node.input[0]][0]
    planes = x[folded].reshape(int(folded.sum()), -1)
    if layer.kind == "conv" and np.allclose(planes, planes[:, :1], rtol=1e-6, atol=1e-7):
        border = np.tensordot(weight[rows][:, folded], planes[:, 0], axes=([1], [0]))[:, None]
        editor.add_border(node, border.astype(np.float32), x.shape[1:])
        return None
    return editor.add_after(node, editor.constant(f"{node.output[0]}__added", shift))


def _shrink_recurrent(editor: _Editor, layer: Layer, removal: _Removal, values: dict[str, np.ndarray]) -> None:
    """Cut an LSTM or GRU node's removed hidden units (in both directions: they are one unit) and input
    features, fold what removed constant inputs added into its bias, and let it start from ONNX's default zero
    state (the only initial state a shrinkable node has) at its new size."""
    node = editor.node[layer.node.name]
    w, r = editor.constants[node.input[1]], editor.constants[node.input[2]]
    directions, _, features = w.shape
    kept_units = removal.kept(layer.rows).reshape(directions, -1)[0]
    kept_inputs = removal.kept(layer.cols[:features])
    if kept_units.all() and kept_inputs.all():
        return None
    units = removal.units(layer.cols[:features])
    folded = (units >= 0) & removal.folded[np.maximum(units, 0)]
    x = values[node.input[0]].reshape(-1, features)[0]  # the same for every example and step where folded
    shift = w[:, :, folded] @ x[folded] if folded.any() else None
    b = editor.constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    w, r, b = cut_recurrent(w, r, b, kept_units, kept_inputs, shift)
    editor.set_constant(node, 1, w)
    editor.set_constant(node, 2, r)
    if b is not None:
        editor.set_constant(node, 3, b)
    if not kept_units.all():
        _set_attribute(node, "hidden_size", int(kept_units.sum()))
        for position in INITIAL_STATES:
            if position < len(node.input):
                node.input[position] = ""
        while node.input and not node.input[-1]:
            node.input.pop()
    return None


def _set_attribute(node: onnx.NodeProto, name: str, value: int) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            attribute.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))


def _contribution(editor: _Editor, layer: Layer, weight: np.ndarray, x: np.ndarray, folded: np.ndarray) -> np.ndarray:
    """What the folded columns add to the layer's output for the example ``x`` (they are constants there),
    shaped like one example of the output: the node itself run by onnxruntime on those columns alone, without
    its bias."""
    node = layer.node
    axis = _read_axis(layer, x.ndim)
    view = [1] * x.ndim
    view[axis] = folded.size
    x = np.where(folded.reshape(view), x, 0).astype(np.float32)
    single = helper.make_node(node.op_type, ["x", "w"], ["y"])
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single], "contribution", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    probe = helper.make_model(graph, opset_imports=list(editor.model.opset_import), ir_version=editor.model.ir_version)
    return onnx_session(probe.SerializeToString()).run(None, {"x": x})[0][0]


def _unit_axis(layer: Layer, rank: int) -> int:
    """The axis of one example of the layer's output along which its units lie."""
    return rank - 1 if layer.kind in FEATURES_LAST else 0


def _uniform_shift(shift: np.ndarray, layer: Layer) -> np.ndarray | None:
    """``shift`` as one value per unit, if it is the same over the other axes (no padding in the way)."""
    lines = np.moveaxis(shift, _unit_axis(layer, shift.ndim), 0).reshape(shift.shape[_unit_axis(layer, shift.ndim)], -1)
    if not np.allclose(lines, lines[:, :1], rtol=1e-6, atol=1e-7):
        return None
    return lines[:, 0]


def _cut_bias(editor: _Editor, layer: Layer, rows: np.ndarray, shift: np.ndarray | None = None
              ) -> onnx.NodeProto | None:
    """The layer's bias at ``rows`` only, plus ``shift`` (per unit, before the cut); for a MatMul, whose bias is a
    separate Add sliced with its output, the shift goes into that Add, or into a new one, returned."""
    node = editor.node[layer.node.name]
    if layer.kind == "matmul":
        if shift is None:
            return None
        add = next((n for n in editor.graph.node if n.op_type == "Add" and node.output[0] in n.input), None)
        position = None if add is None else next(
            (i for i, name in enumerate(add.input) if name in editor.constants), None)
        if add is None or position is None or editor.constants[add.input[position]].shape[-1:] != shift.shape:
            return editor.add_after(node, editor.constant(f"{node.output[0]}__added", shift.astype(np.float32)))
        editor.set_constant(add, position, (editor.constants[add.input[position]] + shift).astype(np.float32))
        return None
    if layer.kind == "embedding":
        return None
    bias = editor.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is None and shift is None:
        return None
    units = layer.rows.size
    scale = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if layer.kind == "gemm" else 1.0
    full = np.zeros(units, np.float32) if bias is None else np.broadcast_to(bias.reshape(-1), (units,))
    if shift is not None:
        full = full + shift / scale
    cut = full[rows].astype(np.float32)
    editor.set_constant(node, 2, cut.reshape(*bias.shape[:-1], rows.size) if bias is not None and bias.ndim else cut)
    return None
