"""Weights as data: safetensors files, loaded strictly into a model, never unpickled."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vdcore.files import atomic_path

# BatchNorm's step counter is bookkeeping, not a weight: a file may leave it out.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
# A header entry takes ~100 bytes per tensor; the rest is room for metadata. Parsing takes many times a header's
# size in memory (a 67 MB one: 15 s and over 1 GB), so a header may not be longer than its model can need.
_HEADER_BYTES_BASE = 64 << 10
_HEADER_BYTES_PER_TENSOR = 1 << 10


class WeightsError(ValueError):
    """A weights file that does not fit the model; the message lists every problem found."""


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s state dict as safetensors (contiguous CPU copies), to a temporary name then renamed."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _check_header_size(path: str | os.PathLike[str], tensors: int) -> None:
    """Refuse a header longer than ``tensors`` tensors need, from its 8-byte length, before it is parsed."""
    try:
        with open(path, "rb") as f:
            declared = int.from_bytes(f.read(8), "little")
    except OSError as error:
        raise WeightsError(f"the weights file cannot be read ({error})") from None
    limit = _HEADER_BYTES_BASE + _HEADER_BYTES_PER_TENSOR * tensors
    if declared > limit:
        raise WeightsError(
            f"not a readable safetensors file for this model: its header declares {declared:,} bytes, more than "
            f"the {limit:,} that {tensors} tensors need; save the model's state_dict() with "
            "safetensors.torch.save_file"
        )


def check_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Check that a safetensors file fits ``model`` (names, shapes, dtypes) by reading only its header."""
    expected = model.state_dict()
    problems: list[str] = []
    _check_header_size(path, len(expected))
    try:
        with safe_open(str(path), framework="pt") as f:
            found = list(f.keys())
            for key in found:
                if key not in expected:
                    continue
                part = f.get_slice(key)
                shape, dtype = tuple(part.get_shape()), part.get_dtype()
                if shape != tuple(expected[key].shape):
                    problems.append(f"'{key}' has shape {list(shape)}, the model needs {list(expected[key].shape)}")
                if expected[key].is_floating_point() and dtype not in ("F16", "BF16", "F32", "F64"):
                    problems.append(f"'{key}' holds {dtype}, the model needs floating-point values")
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"not a readable safetensors file ({error}); save it with safetensors.torch.save_file"
        ) from None
    present = set(found)
    missing = [k for k in expected if k not in present and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"tensors the model does not have {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if problems:
        names = ", ".join(list(expected)[:6])
        raise WeightsError(
            "the weights do not fit the model: " + "; ".join(problems)
            + f". The model's tensors are named like the keys of its state_dict(): {names}, ..."
        )


@torch.no_grad()
def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a safetensors file into ``model`` strictly: every tensor present, every shape right, all finite."""
    check_weights(model, path)
    expected = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise WeightsError(f"'{key}' holds {bad} NaN or infinite value(s) of {math.prod(tensor.shape)}")
            expected[key].copy_(tensor.to(expected[key].dtype))
    return model
