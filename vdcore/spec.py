"""Declarative architectures: a JSON-able spec, checked layer by layer, built into an ``nn.Sequential``.

A spec is data, never code, so a service can accept it from anyone::

    {"input_shape": [1, 28, 28], "num_classes": 10,
     "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 300}, {"type": "relu"},
                {"type": "linear", "out_features": 10}]}

Input sizes of each layer (``in_features``, ``in_channels``, ``num_features``) are inferred from the shapes;
when given, they must agree. Every error names the layer and says what to change.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vdcore.presets import PRESETS
from vdcore.sequence import REDUCTIONS, ImageRows, RecurrentFeatures

Shape = tuple[int, ...]

# Refuse architectures whose weights or activations would not fit a worker, before allocating anything.
DEFAULT_MAX_PARAMETERS = 200_000_000
MAX_DIMENSION = 1 << 16
MAX_ELEMENTS_PER_EXAMPLE = 1 << 26
MAX_LAYERS = 1000
MAX_RECURRENT_LAYERS = 8


class SpecError(ValueError):
    """A model spec that cannot be built; the message says where and how to fix it."""


@dataclass(frozen=True)
class LayerPlan:
    """One checked layer: the module to build, the shape it produces, and its parameter count."""

    build: Callable[[], nn.Module]
    output_shape: Shape
    parameters: int
    learns: bool = False


def _fail(index: int, kind: str, message: str) -> SpecError:
    return SpecError(f"layers[{index}] ({kind}): {message}")


class _Args:
    """A layer's options, read with type checks so every mistake becomes a clear ``SpecError``."""

    def __init__(self, index: int, kind: str, raw: dict[str, Any], allowed: set[str]) -> None:
        self.index, self.kind, self.raw = index, kind, raw
        unknown = sorted(set(raw) - allowed - {"type"})
        if unknown:
            raise self.error(f"unknown option(s) {unknown}; {kind} takes {sorted(allowed) or 'no options'}")

    def error(self, message: str) -> SpecError:
        return _fail(self.index, self.kind, message)

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        return self._checked_int(key, self.raw.get(key, default), minimum)

    def _checked_int(self, key: str, value: Any, minimum: int) -> int:
        if value is None:
            raise self.error(f"'{key}' is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"'{key}' must be an integer, got {value!r}")
        if not minimum <= value <= MAX_DIMENSION:
            raise self.error(f"'{key}' must be between {minimum} and {MAX_DIMENSION}, got {value}")
        return value

    def pair(self, key: str, default: int | None = None, minimum: int = 1) -> tuple[int, int]:
        value = self.raw.get(key, default)
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise self.error(f"'{key}' must be an integer or a pair of integers, got {value!r}")
            return self._checked_int(key, value[0], minimum), self._checked_int(key, value[1], minimum)
        single = self.int(key, default, minimum)
        return single, single

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"'{key}' must be true or false, got {value!r}")
        return value

    def expect(self, key: str, actual: int) -> None:
        """A declared input size must match the inferred one."""
        if key in self.raw and self.raw[key] != actual:
            raise self.error(f"'{key}' is {self.raw[key]!r} but the layer receives {actual} from the layer before")


def _need_rank(args: _Args, shape: Shape, ranks: tuple[int, ...], hint: str) -> None:
    if len(shape) not in ranks:
        raise args.error(f"needs an input of {hint}, got shape {list(shape)}")


def _linear(args: _Args, shape: Shape) -> LayerPlan:
    _need_rank(args, shape, (1,), "flat features; put a flatten layer before it")
    out, bias = args.int("out_features"), args.bool("bias", True)
    args.expect("in_features", shape[0])
    return LayerPlan(lambda: nn.Linear(shape[0], out, bias=bias), (out,), shape[0] * out + out * bias, learns=True)


def _conv_out(args: _Args, size: int, kernel: int, stride: int, pad: int, dilation: int, axis: str) -> int:
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise args.error(
            f"the kernel ({kernel}, dilation {dilation}) is larger than the padded input {axis} "
            f"({size} + 2x{pad}); use a smaller kernel, more padding, or fewer poolings before this layer"
        )
    return out


