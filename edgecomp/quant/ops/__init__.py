"""The integer op kinds, one module each (or a small family): dataclass, numpy reference and
ONNX handler. Importing this package registers them all (quant/ir.py OPS, quant/extract.py
HANDLERS)."""

from edgecomp.quant.ops import conv, dense, edges, elementwise, layout, lut, pool, softmax  # noqa: F401
from edgecomp.quant.ops.conv import Conv
from edgecomp.quant.ops.dense import Dense
from edgecomp.quant.ops.edges import Dequantize, Quantize, integer_io, outputs_of
from edgecomp.quant.ops.elementwise import Add, Mul, PRelu
from edgecomp.quant.ops.layout import Concat, Reshape, Transpose
from edgecomp.quant.ops.lut import Lut, Lut16
from edgecomp.quant.ops.pool import AvgPool, MaxPool
from edgecomp.quant.ops.softmax import Softmax

__all__ = [
    "Add", "AvgPool", "Concat", "Conv", "Dense", "Dequantize", "Lut", "Lut16", "MaxPool", "Mul", "PRelu",
    "Quantize", "Reshape", "Softmax", "Transpose", "integer_io", "outputs_of",
]  # fmt: skip
