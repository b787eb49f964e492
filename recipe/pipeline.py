"""One compression job from inputs to artifacts: vdcore calls and files only (no queue, no database).

The worker's task and ``vdc compress`` both call ``run``; the API calls ``prepare`` at submission so that every
input error is found before a worker is involved.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vdcore
from recipe.options import JobOptions
from recipe.plots import draw_plots
from vdcore.config import TrainConfig
from vdcore.data import (
    DEFAULT_MAX_BYTES,
    Dataset,
    DataTooLarge,
    load_builtin,
    load_idx_dir,
    load_npz,
    split_validation,
)
from vdcore.export import ExportResult
from vdcore.files import atomic_path
from vdcore.layout import Fastest, export_fastest
from vdcore.shrink import layer_widths
from vdcore.spec import ModelPlan, SpecError, plan_model
from vdcore.weights import check_weights, load_weights, save_weights

ARTIFACTS = ("model.onnx", "baseline.onnx", "report.json", "weights.safetensors")
# The stages that train, in the order they run: each has its history, resume point and time in the report.
TRAINING_STAGES = ("pretraining", "training", "finetuning")


class JobError(ValueError):
    """A job that cannot run as asked; the message is for the user and says what to change."""


class JobTooLarge(JobError):
    """A job whose uploaded data passes one of ``prepare``'s size limits; ``limit`` is that argument's name."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class Cancelled(Exception):
    """The job was cancelled while it ran."""


@dataclass(frozen=True)
class JobInput:
    """A job as data: ``model`` is ``{"preset": name, ...}`` or ``{"spec": {...}}``; ``dataset`` is
    ``{"builtin": name}``, ``{"npz": path}`` or ``{"idx_dir": path}``; ``weights`` a safetensors path."""

    model: dict[str, Any]
    dataset: dict[str, str]
    weights: str | None = None
    options: JobOptions = field(default_factory=JobOptions)


@dataclass(frozen=True)
class Prepared:
    plan: ModelPlan
    dataset: Dataset


Progress = Callable[[dict[str, Any]], bool | None]

# ``prepare``'s argument for each of ``load_npz``'s limits.
_DATASET_LIMITS = {"max_bytes": "max_dataset_bytes", "max_samples": "max_dataset_samples"}


def _load_dataset(
    source: dict[str, str], input_shape: Any, num_classes: Any, *, max_bytes: int, max_samples: int | None
) -> Dataset:
    if not isinstance(source, dict) or len(source) != 1:
        raise JobError("dataset must be one of {'builtin': name}, {'npz': path} or {'idx_dir': path}")
    (kind, value), = source.items()
    if kind == "builtin":
        return load_builtin(value)
    if kind == "npz":
        return load_npz(value, input_shape, num_classes, max_bytes=max_bytes, max_samples=max_samples)
    if kind == "idx_dir":
        return load_idx_dir(value)
    raise JobError(f"unknown dataset kind {kind!r}; use 'builtin', 'npz' or 'idx_dir'")


