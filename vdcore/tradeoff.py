"""Ask for the result, not the threshold: the log-alpha threshold that meets an accuracy, size or speed objective.

After Sparse VD training every weight's log alpha orders it: a threshold keeps the weights below it, so
lowering it only ever removes more. Each threshold is a network we can measure without training anything:
``sweep`` measures a grid of them on the validation data (accuracy, non-zero weights, units with a kept weight)
and ``search`` picks, for an ``Objective``, the most compressed network within an accuracy budget (refining the
threshold between the grid's last passing and first failing point by bisection), or the most accurate one with
at least a given compression, or with an ONNX file or a latency within a budget (the shipped form only shrinks
as the threshold falls, so a bisection over deployed networks finds the budget's edge, and the most accurate
network below it is picked). If none qualifies, it picks the closest and says by how much it misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from vdcore.deployed import Deployed
from vdcore.report import sparsity_report
from vdcore.sparsify import svd_layers
from vdcore.train import Data, evaluate

ObjectiveKind = Literal["max_accuracy_drop", "min_compression", "max_file_bytes", "max_latency_ms"]
DEPLOYED_KINDS = ("max_file_bytes", "max_latency_ms")  # judged on the exported file, not on the weights
GRID = tuple(float(t) for t in np.arange(-8.0, 7.51, 0.5))  # the clip range of log alpha; 3 is the paper's
BISECTIONS = 5
CURVE_EXPORTS = 3  # points of a curve exported and timed for the report by default: the pick and both ends
Deploy = Callable[[nn.Module, int], Deployed]  # a network at its layers' thresholds, exported, timed at a batch


@dataclass(frozen=True)
class Objective:
    """``max_accuracy_drop``: at most this many points of accuracy below the dense network's, as compressed as
    possible; ``min_compression``: at least this many times fewer non-zero weights, as accurate as possible;
    ``max_file_bytes``, ``max_latency_ms`` (onnxruntime, per batch of ``batch``): the shipped ONNX file at most
    this large or this slow, as accurate as possible (the most compressed network would always be the smallest
    and fastest, and the least accurate)."""

    kind: ObjectiveKind
    value: float
    batch: int = 1  # of max_latency_ms

    def __post_init__(self) -> None:
        if self.kind == "max_accuracy_drop" and not 0 <= self.value <= 100:
            raise ValueError(f"max_accuracy_drop is in points of accuracy, 0 to 100; got {self.value}")
        if self.kind == "min_compression" and not self.value >= 1:
            raise ValueError(f"min_compression is a ratio of weights, 1 or more; got {self.value}")
        if self.kind in DEPLOYED_KINDS and not self.value > 0:
            raise ValueError(f"{self.kind} must be above 0; got {self.value}")
        if self.batch < 1:
            raise ValueError(f"the latency is per batch of 1 or more examples; got a batch of {self.batch}")

    @property
    def deployed(self) -> bool:
        return self.kind in DEPLOYED_KINDS

    def shortfall(self, point: Candidate, dense_accuracy: float) -> float:
        """How far ``point`` is from meeting the objective (0 when it meets it): points of accuracy beyond the
        budget, the compression missing, or the bytes or milliseconds over (``point`` deployed)."""
        if self.kind == "max_accuracy_drop":
            return max(0.0, 100 * (dense_accuracy - point.accuracy) - self.value)
        if self.kind == "min_compression":
            return max(0.0, self.value - point.compression)
        if point.deployed is None:
            raise ValueError(f"{self.kind} is judged on the deployed network; deploy {point.threshold} first")
        shipped = point.deployed.file_bytes if self.kind == "max_file_bytes" else point.deployed.latency_ms
        return max(0.0, shipped - self.value)


@dataclass(frozen=True)
class Candidate:
    """The network one threshold keeps, measured: validation accuracy, non-zero weights, compression (all
    weights / non-zero) and, per layer with a weight matrix (not the flat recurrent ones), the output units that
    keep at least one weight; ``deployed``, for the few exported and timed, the ONNX file's bytes and latency."""

    threshold: float
    accuracy: float
    nonzero: int
    weights: int
    units: tuple[int, ...]
    deployed: Deployed | None = None

    @property
    def compression(self) -> float:
        return self.weights / self.nonzero if self.nonzero else float("inf")


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



def curve(model: nn.Module, data: Data, threshold: float, thresholds: tuple[float, ...] = GRID,
          deploy: Deploy | None = None, exports: int = CURVE_EXPORTS) -> Choice:
    """The trade-off around a threshold the user gave: its network among the grid's, for the report's curve;
    with ``deploy``, it and others spread along the curve, ``exports`` in all, exported and timed."""
    measured = sweep(model, data, tuple({*thresholds, threshold}))
    candidates = tuple(c for c in measured if c.nonzero or c.threshold == threshold)
    chosen = next(c for c in candidates if c.threshold == threshold)
    if deploy is not None:
        candidates, chosen = _deploy_some(model, candidates, chosen, deploy, 1, exports)
    return Choice(None, chosen, candidates, 0.0)


