"""Kingma, Salimans & Welling 2015, Table 1: variance of the gradient estimators of the variational objective.

    python bench/kingma_table1.py                      # width 1000, 10 and 100 epochs, 1000 draws: many hours on CPU
    python bench/kingma_table1.py --width 400 --epochs 10 50 --draws 200 --threads 2
    python bench/kingma_table1.py --width 32 --epochs 1 2 --draws 20 --train-examples 3000 --no-write  # smoke

Trains a variational dropout B MLP (``vdcore.kingma_mlp("variational-b", width)``: 784 -> w -> w -> w -> 10,
ReLU, independent weight noise with one learned alpha per layer, sampled by local reparameterization) on the
MNIST training set with Adam, batch 100, loss ``mean CE + KL / N``. After each epoch listed in ``--epochs`` it
freezes the parameters and draws ``--draws`` minibatch gradients of the objective
``L = N / M sum_m log p(y_m | x_m, W) - KL`` with respect to the weight means of the bottom (784 -> w) and top
(w -> 10) layers, each draw with a fresh random minibatch (the same one for every estimator) and fresh noise:

- local reparameterization: each pre-activation sampled, independently per example (how the model trains);
- separate weight samples: a whole weight matrix sampled for each example of the minibatch;
- single weight sample: one weight matrix per layer, shared by the minibatch;
- no dropout noise: the weight means themselves (only the minibatch varies: the minimum).

Each parameter's variance over the draws, averaged over the layer's parameters, is the table's entry. The KL
does not depend on the weight means, so only the data term's gradient varies. The width, draws, optimizer and
N = 60000 (no validation split) are this script's settings, not figures taken from the paper. Appends a table
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kingma_figure1 import MNIST, error_rate, load_mnist, train_mlp
from bench.results import append_section, command_line, machine
from vdcore import VariationalDropoutLinearB, kingma_mlp

ESTIMATORS = {
    "lrt": "local reparameterization",
    "separate": "separate weight samples",
    "single": "single weight sample",
    "none": "no dropout noise (minimal variance)",
}
# Elements of one chunk's per-example weight tensor (separate weight samples): bounds that estimator's memory.
CHUNK_ELEMENTS = 1 << 23


def sampled_layer(layer: VariationalDropoutLinearB, x: Tensor, estimator: str) -> Tensor:
    """``layer``'s training output under one estimator; all four have the same expectation."""
    w, b = layer.weight, layer.bias
    std = torch.sqrt(layer.alpha.detach())
    if estimator == "lrt":
        return layer.noisy_forward(x)
    if estimator == "single":
        return F.linear(x, w * (1 + std * torch.randn_like(w)), b)
    if estimator == "separate":
        factors = torch.randn(len(x), *w.shape, dtype=w.dtype, device=w.device).mul_(std).add_(1)
        out = torch.einsum("noi,ni->no", w * factors, x)
        return out if b is None else out + b
    if estimator == "none":
        return F.linear(x, w, b)
    raise ValueError(f"unknown estimator {estimator!r}")


def sampled_forward(model: nn.Sequential, x: Tensor, estimator: str) -> Tensor:
    for module in model:
        x = sampled_layer(module, x, estimator) if isinstance(module, VariationalDropoutLinearB) else module(x)
    return x


