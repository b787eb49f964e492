"""The math of Sparse Variational Dropout, stateless: layers hold parameters, this module holds formulas.

Each weight has the posterior ``q(w) = N(theta, sigma^2)`` with ``sigma^2 = exp(log_sigma2)`` (the additive
parameterization of Molchanov et al. 2017); the dropout rate is derived, ``alpha = sigma^2 / theta^2``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vdcore import cpu_kernel

# Coefficients of the KL approximation to the log-uniform prior (Molchanov et al. 2017, eq. 14).
K1, K2, K3 = 0.63576, 1.87320, 1.48695
# Keeps log(theta^2) finite for exact zeros; far below any weight that matters in float32.
THETA2_EPS = 1e-16
# Keeps the standard deviation differentiable where the variance is zero.
VAR_EPS = 1e-8


def log_alpha(theta: Tensor, log_sigma2: Tensor, clip: float) -> Tensor:
    """``log(sigma^2 / theta^2)`` clipped to ``[-clip, clip]``, so that huge alphas stop moving the KL.

    The lower clip bounds the value only: its gradient passes straight through. A plain clamp passes none
    there, so a weight whose alpha fell below ``e^-clip`` (a pretrained start at ``init_log_alpha = -clip``,
    or a weight that grew) would never again feel the KL and could never be pruned.
    """
    return clip_log_alpha(log_sigma2 - torch.log(theta * theta + THETA2_EPS), clip)


def clip_log_alpha(log_alpha: Tensor, clip: float) -> Tensor:
    """``log_alpha`` clipped to ``[-clip, clip]``: a plain clamp above, a value-only (straight-through) one below."""
    upper = torch.clamp(log_alpha, max=clip)
    return upper + (torch.clamp(upper, min=-clip) - upper).detach()


def kl_approx(log_alpha: Tensor) -> Tensor:
    """Per-weight ``KL(q || log-uniform prior)``, approximated as in Molchanov et al. 2017.

    Positive, decreasing in alpha, and tends to 0 as ``log_alpha`` grows (the weight is dropped for free).
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def keep_mask(log_alpha: Tensor, threshold: float) -> Tensor:
    """1 for the weights kept at evaluation (``log_alpha <= threshold``), 0 for the dropped ones."""
    return (log_alpha <= threshold).to(log_alpha.dtype)


def noise_variance(theta: Tensor, log_alpha: Tensor) -> Tensor:
    """``alpha * theta^2`` from the clipped alpha, as in the published recipe.

    Equal to ``sigma^2`` where alpha is not clipped; where it is, the noise shrinks with the weight instead of
    staying large around a weight that is already gone.
    """
    return torch.exp(log_alpha) * theta * theta


def lrt_sample(mean: Tensor, var: Tensor) -> Tensor:
    """Local reparameterization: one Gaussian sample of each pre-activation, ``mean + sqrt(var) * N(0, 1)``."""
    return mean + torch.sqrt(var + VAR_EPS) * torch.randn_like(mean)


def linear_lrt(x: Tensor, weight_mean: Tensor, weight_var: Tensor, bias: Tensor | None) -> Tensor:
    """Sampled output of a linear layer with independent Gaussian weights; the bias adds no variance."""
    return lrt_sample(F.linear(x, weight_mean, bias), F.linear(x * x, weight_var))