def search(model: nn.Module, data: Data, objective: Objective, dense_accuracy: float,
           thresholds: tuple[float, ...] = GRID, deploy: Deploy | None = None, exports: int = CURVE_EXPORTS
           ) -> Choice:
    """The threshold meeting ``objective`` best on ``data`` (``dense_accuracy``: the dense network's there).

    ``deploy`` exports and times a network; an objective on the shipped file or its latency needs it, and with
    any objective the pick and others spread along the curve, ``exports`` in all, are deployed for the report.
    """
    if objective.deployed and deploy is None:
        raise ValueError(f"{objective.kind} is judged on exported networks: give deploy")
    measured = {c.threshold: c for c in sweep(model, data, thresholds)}
    edge = None
    if objective.kind == "min_compression":
        exact = _threshold_for_compression(model, objective.value)
        if exact is not None and exact not in measured:
            measured[exact] = measure(model, data, exact)
    elif objective.kind == "max_accuracy_drop":
        _bisect_accuracy_budget(model, data, objective, dense_accuracy, measured)
    else:
        edge = _bisect_deployed_budget(model, data, objective, measured, deploy)
    # A threshold that drops every weight is no network to ship.
    candidates = tuple(sorted((c for c in measured.values() if c.nonzero), key=lambda c: c.threshold))
    if not candidates:
        raise ValueError("every threshold searched drops all the weights; train with a smaller KL or fewer epochs")
    if objective.deployed:
        chosen = _best_deployed(model, candidates, objective, edge, deploy)
        candidates = tuple(chosen if c.threshold == chosen.threshold else c for c in candidates)
    else:
        chosen = _best(candidates, objective, dense_accuracy)
    if deploy is not None:
        candidates, chosen = _deploy_some(model, candidates, chosen, deploy, objective.batch, exports)
    return Choice(objective, chosen, candidates, objective.shortfall(chosen, dense_accuracy))


def _bisect_accuracy_budget(model: nn.Module, data: Data, objective: Objective, dense_accuracy: float,
                            measured: dict[float, Candidate]) -> None:
    """Measure thresholds between the most compressed passing point and the next more compressed one, the
    budget's edge, into ``measured``."""
    for _ in range(BISECTIONS):
        ordered = sorted(measured.values(), key=lambda c: c.threshold)
        passing = [i for i, c in enumerate(ordered) if objective.shortfall(c, dense_accuracy) == 0]
        if not passing or passing[0] == 0:
            return
        low, high = ordered[passing[0] - 1].threshold, ordered[passing[0]].threshold
        middle = round((low + high) / 2, 6)
        if middle in measured:
            return
        measured[middle] = measure(model, data, middle)


def _bisect_deployed_budget(model: nn.Module, data: Data, objective: Objective, measured: dict[float, Candidate],
                            deploy: Deploy) -> float | None:
    """The highest threshold whose shipped network is within the budget (None: not even the most compressed is),
    deploying as few as a bisection over the grid and then between its neighbours needs; the file and the
    latency only shrink as the threshold falls, so every threshold below it is within the budget too."""

    def within(threshold: float) -> bool:
        if measured[threshold].deployed is None:
            measured[threshold] = _deployed(model, measured[threshold], deploy, objective.batch)
        return objective.shortfall(measured[threshold], 0.0) == 0

    ordered = sorted(t for t, c in measured.items() if c.nonzero)
    if not ordered or not within(ordered[0]):
        return None
    low, high = 0, len(ordered)  # ordered[low] is within; ordered[high], if any, is not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if within(ordered[middle]) else (low, middle)
    if high == len(ordered):
        return ordered[low]
    edge, over = ordered[low], ordered[high]
    for _ in range(BISECTIONS):
        middle = round((edge + over) / 2, 6)
        if middle in (edge, over):
            break
        measured[middle] = measure(model, data, middle)
        edge, over = (middle, over) if within(middle) else (edge, middle)
    return edge


def _best_deployed(model: nn.Module, candidates: tuple[Candidate, ...], objective: Objective, edge: float | None,
                   deploy: Deploy) -> Candidate:
    """The most accurate network at or below the budget's ``edge``, deployed to confirm it (the edge's own if the
    confirmation fails: latency is measured, so it can disagree by a hair); with no edge, the most compressed,
    the closest to the budget."""
    by_threshold = {c.threshold: c for c in candidates}
    if edge is None:
        return _deployed(model, candidates[0], deploy, objective.batch)
    pick = max((c for c in candidates if c.threshold <= edge), key=lambda c: (c.accuracy, c.compression))
    pick = _deployed(model, pick, deploy, objective.batch)
    return pick if objective.shortfall(pick, 0.0) == 0 else by_threshold[edge]


def _deployed(model: nn.Module, candidate: Candidate, deploy: Deploy, batch: int) -> Candidate:
    if candidate.deployed is not None:
        return candidate
    with at_threshold(model, candidate.threshold):
        return replace(candidate, deployed=deploy(model, batch))


def _deploy_some(model: nn.Module, candidates: tuple[Candidate, ...], chosen: Candidate, deploy: Deploy,
                 batch: int, exports: int) -> tuple[tuple[Candidate, ...], Candidate]:
    """The pick and ``exports - 1`` others spread over the curve (with 3, the most compressed and the least)
    deployed at ``batch``, so the report shows what a threshold does to the file and the latency; returns the
    candidates and the pick."""
    spread = np.linspace(0, len(candidates) - 1, max(0, exports - 1)).round().astype(int)
    wanted = {candidates[i].threshold for i in spread} | ({chosen.threshold} if exports else set())
    updated = tuple(_deployed(model, c, deploy, batch) if c.threshold in wanted and c.nonzero else c
                    for c in candidates)
    return updated, next(c for c in updated if c.threshold == chosen.threshold)


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
