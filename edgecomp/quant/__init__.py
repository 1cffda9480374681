"""Integer (fixed-point) models: the integer graph (ir.py) recovered from a QDQ ONNX model
(extract.py, with the op kinds of ops/), its exact arithmetic (fixedpoint.py) and the numpy
reference that defines the expected integer results (interpret.py)."""

from edgecomp.quant.extract import extract_int_graph, is_quantized
from edgecomp.quant.interpret import run_int_graph
from edgecomp.quant.ir import IntGraph, IntOp, QTensor
from edgecomp.quant.ops import integer_io

__all__ = ["IntGraph", "IntOp", "QTensor", "extract_int_graph", "integer_io", "is_quantized", "int_graph_for",
           "run_int_graph"]  # fmt: skip


def int_graph_for(model, io: str = "float") -> IntGraph:
    """The IntGraph a build compiles: `model` (QDQ, constants folded) with float or int8 I/O."""
    graph = extract_int_graph(model)
    return integer_io(graph) if io == "int8" else graph
