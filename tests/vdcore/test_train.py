"""The training loop: schedules, reproducibility, stopping, and a real compression run on digits."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import vdcore
from vdcore import TrainConfig
from vdcore.data import load_digits
from vdcore.presets import lenet_300_100
from vdcore.spec import build_model


def test_schedules_follow_the_published_recipe_at_200_epochs():
    config = TrainConfig(epochs=200)
    assert [vdcore.kl_weight(e / 200, config) for e in (0, 5, 12.5, 20, 150)] == pytest.approx([0, 0, 0.5, 1, 1])
    assert [vdcore.learning_rate(e / 200, config) for e in (0, 100, 150, 200)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 0.0]
    )


def test_bad_configs_are_refused():
    for kwargs, message in [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"kl_warmup_start": 0.5, "kl_warmup_end": 0.2}, "warm-up"),
        ({"device": "tpu"}, "device"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    with pytest.raises(ValueError, match=r"unknown TrainConfig option\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


def _small_run(seed, loader=False, epochs=2):
    data = load_digits()
    torch.manual_seed(seed)
    model = vdcore.sparsify_(build_model(lenet_300_100((1, 8, 8))))
    train = data.train
    if loader:
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(TensorDataset(*data.train), batch_size=100, shuffle=True, generator=generator)
    history = vdcore.train(model, train, data.val, TrainConfig(epochs=epochs, seed=seed, device="cpu"))
    return model, history


def test_seeded_runs_are_reproducible_and_metrics_are_complete():
    (a, history_a), (b, history_b) = _small_run(3), _small_run(3)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [m.data_loss for m in history_a] == [m.data_loss for m in history_b]
    last = history_a[-1].to_dict()
    assert set(last) >= {"epoch", "data_loss", "kl", "kl_weight", "train_accuracy", "val_accuracy", "sparsity",
                         "seconds"}
    assert last["epoch"] == last["epochs"] == 2 and last["kl"] > 0


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    data = load_digits()
    config = TrainConfig(epochs=3, seed=5, device="cpu")

    def fresh_model():
        torch.manual_seed(0)
        return vdcore.sparsify_(build_model(lenet_300_100((1, 8, 8))))

    straight = fresh_model()
    straight_history = vdcore.train(straight, data.train, data.val, config)

    checkpoint = tmp_path / "run.ckpt"
    first = fresh_model()
    vdcore.train(first, data.train, data.val, config, checkpoint=checkpoint, should_stop=lambda: True)
    seen: list[int] = []
    resumed = fresh_model()  # a new process: nothing carried over but the file
    history = vdcore.train(
        resumed, data.train, data.val, config, on_epoch=lambda m: seen.append(m.epoch), checkpoint=checkpoint
    )
    assert seen == [2, 3]
    assert [m.data_loss for m in history] == [m.data_loss for m in straight_history]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    data = load_digits()
    checkpoint = tmp_path / "run.ckpt"
    model = vdcore.sparsify_(build_model(lenet_300_100((1, 8, 8))))
    vdcore.train(model, data.train, None, TrainConfig(epochs=1, device="cpu"), checkpoint=checkpoint)
    with pytest.raises(ValueError, match="other settings"):
        vdcore.train(model, data.train, None, TrainConfig(epochs=2, device="cpu"), checkpoint=checkpoint)


def test_dataloaders_are_accepted():
    _, history = _small_run(0, loader=True, epochs=1)
    assert 0 < history[0].train_accuracy <= 1


def test_should_stop_ends_training_after_the_epoch_it_answers_in():
    data = load_digits()
    model = build_model(lenet_300_100((1, 8, 8)))
    seen = []
    history = vdcore.train(
        model, data.train, None, TrainConfig(epochs=10), on_epoch=seen.append, should_stop=lambda: len(seen) == 2
    )
    assert len(history) == len(seen) == 2 and history[0].val_accuracy is None


def test_short_run_on_digits_prunes_most_weights_and_keeps_accuracy():
    data = load_digits()
    torch.manual_seed(0)
    model = build_model(lenet_300_100((1, 8, 8)))
    vdcore.train(model, data.train, data.val, TrainConfig(epochs=10, batch_size=50, lr=3e-3))
    dense_accuracy = vdcore.evaluate(model, data.val)

    vdcore.sparsify_(model)
    vdcore.train(model, data.train, data.val, TrainConfig(epochs=30, batch_size=50, lr=3e-3))
    report = vdcore.sparsity_report(model)
    accuracy = vdcore.evaluate(model, data.val)
    assert report.sparsity > 0.9, str(report)
    assert accuracy >= dense_accuracy - 0.06, (dense_accuracy, accuracy)  # 1200 training images: the KL weighs
    pruned = vdcore.prune(model)
    assert vdcore.evaluate(pruned, data.val) == accuracy
