"""Structured jobs (rates per weight and scales per unit and filter) on MNIST through the worker's pipeline, with
Structured Bayesian Pruning beside it.

    python bench/structured.py --net lenet-300-100 --pretrain-epochs 20 --epochs 100 --threads 1
    python bench/structured.py --net lenet-5-caffe --pretrain-epochs 20 --epochs 100 --threads 1
    python bench/structured.py --net lenet-300-100 --epochs 1 --pretrain-epochs 1 --no-write   # a smoke run

Runs ``recipe.pipeline.run`` with ``structured=True`` (``SVDConfig(granularity="weight+unit")``: Sparse VD on every
weight and a learned random scale on every hidden unit and filter, the classifier per weight only) on the full MNIST
(the IDX files in ../shared/datasets/mnist, or ``--mnist``). The t10k images are the job's test split, so the error
after is the test error of the shrunk network (the job holds its validation images out of the training files), and
the onnxruntime latencies of the dense and the shrunk network (batch 1 and 100) are measured side by side in the
same run. Appends a section to ``bench/RESULTS.md`` and keeps the artifacts under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

# Structured Bayesian Pruning (Neklyudov, Molchanov, Ashukha and Vetrov, NIPS 2017, "Structured Bayesian Pruning
# via Log-Normal Multiplicative Noise"), its MNIST table as quoted in the product brief (shared/MISSION.md): test
# error (%), real CPU speed-up of the pruned network over the dense one, and the units it kept per layer (in the
# paper's own convention, which for LeNet-300-100 counts each layer's inputs, 784-300-100, pixels included).
PUBLISHED_SBP = {
    "lenet-300-100": {"error": 1.55, "speedup": 2.33, "units": "245-160-55"},
    "lenet-5-caffe": {"error": 0.86, "speedup": 5.41, "units": "3-18-284-283"},
}


def describe(net: str, report: Report, args: argparse.Namespace) -> list[str]:
    error_before, error_after = test_errors(report)
    sbp = PUBLISHED_SBP[net]
    latency = report.latency
    best_speedup = max(row.speedup for row in latency.values())
    # Rounded: 1 - 0.992 is 0.8000000000000007%, and a test set's error is a whole number of examples.
    met = round(error_after, 6) <= sbp["error"] and best_speedup >= sbp["speedup"]
    nonzero = " - ".join(f"{1 - layer.sparsity:.1%}" for layer in report.layers)
    units_before = "-".join(map(str, report.units.before))
    units_after = "-".join(map(str, report.units.after))
    lines = [
        f"- machine: {machine(torch.device(report.device))}",
        f"- command: `{command_line()}`",
        f"- options: {json.dumps(report.options.model_dump())}",
        f"- target: at most SBP's {sbp['error']}% test error with at least its {sbp['speedup']}x speed-up "
        f"(best batch size): **{'met' if met else 'not met'}**",
        "",
        "| | ours (structured job) | paper (SBP) |",
        "|---|---|---|",
        f"| test error, dense | {error_before:.2f}% | - |" if args.pretrain_epochs else
        "| test error, dense | (from scratch: no dense network) | - |",
        f"| test error, compressed | {error_after:.2f}% | {sbp['error']}% |",
        *before_finetuning_rows(report),
        *selection_rows(report),
        f"| units per layer, before -> after shrink | {units_before} -> {units_after} | {sbp['units']} (its count) |",
        f"| compression (all weights / non-zero) | {report.compression:.1f}x | - |",
        f"| non-zero weights per layer | {nonzero} | - |",
        f"| onnxruntime CPU speed-up, batch 1 / 100 | {latency['batch_1']['speedup']:.2f}x / "
        f"{latency['batch_100']['speedup']:.2f}x | {sbp['speedup']}x |",
        "",
    ]
    lines += job_tables(report, args.pretrain_epochs, args.epochs, "structured training")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=sorted(PUBLISHED_SBP), default="lenet-300-100")
    # Structured from 20 dense epochs (SBP starts pretrained).
    add_run_arguments(parser, out="out/bench-structured", epochs=100, pretrain_epochs=20, structured=True)
    args = parser.parse_args()
    apply_threads(args)
    options = JobOptions(**given_options(args))
    job = JobInput(model={"preset": args.net}, dataset={"idx_dir": args.mnist}, options=options)

    out = Path(args.out) / args.net
    report = run(job, out, on_progress=print_progress)
    lines = describe(args.net, report, args)
    title = f"MNIST {args.net}, structured (weights + units), " + (
        f"{args.pretrain_epochs} dense + " if args.pretrain_epochs else "from scratch, "
    )
    title += f"{args.epochs} epochs"
    title += f" + {args.finetune_epochs} fine-tuning" if args.finetune_epochs else ""
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
