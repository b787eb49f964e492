"""ONNX export: one self-contained file with a dynamic batch, checked by onnx and by onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from vdcore.files import atomic_path
from vdcore.prune import prune
from vdcore.sparsify import is_sparsified

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Largest tolerated |onnxruntime - PyTorch| on the same input; beyond it the export is wrong, not imprecise.
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph is invalid or does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int
    max_abs_diff: float


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_input: Tensor) -> ExportResult:
    """Write ``model`` (evaluation behaviour) as ONNX to ``path`` and prove the file computes the same thing.

    Sparse VD layers are pruned first. The file holds its weights (no side file), its batch dimension is
    dynamic, it passes ``onnx.checker``, and onnxruntime's outputs on a batch of a different size than
    ``example_input`` match PyTorch's within ``PARITY_TOLERANCE`` (else ``ExportError``). The file appears
    at ``path`` only once it is complete.
    """
    path = Path(path)
    model = prune(model) if is_sparsified(model) else model
    model = model.eval().cpu()
    example = example_input.detach().cpu()
    example = example.float() if example.is_floating_point() else example.long()  # token ids stay integers
    if len(example) < 2:  # traced at batch 1, some layers (nn.LSTM's initial state) would fix the batch at 1
        example = example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp:
        with _quiet_exporter():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
        diff = onnx_parity(model, tmp, example)
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {PARITY_TOLERANCE})")
    return ExportResult(path=path, bytes=path.stat().st_size, max_abs_diff=diff)


@torch.no_grad()
def onnx_parity(model: nn.Module, path: str | os.PathLike[str], example_input: Tensor) -> float:
    """Largest ``|onnxruntime - PyTorch|`` on a random batch shaped like ``example_input`` but of another size (token
    ids drawn from those in ``example_input``, which the model's tables hold)."""
    generator = torch.Generator().manual_seed(0)
    shape = (example_input.shape[0] + 2, *example_input.shape[1:])
    if example_input.is_floating_point():
        x = torch.randn(shape, generator=generator)
    else:
        ids = example_input.detach().cpu().long().flatten()
        x = ids[torch.randint(0, ids.numel(), shape, generator=generator)]
    expected = model.eval()(x).numpy()
    got = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def onnx_session(path: str | os.PathLike[str] | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session on a file (or a model's bytes); one thread by default so that measurements do
    not fight other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress and warns about optional packages and about ``nn.LSTM``'s internal weight
    list; none of it is for our users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)