def _conv2d(args: _Args, shape: Shape) -> LayerPlan:
    _need_rank(args, shape, (3,), "shape [channels, height, width]")
    in_ch = shape[0]
    args.expect("in_channels", in_ch)
    out_ch, kernel = args.int("out_channels"), args.pair("kernel_size")
    stride, dilation = args.pair("stride", 1), args.pair("dilation", 1)
    groups, bias = args.int("groups", 1), args.bool("bias", True)
    if in_ch % groups or out_ch % groups:
        raise args.error(f"groups={groups} must divide in_channels={in_ch} and out_channels={out_ch}")
    raw_pad = args.raw.get("padding", 0)
    if raw_pad == "same":
        if stride != (1, 1):
            raise args.error("padding 'same' needs stride 1")
        out_hw = shape[1:]
        padding: Any = "same"
    else:
        pad = (0, 0) if raw_pad == "valid" else args.pair("padding", 0, minimum=0)
        padding = pad
        out_hw = tuple(
            _conv_out(args, shape[1 + i], kernel[i], stride[i], pad[i], dilation[i], ("height", "width")[i])
            for i in range(2)
        )
    weights = out_ch * (in_ch // groups) * kernel[0] * kernel[1]
    return LayerPlan(
        lambda: nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias),
        (out_ch, *out_hw),
        weights + out_ch * bias,
        learns=True,
    )


def _batchnorm(rank: int) -> Callable[[_Args, Shape], LayerPlan]:
    module = nn.BatchNorm1d if rank == 1 else nn.BatchNorm2d

    def plan(args: _Args, shape: Shape) -> LayerPlan:
        hint = "flat features (or [channels, length])" if rank == 1 else "shape [channels, height, width]"
        _need_rank(args, shape, (1, 2) if rank == 1 else (3,), hint)
        args.expect("num_features", shape[0])
        return LayerPlan(lambda: module(shape[0]), shape, 2 * shape[0])

    return plan


def _pool(module: type[nn.MaxPool2d] | type[nn.AvgPool2d]) -> Callable[[_Args, Shape], LayerPlan]:
    def plan(args: _Args, shape: Shape) -> LayerPlan:
        _need_rank(args, shape, (3,), "shape [channels, height, width]")
        kernel = args.pair("kernel_size")
        stride = args.pair("stride", None) if "stride" in args.raw else kernel
        pad = args.pair("padding", 0, minimum=0)
        if any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
            raise args.error(f"padding {list(pad)} must be at most half the kernel size {list(kernel)}")
        out_hw = tuple(
            _conv_out(args, shape[1 + i], kernel[i], stride[i], pad[i], 1, ("height", "width")[i]) for i in range(2)
        )
        return LayerPlan(lambda: module(kernel, stride, pad), (shape[0], *out_hw), 0)

    return plan


def _flatten(args: _Args, shape: Shape) -> LayerPlan:
    return LayerPlan(nn.Flatten, (math.prod(shape),), 0)


def _dropout(args: _Args, shape: Shape) -> LayerPlan:
    p = args.raw.get("p", 0.5)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise args.error(f"'p' must be a probability in [0, 1), got {p!r}")
    return LayerPlan(lambda: nn.Dropout(float(p)), shape, 0)


def _embedding(args: _Args, shape: Shape) -> LayerPlan:
    if args.index != 0:
        raise args.error("an embedding looks up the model's token ids, so it must be the first layer")
    _need_rank(args, shape, (1,), "token ids [steps]")
    count, dim = args.int("num_embeddings"), args.int("embedding_dim")
    return LayerPlan(lambda: nn.Embedding(count, dim), (shape[0], dim), count * dim, learns=True)


def _rows(args: _Args, shape: Shape) -> LayerPlan:
    _need_rank(args, shape, (3,), "an image [channels, height, width]")
    return LayerPlan(ImageRows, (shape[1], shape[0] * shape[2]), 0)


