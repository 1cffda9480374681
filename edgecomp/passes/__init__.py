"""Graph passes on the ONNX model: each is a pure function ModelProto -> ModelProto."""

from edgecomp.passes.fold_constants import fold_constants

__all__ = ["fold_constants"]
