"""The compiled CPU kernel for a training step's per-weight work, built on first use.

As torch operations, the per-weight work of a Sparse VD step (weight moments, KL and their gradients) is about
25 calls, each a pass over the weights: on a small layer the calls cost more than the math, on a large one the
passes do. ``csrc/weight_stats.cpp`` computes the same formulas in one vectorized pass each way.

It is compiled with torch's extension loader the first time a CPU training step asks for it (about 10 s, once:
the build is cached in torch's extensions directory, ``TORCH_EXTENSIONS_DIR``), for the vector width torch
itself runs here. Where it cannot be built (no C++ compiler) or is turned off (``VDCORE_CPU_KERNEL=0``), the
torch-operation path of ``vdcore.functional`` runs instead: the same results, slower. The kernel uses torch's
own thread pool and sets nothing process-wide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("csrc") / "weight_stats.cpp"
DTYPES = (torch.float32, torch.float64)
# The instruction sets of torch's own CPU kernels, so that ours runs wherever torch's do.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
}

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "ops" once built; "error" once a build failed


def enabled() -> bool:
    """False when ``VDCORE_CPU_KERNEL`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get("VDCORE_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "no", "off")


def build_flags() -> list[str]:
    """Compiler flags: optimized, no contracted multiply-adds (the reference's roundings), torch's vector width."""
    return ["-O3", "-ffp-contract=off", *ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs ``ninja`` from PATH; a virtual environment's own (the ``ninja`` package) is not on it
    unless the environment is activated, so it is added for the build and taken away after."""
    path = os.environ.get("PATH", "")
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        ninja = None
    if ninja is None or shutil.which("ninja"):
        yield
        return
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


@contextlib.contextmanager
def _build_guard(build_dir: Path) -> Iterator[None]:
    """One process at a time builds, and none waits for a dead one.

    torch's loader guards a build with a plain ``lock`` file; a process killed mid-build (a worker stopped by
    the OOM killer, say) leaves it behind, and every later process then waits for it forever. An ``flock``,
    which the kernel releases when its holder dies, guards the build instead; a torch lock found while holding
    it belongs to a dead process and is removed.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def build_directory() -> Path:
    """Where the kernel is built and cached: named by a hash of the source, the flags and torch's version."""
    from torch.utils import cpp_extension  # imported here: it pulls in setuptools, needed only for a build

    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([torch.__version__, *build_flags()]).encode()).hexdigest()
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / f"vdcore_weight_stats_{digest[:16]}"


def _build() -> Any:
    from torch.utils import cpp_extension

    build_dir = build_directory()
    with _build_guard(build_dir), _ninja_on_path():
        cpp_extension.load(
            name=build_dir.name,
            sources=[str(SOURCE)],
            extra_cflags=build_flags(),
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    return torch.ops.vdcore


def load() -> Any | None:
    """``torch.ops.vdcore`` with the kernel's ops, building it if needed; None if it cannot be built.

    A failed build warns once, with the reason, and is not retried in this process.
    """
    if "ops" in _state or "error" in _state:
        return _state.get("ops")
    with _lock:
        if "ops" not in _state and "error" not in _state:
            try:
                _state["ops"] = _build()
            except Exception as error:  # any build or load failure leaves the torch-operation path
                _state["error"] = error
                warnings.warn(
                    f"vdcore: the compiled CPU kernel could not be built ({type(error).__name__}: {error}); "
                    "training steps on CPU use torch operations instead (same results, slower). "
                    "A C++ compiler (g++) and ninja make it available; VDCORE_CPU_KERNEL=0 silences this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state.get("ops")


def ops_for(theta: torch.Tensor) -> Any | None:
    """The kernel's ops if they can run on ``theta`` (a float32 or float64 CPU tensor), else None."""
    if theta.device.type != "cpu" or theta.dtype not in DTYPES or not enabled():
        return None
    return load()
