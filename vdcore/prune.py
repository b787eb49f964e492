"""Baking the learned dropout masks into a plain network."""

from __future__ import annotations

import copy

from torch import nn

from vdcore.layers import SVDLayer
from vdcore.sparsify import replace_modules_


def prune(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Sparse VD layer replaced by its plain layer holding the masked weights.

    The result computes what ``model`` computes in eval mode, needs no ``vdcore`` to run, and is left in
    eval mode. ``model`` itself is not changed.
    """
    pruned = copy.deepcopy(model)
    pruned = replace_modules_(pruned, lambda m, _: m.to_dense() if isinstance(m, SVDLayer) else None)
    return pruned.eval()
