"""One compression job from inputs to artifacts: vdcore calls and files only (no queue, no database).

The worker's task and ``vdc compress`` both call ``run``; the API calls ``prepare`` at submission so that every
input error is found before a worker is involved.
"""

from __future__ import annotations

import gzip
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
from recipe.early_stop import EarlyStop
from recipe.options import JobOptions
from recipe.plots import draw_plots
from recipe.progress import TRAINING_STAGES, OnProgress, Progress, ShouldStop, Stage
from recipe.report import (
    Accuracy,
    DatasetFacts,
    EarlyStopFacts,
    FileSize,
    ModelFacts,
    Parity,
    Report,
    Tradeoff,
    TradeoffPoint,
    Units,
    WeightCounts,
)
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
from vdcore.deployed import Deployed, deploy
from vdcore.export import ExportResult
from vdcore.files import atomic_path
from vdcore.graph import OnnxNet, OnnxPlan, plan_onnx, write_onnx
from vdcore.latency import measure_latency
from vdcore.layout import Fastest, export_fastest
from vdcore.shrink import layer_widths
from vdcore.spec import ModelPlan, SpecError, plan_model, spec_vocabulary
from vdcore.tradeoff import Candidate, Choice, curve, search, set_threshold_
from vdcore.weights import check_weights, load_weights, save_weights

# The keys of ``JobInput.model``: where the network comes from.
MODEL_SOURCES = {"preset", "spec", "onnx"}
ARTIFACTS = ("model.onnx", "baseline.onnx", "report.json", "weights.safetensors")


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
    plan: ModelPlan | OnnxPlan
    dataset: Dataset


# ``prepare``'s argument for each of ``load_npz``'s limits.
_DATASET_LIMITS = {"max_bytes": "max_dataset_bytes", "max_samples": "max_dataset_samples"}


def _load_dataset(
    source: dict[str, str],
    input_shape: Any,
    num_classes: Any,
    vocabulary: int | None,
    *,
    max_bytes: int,
    max_samples: int | None,
) -> Dataset:
    if not isinstance(source, dict) or len(source) != 1:
        raise JobError("dataset must be one of {'builtin': name}, {'npz': path} or {'idx_dir': path}")
    (kind, value), = source.items()
    if vocabulary is not None and kind != "npz":
        raise JobError(f"the model looks up token ids, and {kind!r} datasets hold images; send an npz whose 'x' "
                       f"holds integer ids in 0..{vocabulary - 1}, shaped [examples, steps]")
    if kind == "npz":
        return load_npz(value, input_shape, num_classes, max_bytes=max_bytes, max_samples=max_samples,
                        vocabulary=vocabulary)
    if kind == "builtin":
        return load_builtin(value)
    if kind == "idx_dir":
        return load_idx_dir(value)
    raise JobError(f"unknown dataset kind {kind!r}; use 'builtin', 'npz' or 'idx_dir'")


