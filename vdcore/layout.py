"""Arranging a shrunk network for onnxruntime: filter counts rounded down or padded up to the CPU's vector width,
and the fastest of a network's equivalent ONNX forms, found by timing them.

onnxruntime runs a convolution in its fast blocked (NCHWc) layout only when its channel counts are multiples of
the vector width (8 floats with AVX2, 16 with AVX-512), so a network that ``shrink`` made smaller can run slower
than a slightly wider one. ``round_units_`` drops a few weakest filters before fine-tuning; ``pad_channels``
adds zero filters after; ``export_fastest`` times the forms side by side and keeps the fastest.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from vdcore.export import ExportResult, export_onnx
from vdcore.graph import OnnxNet, shrink_onnx
from vdcore.graph.shrink import keep_units
from vdcore.latency import measure_latency
from vdcore.rebuild import WeightLayer, rebuilt
from vdcore.shrink import (
    BatchNorm,
    GatherInput,
    bn_holding,
    can_shrink_between,
    flat_layers,
    flattening,
    input_shapes,
    layer_widths,
    shrink,
    weight_pairs,
)
from vdcore.sparsify import is_sparsified

LATENCY_BATCHES = (1, 100)
# Channel counts the hidden convolutions of the shrunk network are also tried padded to (pad_channels).
CHANNEL_MULTIPLES = (8, 16)


@torch.no_grad()
def pad_channels(model: nn.Sequential, example_input: Tensor, multiple: int) -> nn.Sequential:
    """A copy of a shrunk ``model`` whose hidden convolutions have a multiple of ``multiple`` output channels.

    The added channels are zero filters whose outputs stay zero and are read with zero weights, so the network
    computes exactly what ``model`` computes. Why: onnxruntime runs a convolution in its fast blocked (NCHWc)
    layout only when the channel counts are multiples of the CPU's vector width (8 floats with AVX2, 16 with
    AVX-512), so a convolution that shrink left with 11 filters can cost more than one with 16.

    Raises:
        ValueError: ``multiple`` is below 1, or ``model`` is not one ``shrink`` accepts.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be 1 or more, got {multiple}")
    layers = flat_layers(copy.deepcopy(model).eval())
    x = example_input[:1].clone()
    for ia, ib in weight_pairs(layers):
        a, b = layers[ia], layers[ib]
        assert isinstance(a, WeightLayer) and isinstance(b, WeightLayer)
        shapes = input_shapes(layers, x)
        width, extra = a.weight.shape[0], -a.weight.shape[0] % multiple
        between = layers[ia + 1 : ib]
        if not isinstance(a, nn.Conv2d) or not extra or not can_shrink_between(a, b, between, shapes[ia : ib + 1]):
            continue
        at_flatten, block = flattening(between, shapes[ia : ib + 1])
        bias = None if a.bias is None else _zeros_after(a.bias, 0, extra)
        layers[ia] = rebuilt(a, _zeros_after(a.weight, 0, extra), bias)
        for j, layer in enumerate(between):
            if isinstance(layer, BatchNorm):
                layers[ia + 1 + j] = _bn_padded(layer, extra if j < at_flatten else extra * block)
        read = b.weight.reshape(b.weight.shape[0], width, -1) if isinstance(b, nn.Linear) else b.weight
        b_weight = _zeros_after(read, 1, extra).reshape(b.weight.shape[0], -1, *b.weight.shape[2:])
        layers[ib] = rebuilt(b, b_weight, b.bias)
    return nn.Sequential(*layers).eval()


def _zeros_after(t: Tensor, dim: int, count: int) -> Tensor:
    """``t`` with ``count`` slices of zeros appended along ``dim``."""
    shape = list(t.shape)
    shape[dim] = count
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _bn_padded(bn: BatchNorm, count: int) -> BatchNorm:
    """``bn`` with ``count`` more features that map zero to zero (mean 0, variance 1, shift 0)."""
    assert bn.running_mean is not None and bn.running_var is not None
    var = torch.cat([bn.running_var, bn.running_var.new_ones(count)])
    affine = (torch.cat([bn.weight, bn.weight.new_ones(count)]), _zeros_after(bn.bias, 0, count)) if bn.affine else None
    return bn_holding(bn, _zeros_after(bn.running_mean, 0, count), var, affine)


