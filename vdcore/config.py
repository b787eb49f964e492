"""Settings of the method and of its training loop, as small checked dataclasses that round-trip through dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

GRANULARITIES = ("weight", "unit", "weight+unit")


class _DictMixin:
    """Dict (de)serialisation that refuses unknown keys, so a typo in a job's options is an error, not a no-op."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known options are {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class SVDConfig(_DictMixin):
    """How Sparse VD layers are built.

    Args:
        threshold: a weight with ``log_alpha`` above this is dropped at evaluation (3 means alpha > ~20).
        log_alpha_clip: ``log_alpha`` is clipped to ``[-clip, clip]`` in the KL and the noise.
        init_log_sigma2: ``log_sigma2`` of a freshly initialised layer (training from scratch).
        init_log_alpha: ``log_alpha`` given to every weight copied from a dense layer. Setting alpha rather
            than sigma keeps tiny pretrained weights unmasked right after the swap.
        train_mask: zero the dropped weights in the mean of the training forward too, as the published recipe
            does, so training sees the network that evaluation will use.
        granularity: ``"weight"``: every weight learns its own dropout rate (Sparse VD, the most compression).
            ``"unit"``: every output unit of a Linear and every filter of a Conv2d learns one rate, so whole
            units are dropped and ``shrink`` removes them (real speed-ups); the last layer, the classifier, keeps
            per-weight rates, since dropping a class's logit would drop the class. Unit layers start at
            ``init_log_alpha``, also when built from scratch. ``"weight+unit"``: both, a rate per weight and a
            random scale per unit or filter (``LinearScaledSVD``, ``Conv2dScaledSVD``): compression and speed.
        unit_kl_exponent: with unit rates, each unit's KL term counts ``cost ** unit_kl_exponent`` times, where
            a unit's cost is its multiply-adds per example (its fan-in; for a filter, times its output positions):
            0 is the plain model (one term per unit, which frees few units), 1 counts it like its weights' (which
            frees too many); higher keeps fewer units, and the costly ones go first.
    """

    threshold: float = 3.0
    log_alpha_clip: float = 8.0
    init_log_sigma2: float = -10.0
    init_log_alpha: float = -8.0
    train_mask: bool = True
    granularity: Literal["weight", "unit", "weight+unit"] = "weight"
    unit_kl_exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if not 0 <= self.unit_kl_exponent <= 1:
            raise ValueError(f"unit_kl_exponent must lie in [0, 1], got {self.unit_kl_exponent}")
        if self.log_alpha_clip <= 0:
            raise ValueError(f"log_alpha_clip must be positive, got {self.log_alpha_clip}")
        if not -self.log_alpha_clip < self.threshold < self.log_alpha_clip:
            raise ValueError(
                f"threshold {self.threshold} must lie inside (-log_alpha_clip, log_alpha_clip) = "
                f"(-{self.log_alpha_clip}, {self.log_alpha_clip}), or it would drop all or no weights"
            )
        if self.init_log_alpha >= self.threshold:
            raise ValueError(
                f"init_log_alpha {self.init_log_alpha} must be below threshold {self.threshold}, "
                "or every copied weight would be dropped at once"
            )


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """The training loop. Defaults follow the published LeNet-300-100 recipe, scaled to ``epochs``.

    The recipe over 200 epochs: KL weight 0 for epochs 0-4, linear to 1 at epoch 20; Adam at lr 1e-3, batch
    100; lr constant to epoch 100, then linear to 0 at epoch 200. Schedule points here are fractions of
    ``epochs``, so a shorter run keeps the same shape.

    Args:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr: Adam's learning rate before decay.
        kl_warmup_start: fraction of training before which the KL weight is 0.
        kl_warmup_end: fraction of training at which the KL weight reaches 1.
        lr_decay_start: fraction of training after which the lr falls linearly to 0 at the end.
        seed: seeds initialisation noise and batch order; the same seed gives the same run on one device.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        eval_batch_size: batch size for validation passes.
    """

    epochs: int = 200
    batch_size: int = 100
    lr: float = 1e-3
    kl_warmup_start: float = 0.025
    kl_warmup_end: float = 0.1
    lr_decay_start: float = 0.5
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.kl_warmup_start <= self.kl_warmup_end <= 1:
            raise ValueError(
                "KL warm-up needs 0 <= kl_warmup_start <= kl_warmup_end <= 1 (fractions of training), got "
                f"{self.kl_warmup_start} and {self.kl_warmup_end}"
            )
        if not 0 <= self.lr_decay_start <= 1:
            raise ValueError(f"lr_decay_start must be a fraction of training in [0, 1], got {self.lr_decay_start}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