def prepare(
    job: JobInput, *, max_dataset_bytes: int = DEFAULT_MAX_BYTES, max_dataset_samples: int | None = None
) -> Prepared:
    """Check a job's model, weights and data against each other, raising ``JobError`` for what does not fit.

    A preset takes its input shape and class count from the data unless they are given. An npz dataset larger
    than ``max_dataset_bytes`` once decompressed, or with more than ``max_dataset_samples`` examples, is refused
    from its headers before it is read (``JobTooLarge``).
    """
    load_dataset = partial(_load_dataset, job.dataset, max_bytes=max_dataset_bytes, max_samples=max_dataset_samples)
    model = job.model
    if not isinstance(model, dict) or len(model.keys() & {"preset", "spec"}) != 1:
        raise JobError("model must be {'preset': name, ...options} or {'spec': {...}}")
    try:
        if "spec" in model:
            if len(model) != 1:
                raise JobError("a model given as {'spec': ...} takes no other keys")
            spec = model["spec"]
            if not isinstance(spec, dict):
                raise JobError("model.spec must be an object with input_shape, num_classes and layers")
            dataset = load_dataset(spec.get("input_shape"), spec.get("num_classes"))
        else:
            dataset = load_dataset(model.get("input_shape"), model.get("num_classes"))
            spec = {"input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes} | model
        plan = plan_model(spec)
    except DataTooLarge as error:
        raise JobTooLarge(str(error), _DATASET_LIMITS[error.limit]) from None
    except (SpecError, ValueError) as error:
        raise JobError(str(error)) from None
    if tuple(dataset.input_shape) != plan.input_shape:
        raise JobError(
            f"the data's examples have shape {list(dataset.input_shape)} but the model takes "
            f"{list(plan.input_shape)}; set the model's input_shape to match the data"
        )
    if dataset.num_classes > plan.num_classes:
        raise JobError(
            f"the labels go up to {dataset.num_classes - 1} but the model has only {plan.num_classes} classes"
        )
    if job.weights is not None:
        try:
            check_weights(plan.build(), job.weights)
        except ValueError as error:
            raise JobError(str(error)) from None
    return Prepared(plan, split_validation(dataset, job.options.val_fraction, job.options.seed))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False))


def _file_sizes(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9))}


def _start_from_scratch(model: nn.Module) -> None:
    """Give untrained weights the published from-scratch start: every variance at ``init_log_sigma2``.

    The swap's default (the same small alpha for every weight) keeps a trained network's outputs, which an
    untrained one does not need, and compresses less (bench/RESULTS.md, "Figures the code used to give").
    """
    for _, layer in vdcore.svd_layers(model):
        if isinstance(layer, vdcore.LinearSVD | vdcore.Conv2dSVD):
            nn.init.constant_(layer.log_sigma2, layer.init_log_sigma2)


