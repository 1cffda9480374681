"""Integer (fixed-point) models: the integer graph recovered from a QDQ ONNX model, its exact
arithmetic (fixedpoint.py) and the numpy reference that defines the expected integer results."""

from edgecomp.quant.graph import IntGraph, QOp, QTensor, extract_int_graph, integer_io, is_quantized

__all__ = ["IntGraph", "QOp", "QTensor", "extract_int_graph", "integer_io", "is_quantized", "int_graph_for"]


def int_graph_for(model, io: str = "float") -> IntGraph:
    """The IntGraph a build compiles: `model` (QDQ, constants folded) with float or int8 I/O."""
    graph = extract_int_graph(model)
    return integer_io(graph) if io == "int8" else graph
