"""Each supported ONNX operator as PyTorch: a function of the node's runtime inputs, or, for the operators
that hold weights, a trainable layer (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm``, ``nn.LayerNorm``,
``nn.Embedding``) with a ``Source`` saying where its weights go back in the graph.

A converter takes a ``NodeContext`` and returns a ``Step``. An operator missing here (and from
``vdcore.graph.recurrent``, LSTM and GRU) is refused at import, naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import Tensor, nn

from vdcore.graph.read import OnnxError, node_label

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


@dataclass(frozen=True)
class Source:
    """Where a layer's tensors live in the graph: ``tensors`` maps the layer's parameter or buffer names to
    initializer names, ``layout`` says how they were read (``"gemm"``, ``"matmul"``, ``"conv1d"``, ``"same"``)."""

    node: str
    tensors: dict[str, str]
    layout: str = "same"


@dataclass
class Step:
    """One node as PyTorch. ``run(layer, *inputs)`` computes its outputs from its runtime inputs (``layer`` is
    None for an operator without weights); ``absorbs`` names later nodes this step computes too (a bias Add)."""

    node: str
    inputs: list[str]
    outputs: list[str]
    run: Callable[..., Any]
    layer: nn.Module | None = None
    source: Source | None = None
    absorbs: list[str] = field(default_factory=list)


@dataclass
class NodeContext:
    """What a converter may know about its node: constants, inferred shapes, and who reads each value."""

    node: onnx.NodeProto
    index: int
    constants: dict[str, np.ndarray]
    shapes: dict[str, list[int | None]]
    readers: dict[str, list[onnx.NodeProto]]
    weight_names: set[str]  # constants a layer may own: read by this node alone, float32

    def attr(self, name: str, default: Any = None) -> Any:
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def fail(self, message: str) -> OnnxError:
        return OnnxError(f"{node_label(self.node, self.index)}: {message}")

    def input(self, position: int) -> str:
        return self.node.input[position] if position < len(self.node.input) else ""

    def constant(self, position: int) -> np.ndarray | None:
        return self.constants.get(self.input(position))

    def owned(self, position: int) -> np.ndarray | None:
        """The constant at ``position`` if a layer of this node may hold it as a trainable weight."""
        name = self.input(position)
        return self.constants[name] if name in self.weight_names else None

    def rank(self, position: int = 0) -> int | None:
        shape = self.shapes.get(self.input(position))
        return None if shape is None else len(shape)

    def step(self, run: Callable[..., Any], inputs: Sequence[int] | None = None, **extra: Any) -> Step:
        """A step reading the node's inputs at ``inputs`` (default: all) at run time."""
        positions = range(len(self.node.input)) if inputs is None else inputs
        names = [self.input(i) for i in positions]
        return Step(self.node.name, names, list(self.node.output), run, **extra)

    def source(self, layout: str = "same", **positions: int) -> Source:
        """Where a layer's tensors come from: each named parameter or buffer is the input at its position
        (an absent optional input is left out)."""
        tensors = {name: self.input(i) for name, i in positions.items() if self.input(i)}
        return Source(self.node.name, tensors, layout)


def _tensor(value: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(value, copy=True))


