"""The integer op kinds, one module each (or a small family): dataclass, numpy reference and
ONNX handler. Importing this package registers them all (quant/ir.py OPS, quant/extract.py
HANDLERS)."""

from edgecomp.quant.ops import (  # noqa: F401
    avgpool_tfl,
    conv,
    dense,
    edges,
    elementwise,
    extremum,
    gru,
    layout,
    lstm,
    lut,
    mean,
    pad,
    patch,
    pool,
    slicing,
    softmax,
    softmax_tfl,
)
from edgecomp.quant.ops.avgpool_tfl import TflAvgPool
from edgecomp.quant.ops.conv import Conv
from edgecomp.quant.ops.dense import Dense
from edgecomp.quant.ops.edges import Dequantize, Quantize, integer_io, outputs_of
from edgecomp.quant.ops.elementwise import Add, Mul, PRelu
from edgecomp.quant.ops.extremum import Extremum, Reduce
from edgecomp.quant.ops.gru import Gru
from edgecomp.quant.ops.layout import Concat, Reshape, Transpose
from edgecomp.quant.ops.lstm import Lstm
from edgecomp.quant.ops.lut import Lut, Lut16, TflSigmoid16
from edgecomp.quant.ops.mean import TflMean
from edgecomp.quant.ops.pad import Pad
from edgecomp.quant.ops.patch import Crop, Place
from edgecomp.quant.ops.pool import AvgPool, MaxPool
from edgecomp.quant.ops.slicing import Slice
from edgecomp.quant.ops.softmax import Softmax
from edgecomp.quant.ops.softmax_tfl import TflSoftmax, TflSoftmax16

__all__ = [
    "Add", "AvgPool", "Concat", "Conv", "Crop", "Dense", "Dequantize", "Extremum", "Gru", "Lstm", "Lut", "Lut16", "MaxPool", "Mul", "PRelu",
    "Pad", "Place", "Quantize", "Reduce", "Reshape", "Slice", "Softmax", "TflAvgPool", "TflMean", "TflSigmoid16", "TflSoftmax",
    "TflSoftmax16", "Transpose", "integer_io", "outputs_of",
]  # fmt: skip
