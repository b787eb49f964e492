"""LSTM and GRU layers with Sparse Variational Dropout on their input-to-hidden and hidden-to-hidden weights.

A recurrent layer applies the same weights at every step, so a weight sample must be the same at every step of
a sequence too: noise drawn afresh per step (what the local reparameterization of a linear layer amounts to here)
would be a different network at each step, not a sample of one, and would wash out over long sequences. Each
sequence therefore gets one sample of every weight, shared across its steps, and its own: with one sample per
batch the gradient noise would not shrink with the batch size.

A full weight sample per sequence would cost a batch of weight matrices at every step. Flipout (Wen et al. 2018,
"Flipout: efficient pseudo-independent weight perturbations on mini-batches") gets the same marginal at the
cost of a second matrix product: the batch shares one perturbation ``P = sigma * eps`` and sequence ``b`` uses
``theta + P * (s_b r_b^T)`` with its own random signs ``s_b``, ``r_b``. A sign flip leaves a Gaussian unchanged,
so each sequence's weights are an exact sample of the posterior, and the samples of different sequences are
decorrelated. Then ``x W_b^T = x theta^T + s_b * ((x * r_b) P^T)``.

Evaluation runs the masked means through PyTorch's own ``nn.LSTM``/``nn.GRU`` kernel.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from vdcore.config import SVDConfig
from vdcore.functional import THETA2_EPS
from vdcore.layers.base import SVDLayer

Hidden = Tensor | tuple[Tensor, Tensor]


def weight_suffix(layer: int, direction: int) -> str:
    """How ``nn.LSTM`` and ``nn.GRU`` name a layer and direction's tensors: ``weight_ih`` + ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def weight_names(rnn: nn.Module) -> list[str]:
    """The weight matrices of an ``nn.LSTM`` or ``nn.GRU`` (``weight_ih_l0``, ``weight_hh_l0``, ...), biases aside."""
    return [name for name, _ in rnn.named_parameters(recurse=False) if name.startswith("weight_")]