def _ints(value: Tensor | None) -> list[int]:
    return [] if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _stateless(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda layer, *args: fn(*args)


# --- layers that hold weights -----------------------------------------------------------------------------


def filled(layer: nn.Module, **values: np.ndarray | None) -> nn.Module:
    """``layer`` holding ``values``, by parameter or buffer name (None: a bias the layer does not have)."""
    with torch.no_grad():
        for name, value in values.items():
            if value is not None:
                getattr(layer, name).copy_(_tensor(value))
    return layer


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Module:
    """An ``nn.Linear`` holding ``weight`` (``[out, in]``) and ``bias``."""
    return filled(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight=weight, bias=bias)


def _call_layer(layer: nn.Module, x: Tensor) -> Tensor:
    return layer(x)


def gemm(ctx: NodeContext) -> Step:
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    b, c = ctx.owned(1), ctx.owned(2)
    if b is not None and b.ndim == 2 and not trans_a:
        weight = alpha * (b if trans_b else b.T)
        if not ctx.input(2) or (c is not None and c.size == weight.shape[0]):  # a bias of one value per output
            bias = None if c is None else beta * c.reshape(-1)
            return ctx.step(_call_layer, [0], layer=_linear(weight, bias), source=ctx.source("gemm", weight=1, bias=2))

    def run(a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        a, b = (a.transpose(-1, -2) if trans_a else a), (b.transpose(-1, -2) if trans_b else b)
        out = alpha * (a @ b)
        return out if c is None else out + beta * c

    return ctx.step(_stateless(run))


def matmul(ctx: NodeContext) -> Step:
    weight = ctx.owned(1)
    if weight is None or weight.ndim != 2:
        return ctx.step(_stateless(torch.matmul))
    tensors = {"weight": ctx.input(1)}
    bias, absorbs = None, []
    readers = ctx.readers.get(ctx.node.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Add":
        add = readers[0]
        other = add.input[1] if add.input[0] == ctx.node.output[0] else add.input[0]
        candidate = ctx.constants.get(other)
        if other in ctx.weight_names and candidate is not None and candidate.shape == (weight.shape[1],):
            bias, absorbs = candidate, [add.name]
            tensors["bias"] = other
            outputs = list(add.output)
    layer = _linear(weight.T, bias)
    step = ctx.step(_call_layer, [0], layer=layer, source=Source(ctx.node.name, tensors, "matmul"), absorbs=absorbs)
    if absorbs:
        step.outputs = outputs
    return step


def _conv_padding(ctx: NodeContext, kernel: Sequence[int], dilations: Sequence[int],
                  strides: Sequence[int]) -> list[int]:
    """ONNX pads ``[begin..., end...]`` for each spatial axis, with ``auto_pad`` resolved from the input shape."""
    spatial = len(kernel)
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return list(ctx.attr("pads", [0] * 2 * spatial))
    if auto_pad == "VALID":
        return [0] * 2 * spatial
    shape = ctx.shapes.get(ctx.input(0))
    sizes = None if shape is None else shape[-spatial:]
    if sizes is None or any(size is None for size in sizes):
        raise ctx.fail(f"auto_pad={auto_pad} needs the input's spatial size in the file; export with explicit pads")
    begin, end = [], []
    for size, k, d, s in zip(sizes, kernel, dilations, strides, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(large if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else large)
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1, b2, e1, e2]`` as F.pad's ``[b_last, e_last, b_first, e_first]``."""
    spatial = len(pads) // 2
    return [p for axis in reversed(range(spatial)) for p in (pads[axis], pads[axis + spatial])]


def conv(ctx: NodeContext) -> Step:
    weight, bias = ctx.owned(1), ctx.owned(2)
    if weight is None or (ctx.input(2) and bias is None):
        raise ctx.fail("a convolution's weight and bias must be constants of its own; export the model with its "
                       "weights as initializers")
    spatial = weight.ndim - 2
    if spatial not in (1, 2):
        raise ctx.fail(f"{spatial}-D convolutions are not supported; only 1-D and 2-D")
    kernel = list(weight.shape[2:])
    strides, dilations = ctx.attr("strides", [1] * spatial), ctx.attr("dilations", [1] * spatial)
    pads = _conv_padding(ctx, kernel, dilations, strides)
    groups = ctx.attr("group", 1)
    symmetric = pads[:spatial] == pads[spatial:]
    if spatial == 1:  # a 1-D convolution is a 2-D one over a height of 1, so one Sparse VD layer serves both
        weight, kernel, strides, dilations = weight[:, :, None, :], [1, *kernel], [1, *strides], [1, *dilations]
        pads = [0, pads[0], 0, pads[1]]
    layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(kernel), tuple(strides),
                      tuple(pads[:2]) if symmetric else 0, tuple(dilations), groups, bias=bias is not None)
    filled(layer, weight=weight, bias=bias)
    explicit = None if symmetric else _torch_pad(pads)
    one_d = spatial == 1

    def run(layer: nn.Module, x: Tensor) -> Tensor:
        x = x.unsqueeze(-2) if one_d else x
        x = layer(x if explicit is None else F.pad(x, explicit))
        return x.squeeze(-2) if one_d else x

    return ctx.step(run, [0], layer=layer, source=ctx.source("conv1d" if one_d else "same", weight=1, bias=2))


class AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over axis 1 of an input of any rank, as ONNX's BatchNormalization is."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch normalisation needs at least 2 dimensions, got {input.dim()}")


def batch_norm(ctx: NodeContext) -> Step:
    if ctx.attr("training_mode", 0):
        raise ctx.fail("the model was exported in training mode; export it with model.eval()")
    values = [ctx.owned(i) for i in range(1, 5)]
    if any(value is None for value in values):
        raise ctx.fail("batch normalisation's scale, bias, mean and variance must be constants of its own")
    scale, bias, mean, var = values
    layer = AnyRankBatchNorm(scale.shape[0], eps=ctx.attr("epsilon", 1e-5), momentum=1 - ctx.attr("momentum", 0.9))
    filled(layer, weight=scale, bias=bias, running_mean=mean, running_var=var)
    source = ctx.source(weight=1, bias=2, running_mean=3, running_var=4)
    return ctx.step(_call_layer, [0], layer=layer, source=source)


def layer_norm(ctx: NodeContext) -> Step:
    scale, bias = ctx.owned(1), ctx.owned(2)
    axis, rank = ctx.attr("axis", -1), ctx.rank(0)
    if scale is None or (ctx.input(2) and bias is None):
        raise ctx.fail("layer normalisation's scale and bias must be constants of its own")
    normalized = scale.ndim
    if (axis >= 0 and (rank is None or rank - axis != normalized)) or (axis < 0 and -axis != normalized):
        raise ctx.fail(f"normalising from axis {axis} needs a scale over those axes, got shape {list(scale.shape)}")
    layer = filled(nn.LayerNorm(scale.shape, eps=ctx.attr("epsilon", 1e-5), bias=bias is not None),
                    weight=scale, bias=bias)
    return ctx.step(_call_layer, [0], layer=layer, source=ctx.source(weight=1, bias=2))


def gather(ctx: NodeContext) -> Step:
    table, axis = ctx.owned(0), ctx.attr("axis", 0)
    if table is not None and table.ndim == 2 and axis == 0 and np.issubdtype(table.dtype, np.floating):
        layer = filled(nn.Embedding(table.shape[0], table.shape[1]), weight=table)
        return ctx.step(lambda layer, indices: layer(indices.long()), [1], layer=layer, source=ctx.source(weight=0))

    def run(data: Tensor, indices: Tensor) -> Tensor:
        dim = axis % data.dim()
        indices = torch.where(indices < 0, indices + data.shape[dim], indices).long()
        picked = data.index_select(dim, indices.reshape(-1))
        return picked.reshape([*data.shape[:dim], *indices.shape, *data.shape[dim + 1 :]])

    return ctx.step(_stateless(run))


# --- operators without weights ----------------------------------------------------------------------------


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[[NodeContext], Step]:
    return lambda ctx: ctx.step(_stateless(fn), [0])


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[NodeContext], Step]:
    return lambda ctx: ctx.step(_stateless(fn))


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _sum(ctx: NodeContext) -> Step:
    def run(*values: Tensor) -> Tensor:
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total

    return ctx.step(_stateless(run))


def _leaky_relu(ctx: NodeContext) -> Step:
    slope = ctx.attr("alpha", 0.01)
    return ctx.step(_stateless(lambda x: F.leaky_relu(x, slope)), [0])


def _gelu(ctx: NodeContext) -> Step:
    approximate = ctx.attr("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return ctx.step(_stateless(lambda x: F.gelu(x, approximate=approximate)), [0])


def _softmax(fn: Callable[..., Tensor]) -> Callable[[NodeContext], Step]:
    def convert(ctx: NodeContext) -> Step:
        axis = ctx.attr("axis", -1)
        return ctx.step(_stateless(lambda x: fn(x, dim=axis)), [0])

    return convert


def _clip(ctx: NodeContext) -> Step:
    low, high = ctx.constant(1), ctx.constant(2)
    if (ctx.input(1) and low is None) or (ctx.input(2) and high is None):
        raise ctx.fail("Clip's bounds must be constants")
    low_value = None if low is None else float(low)
    high_value = None if high is None else float(high)
    return ctx.step(_stateless(lambda x: torch.clamp(x, low_value, high_value)), [0])


def _concat(ctx: NodeContext) -> Step:
    axis = ctx.attr("axis")
    return ctx.step(_stateless(lambda *values: torch.cat(values, dim=axis)))


def _flatten(ctx: NodeContext) -> Step:
    axis = ctx.attr("axis", 1)

    def run(x: Tensor) -> Tensor:
        cut = axis % x.dim() if axis else 0
        return x.reshape(math.prod(x.shape[:cut]), -1)

    return ctx.step(_stateless(run), [0])


def _reshape(ctx: NodeContext) -> Step:
    allow_zero = ctx.attr("allowzero", 0)

    def run(x: Tensor, shape: Tensor) -> Tensor:
        sizes = _ints(shape)
        if not allow_zero:
            sizes = [x.shape[i] if size == 0 else size for i, size in enumerate(sizes)]
        return x.reshape(sizes)

    return ctx.step(_stateless(run))


def _transpose(ctx: NodeContext) -> Step:
    perm = ctx.attr("perm")
    return ctx.step(_stateless(lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))), [0])


