"""Front end: ONNX file in, a checked, shape-inferred, opset-normalised, static-shape ModelProto out.

Every user-facing problem with a model (unreadable file, unsupported op, dynamic shape, dtype) is
raised here as a UserError naming the node, before anything reaches TVM.
"""

from edgecomp.frontend.inputs import parse_freeze, parse_input_shapes
from edgecomp.frontend.load import load_model

__all__ = ["load_model", "parse_freeze", "parse_input_shapes"]
