"""Sparse Variational Dropout for PyTorch: swap layers, train, prune, shrink, export.

    import vdcore
    vdcore.sparsify_(model)                       # nn.Linear / Conv2d / Embedding / LSTM / GRU -> LinearSVD / ...
    # (SVDConfig(granularity="weight+unit"): also a scale per unit or filter, so whole units go in shrink)
    vdcore.train(model, (x, y), val=(xv, yv))     # negative ELBO with KL warm-up
    pruned = vdcore.prune(model)
    vdcore.finetune(pruned, (x, y), val=(xv, yv))  # optional: the data term alone, zeros held
    small = vdcore.shrink(pruned, x[:1])
    vdcore.export_onnx(small, "model.onnx", x[:1])

    net = vdcore.load_onnx("users_model.onnx")   # a user's ONNX file as a trainable module; sparsify_ it alike
    vdcore.write_onnx(net, "trained.onnx")       # its trained weights, back in the user's own graph
    vdcore.shrink_onnx(net).save("small.onnx")   # and with its dead units cut out of that graph

SVD in names here means Sparse Variational Dropout (Molchanov et al. 2017), not singular value decomposition.
The verbs: ``sparsify_`` swaps layers for Sparse VD ones; a layer's *mask* (``log alpha > threshold``) zeroes
weights at evaluation; ``prune`` bakes the mask into a plain network; ``shrink`` cuts the units left dead;
``round_units_`` and ``pad_channels`` arrange filter counts for onnxruntime. A trailing ``_`` means in place.
"""

from vdcore.config import SVDConfig, TrainConfig
from vdcore.data import DataError, Dataset, load_builtin, load_idx_dir, load_npz
from vdcore.device import resolve_device
from vdcore.export import ExportError, ExportResult, export_onnx, onnx_parity, onnx_session
from vdcore.finetune import finetune
from vdcore.graph import OPERATORS, GraphShrink, OnnxError, OnnxNet, load_onnx, shrink_onnx, write_onnx
from vdcore.latency import Latency, measure_latency
from vdcore.layers import (
    GRUSVD,
    LSTMSVD,
    Conv2dScaledSVD,
    Conv2dSVD,
    Conv2dUnitSVD,
    EmbeddingSVD,
    LinearScaledSVD,
    LinearSVD,
    LinearUnitSVD,
    RecurrentSVD,
    ScaledSVDLayer,
    SVDLayer,
    UnitSVDLayer,
)
from vdcore.layout import export_fastest, pad_channels, round_units_
from vdcore.loss import elbo_loss, kl_divergence
from vdcore.presets import PRESETS
from vdcore.prune import prune
from vdcore.report import LayerSparsity, SparsityReport, sparsity_report
from vdcore.sequence import ImageRows, RecurrentFeatures
from vdcore.shrink import GatherInput, layer_widths, shrink
from vdcore.sparsify import is_sparsified, sparsify_, svd_layers
from vdcore.spec import SpecError, build_model, plan_model, preset_spec
from vdcore.train import EpochMetrics, evaluate, kl_weight, learning_rate, train
from vdcore.variants import (
    KINGMA_VARIANTS,
    BinaryDropoutLinear,
    GaussianDropoutLinearA,
    GaussianDropoutLinearB,
    NoisyLinear,
    VariationalDropoutLinearA,
    VariationalDropoutLinearA2,
    VariationalDropoutLinearB,
    cap_log_alpha,
    kingma_kl_divergence,
    kingma_linear,
    kingma_mlp,
    kl_kingma,
)
from vdcore.weights import WeightsError, load_weights, save_weights

__all__ = [
    "GRUSVD",
    "KINGMA_VARIANTS",
    "LSTMSVD",
    "OPERATORS",
    "PRESETS",
    "BinaryDropoutLinear",
    "Conv2dSVD",
    "Conv2dScaledSVD",
    "Conv2dUnitSVD",
    "DataError",
    "Dataset",
    "EmbeddingSVD",
    "EpochMetrics",
    "ExportError",
    "ExportResult",
    "GatherInput",
    "GaussianDropoutLinearA",
    "GaussianDropoutLinearB",
    "GraphShrink",
    "ImageRows",
    "Latency",
    "LayerSparsity",
    "LinearSVD",
    "LinearScaledSVD",
    "LinearUnitSVD",
    "NoisyLinear",
    "OnnxError",
    "OnnxNet",
    "RecurrentFeatures",
    "RecurrentSVD",
    "SVDConfig",
    "SVDLayer",
    "ScaledSVDLayer",
    "SparsityReport",
    "SpecError",
    "TrainConfig",
    "UnitSVDLayer",
    "VariationalDropoutLinearA",
    "VariationalDropoutLinearA2",
    "VariationalDropoutLinearB",
    "WeightsError",
    "build_model",
    "cap_log_alpha",
    "elbo_loss",
    "evaluate",
    "export_fastest",
    "export_onnx",
    "finetune",
    "is_sparsified",
    "kingma_kl_divergence",
    "kingma_linear",
    "kingma_mlp",
    "kl_divergence",
    "kl_kingma",
    "kl_weight",
    "layer_widths",
    "learning_rate",
    "load_builtin",
    "load_idx_dir",
    "load_npz",
    "load_onnx",
    "load_weights",
    "measure_latency",
    "onnx_parity",
    "onnx_session",
    "pad_channels",
    "plan_model",
    "preset_spec",
    "prune",
    "resolve_device",
    "round_units_",
    "save_weights",
    "shrink",
    "shrink_onnx",
    "sparsify_",
    "sparsity_report",
    "svd_layers",
    "train",
    "write_onnx",
]
