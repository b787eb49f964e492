"""Training-step time of Sparse VD networks against the same networks with plain layers.

Both variants run in one process with interleaved rounds (the order alternates each round), so machine noise
and thermal drift hit both alike. Each step is the user's own loop: forward, loss (cross entropy, plus the KL
over the training-set size for SVD), ``zero_grad``, ``backward``, Adam ``step``.

    python bench/train_step.py                        # CPU, LeNet-300-100 and LeNet-5-Caffe
    python bench/train_step.py --device cuda          # the same on a GPU (synchronised timing)
    python bench/train_step.py --threads 2 --no-write # pin torch's threads for this process only

Appends a section to ``bench/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vdcore

TRAIN_SIZE = 60000  # MNIST: the KL is divided by the training-set size, as in the user's loss
RESULTS = Path(__file__).with_name("RESULTS.md")


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


NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet300": (lenet_300_100, (784,)),
    "lenet5": (lenet5_caffe, (1, 28, 28)),
}


@dataclass
class Runner:
    """One network variant with its optimizer and the batches it cycles through."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    svd: bool
    batches: list[tuple[Tensor, Tensor]]
    times: list[float]
    at: int = 0

    def step(self) -> None:
        x, y = self.batches[self.at % len(self.batches)]
        self.at += 1
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self.svd:
            loss = loss + vdcore.kl_divergence(self.model) / TRAIN_SIZE
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def make_runner(net: str, svd: bool, device: torch.device, batch: int, seed: int) -> Runner:
    build, shape = NETWORKS[net]
    torch.manual_seed(seed)
    model = build().to(device)
    if svd:
        vdcore.sparsify_(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = []
    for _ in range(8):
        x = torch.rand(batch, *shape, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        batches.append((x.to(device), y.to(device)))
    return Runner(f"{net}-{'svd' if svd else 'plain'}", model, opt, svd, batches, [])


def timed_steps(runner: Runner, steps: int, sync: Callable[[], None]) -> None:
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        runner.step()
        sync()
        runner.times.append(time.perf_counter() - start)


def bench_network(net: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    plain = make_runner(net, False, device, args.batch, args.seed)
    svd = make_runner(net, True, device, args.batch, args.seed)
    for runner in (plain, svd):  # warm-up: allocator, Adam state, kernel selection
        timed_steps(runner, args.warmup, sync)
        runner.times.clear()
    for r in range(args.rounds):
        order = (plain, svd) if r % 2 == 0 else (svd, plain)
        for runner in order:
            timed_steps(runner, args.steps, sync)
    p_ms = statistics.median(plain.times) * 1e3
    s_ms = statistics.median(svd.times) * 1e3
    return {"plain_ms": p_ms, "svd_ms": s_ms, "ratio": s_ms / p_ms}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), {platform.python_implementation()} "
        f"{platform.python_version()}"
    )


def write_results(rows: dict[str, dict[str, float]], args: argparse.Namespace, device: torch.device) -> str:
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    lines = [
        f"## {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} - {args.label or device.type}",
        "",
        f"- machine: {machine(device)}",
        f"- command: `{command}`",
        f"- batch {args.batch}, {args.rounds} interleaved rounds x {args.steps} steps per variant "
        f"(after {args.warmup} warm-up steps); median step time",
        "",
        "| network | plain (ms) | SVD (ms) | SVD / plain |",
        "|---|---|---|---|",
    ]
    for net, row in rows.items():
        lines.append(f"| {net} | {row['plain_ms']:.3f} | {row['svd_ms']:.3f} | {row['ratio']:.2f}x |")
    text = "\n".join(lines) + "\n"
    header = "" if RESULTS.exists() else "# Training-step benchmark: Sparse VD against plain layers\n"
    with RESULTS.open("a") as f:
        f.write(f"{header}\n{text}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--nets", default="lenet300,lenet5", help=f"comma-separated, from {sorted(NETWORKS)}")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=25, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for this process (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a note for the results heading")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = {}
    for net in args.nets.split(","):
        rows[net] = bench_network(net, args, device)
        row = rows[net]
        print(
            f"{net:10s} plain {row['plain_ms']:8.3f} ms   svd {row['svd_ms']:8.3f} ms   "
            f"ratio {row['ratio']:.2f}x"
        )
    if not args.no_write:
        print(write_results(rows, args, device))


if __name__ == "__main__":
    main()