def _plan(
    job: JobInput, load_dataset: Callable[[Any, Any, int | None], Dataset]
) -> tuple[ModelPlan | OnnxPlan, Dataset]:
    """The model's plan and the data, which a preset's shape and class count come from unless it gives them."""
    model = job.model
    if "onnx" in model:
        if len(model) != 1:
            raise JobError("a model given as {'onnx': path} takes no other keys")
        if job.weights is not None:
            raise JobError("an ONNX model holds its own weights; do not send weights with it")
        onnx_plan = plan_onnx(model["onnx"])
        return onnx_plan, load_dataset(list(onnx_plan.input_shape), onnx_plan.num_classes, onnx_plan.vocabulary)
    if "spec" in model:
        if len(model) != 1:
            raise JobError("a model given as {'spec': ...} takes no other keys")
        spec = model["spec"]
        if not isinstance(spec, dict):
            raise JobError("model.spec must be an object with input_shape, num_classes and layers")
        dataset = load_dataset(spec.get("input_shape"), spec.get("num_classes"), spec_vocabulary(spec))
        return plan_model(spec), dataset
    dataset = load_dataset(model.get("input_shape"), model.get("num_classes"), spec_vocabulary(model))
    return plan_model({"input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes} | model), dataset


def prepare(
    job: JobInput, *, max_dataset_bytes: int = DEFAULT_MAX_BYTES, max_dataset_samples: int | None = None
) -> Prepared:
    """Check a job's model, weights and data against each other, raising ``JobError`` for what does not fit.

    A preset takes its input shape and class count from the data unless they are given; an ONNX file holds its
    weights, so none are sent with it. An npz dataset larger
    than ``max_dataset_bytes`` once decompressed, or with more than ``max_dataset_samples`` examples, is refused
    from its headers before it is read (``JobTooLarge``).
    """
    load_dataset = partial(_load_dataset, job.dataset, max_bytes=max_dataset_bytes, max_samples=max_dataset_samples)
    if not isinstance(job.model, dict) or len(job.model.keys() & MODEL_SOURCES) != 1:
        raise JobError("model must be {'preset': name, ...options}, {'spec': {...}} or {'onnx': path}")
    try:
        plan, dataset = _plan(job, load_dataset)
    except DataTooLarge as error:
        raise JobTooLarge(str(error), _DATASET_LIMITS[error.limit]) from None
    except (SpecError, ValueError) as error:
        raise JobError(str(error)) from None
    if tuple(dataset.input_shape) != plan.input_shape:
        change = (
            "export the model for examples of the data's shape" if isinstance(plan, OnnxPlan)
            else "set the model's input_shape to match the data"
        )
        raise JobError(
            f"the data's examples have shape {list(dataset.input_shape)} but the model takes "
            f"{list(plan.input_shape)}; {change}"
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
    split = split_validation(dataset, job.options.val_fraction, job.options.seed)
    objective = job.options.objective()
    if objective is not None and split.val is None:
        raise JobError(f"{objective.kind} is met on validation data, and this job has none: set val_fraction "
                       "above 0 or send a validation split (x_val, y_val)")
    return Prepared(plan, split)


def _file_size(path: Path) -> FileSize:
    raw = path.read_bytes()
    return FileSize(bytes=len(raw), gzip_bytes=len(gzip.compress(raw, compresslevel=9)))


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
    *,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> Report:
    """Compress one model and write ``ARTIFACTS`` and the plots named in the report into ``out_dir``; returns
    the report.

    ``on_progress`` receives each stage as it starts and each epoch as it ends; ``should_stop`` is asked after
    both, and ``True`` cancels the job (``Cancelled``). With ``checkpoint_dir``, training saves every epoch there
    and a rerun of the same job resumes from the last one (the report's ``resumed_after_epoch`` says where).
    """
    options, data = job.options, prepare(job)
    stages = _Stages(_planned_epochs(job), on_progress, should_stop, checkpoint_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = vdcore.resolve_device(options.device)
    torch.manual_seed(options.seed)
    model = data.plan.build()
    evaluation, test = data.dataset.val or data.dataset.train, data.dataset.test
    example = data.dataset.x[:1]

    if job.weights is not None:
        load_weights(model, job.weights)
    elif options.pretrain_epochs and not _starts_trained(job):
        with stages.stage(Stage.PRETRAINING):
            stages.fit(model, data, options.train_config(options.pretrain_epochs))
    model.to(device).eval()
    accuracy_before = vdcore.evaluate(model, evaluation)
    test_before = None if test is None else vdcore.evaluate(model, test)
    baseline = _export(model, out / "baseline.onnx", example)

    with stages.stage(Stage.TRAINING):
        vdcore.sparsify_(model, options.svd_config())
        if not _starts_trained(job) and not options.pretrain_epochs:
            _start_from_scratch(model)
        monitor = None if options.early_stop_patience is None else EarlyStop(
            options.objective(), accuracy_before, evaluation, options.early_stop_patience)
        stages.fit(model, data, options.train_config(), early_stop=monitor)
    timed_choice = _choose_threshold(model, options, evaluation, accuracy_before, example)
    pruned = vdcore.prune(model)
    if options.structured and options.unit_multiple > 1 and isinstance(pruned, nn.Sequential):
        vdcore.round_units_(pruned, example, options.unit_multiple)
    if options.finetune_epochs:
        with stages.stage(Stage.FINETUNING):
            stages.fit(pruned, data, options.finetune_config(), partial(vdcore.finetune, hold=options.hold()))

    with stages.stage(Stage.EXPORTING):
        pruned = pruned.cpu()
        save_weights(pruned, out / "weights.safetensors")
    with stages.stage(Stage.MEASURING):
        smallest = options.max_file_bytes is not None  # a file budget ships the smallest form, others the fastest
        fastest = export_fastest(pruned, example, baseline, out, smallest)
        measured_on = "validation" if data.dataset.val is not None else "training"
        accuracy = Accuracy(before=accuracy_before, after=vdcore.evaluate(fastest.model, evaluation),
                            measured_on=measured_on)
        test_accuracy = None if test is None else Accuracy(
            before=test_before, after=vdcore.evaluate(fastest.model, test), measured_on="test")
    report = _report(data, options, device, stages, pruned, baseline, fastest, accuracy)
    report.test_accuracy = test_accuracy
    if monitor is not None:
        stopped = monitor.stopped_after
        report.early_stop = EarlyStopFacts(patience=monitor.patience, stopped_after_epoch=stopped,
                                           epochs_saved=0 if stopped is None else options.epochs - stopped)
    report.tradeoff = _tradeoff(timed_choice, report, out / "model.onnx")
    if report.tradeoff.met is not None:
        stages.on_progress(Progress(stage=Stage.MEASURING, val_accuracy=report.accuracy.after,
                                    compression=report.compression, objective_met=report.tradeoff.met,
                                    objective_shortfall=report.tradeoff.shortfall))
    report.plots = draw_plots(report.history, report.layers, report.units, pruned, data.plan.input_shape, out,
                              (report.tradeoff, report.accuracy, report.compression))
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(report.to_json())
    return report


def _choose_threshold(model: nn.Module, options: JobOptions, evaluation: tuple[torch.Tensor, torch.Tensor],
                      accuracy_before: float, example: torch.Tensor) -> tuple[Choice, float]:
    """The trade-off curve on the validation data and the threshold to ship, made every layer's own: with an
    objective, the one meeting it best; without, the job's. A few of the curve's networks (and those a file or
    latency objective's search visits) are exported and timed. Returns the choice and the seconds it took."""
    started, objective = time.perf_counter(), options.objective()
    def deployer(network: nn.Module, batch: int) -> Deployed:
        return deploy(network, example, batch)

    if objective is None:
        choice = curve(model, evaluation, options.threshold, deploy=deployer, exports=options.curve_exports)
    else:
        choice = search(model, evaluation, objective, accuracy_before, deploy=deployer,
                        exports=options.curve_exports)
    set_threshold_(model, choice.chosen.threshold)
    return choice, time.perf_counter() - started


def _tradeoff(timed_choice: tuple[Choice, float], report: Report, model_file: Path) -> Tradeoff:
    """The curve and the pick, with whether the shipped network (fine-tuned, exported to ``model_file``) meets
    the objective: a latency objective times the file again, at its batch, as long as the export's race did."""
    choice, seconds = timed_choice
    objective, shortfall = choice.objective, None
    if objective is not None:
        deployed = None
        if objective.kind == "max_latency_ms":
            timed = measure_latency([model_file], report.model.input_shape, batch=objective.batch)[0]
            deployed = Deployed(report.files["model.onnx"].bytes, timed.median_ms, objective.batch)
        elif objective.kind == "max_file_bytes":  # only the bytes count: the export's race timed it already
            deployed = Deployed(report.files["model.onnx"].bytes, report.latency["batch_1"].compressed_ms, 1)
        shipped = Candidate(choice.chosen.threshold, report.accuracy.after, report.weights.nonzero_after,
                            report.weights.before, choice.chosen.units, deployed)
        shortfall = objective.shortfall(shipped, report.accuracy.before)
    return Tradeoff(
        objective=None if objective is None else objective.kind, value=None if objective is None else objective.value,
        latency_batch=1 if objective is None else objective.batch,
        chosen=_point(choice.chosen), candidates=[_point(c) for c in choice.candidates],
        met=None if shortfall is None else shortfall == 0, shortfall=shortfall, search_s=seconds,
    )


def _point(candidate: Candidate) -> TradeoffPoint:
    deployed = candidate.deployed
    return TradeoffPoint(threshold=candidate.threshold, accuracy=candidate.accuracy, nonzero=candidate.nonzero,
                         compression=candidate.compression, units=list(candidate.units),
                         file_bytes=None if deployed is None else deployed.file_bytes,
                         latency_ms=None if deployed is None else deployed.latency_ms)


def _starts_trained(job: JobInput) -> bool:
    """Whether the job's model comes with trained weights (uploaded, or an ONNX file's): then it is not
    pretrained."""
    return job.weights is not None or "onnx" in job.model


def _export(model: nn.Module, path: Path, example: torch.Tensor) -> ExportResult:
    """``model`` as ONNX: a network imported from ONNX is written back into its own graph."""
    return write_onnx(model, path) if isinstance(model, OnnxNet) else vdcore.export_onnx(model, path, example)


def _planned_epochs(job: JobInput) -> dict[Stage, int]:
    """The epochs each training stage will run, for the ETA: no pretraining when the weights are given."""
    options = job.options
    return {
        Stage.PRETRAINING: 0 if _starts_trained(job) else options.pretrain_epochs,
        Stage.TRAINING: options.epochs,
        Stage.FINETUNING: options.finetune_epochs,
    }


class _Stages:
    """A run's stages: each announced to ``on_progress`` as it starts, its epochs reported as they end and
    checkpointed, ``should_stop`` asked after each, and the training stages timed, for the report."""

    def __init__(
        self, planned: dict[Stage, int], on_progress: OnProgress | None, should_stop: ShouldStop | None,
        checkpoint_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.planned = planned
        self.checkpoints = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.on_progress = on_progress or (lambda progress: None)
        self.should_stop = should_stop or (lambda: False)
        if self.checkpoints is not None:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.current = Stage.PRETRAINING
        self.history: dict[Stage, list[vdcore.EpochMetrics]] = {stage: [] for stage in TRAINING_STAGES}
        self.resumed = dict.fromkeys(TRAINING_STAGES, 0)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        self.on_progress(Progress(stage=stage))
        if self.should_stop():
            raise Cancelled
        self.current, mark = stage, time.perf_counter()
        yield
        if stage in TRAINING_STAGES:
            self.timings[f"{stage}_s"] = time.perf_counter() - mark

    def fit(
        self, model: nn.Module, data: Prepared, config: TrainConfig,
        fit: Callable[..., list[vdcore.EpochMetrics]] = vdcore.train, early_stop: EarlyStop | None = None,
    ) -> None:
        """Train the current stage with ``fit`` (``vdcore.train`` or ``vdcore.finetune``), reporting each epoch
        and, with checkpoints, saving it so that a rerun of the job resumes after the last one; ``early_stop``
        may end it after any epoch."""
        stage, new_epochs, stopped = self.current, 0, False
        later = TRAINING_STAGES[TRAINING_STAGES.index(stage) + 1 :]
        later_epochs = sum(self.planned[after] for after in later)

        def on_epoch(metrics: vdcore.EpochMetrics) -> None:
            nonlocal new_epochs
            new_epochs += 1
            self.on_progress(Progress.of_epoch(stage, metrics, later_epochs))
            if early_stop is not None:
                early_stop.after_epoch(model, metrics.epoch)

        def should_stop() -> bool:
            nonlocal stopped
            stopped = self.should_stop()
            return stopped or (early_stop is not None and early_stop.stopped_after is not None)

        checkpoint = None if self.checkpoints is None else self.checkpoints / f"{stage}.ckpt"
        history = fit(
            model, data.dataset.train, data.dataset.val, config,
            on_epoch=on_epoch, checkpoint=checkpoint, should_stop=should_stop,
        )
        if stopped:
            raise Cancelled
        self.history[stage] = history
        self.resumed[stage] = len(history) - new_epochs


def _report(
    data: Prepared, options: JobOptions, device: torch.device, stages: _Stages, pruned: nn.Sequential,
    baseline: ExportResult, fastest: Fastest, accuracy: Accuracy,
) -> Report:
    """What went in, what came out, how it was measured."""
    sparse_report = vdcore.sparsity_report(pruned)
    return Report(
        model=ModelFacts(
            input_shape=list(data.plan.input_shape), num_classes=data.plan.num_classes,
            parameters=data.plan.parameters,
        ),
        dataset=DatasetFacts(
            name=data.dataset.name, train_examples=len(data.dataset.x),
            val_examples=len((data.dataset.val or data.dataset.train)[0]),
            test_examples=0 if data.dataset.test is None else len(data.dataset.test[0]),
        ),
        options=options,
        device=str(device),
        accuracy=accuracy,
        compression=sparse_report.compression,
        sparsity=sparse_report.sparsity,
        weights=WeightCounts(before=sparse_report.weights, nonzero_after=sparse_report.nonzero),
        units=Units(before=layer_widths(pruned), after=fastest.units),
        input_gather=fastest.input_gather,
        channel_multiple=fastest.channel_multiple,
        layers=sparse_report.to_dict()["layers"],
        files={"baseline.onnx": _file_size(baseline.path), "model.onnx": _file_size(fastest.export.path)},
        onnx_parity_max_abs_diff=Parity(baseline=baseline.max_abs_diff, model=fastest.export.max_abs_diff),
        latency=fastest.latency,
        history=stages.history,
        resumed_after_epoch=stages.resumed,
        timings={**stages.timings, "total_s": time.perf_counter() - stages.started},
        notes=list(fastest.notes),
    )
