"""Stop Sparse VD training once more epochs no longer change what the job's objective would ship.

After each epoch the objective's search runs on the validation data over a coarse grid (every other threshold,
no bisection: a monitor, not the final choice, at half the grid's cost). Training stops when the pick meets the
objective and its figure (compression under an accuracy budget, accuracy above a compression floor) has not
improved for ``patience`` epochs. The final choice is then made as in any job, on the full grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vdcore.tradeoff import GRID, Objective, search
from vdcore.train import Data

MONITOR_GRID = GRID[::2]
MIN_GAIN = 0.01  # compression must grow by 1% to count as improving; accuracy by any example


@dataclass
class EarlyStop:
    """The monitor of one training stage: ``after_epoch`` says whether to stop; ``stopped_after`` is the epoch it
    stopped after, None while it has not."""

    objective: Objective
    dense_accuracy: float
    val: Data
    patience: int
    best: float = float("-inf")
    stale: int = 0  # epochs since the best
    stopped_after: int | None = None

    def after_epoch(self, model: nn.Module, epoch: int) -> bool:
        choice = search(model, self.val, self.objective, self.dense_accuracy, MONITOR_GRID)
        budget = self.objective.kind == "max_accuracy_drop"
        figure = choice.chosen.compression if budget else choice.chosen.accuracy
        if figure > (self.best * (1 + MIN_GAIN) if budget else self.best):
            self.best, self.stale = figure, 0
        else:
            self.stale += 1
        if choice.met and self.stale >= self.patience:
            self.stopped_after = epoch
        return self.stopped_after is not None