def _recurrent(module: type[nn.LSTM] | type[nn.GRU]) -> Callable[[_Args, Shape], LayerPlan]:
    gates = 4 if module is nn.LSTM else 3

    def plan(args: _Args, shape: Shape) -> LayerPlan:
        _need_rank(args, shape, (2,), "sequences [steps, features] (token ids: an embedding layer first; an image: "
                   "a rows layer first)")
        args.expect("input_size", shape[1])
        hidden, layers = args.int("hidden_size"), args.int("num_layers", 1)
        if layers > MAX_RECURRENT_LAYERS:
            raise args.error(f"'num_layers' may be at most {MAX_RECURRENT_LAYERS}, got {layers}")
        bidirectional, bias = args.bool("bidirectional", False), args.bool("bias", True)
        reduce = args.raw.get("output", "last")
        if reduce not in REDUCTIONS:
            raise args.error(f"'output' must be one of {list(REDUCTIONS)} (the last step's state or the mean over "
                             f"steps), got {reduce!r}")
        directions = 2 if bidirectional else 1
        inputs = [shape[1]] + [hidden * directions] * (layers - 1)
        parameters = directions * sum(gates * hidden * (i + hidden + 2 * bias) for i in inputs)

        def build() -> RecurrentFeatures:
            rnn = module(shape[1], hidden, layers, bias=bias, batch_first=True, bidirectional=bidirectional)
            return RecurrentFeatures(rnn, reduce)

        return LayerPlan(build, (hidden * directions,), parameters, learns=True)

    return plan


def _elementwise(module: type[nn.Module]) -> Callable[[_Args, Shape], LayerPlan]:
    return lambda args, shape: LayerPlan(module, shape, 0)


_RECURRENT_OPTIONS = {"hidden_size", "input_size", "num_layers", "bidirectional", "bias", "output"}
# type -> (options it takes, planner). A new layer type is one planner and one line here.
LAYER_TYPES: dict[str, tuple[set[str], Callable[[_Args, Shape], LayerPlan]]] = {
    "linear": ({"out_features", "in_features", "bias"}, _linear),
    "conv2d": (
        {"out_channels", "in_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"},
        _conv2d,
    ),
    "batchnorm1d": ({"num_features"}, _batchnorm(1)),
    "batchnorm2d": ({"num_features"}, _batchnorm(2)),
    "relu": (set(), _elementwise(nn.ReLU)),
    "tanh": (set(), _elementwise(nn.Tanh)),
    "maxpool2d": ({"kernel_size", "stride", "padding"}, _pool(nn.MaxPool2d)),
    "avgpool2d": ({"kernel_size", "stride", "padding"}, _pool(nn.AvgPool2d)),
    "flatten": (set(), _flatten),
    "dropout": ({"p"}, _dropout),
    "embedding": ({"num_embeddings", "embedding_dim"}, _embedding),
    "rows": (set(), _rows),
    "lstm": (_RECURRENT_OPTIONS, _recurrent(nn.LSTM)),
    "gru": (_RECURRENT_OPTIONS, _recurrent(nn.GRU)),
}


@dataclass(frozen=True)
class ModelPlan:
    """A spec that has been checked: what to build, and the facts about it that callers need."""

    input_shape: Shape
    num_classes: int
    layers: list[LayerPlan]
    vocabulary: int | None = None  # token ids the model reads (its embedding's rows); None: float examples

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    def build(self) -> nn.Sequential:
        return nn.Sequential(*(layer.build() for layer in self.layers))


def check_shape(value: Any, what: str) -> Shape:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= 3:
        raise SpecError(
            f"{what} must be a list of 1 to 3 positive integers ([features], [steps, features], [C, H, W], or "
            f"[steps] of token ids), got {value!r}"
        )
    if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIMENSION for v in value):
        raise SpecError(f"{what} must hold integers between 1 and {MAX_DIMENSION}, got {value!r}")
    return tuple(value)


