"""The fused training path against the reference formulas: values, gradients, the KL cache, buffer reuse.

Every test runs twice on CPU: with the compiled kernel (``vdcore.cpu_kernel``) and with torch operations.
"""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vdcore
from vdcore import cpu_kernel
from vdcore import functional as VF
from vdcore.layers import Conv2dSVD, LinearSVD, SVDLayer

CLIP, THRESHOLD = 8.0, 0.5


@pytest.fixture(autouse=True, params=["compiled kernel", "torch operations"])
def cpu_path(request, monkeypatch):
    if request.param == "torch operations":
        monkeypatch.setenv("VDCORE_CPU_KERNEL", "0")
    elif cpu_kernel.load() is None:
        pytest.skip("the compiled CPU kernel cannot be built here: tests/vdcore/test_cpu_kernel.py says why")


def _weights(shape, dtype=torch.float64, seed=0):
    """Weights whose log_alpha spans both clip ends, the threshold and everything between."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=gen, dtype=dtype) * 0.5
    log_sigma2 = torch.randn(shape, generator=gen, dtype=dtype) * 6 - 4
    return theta.requires_grad_(), log_sigma2.requires_grad_()


def _differentiable_weights(shape):
    """Weights whose log_alpha stays above the lower clip: below it the gradient is straight-through by
    design, so finite differences (gradcheck) would disagree there."""
    theta, log_sigma2 = _weights(shape)
    with torch.no_grad():
        raw = log_sigma2 - torch.log(theta * theta + VF.THETA2_EPS)
        log_sigma2 += (-CLIP + 0.5 - raw).clamp(min=0)
    return theta, log_sigma2


def _close(got, want, rel=1e-10):
    """Equal up to float64 rounding, which is relative to the largest term (gradients cancel large terms)."""
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.detach().abs().max()))


def _reference_stats(theta, log_sigma2, clip, threshold, train_mask=True):
    la = VF.log_alpha(theta, log_sigma2, clip)
    mean = theta * VF.keep_mask(la, threshold) if train_mask else theta
    return mean, VF.noise_variance(theta, la), VF.kl_approx(la).sum()


def _reference_forward(layer: SVDLayer, x):
    mean, var, _ = _reference_stats(layer.theta, layer.log_sigma2, layer.log_alpha_clip, layer.threshold,
                                    layer.train_mask)
    if isinstance(layer, LinearSVD):
        return VF.linear_lrt(x, mean, var, layer.bias)
    return VF.conv2d_lrt(x, mean, var, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _reference_kl(model):
    return sum(VF.kl_approx(layer.log_alpha).sum() for _, layer in vdcore.svd_layers(model))


def _as_reference(model):
    """A copy of ``model`` whose SVD layers run the unfused reference formulas through plain autograd."""
    ref = copy.deepcopy(model)
    for _, layer in vdcore.svd_layers(ref):
        layer.forward = lambda x, layer=layer: _reference_forward(layer, x)
    return ref


def _lenet_300_100():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def _convnet():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, stride=2, groups=2, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 10))


def _svd_model(build, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = vdcore.sparsify_(build()).to(dtype).train()
    with torch.no_grad():  # spread log_alpha over the clip range, as after some training
        for _, layer in vdcore.svd_layers(model):
            layer.log_sigma2.add_(torch.randn_like(layer.log_sigma2) * 4 + 4)
    return model


def _step(model, x, y, kl_of, seed=1):
    torch.manual_seed(seed)
    loss = F.cross_entropy(model(x), y) + kl_of(model) / 60000
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("train_mask", [True, False])
def test_weight_stats_gradients_pass_gradcheck(train_mask):
    theta, log_sigma2 = _differentiable_weights((7, 5))

    def stats(t, s):
        return VF.weight_stats(t, s, CLIP, THRESHOLD, train_mask)

    assert torch.autograd.gradcheck(stats, (theta, log_sigma2))


@pytest.mark.parametrize("train_mask", [True, False])
def test_weight_stats_equal_the_reference_formulas(train_mask):
    theta, log_sigma2 = _weights((30, 40))
    fused = VF.weight_stats(theta, log_sigma2, CLIP, THRESHOLD, train_mask)
    reference = _reference_stats(theta, log_sigma2, CLIP, THRESHOLD, train_mask)
    gen = torch.Generator().manual_seed(1)
    probes = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in reference]
    grads = [torch.autograd.grad(sum((o * p).sum() for o, p in zip(outs, probes, strict=True)), (theta, log_sigma2))
             for outs in (fused, reference)]
    for got, want in zip((*fused, *grads[0]), (*reference, *grads[1]), strict=True):
        _close(got, want)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_svd_gradients_pass_gradcheck(bias):
    theta, log_sigma2 = _differentiable_weights((4, 6))
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    x = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)

    def layer(x, t, s, *b):
        torch.manual_seed(0)  # the same noise on every call, so the function is deterministic
        return VF.linear_svd(x, t, s, b[0] if b else None, CLIP, THRESHOLD)

    assert torch.autograd.gradcheck(layer, (x, theta, log_sigma2, *([b] if bias else [])))


@pytest.mark.parametrize("build", [_lenet_300_100, _convnet])
def test_fast_and_reference_models_give_the_same_loss_and_gradients(build):
    model = _svd_model(build)
    reference = _as_reference(model)
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    for _ in range(2):  # the second step starts from a spent KL cache and after parameter changes
        loss, grads = _step(model, x, y, vdcore.kl_divergence)
        ref_loss, ref_grads = _step(reference, x, y, _reference_kl)
        assert abs(float(loss) - float(ref_loss)) < 1e-6
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_float32_stays_within_rounding_of_the_reference():
    model = _svd_model(_lenet_300_100, dtype=torch.float32)
    reference = _as_reference(model)
    x, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
    loss, grads = _step(model, x, y, vdcore.kl_divergence)
    ref_loss, ref_grads = _step(reference, x, y, _reference_kl)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_ties_at_the_clip_and_the_threshold_behave_as_autograd():
    """From-dense starts put log_alpha exactly on -clip; a weight exactly on the threshold is kept."""
    theta = torch.randn(20, 30, dtype=torch.float64)
    log_sigma2 = -CLIP + torch.log(theta * theta + VF.THETA2_EPS)
    log_sigma2[0] = THRESHOLD + torch.log(theta[0] * theta[0] + VF.THETA2_EPS)
    u = log_sigma2 - torch.log(theta * theta + VF.THETA2_EPS)
    assert (u == -CLIP).any() and (u == THRESHOLD).any(), "the setup must produce exact ties"
    theta.requires_grad_()
    log_sigma2.requires_grad_()
    fused = VF.weight_stats(theta, log_sigma2, CLIP, THRESHOLD)
    reference = _reference_stats(theta, log_sigma2, CLIP, THRESHOLD)
    torch.testing.assert_close(fused[0], reference[0], rtol=0, atol=0)
    grads = [torch.autograd.grad(outs[0].sum() + outs[1].sum() + outs[2], (theta, log_sigma2))
             for outs in (fused, reference)]
    for got, want in zip(grads[0], grads[1], strict=True):
        _close(got, want)


def _linear(dtype=torch.float64):
    torch.manual_seed(0)
    layer = LinearSVD(12, 5, dtype=dtype)
    with torch.no_grad():
        layer.log_sigma2.add_(torch.randn_like(layer.log_sigma2) * 4 + 4)
    return layer


def test_kl_after_a_training_forward_is_the_forwards_and_costs_nothing(monkeypatch):
    layer = _linear()
    layer(torch.randn(3, 12, dtype=torch.float64))
    monkeypatch.setattr(VF, "kl_approx", lambda la: pytest.fail("kl() recomputed although nothing changed"))
    kl = layer.kl()
    assert kl is layer.kl() and kl.requires_grad
    monkeypatch.undo()
    _close(kl, VF.kl_approx(layer.log_alpha).sum())


def test_kl_is_recomputed_once_the_parameters_change():
    layer = _linear()
    layer(torch.randn(3, 12, dtype=torch.float64))
    before = layer.kl()
    with torch.no_grad():
        layer.theta.mul_(1.5)  # an optimizer step changes parameters in place, just so
    after = layer.kl()
    assert after is not before
    _close(after, VF.kl_approx(layer.log_alpha).sum())
    layer.load_state_dict(_linear().state_dict())
    _close(layer.kl(), VF.kl_approx(layer.log_alpha).sum())


def test_kl_stays_right_in_eval_mode_without_grad_and_after_a_backward():
    layer = _linear()
    x = torch.randn(3, 12, dtype=torch.float64)
    expected = VF.kl_approx(layer.log_alpha).sum()
    layer(x).sum().backward()  # a backward that does not use the KL
    with torch.no_grad():
        assert not layer.kl().requires_grad
        torch.testing.assert_close(layer.kl(), expected.detach())
    layer.zero_grad()
    layer.kl().backward()  # the forward's graph is spent: kl() must build a fresh one
    reference = _linear()
    VF.kl_approx(reference.log_alpha).sum().backward()
    torch.testing.assert_close(layer.theta.grad, reference.theta.grad)
    layer.eval()
    torch.testing.assert_close(layer.kl(), expected)


def test_a_training_forward_without_grad_leaves_kl_differentiable():
    layer = _linear()
    with torch.no_grad():
        layer(torch.randn(3, 12, dtype=torch.float64))
    assert layer.kl().requires_grad


def test_two_forwards_before_one_backward_and_retained_graphs_match_the_reference():
    """Several noise samples per step, and backward twice through a retained graph."""
    model = _svd_model(_lenet_300_100)
    reference = _as_reference(model)
    x, y = torch.rand(8, 784, dtype=torch.float64), torch.randint(0, 10, (8,))
    grads = []
    for net, kl_of in ((model, vdcore.kl_divergence), (reference, _reference_kl)):
        torch.manual_seed(3)
        loss = F.cross_entropy(net(x), y) + F.cross_entropy(net(x), y) + kl_of(net) / 100
        net.zero_grad()
        loss.backward(retain_graph=True)
        loss.backward()  # twice through the same graph: gradients double
        grads.append([p.grad for p in net.parameters()])
    for got, want in zip(*grads, strict=True):
        _close(got, want)


def test_models_copy_pickle_prune_and_change_dtype_after_a_training_forward():
    model = _svd_model(_lenet_300_100, dtype=torch.float32)
    x = torch.rand(4, 784)
    model(x).sum().backward()
    vdcore.kl_divergence(model)
    copied = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    vdcore.prune(model)
    for other in (copied, restored):
        other.eval()
        torch.testing.assert_close(other(x), model.eval()(x))
    model.train().double()  # the cached KL is stale once the parameters are converted
    reference = _as_reference(model)
    loss, grads = _step(model, x.double(), torch.zeros(4, dtype=torch.long), vdcore.kl_divergence)
    ref_loss, ref_grads = _step(reference, x.double(), torch.zeros(4, dtype=torch.long), _reference_kl)
    torch.testing.assert_close(loss, ref_loss)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_conv_layer_alone_matches_the_reference():
    torch.manual_seed(0)
    layer = Conv2dSVD(4, 6, 3, stride=2, padding=1, groups=2, dtype=torch.float64)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    outs = []
    for run in (layer, lambda x: _reference_forward(layer, x)):
        torch.manual_seed(1)
        out = run(x)
        grads = torch.autograd.grad(out.square().sum(), (x, layer.theta, layer.log_sigma2, layer.bias))
        outs.append((out, *grads))
    for got, want in zip(*outs, strict=True):
        _close(got, want)


def test_autocast_falls_back_to_the_reference_path():
    layer = _linear(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 12))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.theta.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_the_reference():
    model = _svd_model(_lenet_300_100).cuda()
    reference = _as_reference(model)
    x, y = torch.rand(16, 784, dtype=torch.float64, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    loss, grads = _step(model, x, y, vdcore.kl_divergence)
    ref_loss, ref_grads = _step(reference, x, y, _reference_kl)
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_weight_moments_match_the_reference_and_feed_kl():
    layer = _linear()
    mean, var = layer.weight_moments()
    for got, want in zip((mean, var, layer.kl()), _reference_stats(layer.theta, layer.log_sigma2, CLIP, 3.0),
                         strict=True):
        _close(got, want)


def test_a_training_forward_in_inference_mode_leaves_later_training_right():
    layer = _linear()
    with torch.inference_mode():
        layer(torch.randn(3, 12, dtype=torch.float64))
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.manual_seed(0)
    (layer(x).sum() + layer.kl()).backward()
    reference = _linear()
    torch.manual_seed(0)
    (_reference_forward(reference, x).sum() + VF.kl_approx(reference.log_alpha).sum()).backward()
    _close(layer.theta.grad, reference.theta.grad)
    _close(layer.log_sigma2.grad, reference.log_sigma2.grad)


@pytest.mark.parametrize("centre", [-6.0, 0.0, 7.5, 9.0])
def test_float32_kl_is_as_accurate_as_the_reference_even_when_most_weights_are_dropped(centre):
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(300, 784, generator=gen) * 0.05
    log_sigma2 = centre + torch.log(theta * theta + VF.THETA2_EPS) + torch.randn(300, 784, generator=gen) * 0.5
    truth = VF.kl_approx(VF.log_alpha(theta.double(), log_sigma2.double(), CLIP)).sum()
    reference = VF.kl_approx(VF.log_alpha(theta, log_sigma2, CLIP)).sum().double()
    fused = VF.weight_stats(theta, log_sigma2, CLIP, THRESHOLD)[2].double()
    assert abs(fused - truth) <= max(abs(reference - truth), 1e-6 * truth)
