"""Integer (fixed-point) models: the integer graph recovered from a QDQ ONNX model, its exact
arithmetic (fixedpoint.py) and the numpy reference that defines the expected integer results."""

from edgecomp.quant.graph import IntGraph, QOp, QTensor, extract_int_graph, is_quantized

__all__ = ["IntGraph", "QOp", "QTensor", "extract_int_graph", "is_quantized"]
