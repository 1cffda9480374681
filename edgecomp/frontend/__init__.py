"""Front end: ONNX file in, a checked, shape-inferred, opset-normalised, static-shape ModelProto out.

Every user-facing problem with a model (unreadable file, unsupported op, dynamic shape, dtype) is
raised here as a UserError naming the node, before anything reaches TVM.
"""

from edgecomp.frontend.load import load_model, parse_input_shapes

__all__ = ["load_model", "parse_input_shapes"]