def preset_spec(name: str, **options: Any) -> dict[str, Any]:
    """The spec of a named preset; ``options`` may set ``input_shape``, ``num_classes`` (and ``width``)."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    allowed = set(inspect.signature(PRESETS[name]).parameters)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SpecError(f"preset {name!r} takes {sorted(allowed)}, not {unknown}")
    if "input_shape" in options:
        options["input_shape"] = check_shape(options["input_shape"], "input_shape")
    try:
        return PRESETS[name](**options)
    except ValueError as error:
        raise SpecError(str(error)) from None


def plan_model(spec: dict[str, Any], max_parameters: int = DEFAULT_MAX_PARAMETERS) -> ModelPlan:
    """Check ``spec`` completely, without allocating any weight, and return its plan."""
    if not isinstance(spec, dict):
        raise SpecError(f"a model spec must be a JSON object, got {type(spec).__name__}")
    if "preset" in spec:
        if not isinstance(spec["preset"], str):
            raise SpecError(f"'preset' must be a preset name, got {spec['preset']!r}")
        options = {k: v for k, v in spec.items() if k != "preset"}
        spec = preset_spec(spec["preset"], **options)
    unknown = sorted(set(spec) - {"input_shape", "num_classes", "layers"})
    if unknown:
        raise SpecError(f"unknown spec key(s) {unknown}; a spec has input_shape, num_classes and layers")
    for key in ("input_shape", "num_classes", "layers"):
        if key not in spec:
            raise SpecError(f"the spec needs '{key}'")
    input_shape = check_shape(spec["input_shape"], "input_shape")
    if math.prod(input_shape) > MAX_ELEMENTS_PER_EXAMPLE:
        raise SpecError(f"input_shape {list(input_shape)} has more than {MAX_ELEMENTS_PER_EXAMPLE} values per example")
    classes = spec["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_DIMENSION:
        raise SpecError(f"num_classes must be an integer between 2 and {MAX_DIMENSION}, got {classes!r}")
    layers = spec["layers"]
    if not isinstance(layers, list) or not layers:
        raise SpecError("'layers' must be a non-empty list of layer objects")
    if len(layers) > MAX_LAYERS:
        raise SpecError(f"a spec may have at most {MAX_LAYERS} layers, this one has {len(layers)}")

    plans, total, shape = [], 0, input_shape
    for index, raw in enumerate(layers):
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise SpecError(f"layers[{index}] must be an object with a string 'type', got {raw!r}")
        kind = raw["type"]
        if kind not in LAYER_TYPES:
            raise _fail(index, kind, f"unknown layer type; known types are {sorted(LAYER_TYPES)}")
        allowed, planner = LAYER_TYPES[kind]
        plan = planner(_Args(index, kind, raw, allowed), shape)
        total += plan.parameters
        if total > max_parameters:
            raise _fail(index, kind, f"the model would have more than {max_parameters:,} parameters")
        if math.prod(plan.output_shape) > MAX_ELEMENTS_PER_EXAMPLE:
            raise _fail(index, kind, f"its output {list(plan.output_shape)} is too large for one example")
        plans.append(plan)
        shape = plan.output_shape
    if shape != (classes,):
        raise SpecError(
            f"the last layer outputs shape {list(shape)}, but the model must output num_classes={classes} "
            "scores; end with a linear layer of that many out_features"
        )
    if not any(p.learns for p in plans):
        raise SpecError("the model has no weight layer (linear, conv2d, embedding, lstm, gru), so there is nothing "
                        "to learn or compress")
    return ModelPlan(input_shape=input_shape, num_classes=classes, layers=plans, vocabulary=spec_vocabulary(spec))


def spec_vocabulary(spec: dict[str, Any]) -> int | None:
    """How many token ids a spec's model reads (its first layer's ``num_embeddings``), or None when it takes
    float examples; what a dataset needs to know before the spec is planned (it may give the spec's shape).
    A preset is expanded first; a spec too broken to tell is None here and refused by ``plan_model``."""
    if isinstance(spec, dict) and isinstance(spec.get("preset"), str):
        try:
            spec = preset_spec(spec["preset"], **{k: v for k, v in spec.items() if k != "preset"})
        except SpecError:
            return None
    layers = spec.get("layers") if isinstance(spec, dict) else None
    first = layers[0] if isinstance(layers, list) and layers and isinstance(layers[0], dict) else {}
    count = first.get("num_embeddings") if first.get("type") == "embedding" else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None



def build_model(spec: dict[str, Any], max_parameters: int = DEFAULT_MAX_PARAMETERS) -> nn.Sequential:
    """Build the ``nn.Sequential`` a spec (or ``{"preset": name, ...}``) describes, after checking it fully.

    Raises ``SpecError`` naming the layer at fault and what to change.
    """
    return plan_model(spec, max_parameters).build()
