"""ONNX ``LSTM`` and ``GRU`` nodes as ``nn.LSTM`` and ``nn.GRU``, and their trained weights back into the node.

ONNX orders an LSTM's gates input, output, forget, cell (``iofc``) and a GRU's update, reset, hidden (``zrh``);
PyTorch orders them ``ifgo`` and ``rzn``. Each direction's ``W``, ``R`` and ``B`` (input weights, recurrent
weights, both biases) are the slices of the node's ``[directions, gates * hidden, ...]`` tensors. What PyTorch's
layers compute is the node with its defaults (sigmoid and tanh activations, no clip, no peepholes, no coupled
input and forget gates) and, for a GRU, ``linear_before_reset=1``, which is what ``torch.onnx.export`` writes;
other options are refused, naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor, nn

from vdcore.graph.ops import NodeContext, Source, Step, filled
from vdcore.layers import weight_suffix

# PyTorch's gate blocks, as indices of ONNX's.
TORCH_GATES = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2]}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
# The runtime inputs a step reads: X, initial_h (and initial_c).
STATE_INPUTS = {"LSTM": [0, 5, 6], "GRU": [0, 5]}


def _blocks(rows: np.ndarray, order: list[int]) -> np.ndarray:
    """The gate blocks of ``rows`` (first axis) in ``order``."""
    hidden = rows.shape[0] // len(order)
    return np.concatenate([rows[g * hidden:(g + 1) * hidden] for g in order])


def _check_options(ctx: NodeContext, kind: str) -> None:
    direction = ctx.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ctx.fail(f"direction {direction!r} is not supported; export a forward or bidirectional layer")
    activations = [a.decode() if isinstance(a, bytes) else a for a in ctx.attr("activations", [])]
    if activations and activations != DEFAULT_ACTIVATIONS[kind] * (2 if direction == "bidirectional" else 1):
        raise ctx.fail(f"activations {activations} are not supported; only the defaults "
                       f"{DEFAULT_ACTIVATIONS[kind]} (what PyTorch's {kind} computes)")
    if ctx.attr("clip") is not None:
        raise ctx.fail("a clipped cell (clip) is not supported; export the layer without clipping")
    if kind == "LSTM" and ctx.attr("input_forget", 0):
        raise ctx.fail("coupled input and forget gates (input_forget=1) are not supported")
    if kind == "GRU" and ctx.attr("linear_before_reset", 0) != 1:
        raise ctx.fail("a GRU with linear_before_reset=0 is not supported; PyTorch's nn.GRU (and its export) "
                       "computes linear_before_reset=1")
    if ctx.input(4):
        raise ctx.fail("per-example sequence lengths (sequence_lens) are not supported; pad the sequences")
    if ctx.attr("layout", 0):
        raise ctx.fail("batch-first recurrent nodes (layout=1) are not supported, and onnxruntime does not run "
                       "them; export with the default layout (torch.onnx.export does)")
    peepholes = ctx.constant(7)
    if kind == "LSTM" and ctx.input(7) and (peepholes is None or np.any(peepholes)):
        raise ctx.fail("peephole connections (P) are not supported; export an LSTM without them")


def _recurrent(kind: str) -> Callable[[NodeContext], Step]:
    module = nn.LSTM if kind == "LSTM" else nn.GRU

    def convert(ctx: NodeContext) -> Step:
        _check_options(ctx, kind)
        w, r, b = ctx.owned(1), ctx.owned(2), ctx.owned(3)
        if w is None or r is None or (ctx.input(3) and b is None):
            raise ctx.fail(f"the {kind}'s weights W, R and bias B must be constants of its own")
        directions, rows, inputs = w.shape
        hidden = int(ctx.attr("hidden_size", r.shape[2]))
        layer = module(inputs, hidden, bias=b is not None, bidirectional=directions == 2)
        order = TORCH_GATES[kind]
        for d in range(directions):
            suffix = weight_suffix(0, d)
            values = {"weight_ih" + suffix: _blocks(w[d], order), "weight_hh" + suffix: _blocks(r[d], order)}
            if b is not None:
                values["bias_ih" + suffix], values["bias_hh" + suffix] = _blocks(b[d, :rows], order), \
                    _blocks(b[d, rows:], order)
            filled(layer, **values)
        source = ctx.source(kind, W=1, R=2, B=3)

        def run(layer: nn.Module, x: Tensor, initial_h: Tensor | None = None, initial_c: Tensor | None = None):
            """X is [steps, batch, inputs]; Y [steps, directions, batch, hidden]; states [directions, batch,
            hidden]."""
            state: Tensor | tuple[Tensor, Tensor] | None = initial_h
            if kind == "LSTM" and (initial_h is not None or initial_c is not None):
                like = initial_h if initial_h is not None else initial_c
                state = tuple(s if s is not None else like.new_zeros(like.shape) for s in (initial_h, initial_c))
            out, final = layer(x, state) if state is not None else layer(x)
            finals = final if isinstance(final, tuple) else (final,)
            return (out.view(out.shape[0], out.shape[1], directions, hidden).permute(0, 2, 1, 3), *finals)

        return ctx.step(run, STATE_INPUTS[kind], layer=layer, source=source)

    return convert


def onnx_tensors(layer: nn.Module, source: Source) -> dict[str, np.ndarray]:
    """The node's ``W``, ``R`` and ``B`` initializers (by name) holding ``layer``'s weights in ONNX's gate order."""
    order = np.argsort(TORCH_GATES[source.layout]).tolist()  # ONNX's gate blocks, as indices of PyTorch's
    directions = 2 if layer.bidirectional else 1

    def stacked(make: Callable[[str], np.ndarray]) -> np.ndarray:
        return np.stack([make(weight_suffix(0, d)) for d in range(directions)])

    def value(name: str) -> np.ndarray:
        return _blocks(getattr(layer, name).detach().cpu().numpy(), order)

    tensors = {"W": stacked(lambda s: value("weight_ih" + s)), "R": stacked(lambda s: value("weight_hh" + s))}
    if "B" in source.tensors:
        tensors["B"] = stacked(lambda s: np.concatenate([value("bias_ih" + s), value("bias_hh" + s)]))
    return {source.tensors[role]: np.ascontiguousarray(t, dtype=np.float32) for role, t in tensors.items()}


def cut_recurrent(w: np.ndarray, r: np.ndarray, b: np.ndarray | None, kept_units: np.ndarray,
                  kept_inputs: np.ndarray, input_shift: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A node's ``W``, ``R`` and ``B`` with only the hidden units (of every gate and direction) and the input
    features kept (boolean masks); ``input_shift`` (``[directions, gates * hidden]``, what removed constant
    inputs added through ``W``) joins the input bias."""
    hidden = kept_units.size
    gates = w.shape[1] // hidden
    kept = np.flatnonzero(kept_units)
    rows = np.concatenate([g * hidden + kept for g in range(gates)])
    if b is None and input_shift is not None:
        b = np.zeros((w.shape[0], 2 * gates * hidden), np.float32)
    if b is not None:
        b = b.copy()
        if input_shift is not None:
            b[:, :gates * hidden] += input_shift
        b = np.concatenate([b[:, rows], b[:, gates * hidden + rows]], axis=1).astype(np.float32)
    return w[:, rows][:, :, kept_inputs], r[:, rows][:, :, kept], b


RECURRENT_CONVERTERS: dict[str, Callable[[NodeContext], Step]] = {"LSTM": _recurrent("LSTM"), "GRU": _recurrent("GRU")}
