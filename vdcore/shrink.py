"""Making a sparse network physically smaller: units that sparsity left dead are cut out of the layers.

A pruned network is sparse but still has its dense shapes. A unit (a feature or channel) whose outgoing
weights are all zero is never read, and a unit whose incoming weights are all zero only adds a constant; both
can go, which shrinks the weight matrices on both sides of the unit.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from vdcore.layers import EmbeddingSVD, RecurrentSVD, SVDLayer
from vdcore.prune import prune
from vdcore.rebuild import WeightLayer, rebuilt
from vdcore.sequence import ImageRows, RecurrentFeatures, shrink_recurrent
from vdcore.sparsify import is_sparsified

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d

# Layers that act on each feature or channel on its own, so a unit can be traced through them by index.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
SUPPORTED: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.Embedding, ImageRows, RecurrentFeatures, *PASS_THROUGH
)
# Layers that act on each input value on its own (in eval mode), so they commute with selecting inputs.
ELEMENTWISE: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Dropout, nn.Identity, nn.ReLU, nn.Tanh)


class GatherInput(nn.Module):
    """Keeps only the input features (or channels) that the first weight layer reads.

    Args:
        indices: positions to keep along dim 1, in order.
        flatten: flatten each sample first (``x.flatten(1)``), for a network that starts with a Linear layer;
            ``False`` selects channels of an image batch and keeps its shape otherwise.

    Shape:
        Input ``(N, *)``; output ``(N, len(indices))`` if ``flatten``, else ``(N, len(indices), H, W)``.
    """

    indices: Tensor

    def __init__(self, indices: Tensor, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = flatten
        self.register_buffer("indices", indices.detach().clone().long())

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten:
            x = x.flatten(1)
        return x.index_select(1, self.indices)

    def extra_repr(self) -> str:
        return f"features={self.indices.numel()}, flatten={self.flatten}"


@torch.no_grad()
def shrink(model: nn.Module, example_input: Tensor, gather_inputs: bool = True) -> nn.Sequential:
    """A new, physically smaller network that computes what ``model`` computes in eval mode.

    Sparse VD layers are pruned first. Between two consecutive weight layers, a unit of the first is removed
    when the second never reads it, or when it has no incoming weights and its constant output can be folded
    into the second layer's bias; this repeats until nothing changes, since each removal can free more.
    Input features or channels the first weight layer never reads are dropped by a leading ``GatherInput``.
    Grouped convolutions keep their channels, and the last weight layer keeps its outputs (the logits).
    Recurrent layers (in ``RecurrentFeatures``) lose the hidden units nothing reads or that only add a constant
    to the classifier, and the embedding before one loses the columns it does not read (``vdcore.sequence``).

    Args:
        model: an ``nn.Sequential`` (nested ones are flattened) of ``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``,
            ``RecurrentFeatures``, ``nn.BatchNorm1d/2d``, ``nn.ReLU``, ``nn.Tanh``, ``nn.MaxPool2d``,
            ``nn.AvgPool2d``, ``nn.Flatten``, ``nn.Dropout`` and ``nn.Identity``, or the same with Sparse VD
            layers. It is not changed.
        example_input: a batch (of any size) shaped like the model's input; it fixes the spatial sizes.
        gather_inputs: drop unread inputs with a leading ``GatherInput``. ``False`` keeps every input and
            leaves the unread ones as zero columns of the first layer: onnxruntime gathers across features
            slowly, and from a batch of about 100 the gather costs more than the multiplications it saves.

    Returns:
        A flat ``nn.Sequential`` in eval mode, on the device and in the dtype of ``model``.

    Raises:
        ValueError: ``model`` is not an ``nn.Sequential`` or holds a layer not listed above.

    Examples:
        >>> small = shrink(vdcore.prune(model), x[:1])
        >>> layer_widths(small)
        [17, 32, 329, 75]
    """
    if not isinstance(model, nn.Sequential):
        kind = type(model).__name__
        raise ValueError(f"shrink needs an nn.Sequential (e.g. from vdcore.build_model), got {kind}")
    net = prune(model) if is_sparsified(model) else copy.deepcopy(model).eval()
    layers = flat_layers(net)
    # Batch 1 is enough to learn the shapes; the clone keeps in-place activations off the caller's tensor.
    x = example_input[:1].clone()
    changed = True
    while changed:
        changed = False
        for ia, ib in weight_pairs(layers):
            changed |= _shrink_pair(layers, ia, ib, input_shapes(layers, x))
        changed |= shrink_recurrent(layers, x)
    if gather_inputs:
        layers = _gather_read_inputs(layers, input_shapes(layers, x))
    return nn.Sequential(*layers).eval()


def layer_widths(model: nn.Module) -> list[int]:
    """Output features or channels of each Linear and Conv2d layer and hidden units of each LSTM and GRU (plain
    or Sparse VD, per weight or per unit), in order.

    Shows at a glance what ``shrink`` kept, e.g. ``17-32-329-75``.
    """
    widths = []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            widths.append(module.weight.shape[0])
        elif isinstance(module, nn.LSTM | nn.GRU | RecurrentSVD):
            widths.append(module.hidden_size)
        elif isinstance(module, SVDLayer) and not isinstance(module, EmbeddingSVD):
            widths.append(module.theta.shape[0])
    return widths


def flat_layers(model: nn.Sequential) -> list[nn.Module]:
    """The leaf layers of nested Sequentials in execution order, refusing any layer shrink cannot trace."""
    named: list[tuple[str, nn.Module]] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for name, child in seq.named_children():
            if isinstance(child, nn.Sequential):
                walk(child, f"{prefix}{name}.")
            else:
                named.append((f"{prefix}{name}", child))

    walk(model, "")
    for index, (name, layer) in enumerate(named):
        if index == 0 and type(layer) is GatherInput:
            continue  # the model was shrunk before
        if type(layer) not in SUPPORTED:
            supported = ", ".join(f"nn.{t.__name__}" for t in SUPPORTED)
            raise ValueError(
                f"shrink cannot handle layer {index} ({name!r}) of type {type(layer).__name__}; "
                f"supported layers are {supported}"
            )
        if isinstance(layer, BatchNorm) and layer.running_mean is None:
            raise ValueError(
                f"layer {index} ({name!r}) is a {type(layer).__name__} without running statistics: it "
                "normalises with batch statistics even in eval mode, so shrink cannot trace it"
            )
    return [layer for _, layer in named]


def input_shapes(layers: list[nn.Module], x: Tensor) -> list[torch.Size]:
    """The input shape of each layer, then the output shape."""
    shapes = []
    for layer in layers:
        shapes.append(x.shape)
        x = layer(x)
    shapes.append(x.shape)
    return shapes


def weight_pairs(layers: list[nn.Module]) -> list[tuple[int, int]]:
    """Indices of consecutive weight layers; ``_shrink_pair`` decides whether the layers between allow it."""
    indices = [i for i, layer in enumerate(layers) if isinstance(layer, WeightLayer)]
    return list(itertools.pairwise(indices))


def _is_plain_flatten(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1


def can_shrink_between(a: WeightLayer, b: WeightLayer, between: list[nn.Module], shapes: list[torch.Size]) -> bool:
    """Whether each output unit of ``a`` reaches ``b`` as its own feature or channel (or block of features).

    ``shapes`` are the input shapes of ``a``, the layers between, and ``b``. Requiring 2-d inputs for Linear
    and 4-d for Conv2d rules out a Linear acting on an image's last axis and a Conv2d fed by a Linear.
    """
    if any(isinstance(layer, nn.Conv2d) and layer.groups != 1 for layer in (a, b)):
        return False
    expected_ndim = {nn.Linear: 2, nn.Conv2d: 4}
    if len(shapes[0]) != expected_ndim[type(a)] or len(shapes[-1]) != expected_ndim[type(b)]:
        return False
    flattens = [layer for layer in between if isinstance(layer, nn.Flatten)]
    return (
        all(type(layer) in PASS_THROUGH for layer in between)
        and len(flattens) <= 1
        and all(_is_plain_flatten(layer) for layer in flattens)
    )


def _shrink_pair(layers: list[nn.Module], ia: int, ib: int, shapes: list[torch.Size]) -> bool:
    """Remove the units of ``layers[ia]`` that ``layers[ib]`` does not need, in place; whether any went."""
    a, b = layers[ia], layers[ib]
    between = layers[ia + 1 : ib]
    assert isinstance(a, WeightLayer) and isinstance(b, WeightLayer)
    if not can_shrink_between(a, b, between, shapes[ia : ib + 1]):
        return False
    width = a.weight.shape[0]
    at_flatten, block = flattening(between, shapes[ia : ib + 1])
    # b's weights grouped by the unit of a they read: (b outputs, units, values read per unit).
    read = b.weight.reshape(b.weight.shape[0], width, -1)
    dead_out = (read == 0).all(dim=2).all(dim=0)
    dead_in = (a.weight.reshape(width, -1) == 0).all(dim=1)

    constant = _constant_outputs(a, between, shapes[ia + 1])  # (units, values per unit) as b sees them
    if isinstance(b, nn.Linear):
        foldable = dead_in
    else:
        zero = (constant == 0).all(dim=1)
        uniform = (constant == constant[:, :1]).all(dim=1)
        foldable = dead_in & (zero | (uniform & (b.padding in ((0, 0), "valid"))))

    remove = dead_out | foldable
    if remove.all():
        # Keep one unit so that no layer becomes empty; one that b does not read costs nothing to keep.
        remove[int(torch.nonzero(dead_out if dead_out.any() else remove)[0])] = False
    if not remove.any():
        return False
    fold = remove & ~dead_out
    if isinstance(b, nn.Linear):
        shift = (read[:, fold, :] * constant[fold]).sum(dim=(1, 2))
    else:
        shift = (read[:, fold, :].sum(dim=2) * constant[fold, 0]).sum(dim=1)

    bias = b.bias
    if fold.any() and bool((shift != 0).any()):
        bias = shift if bias is None else bias + shift
    keep = torch.nonzero(~remove).flatten()
    columns = (keep[:, None] * block + torch.arange(block, device=keep.device)).flatten()

    layers[ia] = rebuilt(a, a.weight[keep], None if a.bias is None else a.bias[keep])
    for j, layer in enumerate(between):
        if isinstance(layer, BatchNorm):
            layers[ia + 1 + j] = _bn_subset(layer, keep if j < at_flatten else columns)
    b_inputs = columns if isinstance(b, nn.Linear) else keep
    layers[ib] = rebuilt(b, b.weight[:, b_inputs], bias)
    return True


def flattening(between: list[nn.Module], shapes: list[torch.Size]) -> tuple[int, int]:
    """Where the layers between two weight layers flatten (``len(between)`` if they do not), and the block size.

    Flattening turns channel k into the block of features [k * block, (k + 1) * block). ``shapes`` are the input
    shapes of the first weight layer, the layers between, and the second weight layer.
    """
    at = next((j for j, layer in enumerate(between) if isinstance(layer, nn.Flatten)), len(between))
    return at, math.prod(shapes[1 + at][2:]) if at < len(between) else 1


def _constant_outputs(a: WeightLayer, between: list[nn.Module], out_shape: torch.Size) -> Tensor:
    """What each unit of ``a`` would deliver to the next weight layer if its incoming weights were all zero.

    That is ``a``'s bias (or zero) pushed through the layers between, computed rather than assumed, since
    e.g. batch norm does not map zero to zero. Shape ``(units, values per unit)``.
    """
    width = a.weight.shape[0]
    bias = a.bias if a.bias is not None else a.weight.new_zeros(width)
    x = bias.view(1, width, *[1] * (len(out_shape) - 2)).expand(1, *out_shape[1:]).clone()
    for layer in between:
        x = layer(x)
    return x.reshape(width, -1)


def _bn_subset(bn: BatchNorm, index: Tensor) -> BatchNorm:
    """The batch norm of the features at ``index`` only."""
    assert bn.running_mean is not None and bn.running_var is not None
    affine = (bn.weight[index], bn.bias[index]) if bn.affine else None
    return bn_holding(bn, bn.running_mean[index], bn.running_var[index], affine)


def bn_holding(bn: BatchNorm, mean: Tensor, var: Tensor, affine: tuple[Tensor, Tensor] | None) -> BatchNorm:
    """A batch norm like ``bn`` with these running statistics and (if ``bn`` is affine) scale and shift."""
    new = skip_init(
        type(bn),
        mean.numel(),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=True,
        device=mean.device,
        dtype=mean.dtype,
    )
    new.running_mean.copy_(mean)
    new.running_var.copy_(var)
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    if affine is not None:
        new.weight.copy_(affine[0])
        new.bias.copy_(affine[1])
    return new.eval()


def _gather_read_inputs(layers: list[nn.Module], shapes: list[torch.Size]) -> list[nn.Module]:
    """Put a ``GatherInput`` in front when the first weight layer ignores some input features or channels.

    Only elementwise layers may precede that layer, since they commute with picking inputs; an existing
    ``GatherInput`` from an earlier shrink is composed with the new selection.
    """
    first = next((i for i, layer in enumerate(layers) if isinstance(layer, WeightLayer)), None)
    if first is None:
        return layers
    layer = layers[first]
    assert isinstance(layer, WeightLayer)
    before = layers[:first]
    previous = before[0] if before and isinstance(before[0], GatherInput) else None
    rest = before[1:] if previous is not None else before
    if not all(type(m) in ELEMENTWISE and (not isinstance(m, nn.Flatten) or _is_plain_flatten(m)) for m in rest):
        return layers
    if isinstance(layer, nn.Linear):
        flatten = True
        if len(shapes[first]) != 2 or (previous is not None and not previous.flatten):
            return layers
        read = (layer.weight != 0).any(dim=0)
    else:
        flatten = False
        has_flatten = any(isinstance(m, nn.Flatten) for m in rest)
        if layer.groups != 1 or has_flatten or len(shapes[first]) != 4 or (previous is not None and previous.flatten):
            return layers
        read = (layer.weight != 0).any(dim=3).any(dim=2).any(dim=0)
    if read.all():
        return layers
    if not read.any():
        read[0] = True  # keep one input so that the first layer is not empty
    keep = torch.nonzero(read).flatten()
    indices = previous.indices[keep] if previous is not None else keep
    elementwise = [m for m in rest if not isinstance(m, nn.Flatten)]
    smaller = rebuilt(layer, layer.weight[:, keep], layer.bias)
    return [GatherInput(indices, flatten=flatten), *elementwise, smaller, *layers[first + 1 :]]
