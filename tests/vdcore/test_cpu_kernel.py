"""The compiled CPU kernel: it builds where a compiler is, matches the torch-operation path, and steps aside."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from vdcore import cpu_kernel
from vdcore import functional as VF

CLIP, THRESHOLD = 8.0, 0.5


def _weights(shape, dtype, seed=0):
    """log_alpha across both clips and the threshold, with exact zeros and tiny weights among them."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=gen, dtype=dtype) * 0.3
    theta.view(-1)[:3] = torch.tensor([0.0, 1e-9, -2.0], dtype=dtype)
    log_sigma2 = torch.log(theta * theta + VF.THETA2_EPS) + torch.randn(shape, generator=gen, dtype=dtype) * 7
    return theta, log_sigma2


def _both_paths(monkeypatch, theta, log_sigma2, train_mask):
    """(moments, kl, g_theta, g_log_sigma2) from the compiled kernel and from torch operations."""
    gen = torch.Generator().manual_seed(1)
    g_mean, g_var = (torch.randn(theta.shape, generator=gen, dtype=theta.dtype) for _ in range(2))
    g_kl = torch.tensor(0.37, dtype=theta.dtype)
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("VDCORE_CPU_KERNEL", setting)
        mean, var, kl, _, saved = VF._stats_forward(theta, log_sigma2, CLIP, THRESHOLD, train_mask)
        grads = VF._stats_backward(saved, g_mean.clone(), g_var.clone(), g_kl, owned=True)
        results.append((torch.stack([mean, var]), kl, *grads))
    return results


@pytest.fixture
def kernel():
    if cpu_kernel.load() is None:
        reason = "no C++ compiler (g++) on PATH" if shutil.which("g++") is None else "the build failed"
        if os.environ.get("VDC_REQUIRE_SERVICES") == "1":
            pytest.fail(f"the compiled CPU kernel is not available: {reason}")
        pytest.skip(f"the compiled CPU kernel is not available: {reason}")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler (g++) on PATH")
def test_the_kernel_builds_where_a_compiler_is():
    assert cpu_kernel.load() is not None
    assert cpu_kernel.ops_for(torch.zeros(3)) is not None


@pytest.mark.usefixtures("kernel")
def test_a_build_lock_left_by_a_killed_process_does_not_stop_the_next():
    """torch's loader would wait forever for the lock file of a worker killed while it built the kernel."""
    (cpu_kernel.build_directory() / "lock").write_text("")
    loads = subprocess.run(
        [sys.executable, "-c", "import sys, vdcore.cpu_kernel as k; sys.exit(k.load() is None)"], timeout=180,
        capture_output=True, text=True,
    )
    assert loads.returncode == 0, loads.stderr


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("shape", [(300, 784), (50, 3, 5, 5), (7, 3)])  # several blocks, a conv, a short tail
@pytest.mark.parametrize("train_mask", [True, False])
def test_float32_matches_the_torch_operation_path(monkeypatch, shape, train_mask):
    compiled, ops = _both_paths(monkeypatch, *_weights(shape, torch.float32), train_mask)
    torch.testing.assert_close(compiled[0][0], ops[0][0], rtol=0, atol=0)  # the mask: exactly the same weights
    torch.testing.assert_close(compiled[0][1], ops[0][1], rtol=2e-6, atol=0)
    torch.testing.assert_close(compiled[1], ops[1], rtol=2e-6, atol=0)
    for got, want in zip(compiled[2:], ops[2:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.usefixtures("kernel")
def test_float64_matches_the_torch_operation_path(monkeypatch):
    compiled, ops = _both_paths(monkeypatch, *_weights((40, 60), torch.float64), True)
    for got, want in zip(compiled, ops, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


@pytest.mark.usefixtures("kernel")
def test_the_kl_does_not_depend_on_the_thread_count():
    theta, log_sigma2 = _weights((300, 784), torch.float32)
    threads = torch.get_num_threads()
    try:
        kls = []
        for n in (1, 2):
            torch.set_num_threads(n)
            kls.append(VF._stats_forward(theta, log_sigma2, CLIP, THRESHOLD, True)[2])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(kls[0], kls[1])


def test_turned_off_it_is_not_used(monkeypatch):
    monkeypatch.setenv("VDCORE_CPU_KERNEL", "0")
    assert cpu_kernel.ops_for(torch.zeros(3)) is None


def test_other_dtypes_use_torch_operations():
    assert cpu_kernel.ops_for(torch.zeros(3, dtype=torch.bfloat16)) is None


def test_a_failed_build_warns_once_and_training_still_runs(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "_state", {})

    def fail():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpu_kernel, "_build", fail)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        assert cpu_kernel.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.load() is None  # not retried, not warned again
        theta, log_sigma2 = (t.requires_grad_() for t in _weights((5, 4), torch.float32))
        mean, var, kl = VF.weight_stats(theta, log_sigma2, CLIP, THRESHOLD)
        (mean.sum() + var.sum() + kl).backward()
    assert theta.grad is not None and log_sigma2.grad is not None


def test_the_environments_own_ninja_is_found_for_the_build_without_activation(monkeypatch, tmp_path):
    pytest.importorskip("ninja", reason="the ninja package is a dependency; here it is missing")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither a system ninja nor the environment's bin
    with cpu_kernel._ninja_on_path():
        assert shutil.which("ninja") is not None
    assert os.environ["PATH"] == str(tmp_path)
