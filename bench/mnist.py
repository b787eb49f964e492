"""MNIST compression through the worker's own pipeline, with the published figures beside ours.

    python bench/mnist.py --net lenet-300-100                         # from scratch, 200 epochs (the paper)
    python bench/mnist.py --net lenet-5-caffe --pretrain-epochs 20 --epochs 60
    python bench/mnist.py --net lenet-300-100 --epochs 2 --no-write   # a smoke run

Runs ``worker.pipeline.run`` on the full MNIST (the IDX files in ../shared/datasets/mnist, or ``--mnist``): the
t10k images are the pipeline's validation set, so "accuracy after" is the test accuracy of the shrunk ONNX
network's PyTorch twin, and the ONNX latencies (dense against compressed, batch 1 and 100) are measured side by
side in the same run. Appends a section to ``bench/RESULTS.md`` and keeps the artifacts under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import append_section, command_line, machine
from worker.pipeline import JobInput, JobOptions, run

# Molchanov, Ashukha and Vetrov 2017, Table 1 (Sparse VD rows): test error (%) and compression.
PUBLISHED = {
    "lenet-300-100": {"error": 1.92, "compression": 68, "nonzero": "1.1% - 2.7% - 38%"},
    "lenet-5-caffe": {"error": 0.75, "compression": 280, "nonzero": "33% - 2% - 0.2% - 5%"},
}
TARGETS = {"lenet-300-100": (1.92, 68), "lenet-5-caffe": (0.80, 200)}


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def describe(net: str, report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    error_before = 100 * (1 - report["accuracy"]["before"])
    error_after = 100 * (1 - report["accuracy"]["after"])
    published, (max_error, min_compression) = PUBLISHED[net], TARGETS[net]
    met = error_after <= max_error and report["compression"] >= min_compression
    files, timings = report["files"], report["timings"]
    nonzero = " - ".join(f"{1 - layer['sparsity']:.1%}" for layer in report["layers"])
    lines = [
        f"- machine: {machine(torch.device(report['device']))}",
        f"- command: `{command_line()}`",
        f"- options: {json.dumps(report['options'])}",
        f"- target: at most {max_error}% test error at {min_compression}x or more: **{'met' if met else 'not met'}**",
        "",
        "| | ours | paper (Sparse VD) |",
        "|---|---|---|",
        f"| test error, dense | {error_before:.2f}% | - |" if args.pretrain_epochs else
        "| test error, dense | (from scratch: no dense network) | - |",
        f"| test error, compressed | {error_after:.2f}% | {published['error']}% |",
        f"| compression (all weights / non-zero) | {report['compression']:.1f}x | {published['compression']}x |",
        f"| non-zero weights per layer | {nonzero} | {published['nonzero']} |",
        f"| units per layer, before -> after shrink | {report['units']['before']} -> {report['units']['after']} | - |",
        "",
        "| file | dense | compressed | ratio |",
        "|---|---|---|---|",
    ]
    for kind in ("bytes", "gzip_bytes"):
        dense, small = files["baseline.onnx"][kind], files["model.onnx"][kind]
        lines.append(f"| ONNX, {'raw' if kind == 'bytes' else 'gzip'} | {_kb(dense)} | {_kb(small)} | "
                     f"{dense / small:.1f}x |")
    lines += ["", "| onnxruntime CPU latency | dense (ms) | compressed (ms) | speed-up |", "|---|---|---|---|"]
    for batch, row in report["latency"].items():
        lines.append(f"| {batch.replace('_', ' ')} | {row['baseline_ms']:.3f} | {row['compressed_ms']:.3f} | "
                     f"{row['speedup']:.2f}x |")
    lines += ["", "| time | seconds | per epoch |", "|---|---|---|"]
    if "pretraining_s" in timings:
        lines.append(f"| dense pretraining ({args.pretrain_epochs} epochs) | {timings['pretraining_s']:.0f} | "
                     f"{timings['pretraining_s'] / args.pretrain_epochs:.1f} |")
    lines.append(f"| Sparse VD training ({args.epochs} epochs) | {timings['training_s']:.0f} | "
                 f"{timings['training_s'] / args.epochs:.1f} |")
    lines.append(f"| whole job | {timings['total_s']:.0f} | - |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=sorted(PUBLISHED), default="lenet-300-100")
    parser.add_argument("--epochs", type=int, default=200, help="Sparse VD epochs (the paper: 200)")
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="dense epochs first (0: from scratch)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"))
    parser.add_argument("--out", default="out/bench-mnist")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = JobOptions(epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, device=args.device)
    job = JobInput(model={"preset": args.net}, dataset={"idx_dir": args.mnist}, options=options)

    def progress(event: dict[str, Any]) -> None:
        if "epoch" in event:
            print(f"{event['stage']} {event['epoch']}/{event['epochs']} loss {event['data_loss']:.4f} "
                  f"val {event['val_accuracy']:.4f} compression {event['compression']:.1f}x "
                  f"{event['seconds']:.1f}s", flush=True)

    out = Path(args.out) / args.net
    report = run(job, out, progress)
    lines = describe(args.net, report, args)
    title = f"MNIST {args.net}, " + (f"{args.pretrain_epochs} dense + " if args.pretrain_epochs else "from scratch, ")
    title += f"{args.epochs} Sparse VD epochs"
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