def conv2d_lrt(
    x: Tensor,
    weight_mean: Tensor,
    weight_var: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """Sampled output of a 2-d convolution with independent Gaussian weights."""
    mean = F.conv2d(x, weight_mean, bias, stride, padding, dilation, groups)
    var = F.conv2d(x * x, weight_var, None, stride, padding, dilation, groups)
    return lrt_sample(mean, var)


def unit_scale_sample(pre: Tensor, scale_mean: Tensor, scale_std: Tensor, noise_shape: tuple[int, ...]) -> Tensor:
    """Whole units scaled by Gaussian noise: ``pre * s`` with ``s ~ N(scale_mean, scale_std^2)``.

    ``pre`` is the deterministic pre-activation ``x . w_j + b_j``; ``scale_mean`` and ``scale_std`` broadcast
    against it, e.g. ``(C, 1, 1)`` for a convolution's channels. ``noise_shape`` says which values share one
    draw; ``(N, C, 1, 1)`` gives a whole feature map one ``s``, as a random scale on the filter would. Each
    output has mean ``scale_mean * pre`` and variance ``scale_std^2 * pre^2``: the unit's output is sampled
    directly, which is the local reparameterization of a per-unit scale.
    """
    eps = torch.randn(noise_shape, dtype=pre.dtype, device=pre.device)
    return pre * (scale_mean + scale_std * eps)


# ---------------------------------------------------------------------------------------------------------------
# The fast training path: the formulas above, with hand-written backwards. Autograd through them records ~20
# nodes per layer, makes ~60 memory passes over the weights and allocates a fresh weight-sized tensor for most;
# on small networks that costs more than the matmuls. Here a layer's training forward is one node whose
# elementwise work runs in place in seven weight-sized buffers, with the KL and its gradient in the same pass;
# on CPU, the compiled kernel of ``vdcore.cpu_kernel`` does that work in one pass each way instead.
# ---------------------------------------------------------------------------------------------------------------

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)): torch's exp2 kernel is faster on CPU (bench/RESULTS.md)
_threshold_backward = torch.ops.aten.threshold_backward.grad_input  # grad where self > threshold, else 0
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input  # grad * y * (1 - y)


class BackwardFlag:
    """Set once a backward went through a training forward's node: its saved tensors are then released.

    A layer that keeps the forward's KL for ``kl()`` asks it whether that graph can still be differentiated.
    """

    __slots__ = ("is_set",)

    def __init__(self) -> None:
        self.is_set = False


@functools.lru_cache(maxsize=64)
def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value``: makes threshold_backward's strict comparison inclusive."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype)))


@functools.lru_cache(maxsize=64)
def _log_folds(clip: float, dtype: torch.dtype) -> int:
    """How often values ``1 + e`` with ``e`` in ``[0, e^clip]`` can be multiplied in pairs within ``dtype``.

    At most 3: further folds cost more calls than the logs they save.
    """
    room = math.log(torch.finfo(dtype).max) / (clip + math.log1p(math.exp(-clip)))  # / log(1 + e^clip)
    return max(0, min(3, int(math.log2(room)))) if room >= 2 else 0


def _sum_log1p(e: Tensor, clip: float) -> Tensor:
    """``e.log1p().sum()`` for ``e`` in ``[0, e^clip]``, overwriting ``e``.

    A log costs several multiplications, so pairs are folded first and fewer logs taken (three folds leave an
    eighth). The fold keeps the small part apart, ``(1 + a)(1 + b) = 1 + (a + b + ab)``, so that tiny ``e``
    (dropped weights) lose nothing to rounding near 1, as they would in a plain product.
    """
    flat = e.view(-1)
    n = flat.numel()
    if n >= 1 << 15:  # below that, the calls cost more than the logs
        for _ in range(_log_folds(clip, e.dtype)):
            if n % 2:
                break
            n //= 2
            a, b = flat[:n], flat[n : 2 * n]
            a.add_(torch.addcmul(b, a, b, out=b))
    return flat[:n].log1p_().sum()


class _Compiled:
    """Marks a forward done by the compiled kernel, whose backward reads ``theta`` and the kernel's saved factors."""

    __slots__ = ("ops",)

    def __init__(self, ops: Any) -> None:
        self.ops = ops


