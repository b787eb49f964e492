"""A threshold's network as it would ship: the bytes of its ONNX file and its onnxruntime latency.

Objectives on the shipped form (``max_file_bytes``, ``max_latency_ms``) need a network pruned, shrunk, exported
and timed, which takes seconds where measuring its accuracy takes milliseconds; ``vdcore.tradeoff`` therefore
deploys only the few thresholds its bisection visits, and a few points of every curve for the report.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from vdcore.export import export_onnx
from vdcore.graph import OnnxNet, shrink_onnx
from vdcore.latency import measure_latency
from vdcore.layout import input_forms
from vdcore.prune import prune

RUNS = 50  # enough for a stable median of a small network; the shipped file is timed again, longer


@dataclass(frozen=True)
class Deployed:
    """An exported network's file size and its median onnxruntime time per batch of ``batch`` examples."""

    file_bytes: int
    latency_ms: float
    batch: int


def deploy(model: nn.Module, example: Tensor, batch: int = 1, runs: int = RUNS) -> Deployed:
    """``model`` at its layers' thresholds, pruned, shrunk and exported (checked in onnxruntime) to a scratch
    folder, then timed; ``example``: one input of the model's. A network imported from ONNX is shrunk in its
    own graph, as the job ships it.

    When the first layer ignores some inputs, both forms the job can ship (gathering the read inputs first, or
    keeping zero weights for the rest) are exported and timed side by side, and the smaller file and the lower
    latency are given: a job with a file budget ships its smallest form, any other its fastest. Each form only
    shrinks as the threshold falls, so these figures do too, which the search's bisection relies on.
    """
    pruned = prune(model).cpu()
    example = example.detach().cpu()
    with tempfile.TemporaryDirectory(prefix="vdcore-deploy-") as scratch:
        paths = [Path(scratch) / "candidate.onnx"]
        if isinstance(pruned, OnnxNet):
            shrink_onnx(pruned).save(paths[0])
        else:
            forms = input_forms(pruned, example)
            paths = [Path(scratch) / f"candidate-{i}.onnx" for i in range(len(forms))]
            for form, path in zip(forms, paths, strict=True):
                export_onnx(form, path, example)
        timed = measure_latency(paths, tuple(example.shape[1:]), batch=batch, runs=runs, warmup=5)
        return Deployed(min(p.stat().st_size for p in paths), min(t.median_ms for t in timed), batch)
