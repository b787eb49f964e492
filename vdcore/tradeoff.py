"""Ask for the result, not the threshold: the log-alpha threshold that meets an accuracy or size objective.

After Sparse VD training every weight's log alpha orders it: a threshold keeps the weights below it, so
lowering it only ever removes more. Each threshold is a network we can measure without training anything:
``sweep`` measures a grid of them on the validation data (accuracy, non-zero weights, units with a kept weight)
and ``search`` picks, for an ``Objective``, the most compressed network within an accuracy budget (refining the
threshold between the grid's last passing and first failing point by bisection), or the most accurate one with
at least a given compression. If none qualifies, it picks the closest and says by how much it misses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from vdcore.report import sparsity_report
from vdcore.sparsify import svd_layers
from vdcore.train import Data, evaluate

ObjectiveKind = Literal["max_accuracy_drop", "min_compression"]
GRID = tuple(float(t) for t in np.arange(-8.0, 7.51, 0.5))  # the clip range of log alpha; 3 is the paper's
BISECTIONS = 5


@dataclass(frozen=True)
class Objective:
    """``max_accuracy_drop``: at most this many points of accuracy below the dense network's, as compressed as
    possible; ``min_compression``: at least this many times fewer non-zero weights, as accurate as possible."""

    kind: ObjectiveKind
    value: float

    def __post_init__(self) -> None:
        if self.kind == "max_accuracy_drop" and not 0 <= self.value <= 100:
            raise ValueError(f"max_accuracy_drop is in points of accuracy, 0 to 100; got {self.value}")
        if self.kind == "min_compression" and not self.value >= 1:
            raise ValueError(f"min_compression is a ratio of weights, 1 or more; got {self.value}")

    def shortfall(self, point: Candidate, dense_accuracy: float) -> float:
        """How far ``point`` is from meeting the objective (0 when it meets it): points of accuracy beyond the
        budget, or the compression missing."""
        if self.kind == "max_accuracy_drop":
            return max(0.0, 100 * (dense_accuracy - point.accuracy) - self.value)
        return max(0.0, self.value - point.compression)


@dataclass(frozen=True)
class Candidate:
    """The network one threshold keeps, measured: validation accuracy, non-zero weights, compression (all
    weights / non-zero) and, per layer with a weight matrix (not the flat recurrent ones), the output units that
    keep at least one weight."""

    threshold: float
    accuracy: float
    nonzero: int
    weights: int
    units: tuple[int, ...]

    @property
    def compression(self) -> float:
        return self.weights / self.nonzero if self.nonzero else float("inf")

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"units": list(self.units), "compression": self.compression}


@dataclass(frozen=True)
class Choice:
    """The candidate ``search`` picked (or ``curve``'s given threshold, with no objective), every candidate
    measured (by threshold), and how far the pick is from the objective (0: met)."""

    objective: Objective | None
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    shortfall: float

    @property
    def met(self) -> bool:
        return self.shortfall == 0


@contextmanager
def at_threshold(model: nn.Module, threshold: float) -> Iterator[nn.Module]:
    """``model`` with every Sparse VD layer dropping the weights (and units) whose log alpha is above
    ``threshold``; the layers' own thresholds come back afterwards."""
    layers = [layer for _, layer in svd_layers(model)]
    saved = [layer.threshold for layer in layers]
    for layer in layers:
        layer.threshold = threshold
    try:
        yield model
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.threshold = value


def set_threshold_(model: nn.Module, threshold: float) -> nn.Module:
    """Make ``threshold`` every Sparse VD layer's own (what ``prune`` then bakes in)."""
    for _, layer in svd_layers(model):
        layer.threshold = threshold
    return model


@torch.no_grad()
def measure(model: nn.Module, data: Data, threshold: float) -> Candidate:
    with at_threshold(model, threshold):
        model.eval()
        report = sparsity_report(model)
        weights = [layer.masked_weight() for _, layer in svd_layers(model)]
        units = tuple(int(w.flatten(1).any(1).sum()) for w in weights if w.dim() >= 2)
        return Candidate(threshold, evaluate(model, data), report.nonzero, report.weights, units)


def sweep(model: nn.Module, data: Data, thresholds: tuple[float, ...] = GRID) -> list[Candidate]:
    """Each of ``thresholds`` measured on ``data``, lowest threshold (most compressed) first."""
    return [measure(model, data, t) for t in sorted(thresholds)]



def curve(model: nn.Module, data: Data, threshold: float, thresholds: tuple[float, ...] = GRID) -> Choice:
    """The trade-off around a threshold the user gave: its network among the grid's, for the report's curve."""
    measured = sweep(model, data, tuple({*thresholds, threshold}))
    candidates = [c for c in measured if c.nonzero or c.threshold == threshold]
    chosen = next(c for c in candidates if c.threshold == threshold)
    return Choice(None, chosen, tuple(candidates), 0.0)


def search(model: nn.Module, data: Data, objective: Objective, dense_accuracy: float,
           thresholds: tuple[float, ...] = GRID) -> Choice:
    """The threshold meeting ``objective`` best on ``data`` (``dense_accuracy``: the dense network's there)."""
    measured = {c.threshold: c for c in sweep(model, data, thresholds)}
    if objective.kind == "min_compression":
        exact = _threshold_for_compression(model, objective.value)
        if exact is not None and exact not in measured:
            measured[exact] = measure(model, data, exact)
    else:
        # Between the most compressed passing point and the next more compressed one, the budget's edge.
        for _ in range(BISECTIONS):
            ordered = sorted(measured.values(), key=lambda c: c.threshold)
            passing = [i for i, c in enumerate(ordered) if objective.shortfall(c, dense_accuracy) == 0]
            if not passing or passing[0] == 0:
                break
            low, high = ordered[passing[0] - 1].threshold, ordered[passing[0]].threshold
            middle = round((low + high) / 2, 6)
            if middle in measured:
                break
            measured[middle] = measure(model, data, middle)
    # A threshold that drops every weight is no network to ship.
    candidates = tuple(sorted((c for c in measured.values() if c.nonzero), key=lambda c: c.threshold))
    if not candidates:
        raise ValueError("every threshold searched drops all the weights; train with a smaller KL or fewer epochs")
    chosen = _best(candidates, objective, dense_accuracy)
    return Choice(objective, chosen, candidates, objective.shortfall(chosen, dense_accuracy))


def _best(candidates: tuple[Candidate, ...], objective: Objective, dense_accuracy: float) -> Candidate:
    """Among those meeting the objective, the most compressed (accuracy budget) or the most accurate
    (compression floor), ties to the other figure; if none meets it, the one closest to meeting it."""
    met = [c for c in candidates if objective.shortfall(c, dense_accuracy) == 0]
    if objective.kind == "max_accuracy_drop":
        rank = lambda c: (c.compression, c.accuracy)  # noqa: E731 - a sort key
    else:
        rank = lambda c: (c.accuracy, c.compression)  # noqa: E731
    if met:
        return max(met, key=rank)
    return min(candidates, key=lambda c: (objective.shortfall(c, dense_accuracy), -rank(c)[0]))


@torch.no_grad()
def _threshold_for_compression(model: nn.Module, compression: float, low: float = -8.0, high: float = 8.0
                               ) -> float | None:
    """The highest threshold (to 1e-4) whose network is at least ``compression`` times smaller, found by
    bisection (compression only grows as the threshold falls); None if even ``low`` does not reach it."""

    def compression_at(threshold: float) -> float:
        with at_threshold(model, threshold):
            return sparsity_report(model).compression

    if compression_at(low) < compression:
        return None
    if compression_at(high) >= compression:
        return high
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (middle, high) if compression_at(middle) >= compression else (low, middle)
    return math.floor(low * 1e6) / 1e6
