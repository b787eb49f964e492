"""Training-step time of Sparse VD networks against the same networks with plain layers.

All variants run in one process in short interleaved rounds (who goes first rotates), so machine noise and
drift hit them alike: plain layers, vdcore's SVD layers (on CPU with the compiled kernel of ``vdcore.cpu_kernel``),
unless ``--no-torch-ops`` the same fused node with torch operations instead of that kernel (what runs without a
compiler, and on GPUs), and unless ``--no-reference`` the unfused reference formulas through autograd, i.e. the
implementation before the fused path. Each
step is the user's own loop: forward, loss (cross entropy, plus the KL over the training-set size for SVD),
``zero_grad``, ``backward``, Adam ``step``.

    python bench/train_step.py                        # CPU, LeNet-300-100 and LeNet-5-Caffe
    python bench/train_step.py --nets lstm,gru --no-reference  # row-by-row MNIST LSTM and GRU, 128 units
    python bench/train_step.py --device cuda          # the same on a GPU (synchronised timing)
    python bench/train_step.py --threads 2 --no-write # pin torch's threads for this process only
    python bench/train_step.py --no-trim              # glibc heap trimming off: compute without page faults
    python bench/train_step.py --processes 5          # medians over 5 fresh processes (heap layouts vary)

Appends a section to ``bench/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vdcore
from bench.results import append_section, command_line, machine
from vdcore import functional as VF

TRAIN_SIZE = 60000  # MNIST: the KL is divided by the training-set size, as in the user's loss


def lenet_300_100() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5_caffe() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


class RowClassifier(nn.Module):
    """MNIST read row by row: 28 steps of 28 pixels, a recurrent layer of 128 units, its last step to 10 classes."""

    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = kind(28, 128, batch_first=True)
        self.classifier = nn.Linear(128, 10)

    def forward(self, rows: Tensor) -> Tensor:
        out, _ = self.rnn(rows)
        return self.classifier(out[:, -1])


NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet300": (lenet_300_100, (784,)),
    "lenet5": (lenet5_caffe, (1, 28, 28)),
    "lstm": (lambda: RowClassifier(nn.LSTM), (28, 28)),  # plain: PyTorch's fused LSTM kernel
    "gru": (lambda: RowClassifier(nn.GRU), (28, 28)),
}


@dataclass
class Runner:
    """One network variant with its optimizer and the batches it cycles through."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    kl: Callable[[nn.Module], Tensor] | None
    batches: list[tuple[Tensor, Tensor]]
    times: list[float]
    at: int = 0
    cpu_kernel: bool = True

    def step(self) -> None:
        if self.cpu_kernel:
            os.environ.pop("VDCORE_CPU_KERNEL", None)
        else:
            os.environ["VDCORE_CPU_KERNEL"] = "0"
        x, y = self.batches[self.at % len(self.batches)]
        self.at += 1
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self.kl is not None:
            loss = loss + self.kl(self.model) / TRAIN_SIZE
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def _reference_forward(layer: vdcore.SVDLayer, x: Tensor) -> Tensor:
    """The unfused formulas of ``vdcore.functional`` through plain autograd: the implementation before."""
    la = VF.log_alpha(layer.theta, layer.log_sigma2, layer.log_alpha_clip)
    mean = layer.theta * VF.keep_mask(la, layer.threshold) if layer.train_mask else layer.theta
    var = VF.noise_variance(layer.theta, la)
    if isinstance(layer, vdcore.LinearSVD):
        return VF.linear_lrt(x, mean, var, layer.bias)
    assert isinstance(layer, vdcore.Conv2dSVD)
    return VF.conv2d_lrt(x, mean, var, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _reference_kl(model: nn.Module) -> Tensor:
    return torch.stack([VF.kl_approx(layer.log_alpha).sum() for _, layer in vdcore.svd_layers(model)]).sum()


def make_runner(net: str, variant: str, device: torch.device, batch: int, seed: int) -> Runner:
    """``variant``: ``plain`` (nn.Linear / nn.Conv2d), ``svd`` (vdcore), ``torch ops`` (vdcore without its compiled
    CPU kernel) or ``reference`` (unfused formulas)."""
    build, shape = NETWORKS[net]
    torch.manual_seed(seed)
    model = build().to(device)
    kl: Callable[[nn.Module], Tensor] | None = None
    if variant != "plain":
        vdcore.sparsify_(model)
        kl = vdcore.kl_divergence
    if variant == "reference":  # recurrent layers have no older implementation: they run as in "svd"
        for _, layer in vdcore.svd_layers(model):
            if not isinstance(layer, vdcore.LinearSVD | vdcore.Conv2dSVD):
                continue
            layer.forward = functools.partial(_reference_forward, layer)  # type: ignore[method-assign]
        kl = _reference_kl
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = []
    for _ in range(8):
        x = torch.rand(batch, *shape, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        batches.append((x.to(device), y.to(device)))
    return Runner(variant, model, opt, kl, batches, [], cpu_kernel=variant != "torch ops")


def timed_steps(runner: Runner, steps: int, sync: Callable[[], None]) -> None:
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        runner.step()
        sync()
        runner.times.append(time.perf_counter() - start)


def bench_network(net: str, args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Median step time of each variant, its ratio to plain, and the spread of per-round ratios."""
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    variants = ["plain", "svd"] + (["torch ops"] if args.torch_ops else []) + (["reference"] if args.reference else [])
    runners = [make_runner(net, v, device, args.batch, args.seed) for v in variants]
    for runner in runners:  # warm-up: allocator, Adam state, kernel selection
        timed_steps(runner, args.warmup, sync)
        runner.times.clear()
    per_round: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(args.rounds):
        for runner in runners[i % len(runners) :] + runners[: i % len(runners)]:  # rotate who goes first
            timed_steps(runner, args.steps, sync)
            per_round[runner.name].append(statistics.median(runner.times[-args.steps :]))
    plain = statistics.median(runners[0].times)
    rows = {}
    for runner in runners:
        ratios = sorted(a / b for a, b in zip(per_round[runner.name], per_round["plain"], strict=True))
        median = statistics.median(runner.times)
        rows[runner.name] = {
            "ms": median * 1e3,
            "ratio": median / plain,
            "lo": ratios[len(ratios) // 4],
            "hi": ratios[(3 * len(ratios)) // 4],
        }
    return rows


Rows = dict[str, dict[str, dict[str, float]]]


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` less ``name value`` or ``name=value``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def bench_in_processes(args: argparse.Namespace) -> Rows:
    """Medians over ``args.processes`` fresh processes, with the min-max of their ratios.

    A process's heap layout decides how many of the optimizer's temporaries land on freshly trimmed pages,
    which moves a step by a millisecond from one process to the next; one process is one sample.
    """
    samples: list[Rows] = []
    for _ in range(args.processes):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            child = _without_option(sys.argv[1:], "--processes")
            subprocess.run([sys.executable, sys.argv[0], *child, "--processes=1", "--no-write", f"--json={out.name}"],
                           check=True)
            samples.append(json.loads(Path(out.name).read_text()))
    rows: Rows = {}
    for net in samples[0]:
        rows[net] = {}
        for variant in samples[0][net]:
            ratios = sorted(s[net][variant]["ratio"] for s in samples)
            rows[net][variant] = {
                "ms": statistics.median(s[net][variant]["ms"] for s in samples),
                "ratio": statistics.median(ratios),
                "lo": ratios[0],
                "hi": ratios[-1],
            }
    return rows


def write_results(rows: Rows, args: argparse.Namespace, device: torch.device) -> str:
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    lines = [
        f"- machine: {machine(device)}",
        f"- command: `{command_line()}`",
        f"- allocator: {'glibc defaults' if not malloc else ', '.join(f'{k}={v}' for k, v in malloc.items())}",
        f"- batch {args.batch}; {args.rounds} rounds of {args.steps} steps per variant, interleaved (after "
        f"{args.warmup} warm-up steps); median step time; "
        + ("per-round ratio quartiles in brackets" if args.processes == 1 else
           f"medians over {args.processes} processes, min-max of their ratios in brackets"),
        "",
    ]
    variants = [v for v in next(iter(rows.values())) if v != "plain"]
    names = {"svd": "SVD", "torch ops": "SVD, torch ops", "reference": "reference"}
    header = " | ".join(f"{names[v]} (ms) | {names[v]} / plain" for v in variants)
    lines += [f"| network | plain (ms) | {header} |", "|---|---|" + "---|---|" * len(variants)]
    for net, row in rows.items():
        cells = [f"{r['ms']:.3f} | {r['ratio']:.2f}x [{r['lo']:.2f}-{r['hi']:.2f}]" for r in map(row.get, variants)]
        lines.append(f"| {net} | {row['plain']['ms']:.3f} | " + " | ".join(cells) + " |")
    return append_section(args.label or device.type, lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--nets", default="lenet300,lenet5", help=f"comma-separated, from {sorted(NETWORKS)}")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for this process (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the unfused reference implementation")
    parser.add_argument("--no-torch-ops", dest="torch_ops", action="store_false",
                        help="skip the fused node without the compiled CPU kernel")
    parser.add_argument("--no-trim", action="store_true",
                        help="rerun with glibc's heap trimming off (MALLOC_* env vars, this process only), to "
                        "separate page-fault costs from compute")
    parser.add_argument("--processes", type=int, default=1,
                        help="repeat in this many fresh processes and report medians (heap layouts differ)")
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)  # a child's results, for --processes
    parser.add_argument("--label", default="", help="a note for the results heading")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.no_trim and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 25)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.processes > 1:
        rows = bench_in_processes(args)
    else:
        rows = {net: bench_network(net, args, device) for net in args.nets.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    for net, row in rows.items():
        print(f"{net:10s} " + "   ".join(f"{name} {r['ms']:8.3f} ms ({r['ratio']:.2f}x)" for name, r in row.items()))
    if not args.no_write:
        print(write_results(rows, args, device))


if __name__ == "__main__":
    main()
