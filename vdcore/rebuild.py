"""A weight layer rebuilt around new weights: the shrink, the filter rounding and the recurrent shrink all cut
rows or columns out of ``nn.Linear`` and ``nn.Conv2d`` layers and need one like the old, of the new size."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import skip_init

WeightLayer = nn.Linear | nn.Conv2d


def rebuilt(layer: WeightLayer, weight: Tensor, bias: Tensor | None) -> WeightLayer:
    """A layer like ``layer`` holding ``weight`` and ``bias``, its sizes taken from ``weight``."""
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: WeightLayer
    if isinstance(layer, nn.Linear):
        new = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    else:
        new = skip_init(
            nn.Conv2d,
            weight.shape[1] * layer.groups,
            weight.shape[0],
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=bias is not None,
            padding_mode=layer.padding_mode,
            **factory,
        )
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new.eval()
