"""Early stop: training ends once the objective's pick is met and stops improving, and only then."""

import pytest
import torch
from torch import nn

import vdcore
from recipe.early_stop import EarlyStop
from recipe.options import JobOptions
from recipe.pipeline import JobInput, run
from recipe.progress import Stage
from vdcore.data import load_digits
from vdcore.tradeoff import Objective


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    vdcore.sparsify_(model)
    vdcore.train(model, data.train, data.val, vdcore.TrainConfig(epochs=3, lr=1e-2, batch_size=50, device="cpu"))
    return model.eval(), data.val, vdcore.evaluate(model, data.val)


def test_it_stops_after_patience_epochs_without_gain_once_the_objective_is_met(trained):
    model, val, dense = trained
    monitor = EarlyStop(Objective("max_accuracy_drop", 100), dense, val, patience=2)
    # The same network every "epoch": the first sets the best, the next two bring nothing.
    assert [monitor.after_epoch(model, epoch) for epoch in (1, 2, 3)] == [False, False, True]
    assert monitor.stopped_after == 3


def test_it_never_stops_while_the_objective_is_missed(trained):
    model, val, dense = trained
    monitor = EarlyStop(Objective("min_compression", 1e6), dense, val, patience=1)
    assert not any(monitor.after_epoch(model, epoch) for epoch in range(1, 5))
    assert monitor.stopped_after is None


def test_a_job_reports_the_epochs_it_saved(tmp_path):
    options = JobOptions(epochs=12, pretrain_epochs=2, finetune_epochs=1, batch_size=50, lr=1e-2, device="cpu",
                         min_compression=1.0, early_stop_patience=1)
    report = run(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=options), tmp_path)
    stop = report.early_stop
    assert stop.patience == 1 and stop.stopped_after_epoch is not None and stop.stopped_after_epoch < 12
    assert stop.epochs_saved == 12 - stop.stopped_after_epoch
    assert len(report.history[Stage.TRAINING]) == stop.stopped_after_epoch
    assert report.tradeoff.met is not None, "the final choice is made as in any job, after the stop"
