"""What a user may tune in a job, declared once: each option's type, range, default and help.

The API's request model uses ``JobOptions`` as it is, ``vdc compress`` and ``vdc submit`` derive their flags
from its fields, and vdcore's ``TrainConfig`` and ``SVDConfig`` are built from it. Options shared with
``TrainConfig`` take its defaults, except ``epochs``: a job defaults to a good short run (100), the published
recipe to 200.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, Literal, Self, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from vdcore.config import SVDConfig, TrainConfig
from vdcore.finetune import Hold
from vdcore.tradeoff import Objective, ObjectiveKind

_TRAIN, _SVD = TrainConfig(), SVDConfig()
OBJECTIVES: tuple[ObjectiveKind, ...] = ("max_accuracy_drop", "min_compression", "max_file_bytes", "max_latency_ms")
MAX_EPOCHS = 10_000


class JobOptions(BaseModel):
    """A job's options. Strict types: ``"5"`` or ``true`` for an epoch count is a mistake to report, not to
    guess at; cross-field rules (warm-up start before end, ...) are vdcore's, checked by building its configs."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    epochs: int = Field(100, ge=1, le=MAX_EPOCHS, description="epochs of Sparse VD training")
    pretrain_epochs: int = Field(
        30, ge=0, le=MAX_EPOCHS, description="epochs of dense training first, when no weights are given (0: none)"
    )
    batch_size: int = Field(_TRAIN.batch_size, ge=1, le=65_536, description="examples per step")
    lr: float = Field(_TRAIN.lr, gt=0, le=10, description="Adam's learning rate before it decays")
    kl_warmup_start: float = Field(
        _TRAIN.kl_warmup_start, ge=0, le=1, description="fraction of training before which the KL weight is 0"
    )
    kl_warmup_end: float = Field(
        _TRAIN.kl_warmup_end, ge=0, le=1, description="fraction of training at which the KL weight reaches 1"
    )
    lr_decay_start: float = Field(
        _TRAIN.lr_decay_start, ge=0, le=1, description="fraction of training after which the lr falls linearly to 0"
    )
    threshold: float = Field(
        _SVD.threshold, gt=-_SVD.log_alpha_clip, lt=_SVD.log_alpha_clip,
        description="drop weights with log alpha above this (3: dropout rate above ~95%)",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100,
        description="objective: the most compressed network at most this many points of validation accuracy "
        "below the dense start (the job then searches the threshold, in place of threshold)",
    )
    min_compression: float | None = Field(
        None, ge=1, le=1e9,
        description="objective: the most accurate network with at least this many times fewer non-zero weights "
        "(the job then searches the threshold)",
    )
    max_file_bytes: int | None = Field(
        None, ge=1, le=1 << 40,
        description="objective: the most accurate network whose model.onnx is at most this many bytes (the job "
        "exports the thresholds its search visits)",
    )
    max_latency_ms: float | None = Field(
        None, gt=0, le=1e6,
        description="objective: the most accurate network whose onnxruntime time per batch of latency_batch "
        "examples, on the worker, is at most this many milliseconds",
    )
    latency_batch: int | None = Field(
        None, ge=1, le=65_536, description="the batch size max_latency_ms is measured at (needed with it)"
    )
    early_stop_patience: int | None = Field(
        None, ge=1, le=MAX_EPOCHS,
        description="with max_accuracy_drop or min_compression: stop Sparse VD training once the objective is met "
        "and its pick (compression under a budget, accuracy above a floor) has not improved for this many epochs",
    )
    curve_exports: int = Field(
        3, ge=0, le=32,
        description="points of the trade-off curve exported and timed for the report: the pick, then both ends "
        "and between (0: none, a few seconds less per job)",
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="fraction of the training data held out for validation, when none is given"
    )
    seed: int = Field(_TRAIN.seed, ge=0, le=2**63 - 1, description="the same seed gives the same run on one device")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    structured: bool = Field(
        False, description="also a dropout rate per unit or filter, so whole units are removed (speed)"
    )
    unit_kl_exponent: float = Field(
        _SVD.unit_kl_exponent, ge=0, le=1,
        description="with structured: each unit's KL counts its multiply-adds per example ** this; higher keeps "
        "fewer units (faster)",
    )
    unit_multiple: int = Field(
        8, ge=1, le=1024,
        description="with structured: a convolution keeping a few filters more than a multiple of this drops its "
        "weakest down to it before fine-tuning, as CPUs run such counts fastest (8 for AVX2; 1: off)",
    )
    finetune_epochs: int = Field(
        10, ge=0, le=MAX_EPOCHS,
        description="after pruning, epochs on the data alone, lr falling to 0, holding what finetune_hold says "
        "(0: none)",
    )
    finetune_lr: float = Field(1e-3, gt=0, le=10, description="the fine-tuning's starting lr")
    finetune_hold: Literal["auto", "weights", "units"] = Field(
        "auto",
        description="what fine-tuning keeps at zero: every pruned weight (the compression), or only the removed "
        "units (denser, as fast, more accurate); auto: units in a structured job, weights otherwise",
    )

    @model_validator(mode="after")
    def _vdcore_accepts(self) -> Self:
        self.train_config()
        self.svd_config()
        return self

    @model_validator(mode="after")
    def _one_objective(self) -> Self:
        given = [name for name in OBJECTIVES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one objective at a time, not {' and '.join(given)}")
        if self.early_stop_patience is not None and not {"max_accuracy_drop", "min_compression"} & set(given):
            raise ValueError("early_stop_patience watches an objective's pick after every epoch: set "
                             "max_accuracy_drop or min_compression with it (file and latency budgets would "
                             "export networks every epoch)")
        if (self.max_latency_ms is None) != (self.latency_batch is None):
            raise ValueError("max_latency_ms is measured per batch of latency_batch examples: give both, or "
                             "neither (latency_batch 1 for one request at a time)")
        return self

    def objective(self) -> Objective | None:
        """The job's objective, if it has one: the threshold is then searched after Sparse VD training."""
        name = next((name for name in OBJECTIVES if getattr(self, name) is not None), None)
        return None if name is None else Objective(name, getattr(self, name), self.latency_batch or 1)

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        """The training loop: the options ``TrainConfig`` shares with this, over ``epochs`` (default: ours)."""
        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name in type(self).model_fields}
        return TrainConfig(**shared | {"epochs": self.epochs if epochs is None else epochs})

    def finetune_config(self) -> TrainConfig:
        """The fine-tuning after pruning: ``finetune_lr`` falling linearly to 0 over ``finetune_epochs``."""
        return replace(self.train_config(self.finetune_epochs), lr=self.finetune_lr, lr_decay_start=0.0)

    def hold(self) -> Hold:
        """What fine-tuning holds at zero, ``finetune_hold`` with "auto" resolved."""
        if self.finetune_hold == "auto":
            return "units" if self.structured else "weights"
        return self.finetune_hold

    def svd_config(self) -> SVDConfig:
        return SVDConfig(
            threshold=self.threshold,
            granularity="weight+unit" if self.structured else "weight",
            unit_kl_exponent=self.unit_kl_exponent,
        )


