"""int16 output activations for chosen layers of an int8 QDQ model (--quantize mixed's "a16").

A layer here is a Conv, Gemm or MatMul (passes/int4.py layer_name). Making its output int16 means:
the QuantizeLinear that ends it (after an optional fused Relu/Clip) and every DequantizeLinear that
reads that tensor take the int16 grid of the same calibrated range, [(-128 - zp) * s, (127 - zp) * s]
split into 65,535 steps instead of 255 (scale s * 255 / 65535, zero point on the new grid). Nothing
else changes, and no node is added: each integer op already rescales from its input's grid to its
output's (quant/ops: a LinearOp requantizes, a Reshape/MaxPool/Add... rescales), so a layer that
reads the int16 tensor runs with int16 input (int64 accumulator, as --quantize int16x8) and the
requantization between int16 and int8 happens inside the op at the boundary.

Ops that only move or select values (Reshape, Flatten, MaxPool...) and whose output had the same
scale and zero point as their input pass the int16 grid on, so e.g. a Flatten between a conv and
a dense layer does not throw the extra bits away.

Preserves: graph structure, interface, weights; the function up to a finer quantization of the
chosen tensors.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.passes.int4 import LINEAR_OPS, layer_name
from edgecomp.passes.simplify import consumers as graph_consumers

PASS_THROUGH = ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")
INT16_STEPS = 65535 / 255  # int16 steps per int8 step over the same range
INT16_OPSET = 21  # QuantizeLinear / DequantizeLinear take int16 from opset 21 on


def int16_params(scale: float, zp: int) -> tuple[float, int]:
    """(scale, zero point) of the int16 grid over the range the int8 grid (scale, zp) covers."""
    lo = (-128 - zp) * scale
    s16 = scale / INT16_STEPS
    return s16, int(np.clip(np.round(-32768 - lo / s16), -32768, 32767))


def set_act_bits(qmodel: onnx.ModelProto, layers: set[str] | frozenset[str]) -> onnx.ModelProto:
    """A copy of int8 QDQ `qmodel` in which the output tensors of `layers` (names, as layer_name)
    are int16 (and the pass-through ops after them, see the module docstring)."""
    if not layers:
        return qmodel
    opset = next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < INT16_OPSET:
        raise ValueError(f"int16 QuantizeLinear/DequantizeLinear need opset {INT16_OPSET} (the model has {opset})")
    model = onnx.ModelProto()
    model.CopyFrom(qmodel)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers = graph_consumers(g)
    new: list[onnx.TensorProto] = []
    done: set[str] = set()

    def params(q: onnx.NodeProto) -> tuple[float, int] | None:
        """(scale, zero point) of an activation QuantizeLinear with constant int8 parameters."""
        if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
            return None
        zp = inits[q.input[2]]
        if zp.data_type != onnx.TensorProto.INT8:
            return None
        s = numpy_helper.to_array(inits[q.input[1]]).reshape(-1)
        if s.size != 1:
            return None
        return float(s[0]), int(numpy_helper.to_array(zp).reshape(-1)[0])

    def out_qs(name: str) -> list[onnx.NodeProto]:
        """The QuantizeLinear nodes of a node output (through a fused Relu/Clip), all or none."""
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            users = consumers.get(users[0].output[0], [])
        qs = [u for u in users if u.op_type == "QuantizeLinear"]
        return qs if qs and len(qs) == len(users) else []

    def widen(q: onnx.NodeProto, old: tuple[float, int]) -> None:
        if q.output[0] in done:
            return
        done.add(q.output[0])
        s16, zp16 = int16_params(*old)
        base = q.output[0]
        new.extend([numpy_helper.from_array(np.array(s16, np.float32), f"{base}__a16_scale"),
                    numpy_helper.from_array(np.array(zp16, np.int16), f"{base}__a16_zero_point")])  # fmt: skip
        readers = consumers.get(q.output[0], [])
        for n in [q, *(r for r in readers if r.op_type == "DequantizeLinear")]:
            while len(n.input) < 3:
                n.input.append("")
            n.input[1], n.input[2] = f"{base}__a16_scale", f"{base}__a16_zero_point"
            for a in n.attribute:
                if a.name == "output_dtype":
                    a.i = onnx.TensorProto.INT16
        for dq in (r for r in readers if r.op_type == "DequantizeLinear"):
            for op in consumers.get(dq.output[0], []):
                if op.op_type not in PASS_THROUGH:
                    continue
                for q2 in out_qs(op.output[0]):
                    p2 = params(q2)
                    if p2 is not None and np.isclose(p2[0], old[0], rtol=1e-6) and p2[1] == old[1]:
                        widen(q2, p2)

    for node in list(g.node):
        if node.op_type in LINEAR_OPS and layer_name(node) in layers:
            for q in out_qs(node.output[0]):
                p = params(q)
                if p is not None:
                    widen(q, p)
    g.initializer.extend(new)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]  # the tensors' types changed: inference says them again
    return onnx.shape_inference.infer_shapes(model)
