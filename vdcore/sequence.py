"""Recurrent layers inside an ``nn.Sequential``, and cutting their dead hidden units and unread inputs.

``RecurrentFeatures`` turns a recurrent layer's output sequence into one vector per example, so that a sequence
classifier is a plain stack (``[embedding or image rows,] recurrent features, linear``) that specs build and
``shrink`` traces.

A hidden unit of an LSTM or GRU goes when nothing reads it: its column of the recurrent weights and the next
layer's weights on it are all zero. A unit of the last recurrent layer whose gates have no incoming weights and
which no recurrence reads follows the same trajectory on every input; what it delivers to the classifier is a
constant, folded into the classifier's bias. One ``nn.LSTM`` has one hidden size for all its layers and
directions, so each loses as many units as the one with the fewest to lose.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from vdcore.layers import weight_suffix
from vdcore.rebuild import rebuilt

Reduce = Literal["last", "mean"]
REDUCTIONS: tuple[Reduce, ...] = ("last", "mean")
Recurrent = nn.LSTM | nn.GRU
# Layers that act on each feature on its own, so a recurrent layer's units reach the classifier by index.
ELEMENTWISE: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Tanh, nn.Dropout, nn.Identity)


class ImageRows(nn.Module):
    """An image batch ``(N, C, H, W)`` as sequences of its ``H`` rows, each of ``C * W`` values: how a recurrent
    classifier reads an image (row-by-row MNIST: 28 steps of 28 pixels)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 1, 3).flatten(2)


class RecurrentFeatures(nn.Module):
    """A batch-first recurrent layer whose output is one vector per example: the last layer's final hidden state
    (both directions', forward first, for a bidirectional layer; ``reduce="last"``) or its outputs averaged over
    the steps (``"mean"``). Holds ``nn.LSTM``, ``nn.GRU`` or their Sparse VD twins (``sparsify_`` swaps it).

    Shape:
        Input ``(N, steps, input_size)``; output ``(N, hidden_size * directions)``.
    """

    def __init__(self, rnn: nn.Module, reduce: Reduce = "last") -> None:
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
        if not getattr(rnn, "batch_first", False):
            raise ValueError("RecurrentFeatures needs a batch-first recurrent layer (batch_first=True)")
        self.rnn, self.reduce = rnn, reduce

    def forward(self, x: Tensor) -> Tensor:
        out, state = self.rnn(x)
        if self.reduce == "mean":
            return out.mean(dim=1)
        h = state[0] if isinstance(state, tuple) else state
        return h[-_directions(self.rnn):].transpose(0, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}"


def _directions(rnn: nn.Module) -> int:
    return 2 if rnn.bidirectional else 1


def _gates(rnn: Recurrent) -> int:
    return 4 if isinstance(rnn, nn.LSTM) else 3


@torch.no_grad()
def shrink_recurrent(layers: list[nn.Module], x: Tensor) -> bool:
    """Cut the dead hidden units of each ``RecurrentFeatures`` in ``layers`` (a flat, pruned stack run on the
    example batch ``x``) and the embedding columns it does not read, in place; whether anything went."""
    changed = False
    for index in range(len(layers)):
        if isinstance(layers[index], RecurrentFeatures) and isinstance(layers[index].rnn, Recurrent):
            block_input = x
            for layer in layers[:index]:
                block_input = layer(block_input)
            changed |= _shrink_units(layers, index, block_input)
            changed |= _shrink_embedding(layers, index)
    return changed


def _reader(layers: list[nn.Module], index: int) -> int | None:
    """The Linear reading the features of ``layers[index]`` by index (only elementwise layers between)."""
    for later in range(index + 1, len(layers)):
        if isinstance(layers[later], nn.Linear):
            return later
        if type(layers[later]) not in ELEMENTWISE:
            return None
    return None


def _gate_rows(units: Tensor, hidden: int, gates: int) -> Tensor:
    """The weight rows of ``units`` in every gate block."""
    return torch.cat([g * hidden + units for g in range(gates)])