class RecurrentSVD(SVDLayer):
    """What ``LSTMSVD`` and ``GRUSVD`` share: the weights of every layer and direction in one flat ``theta`` (so
    the KL, the mask and the pruning treat them as one layer's), the sampled forward, the dense twin.

    ``weights()`` and ``dense_parameters()`` give them back under ``nn.LSTM``'s names (``weight_ih_l0``,
    ``weight_hh_l1_reverse``, ...). Projections (``proj_size``) are not supported.
    """

    dense_type: ClassVar[type[nn.LSTM] | type[nn.GRU]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        threshold: float = 3.0,
        log_alpha_clip: float = 8.0,
        init_log_sigma2: float = -10.0,
        train_mask: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers, "bias": bias,
                 "batch_first": batch_first, "dropout": dropout, "bidirectional": bidirectional}
        # The dense twin on the meta device holds no memory; evaluation calls it with this layer's weights. Kept out
        # of the module tree so that it is neither a child nor moved by ``.to()``.
        self.__dict__["_twin"] = self.dense_type(**shape, device="meta").eval()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout, self.bidirectional = batch_first, dropout, bidirectional
        self.threshold, self.log_alpha_clip, self.train_mask = threshold, log_alpha_clip, train_mask
        shapes = {n: tuple(p.shape) for n, p in self._twin.named_parameters()}
        self._weight_shapes = {n: shapes[n] for n in weight_names(self._twin)}
        self._bias_shapes = {n: shape for n, shape in shapes.items() if n not in self._weight_shapes}
        factory = {"device": device, "dtype": dtype}
        total = sum(math.prod(s) for s in self._weight_shapes.values())
        bound = 1 / math.sqrt(hidden_size)  # nn.LSTM's and nn.GRU's initialisation
        self.theta = nn.Parameter(torch.empty(total, **factory).uniform_(-bound, bound))
        self.log_sigma2 = nn.Parameter(torch.full((total,), init_log_sigma2, **factory))
        biases = sum(math.prod(s) for s in self._bias_shapes.values())
        self.bias = nn.Parameter(torch.empty(biases, **factory).uniform_(-bound, bound)) if bias else None

    @classmethod
    def from_dense(cls, rnn: nn.LSTM | nn.GRU, config: SVDConfig | None = None) -> Self:
        """A Sparse VD layer that computes what ``rnn`` does, ready to fine-tune.

        Raises:
            ValueError: ``rnn`` is an LSTM with projections (``proj_size``).
        """
        if getattr(rnn, "proj_size", 0):
            raise ValueError(f"LSTM projections are not supported (proj_size={rnn.proj_size}); use proj_size=0")
        config = config or SVDConfig()
        layer = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first, rnn.dropout,
                    rnn.bidirectional, **cls.config_args(config), device=rnn.weight_ih_l0.device,
                    dtype=rnn.weight_ih_l0.dtype)
        weights = torch.cat([getattr(rnn, n).detach().flatten() for n in layer._weight_shapes])
        biases = torch.cat([getattr(rnn, n).detach().flatten() for n in layer._bias_shapes]) if rnn.bias else None
        layer.init_from_dense(weights, biases, config.init_log_alpha)
        return layer

    def weights(self, flat: Tensor | None = None) -> dict[str, Tensor]:
        """``flat`` (default ``theta``; any tensor laid out like it) as views named and shaped like ``nn.LSTM``'s."""
        return _views(self.theta if flat is None else flat, self._weight_shapes)

    def dense_parameters(self) -> dict[str, Tensor]:
        """The masked weights and the biases under ``nn.LSTM``'s names: what evaluation and ``to_dense`` use."""
        params = self.weights(self.masked_weight())
        if self.bias is not None:
            params.update(_views(self.bias, self._bias_shapes))
        return params

    def empty_dense(self) -> nn.LSTM | nn.GRU:  # type: ignore[override]
        return self.dense_type(self.input_size, self.hidden_size, self.num_layers, self.bias is not None,
                               self.batch_first, self.dropout, self.bidirectional, device=self.theta.device,
                               dtype=self.theta.dtype)

    @torch.no_grad()
    def to_dense(self) -> nn.LSTM | nn.GRU:  # type: ignore[override]
        dense = self.empty_dense()
        for name, value in self.dense_parameters().items():
            getattr(dense, name).copy_(value)
        return dense

    def forward(self, input: Tensor | PackedSequence, hx: Hidden | None = None) -> tuple[Any, Hidden]:
        if not self.training:
            args = (input,) if hx is None else (input, hx)
            return functional_call(self._twin, self.dense_parameters(), args)  # type: ignore[no-any-return]
        return self._sampled_forward(input, hx)

    def _sampled_forward(self, input: Tensor | PackedSequence, hx: Hidden | None) -> tuple[Any, Hidden]:
        """A training forward: one Flipout weight sample per sequence, shared across its steps."""
        lengths = None
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input, batch_first=True)  # in the caller's order, like ``hx``
            lengths = lengths.to(x.device)
        else:
            x = input if self.batch_first or input.dim() == 2 else input.transpose(0, 1)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects sequences of {self.input_size} features, "
                             f"got input of shape {list(x.shape)}")
        states = self._initial_states(hx, x, unbatched)
        mean, var = self.weight_moments()
        means, perturbations = self.weights(mean), self.weights(torch.sqrt(var + THETA2_EPS) * torch.randn_like(var))
        biases = _views(self.bias, self._bias_shapes) if self.bias is not None else {}
        directions = 2 if self.bidirectional else 1
        finals: list[list[Tensor]] = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = weight_suffix(layer, direction)
                steps = x if direction == 0 else _reversed(x, lengths)
                start = [s[layer * directions + direction] for s in states]
                out, final = self._run(steps, start, lengths, suffix, means, perturbations, biases)
                outputs.append(out if direction == 0 else _reversed(out, lengths))
                for kept, value in zip(finals, final, strict=True):
                    kept.append(value)
            x = torch.cat(outputs, dim=-1)
            if self.dropout and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        final_states = [torch.stack(f) for f in finals]
        if unbatched:
            x, final_states = x.squeeze(0), [s.squeeze(1) for s in final_states]
        return self._outputs(input, x, lengths), self._hidden(final_states)

    def _run(
        self,
        steps: Tensor,
        state: list[Tensor],
        lengths: Tensor | None,
        suffix: str,
        means: dict[str, Tensor],
        perturbations: dict[str, Tensor],
        biases: dict[str, Tensor],
    ) -> tuple[Tensor, list[Tensor]]:
        """One direction of one layer over ``steps`` ``(batch, time, features)``; returns its outputs and final state.

        Past a sequence's length its state stops changing and its outputs are zero, as in a packed sequence.
        """
        batch = steps.shape[0]
        inputs = _flipout(steps, means["weight_ih" + suffix], perturbations["weight_ih" + suffix], batch)
        if "bias_ih" + suffix in biases:
            inputs = inputs + biases["bias_ih" + suffix]
        w_hh, p_hh = means["weight_hh" + suffix], perturbations["weight_hh" + suffix]
        r = _signs(batch, w_hh.shape[1], w_hh)
        s = _signs(batch, w_hh.shape[0], w_hh)
        b_hh = biases.get("bias_hh" + suffix)
        outputs = []
        for t in range(steps.shape[1]):
            h = state[0]
            recurrent = h @ w_hh.T + s * ((h * r) @ p_hh.T)
            if b_hh is not None:
                recurrent = recurrent + b_hh
            new = self.cell(inputs[:, t], recurrent, state)
            if lengths is not None:
                live = (t < lengths).unsqueeze(1)
                new = [torch.where(live, n, old) for n, old in zip(new, state, strict=True)]
                outputs.append(new[0] * live)
            else:
                outputs.append(new[0])
            state = new
        return torch.stack(outputs, dim=1), state

    @staticmethod
    def cell(inputs: Tensor, recurrent: Tensor, state: list[Tensor]) -> list[Tensor]:
        """One step: the new state from the input's and the hidden state's gate pre-activations (biases in)."""
        raise NotImplementedError

    def _initial_states(self, hx: Hidden | None, x: Tensor, unbatched: bool) -> list[Tensor]:
        """The initial state tensors, each ``(layers * directions, batch, hidden)``; zeros when ``hx`` is None."""
        count = 2 if self.dense_type is nn.LSTM else 1
        if hx is None:
            size = (self.num_layers * (2 if self.bidirectional else 1), x.shape[0], self.hidden_size)
            return [x.new_zeros(size) for _ in range(count)]
        states = list(hx) if isinstance(hx, tuple) else [hx]
        if len(states) != count:
            raise ValueError(f"{type(self).__name__} takes {'(h_0, c_0)' if count == 2 else 'h_0'} as hx")
        return [s.unsqueeze(1) if unbatched else s for s in states]

    def _outputs(self, input: Tensor | PackedSequence, x: Tensor, lengths: Tensor | None) -> Tensor | PackedSequence:
        """The output sequence in the input's form: packed, batch first, or time first."""
        if isinstance(input, PackedSequence):
            assert lengths is not None
            order = input.sorted_indices
            if order is not None:
                x, lengths = x.index_select(0, order), lengths.index_select(0, order)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=True)
            return PackedSequence(packed.data, packed.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return x if self.batch_first or x.dim() == 2 else x.transpose(0, 1)

    def _hidden(self, states: list[Tensor]) -> Hidden:
        return (states[0], states[1]) if len(states) == 2 else states[0]

    def extra_repr(self) -> str:
        extra = ", batch_first=True" if self.batch_first else ""
        extra += ", bidirectional=True" if self.bidirectional else ""
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}{extra}, "
                f"{self._svd_repr()}")


