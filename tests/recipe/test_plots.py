from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from recipe.plots import draw_plots, input_relevance
from recipe.progress import Stage
from recipe.report import LayerFacts, Units
from vdcore.train import EpochMetrics

PNG = b"\x89PNG\r\n\x1a\n"


def _row(epoch: int, val: float | None = 0.8, kl: float | None = None) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch, epochs=4, data_loss=1.0 / epoch, kl=1000.0 / epoch if kl is None else kl,
        kl_weight=min(1.0, epoch / 3), lr=1e-3, train_accuracy=0.5 + epoch / 20, val_accuracy=val,
        sparsity=1 - 1 / epoch, compression=float(epoch), seconds=1.0,
    )


LAYERS = [
    LayerFacts(name="1", kind="Linear", shape=[16, 64], weights=1024, nonzero=40, sparsity=1 - 40 / 1024),
    LayerFacts(name="3", kind="Linear", shape=[10, 16], weights=160, nonzero=0, sparsity=1.0),
]
UNITS = Units(before=[16, 10], after=[5, 10])


def _plots(pretraining: list[EpochMetrics], training: list[EpochMetrics], model: nn.Module, shape: tuple,
           out: Path) -> list[str]:
    history = {Stage.PRETRAINING: pretraining, Stage.TRAINING: training}
    return draw_plots(history, LAYERS, UNITS, model, shape, out)


def _pruned() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        border = torch.ones(8, 8, dtype=torch.bool)
        border[2:6, 2:6] = False
        model[1].weight[:, border.flatten()] = 0  # only the centre 4x4 pixels are read
    return model


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG)
    assert len(data) > 5_000


def test_draws_all_three_plots_for_an_image(tmp_path: Path) -> None:
    names = _plots([_row(e) for e in (1, 2)], [_row(e) for e in (1, 2, 3, 4)], _pruned(), (1, 8, 8), tmp_path)
    assert names == ["training_curves.png", "layer_sparsity.png", "input_relevance.png"]
    for name in names:
        _check_png(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files left


def test_relevance_counts_nonzero_columns() -> None:
    relevance = input_relevance(_pruned(), (1, 8, 8))
    assert relevance is not None and relevance.shape == (8, 8)
    assert (relevance[0] == 0).all() and (relevance[:, 0] == 0).all()
    assert (relevance[2:6, 2:6] == 16).all()


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), (64,)),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10)), (1, 8, 8)),
        (nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)), (1, 8, 8)),
    ],
    ids=["vector-input", "conv-first", "pool-before-linear"],
)
def test_no_relevance_plot_without_per_pixel_first_layer(tmp_path: Path, model: nn.Module, shape: tuple) -> None:
    names = _plots([], [_row(1), _row(2)], model, shape, tmp_path)
    assert names == ["training_curves.png", "layer_sparsity.png"]
    assert not (tmp_path / "input_relevance.png").exists()


def test_empty_pretraining_and_missing_validation(tmp_path: Path) -> None:
    names = _plots([], [_row(e, val=None) for e in (1, 2, 3)], _pruned(), (1, 8, 8), tmp_path / "new")
    for name in names:
        _check_png(tmp_path / "new" / name)


def test_single_epoch_with_zero_kl(tmp_path: Path) -> None:
    row = _row(1, kl=0.0)
    names = _plots([row], [row], _pruned(), (1, 8, 8), tmp_path)
    assert "training_curves.png" in names
    _check_png(tmp_path / "training_curves.png")
