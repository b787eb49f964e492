"""The ``vdc`` command: compress a model on this machine, with a live view of training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vdcore.presets import PRESETS
from worker.pipeline import ARTIFACTS, JobError, JobInput, JobOptions, run

console = Console(stderr=True)


def _dataset_source(value: str) -> dict[str, str]:
    """``digits`` names a built-in set; a ``.npz`` path is arrays; a directory holds MNIST IDX files."""
    path = Path(value)
    if path.suffix == ".npz":
        return {"npz": value}
    if path.is_dir():
        return {"idx_dir": value}
    return {"builtin": value}


def _model_source(args: argparse.Namespace) -> dict[str, Any]:
    if args.spec:
        return {"spec": json.loads(Path(args.spec).read_text())}
    return {"preset": args.preset}


class _LiveView:
    """Progress events drawn as a rich progress bar with loss, KL, accuracy and sparsity."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(bar_width=12),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        stage = event["stage"]
        if "epoch" not in event:
            console.log(f"[bold]{stage}[/bold]")
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=event["epochs"], stats="")
        val = event["val_accuracy"]
        stats = (
            f"loss {event['data_loss']:.3f} kl {event['kl']:.3g} acc {event['train_accuracy']:.3f}"
            + (f"/{val:.3f}" if val is not None else "")
            + f" sparsity {event['sparsity']:.1%}"
        )
        self.progress.update(self.tasks[stage], completed=event["epoch"], stats=stats)


def _print_summary(report: dict[str, Any], out: Path) -> None:
    table = Table(title="compression", show_header=False)
    table.add_row("accuracy", f"{report['accuracy']['before']:.4f} -> {report['accuracy']['after']:.4f}")
    table.add_row("compression", f"{report['compression']:.1f}x ({report['sparsity']:.2%} of weights dropped)")
    table.add_row("units", f"{report['units']['before']} -> {report['units']['after']}")
    files = report["files"]
    table.add_row("ONNX bytes", f"{files['baseline.onnx']['bytes']:,} -> {files['model.onnx']['bytes']:,}")
    for name, row in report["latency"].items():
        table.add_row(
            f"latency {name}", f"{row['baseline_ms']:.3f} -> {row['compressed_ms']:.3f} ms ({row['speedup']:.2f}x)"
        )
    table.add_row("artifacts", ", ".join(str(out / name) for name in ARTIFACTS))
    Console().print(table)


def compress(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k in JobOptions.__dataclass_fields__ and v is not None}
    try:
        job = JobInput(
            model=_model_source(args),
            dataset=_dataset_source(args.dataset),
            weights=args.weights,
            options=JobOptions.from_dict(overrides),
        )
        view = _LiveView()
        with view.progress:
            report = run(job, args.out, on_progress=view)
    except (JobError, ValueError, OSError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return 2
    _print_summary(report, Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdc", description="Compress neural networks with Sparse Variational Dropout."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("compress", help="compress a model on this machine (no server)")
    model = local.add_mutually_exclusive_group()
    model.add_argument("--preset", default="lenet-300-100", choices=sorted(PRESETS), help="a named architecture")
    model.add_argument("--spec", help="a JSON file describing the architecture")
    local.add_argument("--weights", help="a safetensors file of the model's trained weights")
    local.add_argument("--dataset", default="digits", help="'digits', an .npz file, or a directory of MNIST IDX files")
    local.add_argument("--out", default="out", help="directory for the artifacts (default: out)")
    for name, default in JobOptions().to_dict().items():
        local.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), help=f"default {default}")
    local.set_defaults(handler=compress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
