"""``report.json``: what went into a job, what came out and how it was measured, as typed models.

The recipe builds a ``Report``; ``vdc compress``, the plots and the benchmarks read its fields; the file is
``Report.to_json()``, and ``Report.model_validate_json`` reads one back.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from recipe.options import JobOptions
from recipe.progress import Stage
from vdcore.train import EpochMetrics


class ModelFacts(BaseModel):
    input_shape: list[int]
    num_classes: int
    parameters: int


class DatasetFacts(BaseModel):
    name: str
    train_examples: int
    val_examples: int


class Accuracy(BaseModel):
    """On the validation set (the training set when none is held out), of the dense model and of the exported
    compressed one."""

    before: float
    after: float


class WeightCounts(BaseModel):
    before: int
    nonzero_after: int


class Units(BaseModel):
    """Units (outputs or filters) per weight layer, before and after shrinking (before any padding)."""

    before: list[int]
    after: list[int]


class LayerFacts(BaseModel):
    name: str
    kind: str
    shape: list[int]
    weights: int
    nonzero: int
    sparsity: float


class FileSize(BaseModel):
    bytes: int
    gzip_bytes: int


class Parity(BaseModel):
    """The largest absolute difference between onnxruntime's outputs and PyTorch's, per exported model."""

    baseline: float
    model: float


class Latency(BaseModel):
    """onnxruntime's median time per batch, dense against compressed, measured side by side."""

    baseline_ms: float
    compressed_ms: float
    speedup: float


class Report(BaseModel):
    model: ModelFacts
    dataset: DatasetFacts
    options: JobOptions
    device: str
    accuracy: Accuracy
    compression: float
    sparsity: float
    weights: WeightCounts
    units: Units
    input_gather: bool
    channel_multiple: int
    layers: list[LayerFacts]
    files: dict[str, FileSize]
    onnx_parity_max_abs_diff: Parity
    latency: dict[str, Latency]  # by batch, "batch_1" and "batch_100"
    history: dict[Stage, list[EpochMetrics]]
    resumed_after_epoch: dict[Stage, int]
    timings: dict[str, float]  # "<stage>_s" for each training stage that ran, and "total_s"
    plots: list[str] = []
    notes: list[str] = []  # what the job could not do as asked, and why

    def to_json(self) -> str:
        """The report as ``report.json`` holds it: indented, and refusing NaN, which JSON has no word for."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False)
