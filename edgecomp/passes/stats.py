"""Figures of a float ONNX model: multiply-accumulates and parameters."""

from __future__ import annotations

import numpy as np
import onnx

from edgecomp.passes.channels import attr, shape_of


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the Conv, Gemm and MatMul nodes of a float model with static shapes."""
    model = onnx.shape_inference.infer_shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        w = list(inits[node.input[1]].dims)
        out = shape_of(model, node.output[0]) or []
        if node.op_type == "Conv":
            per_output = int(np.prod(w[1:]))
        else:
            per_output = w[1] if node.op_type == "Gemm" and attr(node, "transB", 0) else w[0]
        total += int(np.prod(out)) * per_output
    return total


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the model's weights and biases: initializers, less shape constants (int64) and
    quantization parameters (scales and zero points of Q/DQ nodes)."""
    qparams = {
        i
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for i in n.input[1:]
    }
    return sum(
        int(np.prod(t.dims)) for t in model.graph.initializer
        if t.name not in qparams and t.data_type != onnx.TensorProto.INT64 and len(t.dims) > 0
    )  # fmt: skip
