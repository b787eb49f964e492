"""The compression pipeline without any queue: inputs checked, artifacts written, report honest."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import vdcore
from recipe.options import JobOptions
from recipe.pipeline import (
    ARTIFACTS,
    Cancelled,
    JobError,
    JobInput,
    _start_from_scratch,
    prepare,
    run,
)
from recipe.progress import TRAINING_STAGES, Progress, Stage
from recipe.report import ModelFacts, Report
from vdcore.data import load_digits
from vdcore.export import onnx_session
from vdcore.layout import export_fastest
from vdcore.presets import lenet_5_caffe, lenet_300_100
from vdcore.shrink import GatherInput, layer_widths
from vdcore.spec import build_model
from vdcore.weights import save_weights

FAST = JobOptions(epochs=4, pretrain_epochs=2, finetune_epochs=2, batch_size=50, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    events = []
    report = run(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=FAST), out,
                 on_progress=events.append)
    return out, report, events


def test_artifacts_and_report(finished):
    out, report, _ = finished
    assert report.plots == ["training_curves.png", "layer_sparsity.png", "tradeoff.png", "input_relevance.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*ARTIFACTS, *report.plots])
    assert Report.model_validate_json((out / "report.json").read_text()) == report
    assert report.model == ModelFacts(input_shape=[1, 8, 8], num_classes=10, parameters=50_610)
    assert report.weights.before == 50_200
    assert report.compression == pytest.approx(50_200 / report.weights.nonzero_after)
    assert [layer.weights for layer in report.layers] == [19_200, 30_000, 1_000]
    assert report.units.before == [300, 100, 10]
    assert set(report.latency) == {"batch_1", "batch_100"}
    assert report.files["model.onnx"].bytes == (out / "model.onnx").stat().st_size
    history = report.history
    assert [len(history[stage]) for stage in TRAINING_STAGES] == [2, 4, 2]
    assert report.compression == pytest.approx(history[Stage.FINETUNING][-1].compression)
    assert report.compression == pytest.approx(history[Stage.TRAINING][-1].compression), "fine-tuning keeps zeros"


def test_report_json_keeps_its_fields_and_plain_json(finished):
    """The typed report writes the JSON the dict literal wrote: the same fields, stages as plain strings."""
    out, _, _ = finished
    written = json.loads((out / "report.json").read_text())
    assert list(written) == [
        "model", "dataset", "options", "device", "accuracy", "compression", "sparsity", "weights", "units",
        "input_gather", "channel_multiple", "layers", "files", "onnx_parity_max_abs_diff", "latency", "history",
        "resumed_after_epoch", "timings", "plots", "notes", "tradeoff", "test_accuracy",
        "early_stop",
    ]
    assert written["notes"] == []
    assert written["options"] == FAST.model_dump()
    assert list(written["history"]) == ["pretraining", "training", "finetuning"]
    per_job = {"stage", "eta_seconds", "reason", "objective_met", "objective_shortfall"}
    assert set(written["history"]["training"][0]) == set(Progress.model_fields) - per_job
    assert written["latency"]["batch_1"].keys() == {"baseline_ms", "compressed_ms", "speedup"}
    assert written["files"]["model.onnx"].keys() == {"bytes", "gzip_bytes"}


def test_every_job_measures_the_tradeoff_curve_around_its_threshold(finished):
    _, report, events = finished
    tradeoff = report.tradeoff
    assert tradeoff.objective is None and tradeoff.met is None and tradeoff.chosen.threshold == FAST.threshold
    assert tradeoff.chosen.compression == pytest.approx(report.history[Stage.TRAINING][-1].compression)
    assert len(tradeoff.candidates) > 20 and all(p.nonzero for p in tradeoff.candidates)
    assert all(e.objective_met is None for e in events)
    exported = [p for p in tradeoff.candidates if p.latency_ms is not None]
    assert tradeoff.chosen in exported and len(exported) == 3 and tradeoff.latency_batch == 1
    assert all(p.file_bytes > 0 for p in exported)


def test_a_file_budget_ships_the_most_accurate_network_whose_file_fits(tmp_path):
    options = FAST.model_copy(update={"epochs": 8, "pretrain_epochs": 4, "lr": 1e-2, "max_file_bytes": 190_000})
    report = run(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=options), tmp_path)
    tradeoff = report.tradeoff
    assert (tradeoff.objective, tradeoff.value) == ("max_file_bytes", 190_000)
    assert tradeoff.chosen.file_bytes <= 190_000 < report.files["baseline.onnx"].bytes
    shipped = (tmp_path / "model.onnx").stat().st_size
    assert shipped == report.files["model.onnx"].bytes
    assert tradeoff.met == (shipped <= 190_000) and tradeoff.shortfall == max(0, shipped - 190_000)
    over = [p for p in tradeoff.candidates if p.file_bytes is not None and p.file_bytes > 190_000]
    assert over, "the search exported a network over the budget on its way to the edge"
    assert tradeoff.chosen.threshold < min(p.threshold for p in over)


def test_an_accuracy_budget_picks_the_threshold_and_the_job_says_whether_it_met_it(tmp_path):
    options = FAST.model_copy(update={"epochs": 8, "pretrain_epochs": 4, "lr": 1e-2, "max_accuracy_drop": 6.0})
    events = []
    report = run(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=options), tmp_path,
                 on_progress=events.append)
    tradeoff = report.tradeoff
    assert (tradeoff.objective, tradeoff.value) == ("max_accuracy_drop", 6.0)
    passing = [p for p in tradeoff.candidates if 100 * (report.accuracy.before - p.accuracy) <= 6.0]
    assert tradeoff.chosen.compression == max(p.compression for p in passing)
    assert tradeoff.chosen.threshold != FAST.threshold or len(passing) == 1
    drop = 100 * (report.accuracy.before - report.accuracy.after)
    assert tradeoff.met == (drop <= 6.0) and tradeoff.shortfall == pytest.approx(max(0.0, drop - 6.0))
    assert report.compression == pytest.approx(tradeoff.chosen.compression), "fine-tuning keeps the pick's zeros"
    assert (events[-1].objective_met, events[-1].objective_shortfall) == (tradeoff.met, tradeoff.shortfall)
    assert "tradeoff.png" in report.plots and (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert 0 < tradeoff.search_s < report.timings["total_s"]


def test_exported_model_has_the_reported_accuracy_in_onnxruntime(finished):
    """Validation and test figures both, from the split each names: the choice never saw the test digits."""
    out, report, _ = finished
    data = load_digits()
    assert (report.accuracy.measured_on, report.test_accuracy.measured_on) == ("validation", "test")
    assert (report.dataset.val_examples, report.dataset.test_examples) == (300, 297)
    for split, accuracy in ((data.val, report.accuracy), (data.test, report.test_accuracy)):
        for name, key in (("model.onnx", "after"), ("baseline.onnx", "before")):
            logits = onnx_session(out / name).run(None, {"input": split[0].numpy()})[0]
            measured = float(np.mean(logits.argmax(1) == split[1].numpy()))
            assert measured == pytest.approx(getattr(accuracy, key), abs=1e-9)


def test_export_fastest_times_both_forms_and_keeps_one(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)).eval()
    with torch.no_grad():
        net[1].weight[:, ::3] = 0  # a third of the pixels unread: a Gather could drop them
    example = torch.randn(1, 1, 28, 28)
    baseline = vdcore.export_onnx(net, tmp_path / "baseline.onnx", example)
    fastest = export_fastest(net, example, baseline, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.onnx", "model.onnx"]
    assert fastest.export.path == tmp_path / "model.onnx"
    ops = {node.op_type for node in onnx.load(fastest.export.path).graph.node}
    assert ("Gather" in ops) == fastest.input_gather == any(isinstance(m, GatherInput) for m in fastest.model)
    assert fastest.channel_multiple == 1  # no convolution to pad
    latency = fastest.latency
    assert set(latency) == {"batch_1", "batch_100"} and all(row["speedup"] > 0 for row in latency.values())
    x = torch.randn(5, 1, 28, 28)
    logits = onnx_session(fastest.export.path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(logits, net(x).detach().numpy(), atol=1e-4)


def test_export_fastest_reports_the_units_shrink_kept_whatever_padding_won(tmp_path):
    net = build_model(lenet_5_caffe())
    with torch.no_grad():
        net[0].weight[11:] = 0  # 11 filters left: the padded forms (16) are timed beside it
    example = torch.randn(1, 1, 28, 28)
    baseline = vdcore.export_onnx(net, tmp_path / "baseline.onnx", example)
    fastest = export_fastest(net, example, baseline, tmp_path)
    assert fastest.units == [11, 50, 500, 10]
    assert fastest.channel_multiple in (1, 8, 16)
    assert layer_widths(fastest.model)[0] == (11 if fastest.channel_multiple == 1 else 16)
    x = torch.randn(5, 1, 28, 28)
    logits = onnx_session(fastest.export.path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(logits, net(x).detach().numpy(), atol=1e-4)


def test_the_faster_of_the_two_shrunk_forms_is_kept(finished):
    """With and without a leading Gather of the read pixels: the report says which one model.onnx is."""
    out, report, _ = finished
    ops = {node.op_type for node in onnx.load(out / "model.onnx").graph.node}
    assert ("Gather" in ops) == report.input_gather


def test_progress_events(finished):
    _, _, events = finished
    stages = [e.stage for e in events if e.epoch is None]
    assert stages == ["pretraining", "training", "finetuning", "exporting", "measuring"]
    epochs = [e for e in events if e.stage == Stage.TRAINING and e.epoch is not None]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4] and all(e.sparsity is not None for e in epochs)


def test_progress_counts_down_to_the_end_of_training(finished):
    """The ETA of an epoch event counts the epochs left in its stage and in the training stages after it."""
    _, _, events = finished
    left = {(e.stage, e.epoch): e.eta_seconds / e.seconds for e in events if e.epoch is not None}
    assert left[Stage.PRETRAINING, 1] == pytest.approx(1 + 4 + 2)
    assert left[Stage.TRAINING, 1] == pytest.approx(3 + 2)
    assert left[Stage.FINETUNING, 2] == pytest.approx(0)


def test_cancel_stops_during_training(tmp_path):
    events = []

    def cancel_at_first_training_epoch():
        return events[-1].stage == Stage.TRAINING and events[-1].epoch == 1

    job = JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=FAST)
    with pytest.raises(Cancelled):
        run(job, tmp_path, on_progress=events.append, should_stop=cancel_at_first_training_epoch)
    assert events[-1].epoch == 1, "the run stopped after the epoch that was answered"
    assert not (tmp_path / "model.onnx").exists()


def test_cancel_stops_as_a_stage_starts(tmp_path):
    events = []
    job = JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=FAST)
    with pytest.raises(Cancelled):
        run(job, tmp_path, on_progress=events.append, should_stop=lambda: True)
    assert events == [Progress(stage=Stage.PRETRAINING)]


def test_user_weights_and_npz_dataset(tmp_path):
    spec = {
        "input_shape": [64],
        "num_classes": 10,
        "layers": [{"type": "linear", "out_features": 32}, {"type": "relu"}, {"type": "linear", "out_features": 10}],
    }
    torch.manual_seed(0)
    save_weights(build_model(spec), tmp_path / "w.safetensors")
    data = load_digits()
    np.savez(tmp_path / "d.npz", x=data.x.reshape(-1, 64).numpy(), y=data.y.numpy())
    job = JobInput({"spec": spec}, {"npz": str(tmp_path / "d.npz")}, str(tmp_path / "w.safetensors"), FAST)
    report = run(job, tmp_path / "out")
    assert report.history[Stage.PRETRAINING] == []  # weights given: no dense pretraining
    assert report.dataset.val_examples == 120  # 10% held out
    assert report.test_accuracy is None and report.dataset.test_examples == 0


@pytest.mark.parametrize(
    ("model", "dataset", "message"),
    [
        ({"preset": "lenet-5-caffe"}, {"builtin": "digits"}, "larger than the padded input"),
        ({"preset": "lenet-300-100", "input_shape": [1, 28, 28]}, {"builtin": "digits"}, r"shape \[1, 8, 8\]"),
        ({"preset": "lenet-300-100", "num_classes": 5}, {"builtin": "digits"}, "labels go up to 9"),
        ({"preset": "x", "spec": {}}, {"builtin": "digits"}, "preset"),
        ({"spec": "lenet"}, {"builtin": "digits"}, "must be an object"),
        ({"preset": "lenet-300-100"}, {"builtin": "cifar"}, "unknown built-in dataset"),
        ({"preset": "lenet-300-100"}, {"url": "http://x"}, "unknown dataset kind"),
    ],
)
def test_prepare_refuses_what_does_not_fit(model, dataset, message):
    with pytest.raises(JobError, match=message):
        prepare(JobInput(model, dataset))


def test_an_objective_needs_validation_data(tmp_path):
    data = load_digits()
    np.savez(tmp_path / "data.npz", x=data.x.numpy(), y=data.y.numpy())  # no x_val, y_val
    options = JobOptions(max_accuracy_drop=0.5, val_fraction=0.0)
    with pytest.raises(JobError, match="max_accuracy_drop is met on validation data, and this job has none: set "
                                       "val_fraction above 0"):
        prepare(JobInput({"preset": "lenet-300-100"}, {"npz": str(tmp_path / "data.npz")}, options=options))
    assert prepare(JobInput({"preset": "lenet-300-100"}, {"npz": str(tmp_path / "data.npz")},
                            options=options.model_copy(update={"val_fraction": 0.1}))).dataset.val is not None


def test_prepare_checks_weights_against_the_model(tmp_path):
    save_weights(build_model({"preset": "lenet-300-100"}), tmp_path / "w.safetensors")  # 28x28 weights
    with pytest.raises(JobError, match="has shape"):
        prepare(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, str(tmp_path / "w.safetensors")))


def test_untrained_weights_start_from_the_published_variances():
    model = vdcore.sparsify_(build_model(lenet_300_100((1, 8, 8))))
    _start_from_scratch(model)
    for _, layer in vdcore.svd_layers(model):
        assert torch.all(layer.log_sigma2 == layer.init_log_sigma2)


def test_structured_job_drops_units_and_its_onnx_has_the_reported_accuracy(tmp_path):
    options = JobOptions(epochs=8, pretrain_epochs=2, batch_size=50, lr=3e-3, device="cpu", structured=True,
                         finetune_epochs=2)
    assert options.svd_config().granularity == "weight+unit"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on shared cores: a second thread mostly waits
    try:
        report = run(JobInput({"preset": "lenet-300-100"}, {"builtin": "digits"}, options=options), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert report.options.structured is True
    assert report.channel_multiple in (1, 8, 16)
    before, after = report.units.before, report.units.after
    assert before == [300, 100, 10] and after[-1] == 10
    assert all(kept <= total for kept, total in zip(after, before, strict=True)) and sum(after) < sum(before)
    trained = report.history[Stage.TRAINING][-1].compression
    assert trained > 2, "the weights keep their own rates: a structured job compresses too"
    assert report.compression < trained, "fine-tuning that holds only units trains the kept units' zeros"
    data = load_digits()
    logits = onnx_session(tmp_path / "model.onnx").run(None, {"input": data.x_val.numpy()})[0]
    assert float(np.mean(logits.argmax(1) == data.y_val.numpy())) == pytest.approx(report.accuracy.after)
