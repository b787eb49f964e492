"""ONNX export: one self-contained file, dynamic batch, checked against PyTorch in onnxruntime."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import vdcore
from vdcore.export import ExportError, onnx_session
from vdcore.spec import build_model


def test_sparsified_cnn_exports_pruned_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = vdcore.sparsify_(build_model({"preset": "lenet-5-caffe"}))
    with torch.no_grad():
        for _, layer in vdcore.svd_layers(model):
            layer.log_sigma2.view(-1)[::3] = 20.0  # drop a third of the weights
    example = torch.randn(1, 1, 28, 28)
    result = vdcore.export_onnx(model, tmp_path / "m.onnx", example)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], "weights must not go to a side file"
    assert result.max_abs_diff <= 1e-4 and result.bytes == (tmp_path / "m.onnx").stat().st_size
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch dimension must be symbolic"
    session = onnx_session(tmp_path / "m.onnx")
    for batch in (1, 17):
        x = torch.randn(batch, 1, 28, 28)
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, model.eval()(x).detach().numpy(), atol=1e-4)
    assert vdcore.is_sparsified(model), "exporting must not change the model"


def test_mismatch_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(vdcore.export, "onnx_parity", lambda *args: 0.5)
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0\.5"):
        vdcore.export_onnx(nn.Sequential(nn.Linear(4, 2)), tmp_path / "m.onnx", torch.randn(1, 4))
    assert list(tmp_path.iterdir()) == []
