"""Sparse VD layers: drop-in replacements for ``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``, ``nn.LSTM`` and
``nn.GRU``."""

from vdcore.layers.base import SVDLayer
from vdcore.layers.conv2d import Conv2dSVD
from vdcore.layers.embedding import EmbeddingSVD
from vdcore.layers.linear import LinearSVD
from vdcore.layers.recurrent import GRUSVD, LSTMSVD, RecurrentSVD, weight_names, weight_suffix
from vdcore.layers.scaled import Conv2dScaledSVD, LinearScaledSVD, ScaledSVDLayer
from vdcore.layers.units import Conv2dUnitSVD, LinearUnitSVD, UnitSVDLayer

__all__ = [
    "GRUSVD",
    "LSTMSVD",
    "Conv2dSVD",
    "Conv2dScaledSVD",
    "Conv2dUnitSVD",
    "EmbeddingSVD",
    "LinearSVD",
    "LinearScaledSVD",
    "LinearUnitSVD",
    "RecurrentSVD",
    "SVDLayer",
    "ScaledSVDLayer",
    "UnitSVDLayer",
    "weight_names",
    "weight_suffix",
]