def _stats_forward(
    theta: Tensor, log_sigma2: Tensor, clip: float, threshold: float, train_mask: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Any, ...]]:
    """Mean weight, variance weight, KL sum, their ``(2, *theta.shape)`` buffer, and what the backward needs.

    On CPU the compiled kernel (``vdcore.cpu_kernel``) does it in one pass; elsewhere torch operations do.
    """
    ops = cpu_kernel.ops_for(theta)
    if ops is not None:
        moments, kl, factors = ops.svd_stats_forward(theta, log_sigma2, clip, threshold, train_mask)
        mean, var = moments.unbind()
        return mean, var, kl, moments, ((theta, factors), _Compiled(ops))
    return _stats_forward_ops(theta, log_sigma2, clip, threshold, train_mask)


def _stats_forward_ops(
    theta: Tensor, log_sigma2: Tensor, clip: float, threshold: float, train_mask: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Any, ...]]:
    """``_stats_forward`` in torch operations: the path on GPUs, other dtypes, and without the compiled kernel.

    The buffer holds the mean and the variance, so that a layer can run both matmuls as one batched call;
    without ``train_mask`` the mean is ``theta`` itself and the buffer's first half is scratch.
    Each operation writes into one of seven weight-sized buffers (``out=`` or in place): one memory pass each,
    and a small footprint. Fresh buffers each step, not kept ones: freed after the backward, they are the
    holes in which the optimizer's temporaries land; buffers kept on the layer pushed those to the top of the
    heap, which glibc trims and re-faults every step (bench/RESULTS.md, "glibc heap trimming off"). Works on
    ``nla = -log_alpha`` so that one threshold_backward pass masks the mean (and, in the backward, its gradient).
    The KL's per-weight derivative is saved divided by ``-K1 K3``: one pass fewer; the backward scales the scalar.
    """
    moments = torch.empty((2, *theta.shape), dtype=theta.dtype, device=theta.device)
    a, b = moments.unbind()
    w2, nla, e2t, r_var, sig = (torch.empty_like(theta, memory_format=torch.contiguous_format) for _ in range(5))
    torch.mul(theta, theta, out=a).add_(THETA2_EPS)  # the reference's two roundings, so ties at the clip hold
    torch.div(theta, a, out=w2)  # -(d u / d theta) / 2 for u = log_sigma2 - log(theta^2 + eps)
    nu = torch.sub(a.log_(), log_sigma2, out=a)  # -u
    torch.clamp(nu, -clip, clip, out=nla)
    # 1 where log_alpha passes the gradient: up to the upper clip, inclusive; the lower clip is straight-through.
    unclipped = nu.ge_(-clip)
    alpha = torch.mul(nla, -LOG2E, out=b).exp2_()
    torch.mul(alpha, theta, out=e2t)  # (d var / d theta at fixed log_alpha) / 2
    # K1 - K1 sigmoid(K2 + K3 la) = K1 sig with sig = sigmoid(-K2 - K3 la): summing sig avoids the
    # cancellation of K1 N - K1 sum(...) once most weights are dropped. So KL = K1 sum(sig) + 0.5 sum(softplus(-la))
    # and d KL / d la = -K1 K3 (sig (1 - sig) + c sigmoid(-la)), c = 0.5 / (K1 K3), sigmoid(-la) = 1 / (1 + alpha).
    neg_k2 = torch.full((), -K2, dtype=theta.dtype, device=theta.device)
    torch.add(neg_k2, nla, alpha=K3, out=sig).sigmoid_()
    sig_sum = sig.sum()
    r_dkl = _sigmoid_backward(unclipped, sig, grad_input=sig)
    one_plus_alpha = torch.add(alpha, 1.0, out=r_var)
    r_dkl.addcdiv_(unclipped, one_plus_alpha, value=0.5 / (K1 * K3))
    softplus_sum = _sum_log1p(alpha.reciprocal_(), clip)  # softplus(-la) = log1p(exp(-la))
    kl = softplus_sum.mul_(0.5).add_(sig_sum, alpha=K1)
    var = torch.mul(e2t, theta, out=b)  # exp(la) * theta * theta, in the reference's order
    torch.mul(var, unclipped, out=r_var)  # d var / d log_alpha, 0 above the upper clip
    below = _below(-threshold, theta.dtype) if train_mask else None
    # theta where -la > below, that is where la <= threshold
    mean = theta.view_as(theta) if below is None else _threshold_backward(theta, nla, below, grad_input=a)
    return mean, var, kl, moments, ((nla, r_var, e2t, r_dkl, w2), below)


