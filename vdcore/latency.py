"""Measured inference time of ONNX files in onnxruntime, the way users will run them."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vdcore.export import onnx_session

_INTEGER_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}  # onnxruntime's names of token id types


@dataclass(frozen=True)
class Latency:
    batch: int
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_latency(
    paths: Sequence[str | os.PathLike[str]],
    input_shape: Sequence[int],
    batch: int = 1,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
) -> list[Latency]:
    """Median and 90th-percentile time of one ``run`` per file, measured side by side.

    Runs alternate between the files, so a busy moment of the machine hits them all alike and their ratio
    is fair even when the absolute numbers move. A float input gets random values; token ids are zeros (an id
    every table holds: a lookup takes as long whichever row it reads).
    """
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    sessions = [onnx_session(path, threads=threads) for path in paths]
    feeds = [{i.name: np.zeros(x.shape, _INTEGER_TYPES[i.type]) if i.type in _INTEGER_TYPES else x}
             for i in (session.get_inputs()[0] for session in sessions)]  # each file's own input name and type
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for session, feed, record in zip(sessions, feeds, times, strict=True):
            start = time.perf_counter()
            session.run(None, feed)
            record.append((time.perf_counter() - start) * 1e3)
    return [
        Latency(batch=batch, median_ms=statistics.median(t), p90_ms=float(np.percentile(t, 90)), runs=runs)
        for t in times
    ]