@torch.no_grad()
def round_units_(pruned: nn.Module, example_input: Tensor, multiple: int) -> list[int]:
    """Zero, in place, the weakest filters of each hidden convolution of a pruned plain network whose kept
    filters are a few more than a multiple of ``multiple``; returns the filters each convolution keeps.

    A convolution keeping ``k * multiple + r`` filters with ``0 < r < multiple / 2`` loses its ``r`` weakest (by the
    norm of a filter's weights times the norm of the next layer's weights that read it); any other count is left
    for ``pad_channels`` to round up. Why: onnxruntime runs a convolution with 8 filters in its blocked layout
    (AVX2) several times as fast as one with 9 to 12 (bench/RESULTS.md, "onnxruntime latency of LeNet-5 by filter
    count"). The network changes, so fine-tune it afterwards (``finetune(..., hold="units")``).

    Raises:
        ValueError: ``multiple`` is below 1, or ``pruned`` is not a plain network ``shrink`` accepts.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be 1 or more, got {multiple}")
    if not isinstance(pruned, nn.Sequential) or is_sparsified(pruned):
        raise ValueError("round_units_ needs a pruned plain nn.Sequential (vdcore.prune's result)")
    layers = flat_layers(pruned)
    device = next(pruned.parameters()).device
    shapes = input_shapes(layers, example_input[:1].to(device))
    kept = []
    for ia, ib in weight_pairs(layers):
        a, b = layers[ia], layers[ib]
        assert isinstance(a, WeightLayer) and isinstance(b, WeightLayer)
        if not isinstance(a, nn.Conv2d) or not can_shrink_between(a, b, layers[ia + 1 : ib], shapes[ia : ib + 1]):
            continue
        incoming = a.weight.flatten(1).norm(dim=1)
        outgoing = b.weight.reshape(b.weight.shape[0], a.weight.shape[0], -1).transpose(0, 1).flatten(1).norm(dim=1)
        strength = torch.where((incoming > 0) & (outgoing > 0), incoming * outgoing, torch.zeros_like(incoming))
        count = int((strength > 0).sum())
        extra = count % multiple
        if count > multiple and 0 < extra < multiple / 2:
            weakest = strength.argsort()[-count:][:extra]
            a.weight[weakest] = 0
            b.weight.view(b.weight.shape[0], a.weight.shape[0], -1)[:, weakest] = 0
            count -= extra
        kept.append(count)
    return kept


@dataclass(frozen=True)
class Fastest:
    """The shrunk network in the form that ran fastest, its ONNX file, and what the form is."""

    model: nn.Module  # an nn.Sequential, or an OnnxNet written back into its graph
    export: ExportResult
    latency: dict[str, dict[str, float]]
    units: list[int]  # per weight layer, as shrink left them (before any padding)
    input_gather: bool
    channel_multiple: int  # hidden convolutions padded to a multiple of this (1: not padded)
    notes: tuple[str, ...] = ()  # what the form leaves undone, for the report's reader


def input_forms(pruned: nn.Module, example: torch.Tensor) -> list[nn.Sequential]:
    """``pruned`` shrunk with a Gather of the inputs its first layer reads and, when that form has one, also with
    zero weights for the rest: the forms a job can ship, which compute the same."""
    forms = [shrink(pruned, example, gather_inputs=True)]
    if any(isinstance(m, GatherInput) for m in forms[0]):
        forms.append(shrink(pruned, example, gather_inputs=False))
    return forms


def export_fastest(pruned: nn.Module, example: torch.Tensor, baseline: ExportResult, out: Path,
                   smallest: bool = False) -> Fastest:
    """Shrink ``pruned`` and write it to ``out/model.onnx`` in its fastest form (with ``smallest``, its smallest
    file, the fastest of equals), with its latency against ``baseline``.

    Several forms compute the same. When the first layer ignores some inputs, one gathers the read inputs first
    and the other keeps zero weights for the rest; and hidden convolutions may be padded with zero filters to
    each of ``CHANNEL_MULTIPLES``. Which is faster depends on the batch, the runtime and the CPU, so every
    distinct form is timed side by side with the baseline at batches 1 and 100, and the lowest geometric mean
    wins. A network imported from ONNX (``OnnxNet``) is shrunk in its own graph (``shrink_onnx``), its
    convolutions' filter counts rounded up to each of ``CHANNEL_MULTIPLES`` or not, and raced against itself
    unshrunk.
    """
    if isinstance(pruned, OnnxNet):
        return _fastest_graph(pruned, example, baseline, out, smallest)
    shrunk = input_forms(pruned, example)
    forms: list[tuple[nn.Sequential, nn.Sequential, int]] = []  # (form, shrunk network, channel multiple)
    for small in shrunk:
        widths: list[list[int]] = []
        for multiple in (1, *CHANNEL_MULTIPLES):
            form = pad_channels(small, example, multiple)
            if layer_widths(form) not in widths:
                widths.append(layer_widths(form))
                forms.append((form, small, multiple))
    exports = [
        export_onnx(form, out / f".model-candidate-{i}.onnx", example) for i, (form, _, _) in enumerate(forms)
    ]
    best, latency = race(baseline, exports, tuple(example.shape[1:]), smallest)
    for i, export in enumerate(exports):
        if i != best:
            export.path.unlink()
    form, small, multiple = forms[best]
    return Fastest(
        model=form,
        export=replace(exports[best], path=exports[best].path.replace(out / "model.onnx")),
        latency=latency,
        units=layer_widths(small),
        input_gather=any(isinstance(m, GatherInput) for m in small),
        channel_multiple=multiple,
    )


def _fastest_graph(pruned: OnnxNet, example: torch.Tensor, baseline: ExportResult, out: Path, smallest: bool
                   ) -> Fastest:
    """An imported network's fastest form: shrunk in its own graph with convolutions rounded to each of
    ``CHANNEL_MULTIPLES`` or not at all, or not shrunk (all write the same function), timed side by side."""
    forms = []
    for multiple in (1, *CHANNEL_MULTIPLES):
        shrunk = shrink_onnx(pruned, multiple)
        if all(layer_widths(shrunk.net) != layer_widths(form.net) for form, _ in forms):
            forms.append((shrunk, multiple))
    unshrunk = keep_units(pruned)
    if all(layer_widths(unshrunk.net) != layer_widths(form.net) for form, _ in forms):
        forms.append((unshrunk, 1))
    exports = [form.save(out / f".model-candidate-{i}.onnx") for i, (form, _) in enumerate(forms)]
    best, latency = race(baseline, exports, tuple(example.shape[1:]), smallest)
    for i, export in enumerate(exports):
        if i != best:
            export.path.unlink()
    form, multiple = forms[best]
    live = forms[0][0]  # shrunk and not rounded: the units the network still uses
    return Fastest(model=form.net, export=replace(exports[best], path=exports[best].path.replace(out / "model.onnx")),
                   latency=latency, units=layer_widths(live.net), input_gather=False, channel_multiple=multiple,
                   notes=form.notes)


def race(
    baseline: ExportResult, candidates: list[ExportResult], input_shape: tuple[int, ...], smallest: bool = False
) -> tuple[int, dict[str, dict[str, float]]]:
    """The candidate fastest against ``baseline`` (the lowest geometric mean over ``LATENCY_BATCHES``, all timed
    side by side; with ``smallest``, the smallest file, the fastest of equals) and its latency by batch: baseline
    and compressed medians and the speed-up."""
    timed = {
        batch: measure_latency([baseline.path, *(c.path for c in candidates)], input_shape, batch=batch)
        for batch in LATENCY_BATCHES
    }

    def slowness(i: int) -> float:
        return math.prod(times[i + 1].median_ms for times in timed.values())

    if smallest:
        best = min(range(len(candidates)), key=lambda i: (candidates[i].path.stat().st_size, slowness(i)))
    else:
        best = min(range(len(candidates)), key=slowness)
    latency = {
        f"batch_{batch}": {
            "baseline_ms": times[0].median_ms,
            "compressed_ms": times[best + 1].median_ms,
            "speedup": times[0].median_ms / times[best + 1].median_ms,
        }
        for batch, times in timed.items()
    }
    return best, latency
