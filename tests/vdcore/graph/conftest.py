"""ONNX files of real architectures, exported once per test session."""

import pytest
import torch

from tests.vdcore.graph.nets import (
    AttentionClassifier,
    MobileNetish,
    ResNetish,
    export,
    handmade_mlp,
    randomise_batchnorm,
)

ARCHITECTURES = {
    "resnet": lambda: randomise_batchnorm(ResNetish()),
    "mobilenet": lambda: randomise_batchnorm(MobileNetish()),
    "attention": lambda: AttentionClassifier().eval(),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``(name, exporter) -> (torch model, ONNX path)`` for each architecture and both of torch's exporters."""
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, build in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = build()
        for exporter in ("dynamo", "torchscript"):
            path = export(model, folder / f"{name}-{exporter}.onnx", dynamo=exporter == "dynamo")
            files[name, exporter] = (model, path)
    files["handmade", "helper"] = (None, handmade_mlp(folder / "handmade.onnx"))
    return files
