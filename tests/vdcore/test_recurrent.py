"""LSTMSVD and GRUSVD: drop-in for nn.LSTM and nn.GRU, one weight sample per sequence shared by its steps,
swapped by sparsify_, trained sparse, pruned back to the plain layers and fine-tuned with the zeros held."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import vdcore

# Noise so small that a training forward is the mean network: what the sampled path must compute without noise.
QUIET = vdcore.SVDConfig(log_alpha_clip=40.0, init_log_alpha=-39.0)
SPARSE = {nn.LSTM: vdcore.LSTMSVD, nn.GRU: vdcore.GRUSVD}
SHAPES = [
    {"num_layers": 1, "batch_first": True, "bidirectional": False},
    {"num_layers": 2, "batch_first": False, "bidirectional": True},
    {"num_layers": 2, "batch_first": True, "bidirectional": False, "bias": False},
]


def _dense(kind: type[nn.RNNBase], **shape) -> nn.RNNBase:
    torch.manual_seed(0)
    return kind(5, 7, **shape)


def _states(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_sparse_layer_computes_what_the_dense_one_does_in_eval_and_without_noise_in_training(kind, shape):
    dense = _dense(kind, **shape)
    x = torch.randn(3, 4, 5) if shape["batch_first"] else torch.randn(4, 3, 5)
    expected, expected_state = dense(x)
    for config, training, tolerance in ((vdcore.SVDConfig(), False, 1e-6), (QUIET, True, 1e-5)):
        layer = SPARSE[kind].from_dense(dense, config).train(training)
        out, state = layer(x)
        assert torch.allclose(out, expected, atol=tolerance)
        for got, want in zip(_states(state), _states(expected_state), strict=True):
            assert got.shape == want.shape and torch.allclose(got, want, atol=tolerance)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_initial_states_unbatched_input_and_packed_sequences_match_too(kind):
    dense = _dense(kind, num_layers=2, batch_first=True, bidirectional=True)
    layer = SPARSE[kind].from_dense(dense, QUIET).train()
    x = torch.randn(3, 6, 5)
    h0 = torch.randn(4, 3, 7)
    hx = (h0, torch.randn(4, 3, 7)) if kind is nn.LSTM else h0
    for args in ((x, hx), (x[0],), (x[0], tuple(s[:, 0] for s in hx) if kind is nn.LSTM else h0[:, 0])):
        expected, expected_state = dense(*args)
        out, state = layer(*args)
        assert torch.allclose(out, expected, atol=1e-5)
        for got, want in zip(_states(state), _states(expected_state), strict=True):
            assert torch.allclose(got, want, atol=1e-5)
    packed = pack_padded_sequence(x, torch.tensor([4, 6, 2]), batch_first=True, enforce_sorted=False)
    expected, expected_state = dense(packed, hx)
    out, state = layer(packed, hx)
    assert torch.equal(out.batch_sizes, expected.batch_sizes)
    assert torch.allclose(pad_packed_sequence(out, batch_first=True)[0],
                          pad_packed_sequence(expected, batch_first=True)[0], atol=1e-5)
    for got, want in zip(_states(state), _states(expected_state), strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_each_sequence_keeps_one_weight_sample_for_all_its_steps():
    """A GRU with no recurrent weights and constant inputs: with one sample per sequence every step sees the same
    gates ``z`` and ``n``, so ``h_t = (1 - z) n (1 + z + ... + z^(t-1))``; fresh noise per step breaks that."""
    torch.manual_seed(0)
    layer = vdcore.GRUSVD(4, 6, batch_first=True, init_log_sigma2=-1.0)
    with torch.no_grad():
        layer.weights()["weight_hh_l0"].zero_()
        layer.bias.zero_()
    x = torch.randn(1, 1, 4).expand(64, 3, 4)  # one sequence, 64 times
    with torch.no_grad():
        h, _ = layer.train()(x)
    z = h[:, 1] / h[:, 0] - 1
    assert torch.allclose(h[:, 2] / h[:, 0], 1 + z + z * z, atol=1e-4)
    assert h[:, 0].std(dim=0).min() > 1e-3, "each copy of the sequence draws its own weights"


def test_the_kl_and_the_rates_train_and_the_mask_prunes_the_matrices():
    torch.manual_seed(0)
    layer = vdcore.LSTMSVD(3, 4)
    out, _ = layer(torch.randn(5, 2, 3))
    (out.sum() + layer.kl()).backward()
    assert layer.theta.grad is not None and layer.log_sigma2.grad.abs().sum() > 0
    with torch.no_grad():
        layer.log_sigma2[:10] = 5.0  # the first ten weights of weight_ih_l0: dropped
    dense = vdcore.prune(nn.Sequential(layer))[0]
    assert type(dense) is nn.LSTM
    assert (dense.weight_ih_l0.flatten()[:10] == 0).all() and (dense.weight_ih_l0.flatten()[10:] != 0).all()
    with pytest.raises(ValueError, match="proj_size"):
        vdcore.LSTMSVD.from_dense(nn.LSTM(3, 4, proj_size=2))


class RowClassifier(nn.Module):
    """A sequence of rows -> a recurrent layer -> its last step -> classes: a row-by-row image classifier."""

    def __init__(self, kind: type[nn.RNNBase], features: int, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = kind(features, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(rows)
        return self.classifier(out[:, -1])


def _sequences(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight steps of six features; only the first feature's sum decides the class, the rest is noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 8, 6, generator=generator)
    return x, (x[:, :, 0].sum(dim=1) > 0).long()


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_a_recurrent_classifier_sparsifies_prunes_and_fine_tunes_with_the_zeros_held(kind):
    torch.manual_seed(0)
    model = RowClassifier(kind, 6)
    train_data, val = _sequences(800, 0), _sequences(300, 1)
    vdcore.train(model, train_data, val, vdcore.TrainConfig(epochs=4, batch_size=50, lr=1e-2))
    dense_accuracy = vdcore.evaluate(model, val)
    vdcore.sparsify_(model, vdcore.SVDConfig(granularity="weight+unit"))
    assert type(model.rnn) is SPARSE[kind]
    assert vdcore.evaluate(model, val) == dense_accuracy, "the swap changes nothing"
    vdcore.train(model, train_data, val, vdcore.TrainConfig(epochs=12, batch_size=50, lr=1e-2))
    report = vdcore.sparsity_report(model)
    rnn = next(layer for layer in report.layers if layer.name == "rnn")
    assert rnn.sparsity > 0.5, report
    ih = model.rnn.weights(model.rnn.mask())["weight_ih_l0"]
    assert ih[:, 1:].mean() < ih[:, 0].mean(), "the noise features lose more weights than the signal"
    pruned = vdcore.prune(model)
    assert type(pruned.rnn) is kind and vdcore.layer_widths(pruned) == [16, 2]
    assert vdcore.sparsity_report(pruned).layers[0].nonzero == rnn.nonzero
    zeros = {name: getattr(pruned.rnn, name) == 0 for name in ("weight_ih_l0", "weight_hh_l0")}
    vdcore.finetune(pruned, train_data, val, vdcore.TrainConfig(epochs=2, batch_size=50, lr=1e-3))
    assert all((getattr(pruned.rnn, name)[zero] == 0).all() for name, zero in zeros.items())
    assert vdcore.evaluate(pruned, val) > 0.85