def minibatch_gradient(model: nn.Sequential, params: list[Tensor], x: Tensor, y: Tensor, dataset_size: int,
                       estimator: str) -> list[Tensor]:
    """Gradient of ``N / M sum_m -log p(y_m | x_m)`` (the objective's data term, negated) w.r.t. ``params``.

    Separate weight samples run in chunks of examples: the per-example weights of a whole minibatch would not fit.
    """
    weights = sum(m.weight.numel() for m in model if isinstance(m, VariationalDropoutLinearB))
    chunk = max(1, CHUNK_ELEMENTS // weights) if estimator == "separate" else len(x)
    grads = [torch.zeros_like(p) for p in params]
    for start in range(0, len(x), chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        loss = F.cross_entropy(sampled_forward(model, xs, estimator), ys, reduction="sum") * (dataset_size / len(x))
        for total, g in zip(grads, torch.autograd.grad(loss, params), strict=True):
            total += g
    return grads


def gradient_variances(model: nn.Sequential, x: Tensor, y: Tensor, draws: int, batch_size: int,
                       generator: torch.Generator) -> dict[str, tuple[float, float]]:
    """Per estimator, ``(top, bottom)``: each weight mean's gradient variance over ``draws``, averaged."""
    layers = [m for m in model if isinstance(m, VariationalDropoutLinearB)]
    params = [layers[-1].weight, layers[0].weight]
    sums = {e: [torch.zeros_like(p, dtype=torch.float64) for p in params] for e in ESTIMATORS}
    squares = {e: [torch.zeros_like(p, dtype=torch.float64) for p in params] for e in ESTIMATORS}
    timings = dict.fromkeys(ESTIMATORS, 0.0)
    for _ in range(draws):
        idx = torch.randperm(len(x), generator=generator)[:batch_size]
        for estimator in ESTIMATORS:
            started = time.perf_counter()
            grads = minibatch_gradient(model, params, x[idx], y[idx], len(x), estimator)
            for s, q, g in zip(sums[estimator], squares[estimator], grads, strict=True):
                g = g.double()
                s += g
                q += g * g
            timings[estimator] += time.perf_counter() - started
    print("  seconds per draw: " + ", ".join(f"{e} {t / draws:.3f}" for e, t in timings.items()), flush=True)
    result = {}
    for estimator in ESTIMATORS:
        variances = [float(((q - s * s / draws) / (draws - 1)).mean())
                     for s, q in zip(sums[estimator], squares[estimator], strict=True)]
        result[estimator] = (variances[0], variances[1])
    return result


def _sci(value: float) -> str:
    if not math.isfinite(value) or value <= 0:
        return str(value)
    exponent = math.floor(math.log10(value))
    return f"{value / 10**exponent:.1f}e{exponent}"


def describe(measured: dict[int, dict[str, tuple[float, float]]], notes: dict[int, str],
             args: argparse.Namespace, seconds: float) -> list[str]:
    epochs = sorted(measured)
    columns = [(where, e) for where in ("top", "bottom") for e in epochs]
    lines = [
        f"- machine: {machine(torch.device('cpu'))}",
        f"- command: `{command_line()}`",
        f"- variational dropout B MLP 784 -> {args.width} -> {args.width} -> {args.width} -> 10 (ReLU), alpha "
        f"per layer started at 1 (cap 1); Adam (lr {args.lr}), batch {args.batch_size}, "
        f"N = {args.train_examples or 60000} training images",
        f"- entries: variance of d L / d (weight means) over {args.draws} minibatch draws (batch {args.batch_size}, "
        f"L = N/M sum log p - KL), averaged over the layer's weights; top = {args.width} -> 10, bottom = 784 -> "
        f"{args.width}",
        *[f"- after {e} epochs: {notes[e]}" for e in epochs],
        f"- {seconds / 60:.1f} minutes",
        "",
        "| stochastic gradient estimator | " + " | ".join(f"{w}, {e} epochs" for w, e in columns) + " | paper |",
        "|---|" + "---|" * len(columns) + "---|",
    ]
    for estimator, label in ESTIMATORS.items():
        cells = [_sci(measured[e][estimator][0 if where == "top" else 1]) for where, e in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " | see the paper |")
    stochastic = ("lrt", "separate", "single")
    holds = all(
        min(stochastic, key=lambda s: measured[e][s][i]) == "lrt" and measured[e]["lrt"][i] < measured[e]["single"][i]
        for e in epochs for i in (0, 1)
    )
    lines += [
        "",
        "The paper's Table 1 (same four estimators, top and bottom layer, after 10 and 100 epochs; see the paper "
        "for its numbers) reports that local reparameterization has the lowest variance of the three stochastic "
        "estimators, far below a single weight sample shared by the minibatch, with no dropout noise as the floor. "
        f"Here local reparameterization is the lowest of the stochastic estimators in every column: "
        f"**{'yes' if holds else 'no'}**.",
    ]
    lines += ["", "| ratio to local reparameterization | " + " | ".join(f"{w}, {e} epochs" for w, e in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for estimator, label in ESTIMATORS.items():
        if estimator != "lrt":
            cells = [f"{measured[e][estimator][i] / measured[e]['lrt'][i]:.2f}x"
                     for i, e in ((0 if where == "top" else 1, e) for where, e in columns)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1000, help="units per hidden layer")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 100], help="measure after these epochs")
    parser.add_argument("--draws", type=int, default=1000, help="minibatch gradients per estimator and epoch")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-examples", type=int, default=0, help="use only the first N (0: all 60000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mnist", default=str(MNIST))
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, x_test, y_test = load_mnist(args.mnist, args.train_examples)
    torch.manual_seed(args.seed)
    model = kingma_mlp("variational-b", args.width)
    generator = torch.Generator().manual_seed(args.seed + 1)
    measured: dict[int, dict[str, tuple[float, float]]] = {}
    notes: dict[int, str] = {}
    started = time.perf_counter()

    def on_epoch(epoch: int, data_loss: float) -> None:
        elapsed = time.perf_counter() - started
        print(f"epoch {epoch}/{max(args.epochs)} train CE {data_loss:.4f} ({elapsed:.0f}s)", flush=True)
        if epoch in args.epochs:
            layers = [m for m in model if isinstance(m, VariationalDropoutLinearB)]
            alphas = ", ".join(f"{float(m.alpha.detach()):.3f}" for m in layers)
            notes[epoch] = f"alpha per layer {alphas}, test error {error_rate(model, x_test, y_test):.2f}%"
            print(f"  {notes[epoch]}", flush=True)
            measured[epoch] = gradient_variances(model, x, y, args.draws, args.batch_size, generator)
            for estimator, (top, bottom) in measured[epoch].items():
                print(f"  {ESTIMATORS[estimator]}: top {_sci(top)}, bottom {_sci(bottom)}", flush=True)

    train_mlp(model, x, y, max(args.epochs), args.batch_size, args.lr, args.seed, on_epoch)
    lines = describe(measured, notes, args, time.perf_counter() - started)
    title = f"Kingma et al. 2015 Table 1: gradient variance of the estimators, width {args.width}"
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
