"""An embedding table with Sparse Variational Dropout on every entry."""

from __future__ import annotations

from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcore import functional as VF
from vdcore.config import SVDConfig
from vdcore.layers.base import SVDLayer


class EmbeddingSVD(SVDLayer):
    """``nn.Embedding`` whose entries have learned Gaussian dropout.

    A lookup is a product with a one-hot row, so each output is one entry and its noise is that entry's own:
    the local reparameterization samples ``theta[i] + sqrt(alpha * theta[i]^2) * eps`` directly. Only the rows
    looked up in a batch are sampled; the KL covers the whole table.

    Args:
        num_embeddings, embedding_dim: as for ``nn.Embedding``.
        threshold, log_alpha_clip, init_log_sigma2, train_mask: see ``SVDConfig``.

    Shape:
        Input: indices of any shape; output: ``(*, embedding_dim)``.

    Examples:
        >>> table = EmbeddingSVD(1000, 64)
        >>> table.eval()(torch.tensor([[3, 7]])).shape
        torch.Size([1, 2, 64])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        threshold: float = 3.0,
        log_alpha_clip: float = 8.0,
        init_log_sigma2: float = -10.0,
        train_mask: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.threshold, self.log_alpha_clip, self.train_mask = threshold, log_alpha_clip, train_mask
        self.theta = nn.Parameter(torch.randn(num_embeddings, embedding_dim, **factory))  # nn.Embedding's init
        self.log_sigma2 = nn.Parameter(torch.full((num_embeddings, embedding_dim), init_log_sigma2, **factory))
        self.bias = None

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, config: SVDConfig | None = None) -> Self:
        """A Sparse VD table that looks up what ``embedding`` does, ready to fine-tune."""
        config = config or SVDConfig()
        weight = embedding.weight
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, **cls.config_args(config),
                    device=weight.device, dtype=weight.dtype)
        layer.init_from_dense(weight, None, config.init_log_alpha)
        return layer

    def forward(self, indices: Tensor) -> Tensor:
        if not self.training:
            return F.embedding(indices, self.masked_weight())
        mean, var = self.weight_moments()
        out = F.embedding(indices, mean)
        return out + torch.sqrt(F.embedding(indices, var) + VF.VAR_EPS) * torch.randn_like(out)

    def empty_dense(self) -> nn.Embedding:  # type: ignore[override]
        return nn.Embedding(self.num_embeddings, self.embedding_dim, device=self.theta.device,
                            dtype=self.theta.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._svd_repr()}"
