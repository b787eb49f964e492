"""What a running job says about itself: the stage it is in and, while a stage trains, its last epoch.

The recipe emits these to its ``on_progress`` callback; the service stores the latest one and serves it as the
job's ``progress``, whose API schema is this model's. Whether to stop is asked separately (``ShouldStop``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

from vdcore.train import EpochMetrics


class Stage(StrEnum):
    """A job's stages in the order they run; ``REQUEUED`` is the service's, for a job whose worker stopped
    responding and that waits to resume from its last saved epoch."""

    PRETRAINING = "pretraining"
    TRAINING = "training"
    FINETUNING = "finetuning"
    EXPORTING = "exporting"
    MEASURING = "measuring"
    REQUEUED = "requeued"


# The stages that train, in the order they run: each has its history, resume point and time in the report.
TRAINING_STAGES = (Stage.PRETRAINING, Stage.TRAINING, Stage.FINETUNING)


class Progress(BaseModel):
    """A job's latest progress: its stage and, while training, the epoch's metrics (``vdcore.EpochMetrics``)."""

    stage: Stage
    epoch: int | None = None
    epochs: int | None = None
    data_loss: float | None = None
    kl: float | None = None
    kl_weight: float | None = None
    lr: float | None = None
    train_accuracy: float | None = Field(None, description="on the noisy training forward")
    val_accuracy: float | None = None
    sparsity: float | None = Field(None, description="fraction of weights dropped")
    compression: float | None = Field(None, description="all weights over the non-zero ones")
    seconds: float | None = Field(None, description="the epoch's duration")
    eta_seconds: float | None = Field(None, description="estimated seconds until training ends")
    reason: str | None = Field(None, description="why the job is in this stage, when it is not running")
    objective_met: bool | None = Field(
        None, description="with an objective, once measured: whether the shipped network meets it"
    )
    objective_shortfall: float | None = Field(
        None, description="how far the shipped network misses the objective (points of accuracy, or times of "
        "compression; 0 when met)"
    )

    @field_validator("*", mode="after")
    @classmethod
    def _finite_or_null(cls, value: Any) -> Any:
        """NaN and infinities (a diverging loss) become null: JSON has no such numbers, and PostgreSQL refuses
        them."""
        return None if isinstance(value, float) and not math.isfinite(value) else value

    @classmethod
    def of_epoch(cls, stage: Stage, metrics: EpochMetrics, later_epochs: int) -> Progress:
        """An epoch's event, its ETA counting ``later_epochs`` of the stages after this one at this pace."""
        remaining = metrics.epochs - metrics.epoch + later_epochs
        return cls(stage=stage, eta_seconds=metrics.seconds * remaining, **metrics.to_dict())


OnProgress = Callable[[Progress], None]
# Asked as each stage starts and after each epoch; ``True`` cancels the job (``recipe.pipeline.Cancelled``).
ShouldStop = Callable[[], bool]