def _squeeze(ctx: NodeContext) -> Step:
    def run(x: Tensor, axes: Tensor | None = None) -> Tensor:
        if axes is None:
            return x.squeeze()
        return x.squeeze(tuple(a % x.dim() for a in _ints(axes)))

    return ctx.step(_stateless(run))


def _unsqueeze(ctx: NodeContext) -> Step:
    def run(x: Tensor, axes: Tensor) -> Tensor:
        rank = x.dim() + len(_ints(axes))
        for axis in sorted(a % rank for a in _ints(axes)):
            x = x.unsqueeze(axis)
        return x

    return ctx.step(_stateless(run))


def _pool_arguments(ctx: NodeContext) -> tuple[list[int], list[int], list[int], list[int], bool]:
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * len(kernel)))
    dilations = list(ctx.attr("dilations", [1] * len(kernel)))
    pads = _conv_padding(ctx, kernel, dilations, strides)
    return kernel, strides, dilations, pads, bool(ctx.attr("ceil_mode", 0))


def _max_pool(ctx: NodeContext) -> Step:
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.fail("MaxPool's indices output is not supported")
    kernel, strides, dilations, pads, ceil = _pool_arguments(ctx)
    spatial = len(kernel)
    if spatial not in (1, 2):
        raise ctx.fail(f"{spatial}-D pooling is not supported; only 1-D and 2-D")
    pool = F.max_pool1d if spatial == 1 else F.max_pool2d
    symmetric = pads[:spatial] == pads[spatial:] and all(2 * p <= k for p, k in zip(pads, kernel, strict=False))

    def run(x: Tensor) -> Tensor:
        if not symmetric:
            x, padding = F.pad(x, _torch_pad(pads), value=-math.inf), 0
        else:
            padding = pads[:spatial]
        return pool(x, kernel, strides, padding, dilations, ceil_mode=ceil)

    return ctx.step(_stateless(run), [0])


