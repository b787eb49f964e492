"""The threshold search picks what a brute-force sweep of thresholds would, on a small trained network."""

import numpy as np
import pytest
import torch
from torch import nn

import vdcore
from vdcore.data import load_digits
from vdcore.tradeoff import GRID, Objective, at_threshold, curve, measure, search, set_threshold_

FINE = tuple(float(t) for t in np.arange(-8.0, 8.0, 0.05))


@pytest.fixture(scope="module")
def trained():
    """A LeNet-like MLP on the digits, a few epochs of Sparse VD: log alphas spread over the threshold range."""
    torch.manual_seed(0)
    data = load_digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    vdcore.train(model, data.train, data.val, vdcore.TrainConfig(epochs=4, lr=1e-2, batch_size=50, device="cpu"))
    vdcore.sparsify_(model)
    vdcore.train(model, data.train, data.val, vdcore.TrainConfig(epochs=8, lr=1e-2, batch_size=50, device="cpu"))
    dense = vdcore.evaluate(model, data.val)
    return model.eval(), data.val, dense


def _brute_force(model, val):
    return [measure(model, val, t) for t in FINE]


@pytest.mark.parametrize("budget", [0.5, 2.0, 5.0])
def test_an_accuracy_budget_gets_the_most_compressed_network_within_it(trained, budget):
    model, val, dense = trained
    choice = search(model, val, Objective("max_accuracy_drop", budget), dense)
    feasible = [c for c in _brute_force(model, val) if 100 * (dense - c.accuracy) <= budget and c.nonzero]
    assert feasible, "the budget should be reachable on this network"
    assert choice.met and 100 * (dense - choice.chosen.accuracy) <= budget
    best_on_grid = max(c.compression for c in feasible if c.threshold in GRID or c.threshold >= max(GRID))
    assert choice.chosen.compression >= best_on_grid
    # The bisection lands within the fine sweep's best, short of what a lucky non-monotone point gives.
    assert choice.chosen.compression >= 0.9 * max(c.compression for c in feasible)


def test_a_compression_floor_gets_the_most_accurate_network_above_it(trained):
    model, val, dense = trained
    with at_threshold(model, 3.0):
        at_three = vdcore.sparsity_report(model).compression
    floor = 1.5 * at_three
    choice = search(model, val, Objective("min_compression", floor), dense)
    assert choice.met and choice.chosen.compression >= floor
    # Exactly the most accurate of the grid's feasible points and the floor's own threshold, measured one by one...
    exact = max(c.threshold for c in choice.candidates if c.compression >= floor)
    brute = [measure(model, val, t) for t in (*GRID, exact)]
    assert choice.chosen.accuracy == max(c.accuracy for c in brute if c.compression >= floor)
    # ...and within one standard error of a fine sweep's best: accuracy is not quite monotone in the threshold,
    # and a few of these 297 examples go either way between neighbouring thresholds.
    feasible = [c for c in _brute_force(model, val) if c.compression >= floor]
    best = max(c.accuracy for c in feasible)
    assert choice.chosen.accuracy >= best - (best * (1 - best) / len(val[1])) ** 0.5
    # The chosen threshold is the highest one that reaches the floor: a little higher and it does not.
    with at_threshold(model, choice.chosen.threshold + 1e-3):
        assert vdcore.sparsity_report(model).compression < floor


def test_an_objective_out_of_reach_ships_the_closest_network_and_says_by_how_much(trained):
    model, val, dense = trained
    choice = search(model, val, Objective("min_compression", 1e6), dense)
    assert not choice.met
    most = max(c.compression for c in choice.candidates)
    assert choice.chosen.compression == most and choice.shortfall == pytest.approx(1e6 - most)


def test_the_curve_around_a_given_threshold_and_the_threshold_made_the_layers_own(trained):
    model, val, _ = trained
    choice = curve(model, val, 3.0)
    assert choice.objective is None and choice.met and choice.chosen.threshold == 3.0
    thresholds = [c.threshold for c in choice.candidates]
    assert thresholds == sorted(thresholds) and 3.0 in thresholds
    compressions = [c.compression for c in choice.candidates]
    assert compressions == sorted(compressions, reverse=True), "a lower threshold only drops more"
    assert all(layer.threshold == 3.0 for _, layer in vdcore.svd_layers(model)), "measuring changes nothing"
    point = next(c for c in choice.candidates if c.threshold == 1.0)
    pruned = vdcore.prune(set_threshold_(model, 1.0))
    try:
        assert vdcore.sparsity_report(pruned).nonzero == point.nonzero
        assert vdcore.evaluate(pruned, val) == pytest.approx(point.accuracy)
    finally:
        set_threshold_(model, 3.0)


def test_objectives_refuse_budgets_that_mean_nothing():
    with pytest.raises(ValueError, match="0 to 100"):
        Objective("max_accuracy_drop", -1)
    with pytest.raises(ValueError, match="1 or more"):
        Objective("min_compression", 0.5)
