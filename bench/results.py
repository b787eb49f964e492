"""What every benchmark writes: the machine, the command that ran, and a section appended to RESULTS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from recipe.options import JobOptions, add_option_flags
from recipe.progress import Progress, Stage
from recipe.report import Report

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def command_line() -> str:
    """This process's command as someone would type it from the repository's root."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def append_section(title: str, lines: list[str]) -> str:
    """Append ``## <date> - title`` and ``lines`` to RESULTS.md; returns the text written."""
    heading = f"## {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} - {title}"
    text = "\n".join([heading, "", *lines]) + "\n"
    with RESULTS.open("a") as f:
        f.write(f"\n{text}")
    return text


MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def add_run_arguments(parser: argparse.ArgumentParser, out: str, **option_defaults: Any) -> None:
    """Every job option as a flag, ``option_defaults`` replacing the job's defaults, and what every MNIST job
    benchmark shares (threads, data, output); ``apply_threads`` acts on ``--threads``, ``JobOptions(**
    given_options(args))`` gives the job's options."""
    add_option_flags(parser, JobOptions(**option_defaults).model_dump())
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mnist", default=str(MNIST_DIR))
    parser.add_argument("--out", default=out)
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def print_progress(progress: Progress) -> None:
    """A job's epoch events on one line each, for a benchmark's console."""
    if progress.epoch is not None:
        print(f"{progress.stage} {progress.epoch}/{progress.epochs} loss {progress.data_loss:.4f} "
              f"val {progress.val_accuracy:.4f} compression {progress.compression:.1f}x "
              f"{progress.seconds:.1f}s", flush=True)


def test_errors(report: Report) -> tuple[float, float]:
    """The test error (%) of the dense start and of the shipped network: the MNIST benchmarks' t10k images,
    which the job never chose on (it chose on validation images held out of the training files)."""
    if report.test_accuracy is None:
        raise SystemExit("the job had no test split; MNIST's t10k files should have given one")
    return 100 * (1 - report.test_accuracy.before), 100 * (1 - report.test_accuracy.after)


def selection_rows(report: Report, columns: int = 2) -> list[str]:
    """Rows with what the job chose on: the validation error of the dense start and of the shipped network, and
    the objective's outcome when it had one; ``columns`` as in ``before_finetuning_rows``."""
    rest = " - |" * (columns - 1)
    before, after = 100 * (1 - report.accuracy.before), 100 * (1 - report.accuracy.after)
    rows = [f"| validation error ({report.dataset.val_examples} held-out training images), dense -> compressed | "
            f"{before:.2f}% -> {after:.2f}% |{rest}"]
    tradeoff = report.tradeoff
    if tradeoff is not None and tradeoff.met is not None:
        outcome = "met" if tradeoff.met else f"missed by {tradeoff.shortfall:.3g}"
        rows.append(f"| objective {tradeoff.objective} {tradeoff.value:g} (on validation) | {outcome}, log alpha "
                    f"threshold {tradeoff.chosen.threshold:.3g}, search {tradeoff.search_s:.0f} s |{rest}")
    return rows


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def before_finetuning_rows(report: Report, columns: int = 2) -> list[str]:
    """A row with the pruned network's validation error before fine-tuning (the last training epoch's), when
    fine-tuning ran; ``columns`` is the table's count of value columns (the others get "-")."""
    if not report.history.get(Stage.FINETUNING):
        return []
    error = 100 * (1 - report.history[Stage.TRAINING][-1].val_accuracy)
    return [f"| validation error, compressed, before fine-tuning | {error:.2f}% |" + " - |" * (columns - 1)]


def job_tables(report: Report, pretrain_epochs: int, epochs: int, stage: str) -> list[str]:
    """The latency, file-size and time tables of a pipeline report, dense against compressed.

    The time table sets a compressing epoch against a dense one when the job pretrained (``stage`` names the
    compressing stage), both measured in the same run.
    """
    latency, files, timings = report.latency, report.files, report.timings
    form = "a Gather of the read inputs first" if report.input_gather else "every input kept"
    multiple = report.channel_multiple
    form += f"; hidden convolutions padded to a multiple of {multiple} filters" if multiple > 1 else ""
    lines = [f"ONNX form kept (the fastest of those timed): {form}.", "",
             "| onnxruntime CPU latency | dense (ms) | compressed (ms) | speed-up |", "|---|---|---|---|"]
    for batch, row in latency.items():
        lines.append(f"| {batch.replace('_', ' ')} | {row.baseline_ms:.3f} | {row.compressed_ms:.3f} | "
                     f"{row.speedup:.2f}x |")
    lines += ["", "| file | dense | compressed | ratio |", "|---|---|---|---|"]
    for kind in ("bytes", "gzip_bytes"):
        dense, small = getattr(files["baseline.onnx"], kind), getattr(files["model.onnx"], kind)
        lines.append(f"| ONNX, {'raw' if kind == 'bytes' else 'gzip'} | {_kb(dense)} | {_kb(small)} | "
                     f"{dense / small:.1f}x |")
    lines += ["", "| time | seconds | per epoch |", "|---|---|---|"]
    per_epoch = timings["training_s"] / epochs
    if "pretraining_s" in timings:
        dense_epoch = timings["pretraining_s"] / pretrain_epochs
        lines.append(f"| dense pretraining ({pretrain_epochs} epochs) | {timings['pretraining_s']:.0f} | "
                     f"{dense_epoch:.1f} |")
    lines.append(f"| {stage} ({epochs} epochs) | {timings['training_s']:.0f} | {per_epoch:.1f} |")
    if "finetuning_s" in timings:
        finetune_epochs = len(report.history[Stage.FINETUNING])
        lines.append(f"| fine-tuning ({finetune_epochs} epochs) | {timings['finetuning_s']:.0f} | "
                     f"{timings['finetuning_s'] / finetune_epochs:.1f} |")
    lines.append(f"| whole job | {timings['total_s']:.0f} | - |")
    if "pretraining_s" in timings:
        lines += ["", f"A {stage} epoch took {per_epoch / dense_epoch:.2f}x a dense epoch (same run, same data)."]
    return lines