def _average_pool(ctx: NodeContext) -> Step:
    kernel, strides, dilations, pads, ceil = _pool_arguments(ctx)
    spatial = len(kernel)
    if spatial not in (1, 2) or any(d != 1 for d in dilations):
        raise ctx.fail("only 1-D and 2-D average pooling without dilation is supported")
    if pads[:spatial] != pads[spatial:] or any(2 * p > k for p, k in zip(pads, kernel, strict=False)):
        raise ctx.fail("average pooling with uneven padding is not supported; pad the input explicitly")
    pool = F.avg_pool1d if spatial == 1 else F.avg_pool2d
    include_pad = bool(ctx.attr("count_include_pad", 0))
    return ctx.step(_stateless(lambda x: pool(x, kernel, strides, pads[:spatial], ceil, include_pad)), [0])


def _global_pool(fn: Callable[..., Tensor]) -> Callable[[NodeContext], Step]:
    return lambda ctx: ctx.step(_stateless(lambda x: fn(x, dim=tuple(range(2, x.dim())), keepdim=True)), [0])


def _reduce(fn: Callable[..., Tensor]) -> Callable[[NodeContext], Step]:
    def convert(ctx: NodeContext) -> Step:
        keep = bool(ctx.attr("keepdims", 1))
        attr_axes = ctx.attr("axes")
        noop = bool(ctx.attr("noop_with_empty_axes", 0))

        def run(x: Tensor, axes: Tensor | None = None) -> Tensor:
            dims = list(attr_axes) if attr_axes is not None else _ints(axes)
            if not dims:
                if noop:
                    return x
                dims = list(range(x.dim()))
            return fn(x, dim=tuple(d % x.dim() for d in dims), keepdim=keep)

        return ctx.step(_stateless(run))

    return convert


