"""Embedding tables get Sparse VD too: a rate per entry, trained, pruned, held in fine-tuning, and cut out of a
user's ONNX graph where a column is dead."""

import warnings

import pytest
import torch
from torch import nn

import vdcore
from vdcore.graph import load_onnx, shrink_onnx, write_onnx
from vdcore.graph.net import max_difference

VOCABULARY, TOKENS = 50, 6


class TokenClassifier(nn.Module):
    """Token ids -> an embedding per token, their mean, a linear classifier: the smallest sequence model."""

    def __init__(self, dim: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(tokens).mean(dim=1))


def _token_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The label says whether any of the first five token ids occurs: most of the table does not matter."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCABULARY, (count, TOKENS), generator=generator)
    return tokens, (tokens < 5).any(dim=1).long()


def test_a_swapped_table_looks_up_what_it_did_and_trains_noisy_around_it():
    torch.manual_seed(0)
    dense = nn.Embedding(VOCABULARY, 8)
    table = vdcore.EmbeddingSVD.from_dense(dense)
    tokens = torch.randint(0, VOCABULARY, (3, TOKENS))
    with torch.no_grad():
        assert torch.allclose(table.eval()(tokens), dense(tokens), atol=1e-6)
        noisy = torch.stack([table.train()(tokens) for _ in range(200)])
    assert noisy.std(dim=0).max() > 0 and torch.allclose(noisy.mean(dim=0), dense(tokens), atol=0.05)
    kl = table.kl()
    kl.backward()
    assert table.log_sigma2.grad is not None and kl.item() != 0


def test_a_token_model_sparsifies_its_table_prunes_it_and_fine_tunes_with_the_zeros_held():
    torch.manual_seed(0)
    model = TokenClassifier()
    train_data, val = _token_data(600, 0), _token_data(200, 1)
    vdcore.train(model, train_data, val, vdcore.TrainConfig(epochs=5, batch_size=50, lr=1e-2))
    vdcore.sparsify_(model, vdcore.SVDConfig())
    assert isinstance(model.embed, vdcore.EmbeddingSVD) and isinstance(model.classifier, vdcore.LinearSVD)
    vdcore.train(model, train_data, val, vdcore.TrainConfig(epochs=30, batch_size=50, lr=1e-2))
    report = vdcore.sparsity_report(model)
    table = next(layer for layer in report.layers if layer.kind == "EmbeddingSVD")
    assert table.sparsity > 0.5, report
    pruned = vdcore.prune(model)
    assert type(pruned.embed) is nn.Embedding
    zeros = pruned.embed.weight == 0
    vdcore.finetune(pruned, train_data, val, vdcore.TrainConfig(epochs=2, batch_size=50, lr=1e-3))
    assert (pruned.embed.weight[zeros] == 0).all(), "the pruned entries stay zero"
    assert vdcore.evaluate(pruned, val) > 0.8


@pytest.fixture
def token_file(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    with torch.no_grad():
        model.embed.weight[:, [3, 7]] = 0  # two dead columns of the table
    path = tmp_path / "tokens.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, TOKENS, dtype=torch.long),), str(path), input_names=["tokens"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, dynamo=True)
    return path


def test_an_onnx_table_is_sparsified_written_back_and_its_dead_columns_cut(token_file, tmp_path):
    net = load_onnx(token_file)
    vdcore.sparsify_(net, vdcore.SVDConfig())
    assert any(isinstance(layer, vdcore.EmbeddingSVD) for layer in net.layers.values())
    with torch.no_grad():
        for _, layer in vdcore.svd_layers(net):
            layer.log_sigma2.add_(torch.randn_like(layer.log_sigma2) * 6)  # drop some entries
    assert write_onnx(net, tmp_path / "trained.onnx").max_abs_diff < 1e-4
    result = shrink_onnx(net)
    table = next(m for m in result.net.layers.values() if isinstance(m, nn.Embedding))
    assert table.embedding_dim <= 14, "the two dead columns went"
    assert max_difference(vdcore.prune(net), result.model, 5) < 1e-4
