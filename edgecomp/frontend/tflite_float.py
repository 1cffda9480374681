"""A float TFLite model as the equivalent ONNX model, which the float path then compiles.

Operators map to ONNX operators of the same arithmetic; weights are converted to ONNX's layouts
(OIHW filters; float16 weights behind DEQUANTIZE become float32 constants). TFLite's NHWC 4-D
tensors are NCHW in the ONNX graph, with a Transpose only where an operator needs TFLite's order
(frontend/tflite.py Layouts), so the model's inputs and outputs keep TFLite's shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.frontend.tflite import NCHW, NHWC, Layouts, TflModel, TflOp, TflTensor, tflite_padding

OPSET = 13
_ACT = {0: None, 1: ("Relu", None), 2: ("Clip", (-1.0, 1.0)), 3: ("Clip", (0.0, 6.0))}
_UNARY = {"LOGISTIC": "Sigmoid", "TANH": "Tanh", "RELU": "Relu", "EXP": "Exp", "LOG": "Log", "SQRT": "Sqrt",
          "ABS": "Abs", "NEG": "Neg", "HARD_SWISH": "HardSwish", "FLOOR": "Floor", "CEIL": "Ceil",
          "SIN": "Sin", "COS": "Cos", "ELU": "Elu"}  # fmt: skip
_BINARY = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max", "MINIMUM": "Min",
           "POW": "Pow"}  # fmt: skip


class _Converter:
    def __init__(self, model: TflModel) -> None:
        self.m = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.layouts = Layouts(model, self._transpose)
        self._name = self.layouts.fresh
        self.consts: dict[int, np.ndarray] = {
            t.index: t.data.astype(np.float32) if t.dtype == "float16" else t.data
            for t in model.tensors
            if t.data is not None
        }

    def t(self, i: int) -> TflTensor:
        return self.m.tensors[i]

    def node(self, op_type: str, inputs: list[str], label: str, **attrs) -> str:
        out = self._name(f"{label}:{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._name(f"{label}/{op_type}"), **attrs))
        return out

    def const(self, value, base: str, dtype=np.float32) -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def _transpose(self, src: str, t: TflTensor, layout: str) -> str:
        return self.node("Transpose", [src], f"{t.name}({layout})", perm=list(NCHW if layout == "nchw" else NHWC))

    def get(self, i: int, layout: str | None = None, like: TflTensor | None = None) -> str:
        """An operand: a computed tensor in `layout`, or a constant (laid out to match `like`'s
        layout when it broadcasts against a 4-D tensor kept NCHW)."""
        if i in self.consts:
            value = self.consts[i]
            if like is not None and len(like.shape) == 4 and Layouts.layout_of(like, layout) == "nchw":
                value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(NCHW)
            return self.const(value, self.t(i).name, value.dtype)
        return self.layouts.get(i, layout)

    def define(self, i: int, name: str, layout: str | None = None) -> None:
        self.layouts.set(i, Layouts.layout_of(self.t(i), layout), name)

    def activation(self, op: TflOp, x: str) -> str:
        act = _ACT.get(op.options.get("FusedActivationFunction", 0), "?")
        if act == "?":
            raise UnsupportedModelError(f"{op.label}: fused activation {op.options['FusedActivationFunction']}")
        if act is None:
            return x
        kind, bounds = act
        if bounds is None:
            return self.node(kind, [x], op.label)
        return self.node("Clip", [x, self.const(bounds[0], "lo"), self.const(bounds[1], "hi")], op.label)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        inputs = []
        for i in self.m.inputs:
            t = self.t(i)
            if t.dtype != "float32":
                raise UnsupportedModelError(f"input '{t.name}' is {t.dtype} in a float TFLite model")
            self.layouts.used.add(t.name)
            self.layouts.set(i, "plain", t.name)
            inputs.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape)))
        for op in self.m.ops:
            if op.name in _UNARY:
                handler = self.unary
            elif op.name in _BINARY:
                handler = self.binary
            else:
                handler = getattr(self, f"op_{op.name}", None)
            if handler is None:
                raise UnsupportedModelError(
                    f"unsupported operator: {op.label} (edgecomp compiles {', '.join(supported_float_ops())})"
                )
            handler(op)
        outputs = []
        for i in self.m.outputs:
            t = self.t(i)
            src = self.get(i, "plain")
            name = self._name(t.name) if t.name in self.layouts.used else t.name
            self.layouts.used.add(name)
            self.nodes.append(helper.make_node("Identity", [src], [name], name=f"{name}/output"))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.shape)))
        graph = helper.make_graph(self.nodes, self.m.path.stem, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgecomp-tflite")  # fmt: skip
        model.ir_version = 8
        return model

    # -- operators -------------------------------------------------------------------------------
    def op_DEQUANTIZE(self, op: TflOp) -> None:
        """float16 weights (or quantized constants) as float32 constants."""
        src = self.t(op.inputs[0])
        if src.data is None:
            raise UnsupportedModelError(f"{op.label}: a DEQUANTIZE of a computed tensor in a float model")
        value = src.data.astype(np.float32)
        if src.quantized:
            shape = [1] * value.ndim
            if len(src.scales) > 1:
                shape[src.quantized_dimension] = -1
            value = (value - src.zero_points.reshape(shape)) * src.scales.reshape(shape)
        self.consts[op.outputs[0]] = value.astype(np.float32)

    def _weights(self, i: int, op: TflOp) -> np.ndarray:
        if i not in self.consts:
            raise UnsupportedModelError(f"{op.label}: its weights '{self.t(i).name}' must be constant")
        return self.consts[i]

    def op_CONV_2D(self, op: TflOp) -> None:
        self._conv(op, depthwise=False)

    def op_DEPTHWISE_CONV_2D(self, op: TflOp) -> None:
        self._conv(op, depthwise=True)

    def _conv(self, op: TflOp, depthwise: bool) -> None:
        x_t = self.t(op.inputs[0])
        w = self._weights(op.inputs[1], op)
        if depthwise:
            w, group = w[0].transpose(2, 0, 1)[:, None], x_t.shape[3]
        else:
            w, group = w.transpose(0, 3, 1, 2), x_t.shape[3] // w.shape[3]
        strides = (op.options.get("StrideH", 1), op.options.get("StrideW", 1))
        dil = (max(1, op.options.get("DilationHFactor", 1)), max(1, op.options.get("DilationWFactor", 1)))
        t, left, b, r = tflite_padding(op.options, x_t.shape[1:3], w.shape[2:], strides, dil)
        ins = [self.get(op.inputs[0]), self.const(w, f"{op.label}/w")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            ins.append(self.const(self._weights(op.inputs[2], op), f"{op.label}/b"))
        y = self.node("Conv", ins, op.label, strides=list(strides), dilations=list(dil), pads=[t, left, b, r],
                      group=int(group))  # fmt: skip
        self.define(op.outputs[0], self.activation(op, y))

    def op_FULLY_CONNECTED(self, op: TflOp) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        w = self._weights(op.inputs[1], op)
        depth = w.shape[1]
        batch = int(np.prod(x_t.shape)) // depth
        x = self.get(op.inputs[0], "plain")
        if x_t.shape != (batch, depth):
            x = self.node("Reshape", [x, self.const([batch, depth], "shape", np.int64)], op.label)
        ins = [x, self.const(w, f"{op.label}/w")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            ins.append(self.const(self._weights(op.inputs[2], op), f"{op.label}/b"))
        y = self.activation(op, self.node("Gemm", ins, op.label, transB=1))
        if y_t.shape != (batch, w.shape[0]):
            y = self.node("Reshape", [y, self.const(list(y_t.shape), "shape", np.int64)], op.label)
        self.define(op.outputs[0], y, "plain")

    def binary(self, op: TflOp) -> None:
        y_t = self.t(op.outputs[0])
        layout = "nchw" if len(y_t.shape) == 4 else "plain"
        a, b = (self.get(i, layout, like=y_t) for i in op.inputs[:2])
        if layout == "nchw":
            for i in op.inputs[:2]:
                if i not in self.consts and len(self.t(i).shape) not in (0, 4):
                    raise UnsupportedModelError(f"{op.label}: operands of rank {len(self.t(i).shape)} and 4")
        self.define(op.outputs[0], self.activation(op, self.node(_BINARY[op.name], [a, b], op.label)), layout)

    def unary(self, op: TflOp) -> None:
        x_t = self.t(op.inputs[0])
        x = self.get(op.inputs[0])
        attrs = {"alpha": 1.0} if op.name == "ELU" else {}
        self.define(op.outputs[0], self.node(_UNARY[op.name], [x], op.label, **attrs),
                    "nchw" if len(x_t.shape) == 4 else "plain")  # fmt: skip

    def op_RSQRT(self, op: TflOp) -> None:
        x = self.get(op.inputs[0])
        y = self.node("Reciprocal", [self.node("Sqrt", [x], op.label)], op.label)
        self.define(op.outputs[0], y, Layouts.layout_of(self.t(op.inputs[0])))

    def op_SQUARED_DIFFERENCE(self, op: TflOp) -> None:
        y_t = self.t(op.outputs[0])
        layout = "nchw" if len(y_t.shape) == 4 else "plain"
        a, b = (self.get(i, layout, like=y_t) for i in op.inputs[:2])
        d = self.node("Sub", [a, b], op.label)
        self.define(op.outputs[0], self.node("Mul", [d, d], op.label), layout)

    def op_RELU6(self, op: TflOp) -> None:
        self._clip(op, 0.0, 6.0)

    def op_RELU_N1_TO_1(self, op: TflOp) -> None:
        self._clip(op, -1.0, 1.0)

    def _clip(self, op: TflOp, lo: float, hi: float) -> None:
        x = self.get(op.inputs[0])
        y = self.node("Clip", [x, self.const(lo, "lo"), self.const(hi, "hi")], op.label)
        self.define(op.outputs[0], y, Layouts.layout_of(self.t(op.inputs[0])))

    def op_LEAKY_RELU(self, op: TflOp) -> None:
        x = self.get(op.inputs[0])
        y = self.node("LeakyRelu", [x], op.label, alpha=float(op.options.get("Alpha", 0.2)))
        self.define(op.outputs[0], y, Layouts.layout_of(self.t(op.inputs[0])))

    def op_PRELU(self, op: TflOp) -> None:
        x_t = self.t(op.inputs[0])
        x = self.get(op.inputs[0])
        alpha = self.get(op.inputs[1], like=x_t)
        self.define(op.outputs[0], self.node("PRelu", [x, alpha], op.label), Layouts.layout_of(x_t))

    def _pool(self, op: TflOp, kind: str) -> None:
        x_t = self.t(op.inputs[0])
        kernel = (op.options.get("FilterHeight", 1), op.options.get("FilterWidth", 1))
        strides = (op.options.get("StrideH", 1), op.options.get("StrideW", 1))
        pads = list(tflite_padding(op.options, x_t.shape[1:3], kernel, strides, (1, 1)))
        pads = [pads[0], pads[1], pads[2], pads[3]]
        attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": pads}
        if kind == "AveragePool":
            attrs["count_include_pad"] = 0  # TFLite averages over the taps inside the image
        y = self.node(kind, [self.get(op.inputs[0])], op.label, **attrs)
        self.define(op.outputs[0], self.activation(op, y))

    def op_AVERAGE_POOL_2D(self, op: TflOp) -> None:
        self._pool(op, "AveragePool")

    def op_MAX_POOL_2D(self, op: TflOp) -> None:
        self._pool(op, "MaxPool")

    def _reshape(self, op: TflOp) -> None:
        y_t = self.t(op.outputs[0])
        x = self.get(op.inputs[0], "plain")
        y = self.node("Reshape", [x, self.const(list(y_t.shape), "shape", np.int64)], op.label)
        self.define(op.outputs[0], y, "plain")

    op_RESHAPE = op_SQUEEZE = op_EXPAND_DIMS = _reshape

    def op_SOFTMAX(self, op: TflOp) -> None:
        x = self.get(op.inputs[0], "plain")
        beta = float(op.options.get("Beta", 1.0))
        if beta != 1.0:
            x = self.node("Mul", [x, self.const(beta, "beta")], op.label)
        self.define(op.outputs[0], self.node("Softmax", [x], op.label, axis=-1), "plain")

    def op_L2_NORMALIZATION(self, op: TflOp) -> None:
        x = self.get(op.inputs[0], "plain")
        axis = len(self.t(op.inputs[0]).shape) - 1
        norm = self.node("ReduceL2", [x], op.label, axes=[axis], keepdims=1)
        norm = self.node("Max", [norm, self.const(1e-6, "eps")], op.label)  # TFLite's epsilon
        self.define(op.outputs[0], self.node("Div", [x, norm], op.label), "plain")

    def _axes(self, op: TflOp, i: int, x_t: TflTensor, layout: str) -> list[int]:
        axes = sorted({int(a) % len(x_t.shape) for a in self._weights(i, op).reshape(-1)})
        return sorted(NCHW.index(a) for a in axes) if layout == "nchw" else axes

    def _reduce(self, op: TflOp, kind: str) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        keep = bool(op.options.get("KeepDims", False))
        layout = "nchw" if len(x_t.shape) == 4 and keep else "plain"
        x = self.get(op.inputs[0], layout)
        y = self.node(kind, [x], op.label, axes=self._axes(op, op.inputs[1], x_t, layout), keepdims=int(keep))
        self.define(op.outputs[0], y, layout if len(y_t.shape) == 4 else "plain")

    def op_MEAN(self, op: TflOp) -> None:
        self._reduce(op, "ReduceMean")

    def op_SUM(self, op: TflOp) -> None:
        x_t = self.t(op.inputs[0])
        keep = bool(op.options.get("KeepDims", False))
        layout = "nchw" if len(x_t.shape) == 4 and keep else "plain"
        axes = self.const(self._axes(op, op.inputs[1], x_t, layout), "axes", np.int64)
        y = self.node("ReduceSum", [self.get(op.inputs[0], layout), axes], op.label, keepdims=int(keep))
        self.define(op.outputs[0], y, layout if len(self.t(op.outputs[0]).shape) == 4 else "plain")

    def op_REDUCE_MAX(self, op: TflOp) -> None:
        self._reduce(op, "ReduceMax")

    def _pad(self, op: TflOp) -> None:
        x_t = self.t(op.inputs[0])
        pads = self._weights(op.inputs[1], op).astype(np.int64).reshape(-1, 2)
        layout = "nchw" if len(x_t.shape) == 4 else "plain"
        if layout == "nchw":
            pads = pads[list(NCHW)]
        ins = [self.get(op.inputs[0], layout), self.const(np.concatenate([pads[:, 0], pads[:, 1]]), "pads", np.int64)]
        if op.name == "PADV2" and len(op.inputs) > 2:
            ins.append(self.const(self._weights(op.inputs[2], op).reshape(()), "value"))
        self.define(op.outputs[0], self.node("Pad", ins, op.label, mode="constant"), layout)

    op_PAD = op_PADV2 = _pad

    def op_CONCATENATION(self, op: TflOp) -> None:
        y_t = self.t(op.outputs[0])
        layout = "nchw" if len(y_t.shape) == 4 else "plain"
        axis = op.options.get("Axis", 0) % len(y_t.shape)
        if layout == "nchw":
            axis = NCHW.index(axis)
        xs = [self.get(i, layout, like=y_t) for i in op.inputs]
        self.define(op.outputs[0], self.activation(op, self.node("Concat", xs, op.label, axis=axis)), layout)

    def op_TRANSPOSE(self, op: TflOp) -> None:
        perm = [int(p) for p in self._weights(op.inputs[1], op).reshape(-1)]
        y = self.node("Transpose", [self.get(op.inputs[0], "plain")], op.label, perm=perm)
        self.define(op.outputs[0], y, "plain")

    def op_BATCH_MATMUL(self, op: TflOp) -> None:
        a, b = (self.get(i, "plain") for i in op.inputs[:2])
        if op.options.get("AdjX"):
            a = self.node("Transpose", [a], op.label, perm=_swap_last(len(self.t(op.inputs[0]).shape)))
        if op.options.get("AdjY"):
            b = self.node("Transpose", [b], op.label, perm=_swap_last(len(self.t(op.inputs[1]).shape)))
        self.define(op.outputs[0], self.node("MatMul", [a, b], op.label), "plain")

    def op_STRIDED_SLICE(self, op: TflOp) -> None:
        if op.options.get("EllipsisMask") or op.options.get("NewAxisMask") or op.options.get("Offset"):
            raise UnsupportedModelError(f"{op.label}: ellipsis, new-axis and offset masks are not compiled")
        begin, end, step = (self._weights(i, op).astype(np.int64).reshape(-1) for i in op.inputs[1:4])
        bm, em, sm = (op.options.get(k, 0) for k in ("BeginMask", "EndMask", "ShrinkAxisMask"))
        big = np.iinfo(np.int64).max
        starts, ends = [], []
        for ax in range(len(begin)):
            s, e, st = int(begin[ax]), int(end[ax]), int(step[ax])
            if bm & (1 << ax):
                s = 0 if st > 0 else -1
            if em & (1 << ax):
                e = big if st > 0 else -big
            if sm & (1 << ax):
                e = s + 1 if s != -1 else big
            starts.append(s)
            ends.append(e)
        ins = [self.get(op.inputs[0], "plain"), self.const(starts, "starts", np.int64),
               self.const(ends, "ends", np.int64), self.const(list(range(len(begin))), "axes", np.int64),
               self.const(step, "steps", np.int64)]  # fmt: skip
        y = self.node("Slice", ins, op.label)
        y_t = self.t(op.outputs[0])
        if sm:
            y = self.node("Reshape", [y, self.const(list(y_t.shape), "shape", np.int64)], op.label)
        self.define(op.outputs[0], y, "plain")


def _swap_last(rank: int) -> list[int]:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return perm


def supported_float_ops() -> list[str]:
    return sorted({n[3:] for n in dir(_Converter) if n.startswith("op_")} | set(_UNARY) | set(_BINARY))


def tflite_to_onnx(model: TflModel) -> onnx.ModelProto:
    """The ONNX model computing what the float TFLite `model` computes (same I/O names and shapes)."""
    return _Converter(model).run()
