"""Integer dense layer (Gemm, MatMul with a constant 2-D weight): y = x @ W.T, W [out, in]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import LinearOp, QTensor, int_array, register
from edgecomp.quant.ops.conv import acc_bias


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Dense(LinearOp):
    kind = "dense"

    def validate(self) -> None:
        super().validate()
        self._require(self.weight.ndim == 2, "weights must be [out, in]")

    def reference(self, xs, dtype):
        acc = xs[0].astype(np.int64) @ self.weight.astype(np.int64).T
        return self.requantize(acc, (-1,), dtype)


def _dense(ex: Extractor, node, x: QTensor, w: np.ndarray, w_scale, bias_idx: int) -> None:
    """w is [out, in]. An N-D input (a batched MatMul by a 2-D constant) runs as a 2-D one of its
    rows, between two reshapes."""
    out, (lo, hi) = ex.out(node)
    final = None
    if len(x.shape) > 2 and node.op_type == "MatMul":
        rows = int(np.prod(x.shape[:-1]))
        x2 = ex.derived(x, (rows, x.shape[-1]), "rows")
        ex.reshape(x, x2, node)
        x, final, out = x2, out, ex.derived(out, (rows, out.shape[-1]), "rows")
    n_out = w.shape[0]
    bias = ex.bias(node, bias_idx, x, w_scale, n_out)
    bias = bias - x.zero_point * w.astype(np.int64).sum(axis=1)
    mult, shift = ex.requant_params(x, w_scale, out, w, bias)
    if len(x.shape) != 2:
        raise UnsupportedModelError(f"node '{node.name}': integer Gemm/MatMul needs a 2-D input, got {x.shape}")
    bias = acc_bias(bias, x)
    ex.emit(Dense(inputs=(x.name,), output=out.name, node=node.name, weight=int_array(w, np.int8),
                  bias=int_array(bias, bias.dtype), mult=int_array(mult, np.int64),
                  shift=int_array(shift, np.int64), out_zp=out.zero_point, lo=lo, hi=hi,
                  weight_bits=ex.weight_bits(node.input[1])))  # fmt: skip
    if final is not None:
        ex.reshape(out, final, node)


@handles("Gemm")
def gemm_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    a = ex.attrs(node)
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise UnsupportedModelError(f"node '{node.name}': integer Gemm supports transA=0, alpha=beta=1")
    x = ex.act_in(node.input[0], node)
    w, w_scale, _ = ex.weight(node.input[1], node)
    if not a.get("transB", 0):
        w = w.T
    _dense(ex, node, x, w, w_scale, 2)


@handles("MatMul")
def matmul_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    w, w_scale, _ = ex.weight(node.input[1], node)
    if w.ndim != 2:
        raise UnsupportedModelError(f"node '{node.name}': integer MatMul needs a 2-D constant weight")
    _dense(ex, node, x, w.T, w_scale, 99)
