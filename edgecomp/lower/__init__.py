"""Lowering through Apache TVM: ONNX -> Relax -> fused TIR -> scheduled TIR -> C.

This package is the only place that imports TVM. Its output (`LoweredModel`) is plain data: the
C source of every fused kernel, the tensors (shape, dtype, constant data) and the call sequence.
"""

from edgecomp.lower.model import Call, LoweredModel, Tensor
from edgecomp.lower.pipeline import lower_model

__all__ = ["Call", "LoweredModel", "Tensor", "lower_model"]