def add_option_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per option (``finetune_lr`` is ``--finetune-lr``) with its help, range and default.

    A flag not given is None, so that ``given_options`` holds only what was asked for and the job's own
    defaults apply to the rest; ``defaults`` replaces some of those, for a command whose runs differ.
    """
    defaults = dict(defaults or {})
    for name, info in JobOptions.model_fields.items():
        flag, shown = f"--{name.replace('_', '-')}", defaults.get(name, info.default)
        help_text = f"{info.description} ({_range(info)}default {shown})".replace("%", "%%")  # argparse formats it
        kind = next((arg for arg in get_args(info.annotation) if arg is not type(None)), info.annotation) \
            if type(None) in get_args(info.annotation) else info.annotation  # float | None: a float flag
        if kind is bool:  # type=bool would read "false" as True
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif get_origin(kind) is Literal:
            parser.add_argument(flag, dest=name, choices=get_args(kind), help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, metavar="N" if kind is int else "X", help=help_text)
        parser.set_defaults(**{name: defaults.get(name)})


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a command line set, by name, for ``JobOptions(**...)`` or a request's ``options``."""
    return {name: value for name, value in vars(args).items() if name in JobOptions.model_fields and value is not None}


def _range(info: FieldInfo) -> str:
    bounds = {type(bound): bound for bound in info.metadata}
    low = f">= {bounds[Ge].ge}" if Ge in bounds else f"> {bounds[Gt].gt}" if Gt in bounds else ""
    high = f"<= {bounds[Le].le}" if Le in bounds else f"< {bounds[Lt].lt}" if Lt in bounds else ""
    return ", ".join(part for part in (low, high) if part) + ("; " if low or high else "")
