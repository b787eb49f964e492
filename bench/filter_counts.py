"""How onnxruntime's CPU latency of a shrunk LeNet-5-Caffe depends on how many filters its convolutions keep.

    python bench/filter_counts.py
    python bench/filter_counts.py --conv1 8 9 11 12 16 --conv2 8 9 16 17 --hidden 48 --runs 200

Exports LeNet-5-Caffe (20-50-500-10) and, for every pair of first- and second-convolution filter counts, the same
network with those counts and ``--hidden`` units, all with random weights (at batch 100 a trained network of the
same shape times alike; at batch 1, where a run is mostly fixed cost, within about 20%), and times them side by
side in onnxruntime (one thread, ``vdcore.measure_latency``) at batch 1 and 100. It shows
why structured jobs round filter counts (``unit_multiple``, ``vdcore.round_units_``) and try zero-padded forms
(``vdcore.pad_channels``): onnxruntime's blocked convolutions want counts in multiples of the CPU's vector width.
Appends a section to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import append_section, command_line, machine
from vdcore import build_model, export_onnx, measure_latency
from vdcore.presets import lenet_5_caffe

BATCHES = (1, 100)


def shaped_lenet5(conv1: int, conv2: int, hidden: int) -> torch.nn.Sequential:
    spec = lenet_5_caffe()
    first, second = (layer for layer in spec["layers"] if layer["type"] == "conv2d")
    hidden_layer = next(layer for layer in spec["layers"] if layer["type"] == "linear")
    first["out_channels"], second["out_channels"], hidden_layer["out_features"] = conv1, conv2, hidden
    return build_model(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conv1", type=int, nargs="+", default=[8, 9, 11, 12, 16])
    parser.add_argument("--conv2", type=int, nargs="+", default=[8, 9, 16, 17])
    parser.add_argument("--hidden", type=int, default=48)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per network and batch size")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    example = torch.randn(1, 1, 28, 28)
    shapes = [(20, 50, 500)] + [(c1, c2, args.hidden) for c1 in args.conv1 for c2 in args.conv2]
    with tempfile.TemporaryDirectory() as folder:
        paths = [export_onnx(shaped_lenet5(*s), Path(folder) / f"{i}.onnx", example).path for i, s in enumerate(shapes)]
        timed = {b: measure_latency(paths, (1, 28, 28), batch=b, runs=args.runs) for b in BATCHES}

    header = " | ".join(f"{c2} filters" for c2 in args.conv2)
    lines = [
        f"- machine: {machine(torch.device('cpu'))}; onnxruntime with 1 thread",
        f"- command: `{command_line()}`",
        f"- LeNet-5-Caffe shapes conv1-conv2-{args.hidden}-10 against the dense 20-50-500-10, random weights, "
        f"median of {args.runs} runs each, all timed side by side",
    ]
    for batch, latencies in timed.items():
        dense = latencies[0].median_ms
        lines += ["", f"Batch {batch}: milliseconds (speed-up over the dense {dense:.3f} ms).", "",
                  f"| conv1 \\ conv2 | {header} |", "|---|" + "---|" * len(args.conv2)]
        rows = iter(latencies[1:])
        for c1 in args.conv1:
            cells = [f"{t.median_ms:.3f} ({dense / t.median_ms:.2f}x)" for t in (next(rows) for _ in args.conv2)]
            lines.append(f"| {c1} filters | " + " | ".join(cells) + " |")
    lines.append("")
    title = "onnxruntime latency of LeNet-5 by filter count"
    print("\n".join(lines) if args.no_write else append_section(title, lines))


if __name__ == "__main__":
    main()
