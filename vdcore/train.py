"""The training loop: negative ELBO, KL warm-up, Adam with a linear learning-rate decay."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vdcore.config import TrainConfig
from vdcore.device import resolve_device
from vdcore.files import atomic_path
from vdcore.loss import elbo_loss
from vdcore.report import sparsity_report

Data = tuple[Tensor, Tensor] | DataLoader


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch did; ``train_accuracy`` is measured on the noisy training forward."""

    epoch: int
    epochs: int
    data_loss: float
    kl: float
    kl_weight: float
    lr: float
    train_accuracy: float
    val_accuracy: float | None
    sparsity: float
    compression: float
    seconds: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


OnEpoch = Callable[[EpochMetrics], None]
ShouldStop = Callable[[], bool]


def kl_weight(progress: float, config: TrainConfig) -> float:
    """KL weight at ``progress`` (fraction of training done): 0, then linear to 1, then 1."""
    start, end = config.kl_warmup_start, config.kl_warmup_end
    if progress >= end:
        return 1.0
    if progress <= start:
        return 0.0
    return (progress - start) / (end - start)


def learning_rate(progress: float, config: TrainConfig) -> float:
    """Learning rate at ``progress``: constant, then linear to 0 at the end of training."""
    if progress <= config.lr_decay_start:
        return config.lr
    return config.lr * max(0.0, (1 - progress) / (1 - config.lr_decay_start))


def _dataset_size(data: Data) -> int:
    if isinstance(data, DataLoader):
        return len(data.dataset)  # type: ignore[arg-type]
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    return len(x)


def _batches(data: Data, batch_size: int, device: torch.device, generator: torch.Generator | None
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches on ``device``; tensors are shuffled when a generator is given, loaders shuffle themselves."""
    if isinstance(data, DataLoader):
        for x, y in data:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    x, y = data
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 1000, device: torch.device | None = None) -> float:
    """Accuracy of ``model`` in eval mode (deterministic, masked weights); restores the mode it had."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in _batches(data, batch_size, device, generator=None):
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / total if total else float("nan")


def _rng_states(device: torch.device, generator: torch.Generator) -> dict[str, Tensor]:
    states = {"cpu": torch.get_rng_state(), "shuffle": generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, Tensor], device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(states["cpu"])
    generator.set_state(states["shuffle"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a run killed while writing leaves the previous checkpoint whole."""
    with atomic_path(path) as partial:
        torch.save(state, partial)


def _load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one; ``ValueError`` if it belongs to another run."""
    if not path.is_file():
        return None
    # weights_only: tensors, numbers, strings and containers only; nothing in the file can run code.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        raise ValueError(
            f"the checkpoint {path} was written by a run with other settings ({state.get('identity')}, now "
            f"{identity}); delete it to start over"
        )
    return state


def train(
    model: nn.Module,
    train: Data,
    val: Data | None = None,
    config: TrainConfig | None = None,
    on_epoch: OnEpoch | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    should_stop: ShouldStop | None = None,
) -> list[EpochMetrics]:
    """Train ``model`` on the negative ELBO and return the metrics of each epoch.

    ``train`` and ``val`` are ``(x, y)`` tensors or DataLoaders. ``on_epoch`` gets each epoch's metrics; then
    training stops early if ``should_stop()`` says so (the history is then shorter than ``config.epochs``). A
    model without Sparse VD layers trains on the data term alone, which is how a dense baseline is made. The
    model is moved to the configured device.

    With ``checkpoint`` (a file path), the model, optimizer, random states and history are saved there after
    every epoch, and a run that finds the file resumes after its last epoch: an interrupted run continued
    this way ends where an uninterrupted one would. The returned history then includes the earlier epochs,
    while ``on_epoch`` sees only the new ones.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    dataset_size = _dataset_size(train)
    if dataset_size == 0:
        raise ValueError("the training set is empty")
    steps_per_epoch = -(-dataset_size // config.batch_size) if isinstance(train, tuple) else len(train)
    total_steps = config.epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    history: list[EpochMetrics] = []
    step = start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    identity = {"config": asdict(config), "examples": dataset_size, "steps_per_epoch": steps_per_epoch}
    saved = _load_checkpoint(path, identity) if path is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        _set_rng_states(saved["rng"], device, generator)
        history = [EpochMetrics(**metrics) for metrics in saved["history"]]
        start = len(history)
        step = start * steps_per_epoch
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        model.train()
        # Sums stay on the device so that a GPU step never waits for the host.
        data_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        kl = torch.zeros(())
        seen = 0
        beta = lr = 0.0
        for x, y in _batches(train, config.batch_size, device, generator):
            progress = step / total_steps
            lr, beta = learning_rate(progress, config), kl_weight(progress, config)
            for group in optimizer.param_groups:
                group["lr"] = lr

            logits = model(x)
            loss, data_term, kl = elbo_loss(logits, y, model, dataset_size, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            data_sum += data_term.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
            step += 1

        report = sparsity_report(model)
        metrics = EpochMetrics(
            epoch=epoch + 1,
            epochs=config.epochs,
            data_loss=float(data_sum) / seen,
            kl=float(kl.detach()),
            kl_weight=beta,
            lr=lr,
            train_accuracy=float(correct) / seen,
            val_accuracy=evaluate(model, val, config.eval_batch_size, device) if val is not None else None,
            sparsity=report.sparsity,
            compression=report.compression,
            seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        if path is not None:
            _save_checkpoint(path, {
                "identity": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_states(device, generator),
                "history": [m.to_dict() for m in history],
            })
        if on_epoch is not None:
            on_epoch(metrics)
        if should_stop is not None and should_stop():
            break
    model.eval()
    return history
