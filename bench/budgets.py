"""Accuracy budgets on MNIST: what ``max_accuracy_drop`` 0.1, 0.3 and 1.0 point ship, on the test split.

    python bench/budgets.py --net lenet-300-100 --pretrain-epochs 20 --epochs 60
    python bench/budgets.py --net lenet-5-caffe --pretrain-epochs 10 --epochs 70
    python bench/budgets.py --net lenet-300-100 --pretrain-epochs 1 --epochs 1 --finetune-epochs 0 --no-write

One network is trained as a job trains it (dense, then Sparse VD), on the MNIST training images less the
``--val-fraction`` held out for validation. Then, for each budget, the job's search (``vdcore.tradeoff.search``)
picks the threshold on the validation images, a copy of the network pruned there is fine-tuned with its zeros
held, and its test error (the t10k images, never chosen on) is set beside the paper's single point. The search's
time is given against the whole job's (dense + Sparse VD training + fine-tuning + search), the issue's goal being
under 5%. Appends a section to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vdcore
from bench.results import add_run_arguments, append_section, apply_threads, command_line, machine
from recipe.options import JobOptions, given_options
from vdcore.data import load_idx_dir, split_validation
from vdcore.spec import build_model, preset_spec
from vdcore.tradeoff import Objective, search, set_threshold_

BUDGETS = (0.1, 0.3, 1.0)
# Molchanov, Ashukha and Vetrov 2017, Table 1 (Sparse VD rows): test error (%) and compression.
PUBLISHED = {"lenet-300-100": (1.92, 68), "lenet-5-caffe": (0.75, 280)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=sorted(PUBLISHED), default="lenet-300-100")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    add_run_arguments(parser, out="out/bench-budgets", epochs=60, pretrain_epochs=20, finetune_epochs=5)
    args = parser.parse_args()
    apply_threads(args)
    options = JobOptions(**given_options(args))
    data = split_validation(load_idx_dir(args.mnist), options.val_fraction, options.seed)
    torch.manual_seed(options.seed)
    model = build_model(preset_spec(args.net, input_shape=[1, 28, 28]))

    started = time.perf_counter()
    vdcore.train(model, data.train, data.val, options.train_config(options.pretrain_epochs), on_epoch=_print)
    dense_val, dense_test = vdcore.evaluate(model, data.val), vdcore.evaluate(model, data.test)
    vdcore.sparsify_(model, options.svd_config())
    vdcore.train(model, data.train, data.val, options.train_config(), on_epoch=_print)
    training_s = time.perf_counter() - started

    rows = []
    for budget in args.budgets:
        mark = time.perf_counter()
        choice = search(model.eval(), data.val, Objective("max_accuracy_drop", budget), dense_val)
        search_s = time.perf_counter() - mark
        set_threshold_(model, choice.chosen.threshold)
        pruned = vdcore.prune(model)
        mark = time.perf_counter()
        if options.finetune_epochs:
            vdcore.finetune(pruned, data.train, data.val, options.finetune_config(), hold="weights")
        finetune_s = time.perf_counter() - mark
        report = vdcore.sparsity_report(pruned)
        rows.append({
            "budget": budget, "threshold": choice.chosen.threshold, "val": vdcore.evaluate(pruned, data.val),
            "test": vdcore.evaluate(pruned, data.test), "compression": report.compression,
            "search_s": search_s, "job_s": training_s + finetune_s + search_s,
        })
        print(json.dumps(rows[-1]), flush=True)
    lines = describe(args, options, dense_val, dense_test, rows, device=next(model.parameters()).device)
    title = f"accuracy budgets, MNIST {args.net}, {args.pretrain_epochs} dense + {args.epochs} Sparse VD epochs"
    print("\n".join(lines) if args.no_write else append_section(title, lines))


def _print(metrics: vdcore.EpochMetrics) -> None:
    print(f"epoch {metrics.epoch}/{metrics.epochs} loss {metrics.data_loss:.4f} val {metrics.val_accuracy:.4f} "
          f"compression {metrics.compression:.1f}x {metrics.seconds:.1f}s", flush=True)


def describe(args: argparse.Namespace, options: JobOptions, dense_val: float, dense_test: float,
             rows: list[dict[str, float]], device: torch.device) -> list[str]:
    error, compression = PUBLISHED[args.net]
    lines = [
        f"- machine: {machine(device)}",
        f"- command: `{command_line()}`",
        f"- options: {json.dumps(options.model_dump())}",
        f"- dense start: {100 * (1 - dense_val):.2f}% validation error, {100 * (1 - dense_test):.2f}% test error; "
        f"the paper (Sparse VD, one threshold): {error}% at {compression}x",
        "- each budget: the search on the validation images, then fine-tuning with the zeros held; the job time "
        "counts the shared training once",
        "",
        "| max_accuracy_drop (validation) | threshold | validation error | test error (vs dense) | compression | "
        "search | share of the job |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        test_error = 100 * (1 - row["test"])
        lines.append(
            f"| {row['budget']:g} point | {row['threshold']:.3g} | {100 * (1 - row['val']):.2f}% | {test_error:.2f}% "
            f"({test_error - 100 * (1 - dense_test):+.2f}) | {row['compression']:.1f}x | {row['search_s']:.1f} s | "
            f"{row['search_s'] / row['job_s']:.2%} |"
        )
    return lines


if __name__ == "__main__":
    main()