def _dropout(ctx: NodeContext) -> Step:
    training = ctx.constant(2)
    if ctx.input(2) and (training is None or bool(training)):
        raise ctx.fail("the model was exported with dropout in training mode; export it with model.eval()")
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.fail("Dropout's mask output is not supported; export the model with model.eval()")
    step = ctx.step(_stateless(lambda x: x), [0])
    step.outputs = step.outputs[:1]
    return step


def _shape(ctx: NodeContext) -> Step:
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return ctx.step(_stateless(lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64)), [0])


def _cast(ctx: NodeContext) -> Step:
    target = ONNX_DTYPES.get(ctx.attr("to"))
    if target is None:
        raise ctx.fail(f"casting to {onnx.TensorProto.DataType.Name(ctx.attr('to'))} is not supported")
    return ctx.step(_stateless(lambda x: x.to(target)), [0])


def _constant_of_shape(ctx: NodeContext) -> Step:
    value = ctx.attr("value")
    fill = _tensor(onnx.numpy_helper.to_array(value)) if value is not None else torch.zeros(1)
    return ctx.step(_stateless(lambda shape: torch.full(_ints(shape), fill.item(), dtype=fill.dtype)), [0])


def _expand(ctx: NodeContext) -> Step:
    def run(x: Tensor, shape: Tensor) -> Tensor:
        sizes = _ints(shape)
        rank = max(len(sizes), x.dim())
        sizes = [1] * (rank - len(sizes)) + sizes
        current = [1] * (rank - x.dim()) + list(x.shape)
        return x.reshape(current).expand([max(a, b) if 1 in (a, b) else a for a, b in zip(current, sizes, strict=True)])

    return ctx.step(_stateless(run))


def _slice(ctx: NodeContext) -> Step:
    def run(x: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None, steps: Tensor | None = None):
        begin, stop = _ints(starts), _ints(ends)
        dims = _ints(axes) if axes is not None else list(range(len(begin)))
        strides = _ints(steps) if steps is not None else [1] * len(begin)
        index = [slice(None)] * x.dim()
        for dim, b, e, s in zip(dims, begin, stop, strides, strict=True):
            if s < 0:
                raise ctx.fail("slices with a negative step are not supported")
            index[dim % x.dim()] = slice(b, min(e, x.shape[dim % x.dim()]), s)
        return x[tuple(index)]

    return ctx.step(_stateless(run))


def _split(ctx: NodeContext) -> Step:
    axis, count = ctx.attr("axis", 0), len(ctx.node.output)
    attr_sizes = ctx.attr("split")

    def run(x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        parts = list(attr_sizes) if attr_sizes is not None else _ints(sizes)
        if not parts:
            size = -(-x.shape[axis] // count)
            parts = [size] * (count - 1) + [x.shape[axis] - size * (count - 1)]
        return tuple(torch.split(x, parts, dim=axis))

    return ctx.step(_stateless(run))


def _identity(ctx: NodeContext) -> Step:
    return ctx.step(_stateless(lambda x: x), [0])


def _where(ctx: NodeContext) -> Step:
    return ctx.step(_stateless(lambda condition, a, b: torch.where(condition.bool(), a, b)))


CONVERTERS: dict[str, Callable[[NodeContext], Step]] = {
    "Gemm": gemm, "MatMul": matmul, "Conv": conv, "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm, "Gather": gather,
    "Relu": _unary(F.relu), "LeakyRelu": _leaky_relu, "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Gelu": _gelu, "Erf": _unary(torch.erf), "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax), "Clip": _clip, "HardSigmoid": _unary(lambda x: F.hardsigmoid(x)),
    "HardSwish": _unary(F.hardswish), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg),
    "Reciprocal": _unary(torch.reciprocal), "Exp": _unary(torch.exp), "Abs": _unary(torch.abs),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_divide),
    "Pow": _binary(torch.pow), "Sum": _sum, "Equal": _binary(torch.eq), "Where": _where,
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Expand": _expand, "Slice": _slice, "Split": _split,
    "MaxPool": _max_pool, "AveragePool": _average_pool, "GlobalAveragePool": _global_pool(torch.mean),
    "GlobalMaxPool": _global_pool(torch.amax), "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "Dropout": _dropout, "Identity": _identity, "Shape": _shape, "Cast": _cast, "ConstantOfShape": _constant_of_shape,
}
