"""Kingma, Salimans & Welling 2015, Figure 1 (a): MNIST test error against layer width, for each dropout variant.

    python bench/kingma_figure1.py                                          # every variant, 4 widths, 50 epochs
    python bench/kingma_figure1.py --widths 100 200 400 --epochs 5 --threads 2
    python bench/kingma_figure1.py --widths 16 32 --epochs 1 --train-examples 3000 --no-write   # a smoke run

Trains ``vdcore.kingma_mlp(variant, width)`` (784 -> width -> width -> width -> 10, ReLU; every layer's noise on
its own inputs, the pixels included) on the MNIST training set (the IDX files in ../shared/datasets/mnist, or
``--mnist``) and measures the error on the t10k images in eval mode after the last epoch. The loss is the
per-example negative ELBO: mean cross-entropy plus the variational layers' KL over the training-set size (no
warm-up); Adam, constant learning rate. Widths, epochs, optimizer and rate p = 0.5 are this script's settings,
not figures taken from the paper. Appends a table and a link to ``bench/figures/kingma_figure1_<epochs>epochs.png`` to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import append_section, command_line, machine
from vdcore import KINGMA_VARIANTS, kingma_kl_divergence, kingma_mlp, load_idx_dir

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
FIGURES = Path(__file__).with_name("figures")


def default_figure(epochs: int | str) -> Path:
    """One plot per epoch count, so a new run does not redraw the plot an older section links to."""
    return FIGURES / f"kingma_figure1_{epochs}epochs.png"



LABELS = {
    "none": "no dropout",
    "binary": "binary dropout",
    "gaussian-a": "Gaussian dropout A",
    "gaussian-b": "Gaussian dropout B",
    "variational-a": "variational dropout A",
    "variational-a2": "variational dropout A2",
    "variational-b": "variational dropout B",
}
# What the paper's Figure 1 (a) shows, in words: we do not restate its numbers.
PAPER = (
    "Figure 1 (a) of the paper (3 hidden layers, MNIST, test error against the number of units per layer): the "
    "variational variants do as well as or better than the best fixed-rate dropout, and the gap is largest at "
    "small widths, where fixed-rate dropout underfits. For its numbers, see the paper."
)


def load_mnist(directory: str | Path, train_examples: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flattened MNIST ``(x, y, x_test, y_test)``; ``train_examples`` > 0 keeps only the first ones."""
    data = load_idx_dir(directory)
    x, y = data.x.flatten(1), data.y
    if train_examples:
        x, y = x[:train_examples], y[:train_examples]
    assert data.x_test is not None and data.y_test is not None
    return x, y, data.x_test.flatten(1), data.y_test


def train_mlp(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Adam on the per-example negative ELBO, ``mean CE + KL / N``.

    ``on_epoch(epoch, mean CE)`` after each epoch: the data term alone, since the KL is known only up to a constant.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros(())
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            data_term = F.cross_entropy(model(x[idx]), y[idx])
            loss = data_term + kingma_kl_divergence(model) / len(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += data_term.detach() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, float(total) / len(x))


@torch.no_grad()
def error_rate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Error in eval mode (no noise), in percent."""
    model.eval()
    wrong = sum(int((model(x[i : i + batch_size]).argmax(1) != y[i : i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    return 100.0 * wrong / len(x)


def run_one(variant: str, width: int, seed: int, data: tuple[Tensor, ...], args: argparse.Namespace) -> float:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = kingma_mlp(variant, width, in_features=x.shape[1], p=args.p)
    started = time.perf_counter()

    def progress(epoch: int, loss: float) -> None:
        if epoch == args.epochs or epoch % max(1, args.epochs // 5) == 0:
            print(f"  {variant} width {width} seed {seed}: epoch {epoch}/{args.epochs} train CE {loss:.4f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)

    train_mlp(model, x, y, args.epochs, args.batch_size, args.lr, seed, progress)
    error = error_rate(model, x_test, y_test)
    print(f"{variant} width {width} seed {seed}: test error {error:.2f}% ({time.perf_counter() - started:.0f}s)",
          flush=True)
    return error


def _cell(errors: list[float]) -> str:
    if len(errors) == 1:
        return f"{errors[0]:.2f}"
    return f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f}"


def describe(results: dict[tuple[str, int], list[float]], args: argparse.Namespace, seconds: float,
             figure: str | None) -> list[str]:
    lines = [
        f"- machine: {machine(torch.device('cpu'))}",
        f"- command: `{command_line()}`",
        f"- MLP 784 -> w -> w -> w -> 10 (ReLU), noise on every layer's inputs at p = {args.p} (alpha = "
        f"{args.p / (1 - args.p):g}, the variational ones' start and cap 1); {args.epochs} epochs of Adam (lr "
        f"{args.lr}, batch {args.batch_size}) on "
        f"{args.train_examples or 60000} training images; loss mean CE + KL / N; test error on t10k after the last "
        f"epoch, in eval mode; seeds {args.seed}" + (" (mean ± std)" if len(args.seed) > 1 else ""),
        f"- {seconds / 60:.1f} minutes",
        "",
        "| test error (%) | " + " | ".join(f"w = {w}" for w in args.widths) + " |",
        "|---|" + "---|" * len(args.widths),
    ]
    for variant in args.variants:
        lines.append(f"| {LABELS[variant]} | " + " | ".join(_cell(results[variant, w]) for w in args.widths) + " |")
    lines += ["", f"Paper: {PAPER}"]
    if figure:
        lines += ["", f"![Figure 1 (a), ours]({figure})"]
    return lines


def plot(results: dict[tuple[str, int], list[float]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for variant in args.variants:
        means = [statistics.mean(results[variant, w]) for w in args.widths]
        style = "-" if variant.startswith("variational") else "--"
        ax.plot(args.widths, means, style, marker="o", label=LABELS[variant])
    ax.set_xscale("log")
    ax.set_xticks(args.widths, [str(w) for w in args.widths])
    ax.minorticks_off()
    ax.set_xlabel("units per hidden layer")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"MNIST, 3 hidden layers, {args.epochs} epochs (cf. Kingma et al. 2015, Fig. 1a)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 250, 500, 1000], help="units per layer")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--variants", nargs="+", choices=KINGMA_VARIANTS, default=list(KINGMA_VARIANTS))
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one run per seed, averaged")
    parser.add_argument("--p", type=float, default=0.5, help="dropout rate; alpha = p / (1 - p)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-examples", type=int, default=0, help="use only the first N (0: all 60000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mnist", default=str(MNIST))
    parser.add_argument("--figure", default=None, help=f"where the plot goes (default {default_figure('<epochs>')}; "
                        "with --no-write, only if given)")
    parser.add_argument("--no-write", action="store_true", help="print only: no RESULTS.md section, no figure")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.widths = sorted(args.widths)
    data = load_mnist(args.mnist, args.train_examples)
    started = time.perf_counter()
    results = {(v, w): [run_one(v, w, s, data, args) for s in args.seed] for w in args.widths for v in args.variants}
    figure = Path(args.figure) if args.figure else (None if args.no_write else default_figure(args.epochs))
    link = None
    if figure is not None:
        plot(results, args, figure)
        print(f"figure: {figure}")
        resolved = figure.resolve()
        link = str(resolved.relative_to(FIGURES.parent)) if resolved.is_relative_to(FIGURES.parent) else None
    lines = describe(results, args, time.perf_counter() - started, link)
    title = f"Kingma et al. 2015 Figure 1 (a): MNIST test error against width, {args.epochs} epochs"
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
