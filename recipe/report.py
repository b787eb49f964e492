"""``report.json``: what went into a job, what came out and how it was measured, as typed models.

The recipe builds a ``Report``; ``vdc compress``, the plots and the benchmarks read its fields; the file is
``Report.to_json()``, and ``Report.model_validate_json`` reads one back.
"""

from __future__ import annotations

import json
from typing import Literal

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
    test_examples: int = 0


class Accuracy(BaseModel):
    """Of the dense model and of the exported compressed one, on the split ``measured_on`` names: the report's
    ``accuracy`` is on the validation data (the training data when none is held out), the data the threshold was
    chosen on; ``test_accuracy`` on test data nothing was chosen on."""

    before: float
    after: float
    measured_on: Literal["validation", "training", "test"] = "validation"


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


class TradeoffPoint(BaseModel):
    """One threshold's network after Sparse VD training, before fine-tuning: validation accuracy, non-zero
    weights, compression and the units (per layer with a weight matrix) that keep a weight; for the few the job
    exported (the pick and a few spread over the curve), the ONNX file's bytes and onnxruntime's median time per
    batch of the tradeoff's ``latency_batch``."""

    threshold: float
    accuracy: float
    nonzero: int
    compression: float
    units: list[int]
    file_bytes: int | None = None
    latency_ms: float | None = None


SHORTFALL_UNITS = {"max_accuracy_drop": " points of accuracy", "min_compression": "x of compression",
                   "max_file_bytes": " bytes", "max_latency_ms": " ms"}  # what a Tradeoff's shortfall counts


class Tradeoff(BaseModel):
    """The networks a grid of thresholds keeps after Sparse VD training, measured on the validation data, and
    the one shipped: with an objective, the threshold the search picked (``met`` and ``shortfall``, points of
    accuracy, times of compression, bytes or milliseconds missing, are the shipped network's, fine-tuned and
    exported, as the report's accuracy, compression and files give them, its latency timed again at
    ``latency_batch``); without, the job's ``threshold``."""

    objective: str | None
    value: float | None
    latency_batch: int = 1
    chosen: TradeoffPoint
    candidates: list[TradeoffPoint]
    met: bool | None
    shortfall: float | None
    search_s: float


class EarlyStopFacts(BaseModel):
    """Sparse VD training stopped once the objective was met and its pick had not improved for ``patience``
    epochs: after which epoch (None: it ran them all) and how many of the planned epochs that saved."""

    patience: int
    stopped_after_epoch: int | None
    epochs_saved: int


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
    tradeoff: Tradeoff | None = None  # None only in reports written before the curve was measured
    test_accuracy: Accuracy | None = None  # None: the data has no test split
    early_stop: EarlyStopFacts | None = None  # None: the job did not ask for it

    def to_json(self) -> str:
        """The report as ``report.json`` holds it: indented, and refusing NaN, which JSON has no word for."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False)
