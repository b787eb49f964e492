"""PNG figures for a finished job: training curves, per-layer sparsity and the input pixels the model reads.

Figures are drawn with ``matplotlib.figure.Figure`` on an Agg canvas, so no global pyplot/backend state
is touched (safe in worker processes and threads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch import nn

from recipe.progress import Stage
from recipe.report import SHORTFALL_UNITS, Accuracy, LayerFacts, Tradeoff, Units
from vdcore.files import atomic_path
from vdcore.train import EpochMetrics

DPI = 100
TRAINING_CURVES, LAYER_SPARSITY, INPUT_RELEVANCE = "training_curves.png", "layer_sparsity.png", "input_relevance.png"
TRADEOFF = "tradeoff.png"
PLOTS = (TRAINING_CURVES, LAYER_SPARSITY, TRADEOFF, INPUT_RELEVANCE)
TRAIN_COLOUR = "tab:blue"
VAL_COLOUR = "tab:orange"
PRETRAIN_ALPHA = 0.35
# Layers that may sit between the input and the first Linear without mixing pixels.
_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)


def draw_plots(
    history: Mapping[Stage, list[EpochMetrics]], layers: list[LayerFacts], units: Units, pruned: nn.Module,
    input_shape: tuple[int, ...], out_dir: Path, shipped: tuple[Tradeoff, Accuracy, float] | None = None,
) -> list[str]:
    """Write a job's PNG figures into ``out_dir`` and return the file names written, in order.

    ``training_curves.png`` (``history``) and ``layer_sparsity.png`` (``layers``, ``units``: the report's) are
    always drawn, ``tradeoff.png`` with ``shipped`` (the report's tradeoff, accuracy and compression);
    ``input_relevance.png`` only
    for image inputs (``(C, H, W)``) whose first weight layer is a Linear reading the flattened pixels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save(_training_curves(history.get(Stage.PRETRAINING, []), history.get(Stage.TRAINING, [])), out, TRAINING_CURVES)
    _save(_layer_sparsity(layers, units), out, LAYER_SPARSITY)
    written = [TRAINING_CURVES, LAYER_SPARSITY]
    if shipped is not None:
        _save(_tradeoff_figure(*shipped), out, TRADEOFF)
        written.append(TRADEOFF)
    relevance = input_relevance(pruned, tuple(input_shape))
    if relevance is not None:
        _save(_relevance_figure(relevance), out, INPUT_RELEVANCE)
        written.append(INPUT_RELEVANCE)
    return written


def input_relevance(pruned: nn.Module, input_shape: tuple[int, ...]) -> np.ndarray | None:
    """Non-zero first-layer weights reading each pixel, averaged over channels: an ``(H, W)`` map.

    ``None`` when the input is not an image or the first weight layer does not read single pixels
    (a convolution, or anything mixing pixels before the first Linear).
    """
    if len(input_shape) != 3 or not isinstance(pruned, nn.Sequential):  # a graph may move pixels before a layer
        return None
    first = None
    for module in pruned.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            first = module
            break
        if not list(module.children()) and not isinstance(module, _PASS_THROUGH):
            return None  # e.g. a pooling layer before the first Linear: columns are not pixels
    if not isinstance(first, nn.Linear) or first.in_features != math.prod(input_shape):
        return None
    with torch.no_grad():
        counts = (first.weight.detach().cpu() != 0).sum(dim=0).to(torch.float64)
    return counts.reshape(input_shape).mean(dim=0).numpy()


def _save(fig: Figure, out: Path, name: str) -> None:
    """Render ``fig`` to a temporary file in ``out`` and rename it into place, so readers never see half a PNG."""
    FigureCanvasAgg(fig)
    try:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()


def _series(rows: Sequence[EpochMetrics], key: str, offset: int, scale: float = 1.0, positive: bool = False):
    """x (epoch + offset) and y of the rows where ``key`` is a finite number (and > 0 if ``positive``)."""
    xs, ys = [], []
    for row in rows:
        value = getattr(row, key)
        if value is None or not math.isfinite(value) or (positive and value <= 0):
            continue
        xs.append(row.epoch + offset)
        ys.append(value * scale)
    return xs, ys


def _training_curves(pretraining: list[EpochMetrics], training: list[EpochMetrics]) -> Figure:
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    offset = max((row.epoch for row in pretraining), default=0)
    panels = [
        (axes[0, 0], "Data loss (cross-entropy)", "loss", [("data_loss", "train", TRAIN_COLOUR, 1.0, False)]),
        (axes[0, 1], "KL divergence (log scale)", "KL", [("kl", "KL", TRAIN_COLOUR, 1.0, True)]),
        (
            axes[1, 0],
            "Accuracy",
            "accuracy (%)",
            [
                ("train_accuracy", "train (noisy)", TRAIN_COLOUR, 100.0, False),
                ("val_accuracy", "validation", VAL_COLOUR, 100.0, False),
            ],
        ),
        (
            axes[1, 1],
            "Sparsity (weights dropped)",
            "sparsity (%)",
            [("sparsity", "sparsity", TRAIN_COLOUR, 100.0, False)],
        ),
    ]
    for ax, title, ylabel, lines in panels:
        plotted = False
        for key, label, colour, scale, positive in lines:
            px, py = _series(pretraining, key, 0, scale, positive)
            if px:
                ax.plot(px, py, color=colour, alpha=PRETRAIN_ALPHA, marker=".", label=f"{label}, pretraining")
                plotted = True
            tx, ty = _series(training, key, offset, scale, positive)
            if tx:
                ax.plot(tx, ty, color=colour, marker=".", label=label)
                plotted = True
        if not plotted:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif title.startswith("KL"):
            ax.set_yscale("log")
        if offset:
            ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if plotted and (len(lines) > 1 or offset):
            ax.legend(fontsize="small")
    axes[1, 1].set_ylim(-2, 102)
    for ax in axes[1]:
        ax.set_xlabel("epoch (pretraining, then Sparse VD training)" if offset else "epoch")
    fig.suptitle("Training history")
    return fig


def _layer_sparsity(layers: list[LayerFacts], units: Units) -> Figure:
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = [_layer_label(layer) for layer in layers]
    positions = np.arange(len(layers))
    kept = [layer.nonzero / layer.weights if layer.weights else 0.0 for layer in layers]
    # Fully-dropped layers get a tiny bar so the log axis still shows them.
    floor = min([k for k in kept if k > 0], default=1.0) / 10
    bars = left.bar(positions, [max(k, floor) for k in kept], color=TRAIN_COLOUR)
    left.set_yscale("log")
    left.set_ylim(floor / 3 if kept else 0.1, 2.5)
    left.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value * 100:.3g}%"))
    left.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    for bar, layer, kept_fraction in zip(bars, layers, kept, strict=True):
        left.annotate(
            f"{layer.nonzero:,} of {layer.weights:,}\n({kept_fraction:.1%})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
        )
    left.set_xticks(positions, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    left.set_title("Weights kept per layer")
    left.set_ylabel("weights non-zero (log scale)")
    left.set_xlabel("layer")
    left.grid(True, axis="y", alpha=0.3, which="both")

    before, after = list(units.before), list(units.after)
    count = max(len(before), len(after))
    if count:
        positions = np.arange(count)
        width = 0.4
        before += [0] * (count - len(before))
        after += [0] * (count - len(after))
        right.bar(positions - width / 2, before, width, color="lightgrey", label="before")
        kept_bars = right.bar(positions + width / 2, after, width, color=TRAIN_COLOUR, label="after shrinking")
        right.bar_label(kept_bars, fontsize="small", padding=2)
        right.set_ylim(top=max(before + after) * 1.15 or 1)
        labels = names if len(names) == count else [f"layer {i + 1}" for i in range(count)]
        right.set_xticks(positions, labels, rotation=30 if count > 4 else 0, ha="right" if count > 4 else "center")
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no unit counts", ha="center", va="center", transform=right.transAxes)
    right.set_title("Units (outputs / channels) kept per layer")
    right.set_ylabel("units")
    right.set_xlabel("layer")
    right.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Per-layer sparsity")
    return fig


def _tradeoff_figure(tradeoff: Tradeoff, accuracy: Accuracy, compression: float) -> Figure:
    """Validation error against compression for each threshold measured (the few exported marked with their
    onnxruntime latency, per batch of the tradeoff's ``latency_batch``, and file size), the budget or floor the
    objective set, the pick before fine-tuning and the network shipped after it."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    points = sorted(tradeoff.candidates, key=lambda p: p.compression)
    ax.plot([p.compression for p in points], [100 * (1 - p.accuracy) for p in points], "o-", color=TRAIN_COLOUR,
            markersize=4, label="a threshold's network, before fine-tuning")
    for p in points[:: max(1, len(points) // 8)]:
        ax.annotate(f"{p.threshold:g}", (p.compression, 100 * (1 - p.accuracy)), xytext=(3, 3),
                    textcoords="offset points", fontsize="x-small", color="grey")
    for p in (p for p in points if p.latency_ms is not None):
        ax.annotate(f"{p.latency_ms:.3g} ms, {p.file_bytes / 1024:.0f} KB", (p.compression, 100 * (1 - p.accuracy)),
                    xytext=(3, -10), textcoords="offset points", fontsize="x-small", color=VAL_COLOUR)
    dense_error = 100 * (1 - accuracy.before)
    ax.axhline(dense_error, color="grey", linestyle=":", linewidth=1, label=f"dense: {dense_error:.2f}% error")
    if tradeoff.objective == "max_accuracy_drop":
        ax.axhline(dense_error + tradeoff.value, color=VAL_COLOUR, linestyle="--", linewidth=1,
                   label=f"budget: +{tradeoff.value:g} point")
    elif tradeoff.objective == "min_compression":
        ax.axvline(tradeoff.value, color=VAL_COLOUR, linestyle="--", linewidth=1,
                   label=f"at least {tradeoff.value:g}x")
    elif tradeoff.objective is not None:  # a budget on the exported file or its latency: a legend entry
        unit = "bytes" if tradeoff.objective == "max_file_bytes" else f"ms per batch of {tradeoff.latency_batch}"
        ax.plot([], [], linestyle="none", label=f"budget: {tradeoff.value:g} {unit}")
    chosen = tradeoff.chosen
    ax.plot([chosen.compression], [100 * (1 - chosen.accuracy)], "s", color=VAL_COLOUR, markersize=9,
            label=f"picked: threshold {chosen.threshold:g}")
    ax.plot([compression], [100 * (1 - accuracy.after)], "*", color="tab:green",
            markersize=14, label=f"shipped, fine-tuned: {100 * (1 - accuracy.after):.2f}% error")
    ax.set_xscale("log")
    for axis_format in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_format(FuncFormatter(lambda value, _: f"{value:.3g}x"))
    ax.set_xlabel("compression (all weights / non-zero, log scale)")
    ax.set_ylabel("validation error (%)")
    ax.set_ylim(bottom=0, top=min(100.0, max(3 * dense_error + 1, 100 * (1 - chosen.accuracy) * 1.5 + 0.5)))
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    met = "" if tradeoff.met is None else " (objective met)" if tradeoff.met else \
        f" (objective missed by {tradeoff.shortfall:.3g}{SHORTFALL_UNITS[tradeoff.objective]})"
    ax.set_title(f"Accuracy against size, by threshold{met}")
    return fig


def _layer_label(layer: LayerFacts) -> str:
    """``"1: Linear\\n300×64"``: the layer's name in the model, its kind and weight shape."""
    return f"{layer.name}: {layer.kind}\n{'×'.join(str(d) for d in layer.shape)}"


def _relevance_figure(relevance: np.ndarray) -> Figure:
    height, width = relevance.shape
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(relevance, cmap="viridis", interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.85)
    colorbar.set_label("non-zero first-layer weights per pixel")
    unread = int((relevance == 0).sum())
    ax.set_title(f"input pixels the compressed network reads\n({unread} of {height * width} pixels ignored)")
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    return fig