def run(
    job: JobInput,
    out_dir: str | os.PathLike[str],
    on_progress: Progress | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Compress one model and write ``ARTIFACTS`` and the plots named in the report into ``out_dir``; returns
    the report.

    ``on_progress`` receives stage and epoch events; returning ``True`` cancels the job (``Cancelled``). With
    ``checkpoint_dir``, training saves every epoch there and a rerun of the same job resumes from the last
    one (the report's ``resumed_after_epoch`` says where).
    """
    stages = _Stages(on_progress, None if checkpoint_dir is None else Path(checkpoint_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options, data = job.options, prepare(job)
    device = vdcore.resolve_device(options.device)
    torch.manual_seed(options.seed)
    model = data.plan.build()
    evaluation = data.dataset.val or data.dataset.train
    example = data.dataset.x[:1]

    if job.weights is not None:
        load_weights(model, job.weights)
    elif options.pretrain_epochs:
        with stages.stage("pretraining"):
            stages.fit(model, data, options.train_config(options.pretrain_epochs))
    model.to(device).eval()
    accuracy_before = vdcore.evaluate(model, evaluation)
    baseline = vdcore.export_onnx(model, out / "baseline.onnx", example)

    with stages.stage("training"):
        vdcore.sparsify_(model, options.svd_config())
        if job.weights is None and not options.pretrain_epochs:
            _start_from_scratch(model)
        stages.fit(model, data, options.train_config())
    pruned = vdcore.prune(model)
    if options.structured and options.unit_multiple > 1:
        vdcore.round_units_(pruned, example, options.unit_multiple)
    if options.finetune_epochs:
        with stages.stage("finetuning"):
            stages.fit(pruned, data, options.finetune_config(), partial(vdcore.finetune, hold=options.hold()))

    with stages.stage("exporting"):
        pruned = pruned.cpu()
        save_weights(pruned, out / "weights.safetensors")
    with stages.stage("measuring"):
        fastest = export_fastest(pruned, example, baseline, out)
        accuracy = {"before": accuracy_before, "after": vdcore.evaluate(fastest.model, evaluation)}
    report = _report(data, options, device, stages, pruned, baseline, fastest, accuracy)
    report["plots"] = draw_plots(report, pruned, data.plan.input_shape, out)
    _write_json(out / "report.json", report)
    return report


class _Stages:
    """A run's stages: each announced to ``on_progress`` as it starts (which may cancel the job there), its
    epochs reported as they end and checkpointed, and the training stages timed, for the report."""

    def __init__(self, on_progress: Progress | None, checkpoints: Path | None) -> None:
        self.on_progress, self.checkpoints = on_progress, checkpoints
        if checkpoints is not None:
            checkpoints.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.current = ""
        self.history: dict[str, list[dict[str, Any]]] = {name: [] for name in TRAINING_STAGES}
        self.resumed = dict.fromkeys(TRAINING_STAGES, 0)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_progress is not None and self.on_progress({"stage": name}):
            raise Cancelled
        self.current, mark = name, time.perf_counter()
        yield
        if name in TRAINING_STAGES:
            self.timings[f"{name}_s"] = time.perf_counter() - mark

    def fit(
        self, model: nn.Module, data: Prepared, config: TrainConfig,
        fit: Callable[..., list[vdcore.EpochMetrics]] = vdcore.train,
    ) -> None:
        """Train the current stage with ``fit`` (``vdcore.train`` or ``vdcore.finetune``), reporting each epoch
        as a progress event (a truthy answer cancels) and, with checkpoints, saving it so that a rerun of the
        job resumes after the last one."""
        stage, new_epochs, cancelled = self.current, 0, False

        def on_epoch(metrics: vdcore.EpochMetrics) -> bool:
            nonlocal new_epochs, cancelled
            new_epochs += 1
            cancelled = bool(self.on_progress and self.on_progress({"stage": stage, **metrics.to_dict()}))
            return cancelled

        checkpoint = None if self.checkpoints is None else self.checkpoints / f"{stage}.ckpt"
        history = fit(model, data.dataset.train, data.dataset.val, config, on_epoch=on_epoch, checkpoint=checkpoint)
        if cancelled:
            raise Cancelled
        self.history[stage] = [metrics.to_dict() for metrics in history]
        self.resumed[stage] = len(history) - new_epochs


def _report(
    data: Prepared, options: JobOptions, device: torch.device, stages: _Stages, pruned: nn.Sequential,
    baseline: ExportResult, fastest: Fastest, accuracy: dict[str, float],
) -> dict[str, Any]:
    """``report.json``: what went in, what came out, how it was measured."""
    sparse_report = vdcore.sparsity_report(pruned)
    return {
        "model": {
            "input_shape": list(data.plan.input_shape),
            "num_classes": data.plan.num_classes,
            "parameters": data.plan.parameters,
        },
        "dataset": {
            "name": data.dataset.name,
            "train_examples": len(data.dataset.x),
            "val_examples": len((data.dataset.val or data.dataset.train)[0]),
        },
        "options": options.model_dump(),
        "device": str(device),
        "accuracy": accuracy,
        "compression": sparse_report.compression,
        "sparsity": sparse_report.sparsity,
        "weights": {"before": sparse_report.weights, "nonzero_after": sparse_report.nonzero},
        "units": {"before": layer_widths(pruned), "after": fastest.units},
        "input_gather": fastest.input_gather,
        "channel_multiple": fastest.channel_multiple,
        "layers": sparse_report.to_dict()["layers"],
        "files": {
            "baseline.onnx": _file_sizes(baseline.path),
            "model.onnx": _file_sizes(fastest.export.path),
        },
        "onnx_parity_max_abs_diff": {"baseline": baseline.max_abs_diff, "model": fastest.export.max_abs_diff},
        "latency": fastest.latency,
        "history": stages.history,
        "resumed_after_epoch": stages.resumed,
        "timings": {**stages.timings, "total_s": time.perf_counter() - stages.started},
    }
