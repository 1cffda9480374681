"""The model's float edges: quantize a float input, dequantize an integer output.

Quantize q = clamp(rint(x / s) + z) in float32 with round half to even (as ONNX QuantizeLinear);
dequantize x = (clamp(q) - z) * s in float32. `integer_io` drops both, so the model takes and
gives its integer tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor
from edgecomp.quant.fixedpoint import qrange
from edgecomp.quant.ir import IntGraph, IntOp, QTensor, clamp, register


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Quantize(IntOp):
    kind = "quantize"
    scale: np.float32
    zp: int
    lo: int
    hi: int
    rounding: str = "half_even"  # ONNX's; "half_away" is TFLite's roundf

    def validate(self) -> None:
        self._require(float(self.scale) > 0, f"scale {self.scale} must be > 0")
        self._require(self.rounding in ("half_even", "half_away"), f"unknown rounding '{self.rounding}'")

    def reference(self, xs, dtype):
        v = xs[0].astype(np.float32) / self.scale
        if self.rounding == "half_away":
            q = np.copysign(np.floor(np.abs(v).astype(np.float64) + 0.5), v)
        else:
            q = np.rint(v).astype(np.float64)
        return clamp(q + self.zp, self.lo, self.hi, dtype)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Dequantize(IntOp):
    kind = "dequantize"
    scale: np.float32
    zp: int
    lo: int  # a Relu/Clip after the dequantization, as a clamp before it
    hi: int

    def reference(self, xs, dtype):
        q = np.clip(xs[0].astype(np.int32), self.lo, self.hi)
        return ((q - self.zp).astype(np.float32) * self.scale).astype(np.float32)


def quantize_edge(ex: Extractor, node: onnx.NodeProto) -> None:
    """A QuantizeLinear of a float model input (through an optional Relu/Clip, which becomes the
    clamp); any other QuantizeLinear ends an op's pattern and was handled with that op."""
    src = node.input[0]
    act = ex.producer.get(src)
    lo_f, hi_f = -np.inf, np.inf
    if act is not None and act.op_type in ("Relu", "Clip") and ex.on_float_input(act):
        lo_f, hi_f = ex.act_range(act)
        src = act.input[0]
    if src in ex.tensors and ex.tensors[src].dtype == "float32":
        scale, zp, _ = ex.qparams(node)
        t = QTensor(node.output[0], ex.shape(node.output[0]), ex._act_dtype(zp, node), ex._scale(scale, node),
                    int(zp), src)  # fmt: skip
        ex.tensors[t.name] = t
        lo, hi = ex.clamp_range(t, lo_f, hi_f)
        ex.emit(Quantize(inputs=(src,), output=t.name, node=node.name, scale=np.float32(t.scale),
                         zp=t.zero_point, lo=lo, hi=hi))  # fmt: skip


def dequantize_edge(ex: Extractor, node: onnx.NodeProto, act: onnx.NodeProto | None = None) -> None:
    """A float model output: DequantizeLinear, optionally followed by a Relu/Clip (`act`)."""
    if node is None or node.op_type != "DequantizeLinear":
        raise UnsupportedModelError(f"node '{act.name}' ({act.op_type}) computes a model output in float")
    src = ex.alias.get(node.input[0], node.input[0])
    if src not in ex.tensors:
        raise UnsupportedModelError(f"node '{node.name}': output '{node.output[0]}' is not computed in integer")
    t_in = ex.tensors[src]
    out = QTensor((act or node).output[0], t_in.shape, "float32")
    ex.tensors[out.name] = out
    lo, hi = ex.clamp_range(t_in, *(ex.act_range(act) if act is not None else (-np.inf, np.inf)))
    ex.emit(Dequantize(inputs=(src,), output=out.name, node=node.name, scale=np.float32(t_in.scale),
                       zp=t_in.zero_point, lo=lo, hi=hi))  # fmt: skip


def integer_io(graph: IntGraph) -> IntGraph:
    """The same graph with integer inputs and outputs: the model-edge quantize/dequantize ops are
    dropped and the caller passes (gets) the quantized tensors, with their scale and zero point."""
    drop: set[int] = set()
    inputs, outputs = [], []
    for name in graph.inputs:
        users = [i for i, op in enumerate(graph.ops) if name in op.inputs]
        if len(users) != 1 or not isinstance(graph.ops[users[0]], Quantize):
            raise UnsupportedModelError(f"--io int8: model input '{name}' is not quantized exactly once")
        drop.add(users[0])
        inputs.append(graph.ops[users[0]].output)
    for i, op in outputs_of(graph):
        lo, hi = qrange(graph.tensors[op.inputs[0]].dtype)
        if op.lo != lo or op.hi != hi:
            raise UnsupportedModelError(
                f"--io int8: model output '{op.output}' applies an activation after dequantizing"
            )
        drop.add(i)
        outputs.append(op.inputs[0])
    ops = tuple(op for i, op in enumerate(graph.ops) if i not in drop)
    for op in ops:
        if any(graph.tensors[n].dtype == "float32" for n in op.inputs):
            raise UnsupportedModelError(f"--io int8: op '{op.node}' reads a float model input")
    return IntGraph(graph.tensors, ops, tuple(inputs), tuple(outputs))


def outputs_of(graph: IntGraph) -> list[tuple[int, Dequantize]]:
    """(index, op) of the dequantize op that makes each model output."""
    result = []
    for name in graph.outputs:
        found = [(i, op) for i, op in enumerate(graph.ops) if op.output == name]
        if not found or not isinstance(found[0][1], Dequantize):
            raise UnsupportedModelError(f"model output '{name}' is not dequantized from an integer tensor")
        result.append(found[0])
    return result