def _stats_backward(
    saved: tuple[Any, ...], g_mean: Tensor | None, g_var: Tensor | None, g_kl: Tensor | None, owned: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``theta`` and ``log_sigma2`` from those of the mean weight, variance weight and KL.

    With ``owned``, ``g_mean`` and ``g_var`` are this function's to overwrite: they become the results,
    which saves two weight-sized allocations.
    """
    tensors, extra = saved
    if isinstance(extra, _Compiled):
        if g_mean is None and g_var is None and g_kl is None:
            return None, None
        # The kernel writes into g_mean and g_var where they are this function's and contiguous.
        g_theta, g_u = (
            g if owned and g is not None and g.is_contiguous()
            else torch.empty_like(tensors[0], memory_format=torch.contiguous_format)
            for g in (g_mean, g_var)
        )
        extra.ops.svd_stats_backward(*tensors, g_mean, g_var, g_kl, g_theta, g_u)
        return g_theta, g_u
    (nla, r_var, e2t, r_dkl, w2), below = saved
    g_theta: Tensor | None = None
    if g_mean is not None:
        out = g_mean if owned else torch.empty_like(g_mean)
        if below is None:
            g_theta = out if owned else out.copy_(g_mean)
        else:
            g_theta = _threshold_backward(g_mean, nla, below, grad_input=out)
    g_u: Tensor | None = None  # the gradient of the unclipped log_alpha, which is that of log_sigma2
    if g_var is not None:
        if g_theta is None:
            g_theta = torch.mul(g_var, e2t).mul_(2.0)
        else:
            g_theta.addcmul_(g_var, e2t, value=2.0)
        g_u = g_var.mul_(r_var) if owned else g_var * r_var
    if g_kl is not None:
        scale = g_kl * (-K1 * K3)
        g_u = r_dkl * scale if g_u is None else g_u.addcmul_(r_dkl, scale)
    if g_u is not None:
        if g_theta is None:
            g_theta = torch.mul(g_u, w2).mul_(-2.0)
        else:
            g_theta.addcmul_(g_u, w2, value=-2.0)
    return g_theta, g_u


def _start(ctx: Any, flag: BackwardFlag | None) -> None:
    ctx.set_materialize_grads(False)
    ctx.flag = flag


def _finish(ctx: Any) -> None:
    if ctx.flag is not None:
        ctx.flag.is_set = True


class _WeightStats(torch.autograd.Function):
    """``(mean weight, variance weight, KL sum)`` as one node, for layers that run their own autograd op."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        theta: Tensor,
        log_sigma2: Tensor,
        clip: float,
        threshold: float,
        train_mask: bool,
        flag: BackwardFlag | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        _start(ctx, flag)
        mean, var, kl, _, saved = _stats_forward(theta, log_sigma2, clip, threshold, train_mask)
        ctx.save_for_backward(*saved[0])
        ctx.extra = saved[1]
        return mean, var, kl

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_mean: Tensor | None, g_var: Tensor | None, g_kl: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        _finish(ctx)
        # The incoming gradients belong to autograd (it may pass one tensor to several nodes): not owned.
        g_theta, g_u = _stats_backward((ctx.saved_tensors, ctx.extra), g_mean, g_var, g_kl, owned=False)
        return g_theta, g_u, None, None, None, None


def weight_stats(
    theta: Tensor,
    log_sigma2: Tensor,
    clip: float,
    threshold: float,
    train_mask: bool = True,
    flag: BackwardFlag | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean weight, variance weight and summed KL of a training forward, computed together.

    Equal to ``theta * keep_mask(la, threshold)`` (``theta`` without ``train_mask``),
    ``noise_variance(theta, la)`` and ``kl_approx(la).sum()`` with ``la = log_alpha(theta, log_sigma2, clip)``,
    gradients included (but not twice differentiable). ``flag`` is set by the node's backward.
    """
    return _WeightStats.apply(theta, log_sigma2, clip, threshold, train_mask, flag)  # type: ignore[no-any-return]


class _LinearSVD(torch.autograd.Function):
    """A linear layer's whole training forward (weight stats, both matmuls, the sampling) as one node."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        theta: Tensor,
        log_sigma2: Tensor,
        bias: Tensor | None,
        clip: float,
        threshold: float,
        train_mask: bool,
        flag: BackwardFlag | None,
    ) -> tuple[Tensor, Tensor]:
        _start(ctx, flag)
        mean, _, kl, moments, saved = _stats_forward(theta, log_sigma2, clip, threshold, train_mask)
        if saved[1] is None:  # torch operations without a train mask: the mean is theta, not in the buffer
            moments[0].copy_(mean)
        # Both matmuls as one batched call, ``[x, x^2] @ [mean, var]^T``: one parallel region instead of two,
        # faster on CPU (bench/RESULTS.md, "Figures the code used to give"). Then linear_lrt's operations in its
        # order, so that the same seed draws the same noise.
        xs = torch.empty((2, *x.shape), dtype=x.dtype, device=x.device)
        xs[0].copy_(x)
        torch.mul(x, x, out=xs[1])
        mean_out, var_out = torch.bmm(xs, moments.transpose(1, 2)).unbind()
        out = mean_out + bias if bias is not None else mean_out.clone()  # its own tensor, not a view
        std = var_out.add_(VAR_EPS).sqrt_()
        noise = torch.randn_like(out)
        out.addcmul_(std, noise)
        ctx.has_bias, ctx.extra = bias is not None, saved[1]
        ctx.save_for_backward(xs, moments, std, noise, *saved[0])
        return out, kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_out: Tensor | None, g_kl: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        _finish(ctx)
        xs, moments, std, noise, *stats = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g_x = g_mean = g_var = g_bias = None
        if g_out is not None:
            gs = torch.empty((2, *g_out.shape), dtype=g_out.dtype, device=g_out.device)
            gs[0].copy_(g_out)
            torch.mul(g_out, noise, out=gs[1]).div_(std).mul_(0.5)  # d sqrt(v) / d v = 1 / (2 sqrt(v))
            if needs[1] or needs[2]:
                g_mean, g_var = torch.bmm(gs.transpose(1, 2), xs).unbind()
            if needs[0]:
                g_from_mean, g_from_var = torch.bmm(gs, moments).unbind()
                g_x = g_from_mean.addcmul_(xs[0], g_from_var, value=2.0)
            if ctx.has_bias and needs[3]:
                g_bias = g_out.sum(0)
        g_theta = g_u = None
        if needs[1] or needs[2]:
            g_theta, g_u = _stats_backward((stats, ctx.extra), g_mean, g_var, g_kl, owned=True)
        return g_x, g_theta, g_u, g_bias, None, None, None, None


def linear_svd(
    x: Tensor,
    theta: Tensor,
    log_sigma2: Tensor,
    bias: Tensor | None,
    clip: float,
    threshold: float,
    train_mask: bool = True,
    flag: BackwardFlag | None = None,
) -> tuple[Tensor, Tensor]:
    """Training forward of a linear SVD layer and its summed KL, as one autograd node.

    Equal to ``linear_lrt(x, mean, var, bias)`` and ``kl_approx(la).sum()`` with the moments of
    ``weight_stats``: the same noise for the same seed, the same gradients (not twice differentiable).
    ``flag`` is set by the node's backward.
    """
    flat = x.reshape(-1, x.shape[-1])
    out, kl = _LinearSVD.apply(flat, theta, log_sigma2, bias, clip, threshold, train_mask, flag)
    return out.view(*x.shape[:-1], out.shape[-1]), kl
