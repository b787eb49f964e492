"""Sparse Variational Dropout for PyTorch: swap layers, train, prune, shrink, export.

    import vdcore
    vdcore.sparsify_(model)                       # nn.Linear / nn.Conv2d -> LinearSVD / Conv2dSVD
    vdcore.train(model, (x, y), val=(xv, yv))     # negative ELBO with KL warm-up
    small = vdcore.shrink(vdcore.prune(model), x[:1])
    vdcore.export_onnx(small, "model.onnx", x[:1])
"""

from vdcore.config import SVDConfig, TrainConfig
from vdcore.device import resolve_device
from vdcore.export import ExportError, ExportResult, export_onnx, onnx_parity, onnx_session
from vdcore.layers import Conv2dSVD, LinearSVD, SVDLayer
from vdcore.loss import elbo_loss, kl_divergence
from vdcore.prune import prune
from vdcore.report import LayerSparsity, SparsityReport, sparsity_report
from vdcore.sparsify import is_sparsified, sparsify_, svd_layers
from vdcore.train import EpochMetrics, evaluate, kl_weight, learning_rate, train

__all__ = [
    "Conv2dSVD",
    "EpochMetrics",
    "ExportError",
    "ExportResult",
    "LayerSparsity",
    "LinearSVD",
    "SVDConfig",
    "SVDLayer",
    "SparsityReport",
    "TrainConfig",
    "elbo_loss",
    "evaluate",
    "export_onnx",
    "is_sparsified",
    "kl_divergence",
    "kl_weight",
    "learning_rate",
    "onnx_parity",
    "onnx_session",
    "prune",
    "resolve_device",
    "sparsify_",
    "sparsity_report",
    "svd_layers",
    "train",
]
