"""Users' own networks as ONNX files on MNIST: a ResNet-style and a MobileNet-style CNN, trained dense in PyTorch,
exported with ``torch.onnx.export`` and compressed by a job whose model is the file.

    python bench/onnx_nets.py --arch resnet --dense-epochs 3 --epochs 10 --finetune-epochs 2
    python bench/onnx_nets.py --arch resnet --structured --dense-epochs 3 --epochs 10 --finetune-epochs 2
    python bench/onnx_nets.py --arch mobilenet --dense-epochs 5 --epochs 20 --finetune-epochs 2
    python bench/onnx_nets.py --arch mobilenet --dense-epochs 1 --epochs 1 --finetune-epochs 0 --no-write  # smoke

The dense network is what a user brings: trained for ``--dense-epochs`` on MNIST's training images, exported to ONNX
with a dynamic batch. The job (``recipe.pipeline.run`` with ``{"onnx": path}``) starts from the file's weights, so
its test accuracy "before" is the dense file's on MNIST's t10k images and "after" that of the shrunk graph it writes
(the job chooses on validation images it holds out of the training files); the onnxruntime latencies of the two
files are measured side by side in the same run. The targets are issue 17's: ResNet-style, at least 20x fewer
non-zero weights at no more than +0.2 point of test error, and with ``--structured`` at least 2x faster at batch
100; MobileNet-style, at least 10x at no more than +0.3 point. Appends a section to ``bench/RESULTS.md`` and keeps
the file and the artifacts under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vdcore
from bench.results import (
    add_run_arguments,
    append_section,
    apply_threads,
    before_finetuning_rows,
    command_line,
    job_tables,
    machine,
    print_progress,
    selection_rows,
    test_errors,
)
from recipe.options import JobOptions, given_options
from recipe.pipeline import JobInput, run
from recipe.report import Report
from tests.vdcore.graph.nets import BasicBlock, export, separable

MNIST_SHAPE = (1, 28, 28)
# Least compression and most added test error (points) each architecture may end with.
TARGETS = {"resnet": (20.0, 0.2), "mobilenet": (10.0, 0.3)}
STRUCTURED_SPEEDUP = 2.0  # at batch 100, for the structured ResNet-style job


class ResNetStyle(nn.Module):
    """Three stages of two basic blocks (``width``, twice and four times as many filters), a strided stem, 1x1 strided
    shortcuts; about 0.3M weights at ``width=21``."""

    def __init__(self, width: int = 21, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.blocks = nn.Sequential(
            BasicBlock(w, w, 1), BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1),
            BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def mobilenet_style(classes: int = 10) -> nn.Sequential:
    """A strided stem and five depthwise-separable blocks (32 to 128 filters), global average pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        separable(16, 32, 1), separable(32, 64, 2), separable(64, 64, 1), separable(64, 128, 2),
        separable(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes),
    )


ARCHITECTURES = {"resnet": ResNetStyle, "mobilenet": mobilenet_style}


def dense_file(args: argparse.Namespace, out: Path) -> tuple[Path, int]:
    """Train the architecture dense on MNIST and export it as a user would; the file and its weight count."""
    torch.manual_seed(args.seed)
    model = ARCHITECTURES[args.arch]()
    data = vdcore.load_idx_dir(args.mnist)
    config = vdcore.TrainConfig(epochs=args.dense_epochs, batch_size=args.batch_size, lr=args.dense_lr)
    vdcore.train(model, data.train, data.test, config,  # the test figure is only printed, never chosen on
                 on_epoch=lambda m: print(f"dense {m.epoch} test {m.val_accuracy:.4f} {m.seconds:.1f}s", flush=True))
    out.mkdir(parents=True, exist_ok=True)
    return export(model, out / f"{args.arch}.onnx", input_shape=MNIST_SHAPE), sum(p.numel() for p in model.parameters())


def describe(report: Report, args: argparse.Namespace, weights: int) -> list[str]:
    error_before, error_after = test_errors(report)
    min_compression, max_added = TARGETS[args.arch]
    speedup = report.latency["batch_100"].speedup
    met = report.compression >= min_compression and round(error_after - error_before, 6) <= max_added
    target = f"at least {min_compression:.0f}x at no more than +{max_added} point"
    if args.structured and args.arch == "resnet":
        met &= speedup >= STRUCTURED_SPEEDUP
        target += f", at least {STRUCTURED_SPEEDUP:.0f}x faster at batch 100"
    nonzero = " - ".join(f"{1 - layer.sparsity:.0%}" for layer in report.layers)
    return [
        f"- machine: {machine(torch.device(report.device))}",
        f"- command: `{command_line()}`",
        f"- options: {json.dumps(report.options.model_dump())}",
        f"- the user's file: {args.arch}-style, {weights:,} weights, {args.dense_epochs} dense epochs in PyTorch, "
        "exported with `torch.onnx.export` (dynamo, dynamic batch)",
        f"- target: {target}: **{'met' if met else 'not met'}**",
        "",
        "| | ours |",
        "|---|---|",
        f"| test error, the dense file | {error_before:.2f}% |",
        f"| test error, compressed (the shrunk graph) | {error_after:.2f}% ({error_after - error_before:+.2f} point) |",
        *before_finetuning_rows(report, columns=1),
        *selection_rows(report, columns=1),
        f"| compression (all weights / non-zero) | {report.compression:.1f}x |",
        f"| non-zero weights per layer | {nonzero} |",
        f"| units per layer, before -> after shrink | {report.units.before} -> {report.units.after} |",
        f"| dead units kept, and why | {'; '.join(report.notes) or 'none'} |",
        f"| onnxruntime CPU speed-up, batch 1 / 100 | {report.latency['batch_1'].speedup:.2f}x / {speedup:.2f}x |",
        "",
        *job_tables(report, 0, args.epochs, "Sparse VD training"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="resnet")
    parser.add_argument("--dense-epochs", type=int, default=3, help="epochs of dense training before the export")
    parser.add_argument("--dense-lr", type=float, default=3e-3)
    add_run_arguments(parser, out="out/bench-onnx", epochs=10, pretrain_epochs=0, finetune_epochs=2)
    args = parser.parse_args()
    apply_threads(args)
    out = Path(args.out) / (args.arch + ("-structured" if args.structured else ""))
    path, weights = dense_file(args, out)
    options = JobOptions(**given_options(args))
    job = JobInput(model={"onnx": str(path)}, dataset={"idx_dir": args.mnist}, options=options)
    report = run(job, out / "job", on_progress=print_progress)
    lines = describe(report, args, weights)
    title = f"MNIST {args.arch}-style network from an ONNX file, " + ("structured, " if args.structured else "")
    title += f"{args.dense_epochs} dense epochs (PyTorch) + {args.epochs} epochs"
    title += f" + {args.finetune_epochs} fine-tuning" if args.finetune_epochs else ""
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
