"""The threshold search picks what a brute-force sweep of thresholds would, on a small trained network."""

import numpy as np
import pytest
import torch
from torch import nn

import vdcore
from vdcore.data import load_digits
from vdcore.deployed import deploy
from vdcore.tradeoff import (
    BISECTIONS,
    CURVE_EXPORTS,
    GRID,
    Objective,
    at_threshold,
    curve,
    measure,
    search,
    set_threshold_,
)

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


@pytest.fixture(scope="module")
def deployer():
    example = load_digits().x[:1]
    return lambda model, batch: deploy(model, example, batch)


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
    with pytest.raises(ValueError, match="must be above 0"):
        Objective("max_file_bytes", 0)
    with pytest.raises(ValueError, match="batch of 1 or more"):
        Objective("max_latency_ms", 1.0, batch=0)


def test_a_file_budget_gets_the_most_accurate_network_that_fits_exporting_few(trained, deployer):
    model, val, dense = trained
    brute = []
    for threshold in GRID[::3]:  # every third: each export takes about a second
        with at_threshold(model, threshold):
            brute.append((measure(model, val, threshold), deployer(model, 1)))
    sizes = [deployed.file_bytes for _, deployed in brute]
    assert sizes == sorted(sizes), "the shipped file only shrinks as the threshold falls"
    budget = sorted(set(sizes))[len(set(sizes)) // 2]
    choice = search(model, val, Objective("max_file_bytes", budget), dense, deploy=deployer)
    assert choice.met and choice.chosen.deployed.file_bytes <= budget
    assert choice.chosen.accuracy >= max(c.accuracy for c, d in brute if d.file_bytes <= budget and c.nonzero)
    exported = [c for c in choice.candidates if c.deployed is not None]
    assert len(exported) <= 6 + BISECTIONS + CURVE_EXPORTS < len(GRID), "a bisection, not every threshold"
    without_curve = search(model, val, Objective("max_file_bytes", budget), dense, deploy=deployer, exports=0)
    assert without_curve.chosen == next(c for c in without_curve.candidates if c.threshold == choice.chosen.threshold)
    assert without_curve.met and without_curve.chosen.threshold == choice.chosen.threshold


def test_a_latency_budget_is_met_by_the_most_accurate_network_or_missed_by_the_smallest(trained, deployer):
    model, val, dense = trained
    generous = search(model, val, Objective("max_latency_ms", 1e3, batch=4), dense, deploy=deployer)
    assert generous.met and generous.chosen.accuracy == max(c.accuracy for c in generous.candidates)
    assert generous.chosen.deployed.batch == 4
    impossible = search(model, val, Objective("max_latency_ms", 1e-9), dense, deploy=deployer)
    assert not impossible.met and impossible.chosen.threshold == impossible.candidates[0].threshold
    assert impossible.shortfall == pytest.approx(impossible.chosen.deployed.latency_ms - 1e-9)
    with pytest.raises(ValueError, match="judged on exported networks: give deploy"):
        search(model, val, Objective("max_file_bytes", 1e4), dense)


def test_a_curve_exports_a_few_of_its_points(trained, deployer):
    model, val, _ = trained
    choice = curve(model, val, 3.0, deploy=deployer)
    exported = [c for c in choice.candidates if c.deployed is not None]
    assert choice.chosen in exported and len(exported) == CURVE_EXPORTS == 3
    assert exported[0] == choice.candidates[0] and exported[-1] == choice.candidates[-1], "both ends of the curve"
    assert all(c.deployed is None for c in curve(model, val, 3.0, deploy=deployer, exports=0).candidates)
    assert all(c.deployed.file_bytes > 0 and c.deployed.latency_ms > 0 for c in exported)