def _shrink_units(layers: list[nn.Module], index: int, block_input: Tensor) -> bool:
    block = layers[index]
    assert isinstance(block, RecurrentFeatures)
    rnn = block.rnn
    hidden, gates, directions = rnn.hidden_size, _gates(rnn), _directions(rnn)
    reader_index = _reader(layers, index)
    reader = layers[reader_index] if reader_index is not None else None
    out = block(block_input)
    for later in layers[index + 1:reader_index]:
        out = later(out)
    removable: dict[tuple[int, int], Tensor] = {}
    folds: dict[tuple[int, int], Tensor] = {}
    for layer in range(rnn.num_layers):
        for direction in range(directions):
            suffix, units = weight_suffix(layer, direction), slice(direction * hidden, (direction + 1) * hidden)
            w_ih, w_hh = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "weight_hh" + suffix)
            unread = (w_hh == 0).all(dim=0)
            if layer + 1 < rnn.num_layers:
                for d2 in range(directions):
                    unread &= (getattr(rnn, "weight_ih" + weight_suffix(layer + 1, d2))[:, units] == 0).all(dim=0)
                fold = torch.zeros_like(unread)
            elif reader is not None:
                unread &= (reader.weight[:, units] == 0).all(dim=0)
                no_inputs = ((w_ih == 0).all(dim=1) & (w_hh == 0).all(dim=1)).view(gates, hidden).all(dim=0)
                fold = no_inputs & (w_hh == 0).all(dim=0) & ~unread
            else:
                unread, fold = torch.zeros_like(unread), torch.zeros_like(unread)
            removable[layer, direction], folds[layer, direction] = unread | fold, fold
    count = min(int(r.sum()) for r in removable.values())
    count = min(count, hidden - 1)  # keep a unit, so that no layer is empty
    if count == 0:
        return False
    keep: dict[tuple[int, int], Tensor] = {}
    for key, remove in removable.items():
        # Drop the first ``count`` removable units; folding one adds its constant to the classifier's bias.
        dropped = torch.nonzero(remove).flatten()[:count]
        kept = torch.ones(hidden, dtype=torch.bool, device=remove.device)
        kept[dropped] = False
        keep[key] = torch.nonzero(kept).flatten()
        if reader is not None and key[0] == rnn.num_layers - 1:
            folded = dropped[folds[key][dropped]] + key[1] * hidden
            if folded.numel():
                shift = reader.weight[:, folded] @ out[0, folded]
                if reader.bias is None:
                    reader.bias = nn.Parameter(shift)
                else:
                    reader.bias.add_(shift)
    layers[index] = RecurrentFeatures(_rebuilt(rnn, keep, torch.arange(rnn.input_size)), block.reduce)
    if reader is not None:
        columns = torch.cat([d * hidden + keep[rnn.num_layers - 1, d] for d in range(directions)])
        layers[reader_index] = rebuilt(reader, reader.weight[:, columns], reader.bias)
    return True


def _shrink_embedding(layers: list[nn.Module], index: int) -> bool:
    """Drop the columns of the embedding right before ``layers[index]`` that are zero or that it never reads."""
    table = layers[index - 1] if index > 0 else None
    if not isinstance(table, nn.Embedding):
        return False
    block = layers[index]
    rnn = block.rnn
    unread = torch.ones(rnn.input_size, dtype=torch.bool, device=table.weight.device)
    for direction in range(_directions(rnn)):
        unread &= (getattr(rnn, "weight_ih" + weight_suffix(0, direction)) == 0).all(dim=0)
    remove = unread | (table.weight == 0).all(dim=0)  # a zero column adds nothing wherever it is read
    if not remove.any() or remove.all():
        return False
    columns = torch.nonzero(~remove).flatten()
    keep = {(layer, d): torch.arange(rnn.hidden_size) for layer in range(rnn.num_layers)
            for d in range(_directions(rnn))}
    smaller = skip_init(nn.Embedding, table.num_embeddings, columns.numel(), padding_idx=table.padding_idx,
                        device=table.weight.device, dtype=table.weight.dtype)
    smaller.weight.copy_(table.weight[:, columns])
    layers[index - 1] = smaller.eval()
    layers[index] = RecurrentFeatures(_rebuilt(rnn, keep, columns), block.reduce)
    return True


def _rebuilt(rnn: Recurrent, keep: dict[tuple[int, int], Tensor], inputs: Tensor) -> Recurrent:
    """``rnn`` with only the hidden units in ``keep`` (per layer and direction, equally many) and the input
    features ``inputs`` of its first layer."""
    hidden, gates, directions = rnn.hidden_size, _gates(rnn), _directions(rnn)
    width = next(iter(keep.values())).numel()
    new = type(rnn)(input_size=inputs.numel(), hidden_size=width, num_layers=rnn.num_layers, bias=rnn.bias,
                    batch_first=True, dropout=rnn.dropout, bidirectional=rnn.bidirectional,
                    device=rnn.weight_ih_l0.device, dtype=rnn.weight_ih_l0.dtype)
    for layer in range(rnn.num_layers):
        columns = inputs if layer == 0 else torch.cat([d * hidden + keep[layer - 1, d] for d in range(directions)])
        for direction in range(directions):
            suffix, units = weight_suffix(layer, direction), keep[layer, direction]
            rows = _gate_rows(units, hidden, gates)
            getattr(new, "weight_ih" + suffix).copy_(getattr(rnn, "weight_ih" + suffix)[rows][:, columns])
            getattr(new, "weight_hh" + suffix).copy_(getattr(rnn, "weight_hh" + suffix)[rows][:, units])
            if rnn.bias:
                for kind in ("bias_ih", "bias_hh"):
                    getattr(new, kind + suffix).copy_(getattr(rnn, kind + suffix)[rows])
    return new.eval()