class LSTMSVD(RecurrentSVD):
    """``nn.LSTM`` whose input-to-hidden and hidden-to-hidden weights have learned Gaussian dropout.

    Same constructor arguments, inputs (batched, unbatched, batch first, packed) and outputs
    ``(output, (h_n, c_n))`` as ``nn.LSTM`` (without ``proj_size``). Each training sequence runs on one weight
    sample, the same at every step (Flipout; see the module's docstring); evaluation runs ``nn.LSTM``'s kernel on
    the masked means.

    Examples:
        >>> lstm = LSTMSVD(28, 128, batch_first=True)
        >>> out, (h, c) = lstm.eval()(torch.zeros(2, 28, 28))
        >>> out.shape, h.shape
        (torch.Size([2, 28, 128]), torch.Size([1, 2, 128]))
    """

    dense_type = nn.LSTM

    @staticmethod
    def cell(inputs: Tensor, recurrent: Tensor, state: list[Tensor]) -> list[Tensor]:
        i, f, g, o = (inputs + recurrent).chunk(4, dim=1)  # PyTorch's gate order
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return [torch.sigmoid(o) * torch.tanh(c), c]


class GRUSVD(RecurrentSVD):
    """``nn.GRU`` whose input-to-hidden and hidden-to-hidden weights have learned Gaussian dropout.

    Same constructor arguments, inputs and outputs ``(output, h_n)`` as ``nn.GRU``; training and evaluation as
    for ``LSTMSVD``.

    Examples:
        >>> gru = GRUSVD(28, 64, num_layers=2)
        >>> out, h = gru.eval()(torch.zeros(28, 3, 28))
        >>> out.shape, h.shape
        (torch.Size([28, 3, 64]), torch.Size([2, 3, 64]))
    """

    dense_type = nn.GRU

    @staticmethod
    def cell(inputs: Tensor, recurrent: Tensor, state: list[Tensor]) -> list[Tensor]:
        x_r, x_z, x_n = inputs.chunk(3, dim=1)
        h_r, h_z, h_n = recurrent.chunk(3, dim=1)  # the reset gate scales h_n with its bias, as nn.GRU does
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return [(1 - z) * n + z * state[0]]


def _views(flat: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Consecutive slices of ``flat`` with the given names and shapes."""
    views, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        views[name] = flat[start:start + size].view(shape)
        start += size
    return views


def _signs(batch: int, size: int, like: Tensor) -> Tensor:
    """Random signs, one row of ``size`` per sequence."""
    return torch.randint(0, 2, (batch, size), device=like.device).to(like.dtype) * 2 - 1


def _flipout(x: Tensor, mean: Tensor, perturbation: Tensor, batch: int) -> Tensor:
    """``x W_b^T`` for every step of every sequence ``b`` of ``x`` ``(batch, time, in)``, ``W_b`` its own sample."""
    r = _signs(batch, mean.shape[1], mean).unsqueeze(1)
    s = _signs(batch, mean.shape[0], mean).unsqueeze(1)
    return x @ mean.T + s * ((x * r) @ perturbation.T)


def _reversed(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Each sequence of ``x`` ``(batch, time, ...)`` reversed within its length (padding stays at the end)."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))
