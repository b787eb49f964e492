"""Where tensors go: CUDA when the machine has it (deployed workers do), the CPU otherwise."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device setting into a device, refusing CUDA where there is none with a message that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device; use 'auto' or 'cpu'")
    return device
