"""Swapping a network's dense layers for Sparse VD layers, in place."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn

from vdcore.config import SVDConfig
from vdcore.layers import (
    GRUSVD,
    LSTMSVD,
    Conv2dScaledSVD,
    Conv2dSVD,
    Conv2dUnitSVD,
    EmbeddingSVD,
    LinearScaledSVD,
    LinearSVD,
    LinearUnitSVD,
    RecurrentSVD,
    SVDLayer,
)

FilterFn = Callable[[nn.Module, str], bool]

# Dense type -> its Sparse VD replacement. A new layer type is one file in layers/ and one line here.
SVD_LAYER_FOR: dict[type[nn.Module], type[SVDLayer]] = {
    nn.Linear: LinearSVD,
    nn.Conv2d: Conv2dSVD,
    nn.Embedding: EmbeddingSVD,
    nn.LSTM: LSTMSVD,
    nn.GRU: GRUSVD,
}
# Tables and recurrent layers keep a rate per weight at every granularity: a table's columns are read by the
# layers after it, which free them, and a recurrent layer's hidden units by its own weights and the next layer's.
PER_WEIGHT_ALWAYS = {nn.Embedding: EmbeddingSVD, nn.LSTM: LSTMSVD, nn.GRU: GRUSVD}
# The same with one dropout rate per output unit or filter (``SVDConfig.granularity == "unit"``).
UNIT_SVD_LAYER_FOR: dict[type[nn.Module], type[SVDLayer]] = {
    nn.Linear: LinearUnitSVD,
    nn.Conv2d: Conv2dUnitSVD,
    **PER_WEIGHT_ALWAYS,
}
# Both: a rate per weight and a scale per unit or filter (``"weight+unit"``).
SCALED_SVD_LAYER_FOR: dict[type[nn.Module], type[SVDLayer]] = {
    nn.Linear: LinearScaledSVD,
    nn.Conv2d: Conv2dScaledSVD,
    **PER_WEIGHT_ALWAYS,
}
LAYERS_BY_GRANULARITY = {"weight": SVD_LAYER_FOR, "unit": UNIT_SVD_LAYER_FOR, "weight+unit": SCALED_SVD_LAYER_FOR}


def _is_swappable(module: nn.Module, fqn: str) -> bool:
    return type(module) in SVD_LAYER_FOR


def _output_layer(model: nn.Module) -> nn.Module | None:
    """The last weight layer (swappable or already swapped, not a table or a recurrent layer) in definition
    order: the classifier of a Sequential and of any model that defines its layers in the order it runs them."""
    last = None
    for fqn, module in model.named_modules():
        if isinstance(module, (*PER_WEIGHT_ALWAYS, EmbeddingSVD, RecurrentSVD)):
            continue
        if _is_swappable(module, fqn) or isinstance(module, SVDLayer):
            last = module
    return last


def sparsify_(model: nn.Module, config: SVDConfig | None = None, filter_fn: FilterFn | None = None) -> nn.Module:
    """Replace every ``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``, ``nn.LSTM`` and ``nn.GRU`` of ``model`` by its
    Sparse VD layer, keeping the weights (tables and recurrent layers always get a rate per weight).

    Right after the swap the model computes what it did in eval mode. ``filter_fn(module, fqn)`` can leave
    layers out (it is asked only about swappable layers). Returns ``model``, or the new layer when ``model``
    itself is a single swappable layer.

    With ``config.granularity == "unit"`` the layers get one dropout rate per output unit or filter
    (``LinearUnitSVD``, ``Conv2dUnitSVD``), with ``"weight+unit"`` both (``LinearScaledSVD``,
    ``Conv2dScaledSVD``), except the output layer, which becomes a per-weight
    ``LinearSVD``/``Conv2dSVD``: dropping a whole logit would drop its class, while per-weight rates still
    sparsify it and free the hidden units it stops reading. The output layer is the last ``nn.Linear`` or
    ``nn.Conv2d`` (or already swapped layer) in definition order, ``model.modules()``: the classifier of a
    Sequential, and of any model that defines its layers in the order it runs them.

    Examples:
        >>> net = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
        >>> net = sparsify_(net, SVDConfig(threshold=3.0))
        >>> is_sparsified(net)
        True
    """
    config = config or SVDConfig()
    layer_for = LAYERS_BY_GRANULARITY[config.granularity]
    output_layer = _output_layer(model)

    def convert(module: nn.Module, fqn: str) -> nn.Module | None:
        if not _is_swappable(module, fqn) or (filter_fn is not None and not filter_fn(module, fqn)):
            return None
        layers = SVD_LAYER_FOR if module is output_layer else layer_for
        return layers[type(module)].from_dense(module, config)  # type: ignore[attr-defined]

    return replace_modules_(model, convert)


def replace_modules_(model: nn.Module, convert: Callable[[nn.Module, str], nn.Module | None]) -> nn.Module:
    """Walk ``model`` and put ``convert(module, fqn)`` in each place where it returns a module."""
    root = convert(model, "")
    if root is not None:
        return root

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            fqn = f"{prefix}.{name}" if prefix else name
            replacement = convert(child, fqn)
            if replacement is None:
                walk(child, fqn)
            else:
                setattr(parent, name, replacement)

    walk(model, "")
    return model


def svd_layers(model: nn.Module) -> Iterator[tuple[str, SVDLayer]]:
    """The ``(name, layer)`` pairs of the Sparse VD layers in ``model``, in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, SVDLayer):
            yield name, module


def is_sparsified(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one Sparse VD layer."""
    return next(svd_layers(model), None) is not None
