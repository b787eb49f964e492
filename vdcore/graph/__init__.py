"""Users' own networks as ONNX files: read into trainable PyTorch modules, and written back once trained."""

from vdcore.graph.net import OPERATORS, OnnxNet, load_onnx
from vdcore.graph.plan import OnnxPlan, plan_onnx
from vdcore.graph.read import OnnxError
from vdcore.graph.shrink import GraphShrink, shrink_onnx
from vdcore.graph.write import trained_model, write_onnx

__all__ = [
    "OPERATORS", "GraphShrink", "OnnxError", "OnnxNet", "OnnxPlan", "load_onnx", "plan_onnx", "shrink_onnx",
    "trained_model", "write_onnx",
]
