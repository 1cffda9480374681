"""Lowering through Apache TVM: ONNX -> Relax -> fused TIR -> scheduled TIR -> C.

This package is the only place that imports TVM, and only when `lower_model` is first used
(importing the package itself, e.g. for its kernel table's constants, does not load TVM). Its
output (`LoweredModel`) is plain data: the C source of every fused kernel, the tensors (shape,
dtype, constant data) and the call sequence.
"""

from edgecomp.lower.model import Call, LoweredModel, Tensor

__all__ = ["Call", "LoweredModel", "Tensor", "lower_model"]


def __getattr__(name: str):
    if name == "lower_model":
        from edgecomp.lower.lowering import lower_model

        return lower_model
    raise AttributeError(name)
