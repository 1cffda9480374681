"""The integer graph of a quantized TFLite model, with TFLite Micro's arithmetic.

Each TFLite operator becomes the IntGraph op of the same computation, with the parameters TFLM
derives in its Prepare (quant/tflite_arith.py) and TFLM's rounding (`rounding="double"`: its
MultiplyByQuantizedMultiplier); element-wise int8 functions (logistic, tanh, hard-swish, ReLU...)
become 256-entry tables computed by running TFLM's algorithm on every input value. The result is
bit-exact with TFLite Micro's reference kernels.

Layout: TFLite is NHWC, edgecomp's kernels are NCHW. Every 4-D tensor an operator computes is
kept NCHW; a Transpose is inserted where an operator needs the model's own order (a Reshape or
fully connected layer of a 4-D tensor, softmax over channels, a 4-D model input or output). The
model's inputs and outputs keep TFLite's shapes and types (int8 in, int8 out for a full-integer
model); `io="float"` adds TFLite's own quantize/dequantize at the edges.
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import UnsupportedModelError
from edgecomp.frontend.tflite import NCHW, NHWC, Layouts, TflModel, TflOp, TflTensor, tflite_padding
from edgecomp.quant import tflite_arith as A
from edgecomp.quant.ir import IntGraph, IntOp, QTensor, Rescale, int_array
from edgecomp.quant.ops import (
    Add,
    Concat,
    Conv,
    Dense,
    Dequantize,
    Lut,
    MaxPool,
    Mul,
    Pad,
    Quantize,
    Reshape,
    Slice,
    TflAvgPool,
    TflMean,
    TflSigmoid16,
    TflSoftmax,
    TflSoftmax16,
    Transpose,
)

_ACT = {0: A.ACT_NONE, 1: A.ACT_RELU, 2: A.ACT_RELU_N1_TO_1, 3: A.ACT_RELU6}
_UNARY = ("LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "HARD_SWISH", "QUANTIZE")


def _identity(zp: int) -> Rescale:
    return Rescale(1 << 30, 30, zp, zp)


def _n(shift: int) -> int:
    """TFLite's shift (left when > 0) as edgecomp's n (real multiplier = M * 2**-n)."""
    return 31 - int(shift)


class _Importer:
    def __init__(self, model: TflModel, io: str) -> None:
        self.m = model
        self.io = io
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[IntOp] = []
        self.layouts = Layouts(model, self._transpose)
        self._name = self.layouts.fresh

    def t(self, i: int) -> TflTensor:
        return self.m.tensors[i]

    def _qtensor(self, t: TflTensor, shape: tuple[int, ...], name: str) -> QTensor:
        if t.dtype not in ("int8", "int16") or not t.quantized:
            raise UnsupportedModelError(f"tensor '{t.name}' ({t.dtype}) is not a quantized int8/int16 tensor")
        if len(t.scales) != 1:
            raise UnsupportedModelError(f"tensor '{t.name}': activations need one scale, not per channel")
        return QTensor(name, shape, t.dtype, t.scale, t.zero_point, t.name)

    def define(self, i: int, op_builder, layout: str | None = None) -> str:
        """Name the graph tensor of TFLite tensor `i` in `layout` (default: NCHW for 4-D tensors),
        emit the op that makes it (op_builder(name, qtensor) -> IntOp) and return its name."""
        t = self.t(i)
        layout = Layouts.layout_of(t, layout)
        name = self._name(t.name)
        q = self._qtensor(t, Layouts.shape_in(t, layout), name)
        self.tensors[name] = q
        self.ops.append(op_builder(name, q))
        self.layouts.set(i, layout, name)
        return name

    def get(self, i: int, layout: str | None = None) -> str:
        """The graph tensor holding TFLite tensor `i` in `layout` (4-D: "nchw" unless "plain")."""
        t = self.t(i)
        if t.data is not None:
            raise UnsupportedModelError(f"constant tensor '{t.name}' as an operand is not compiled on the integer path")
        return self.layouts.get(i, layout)

    def _transpose(self, src: str, t: TflTensor, layout: str) -> str:
        name = self._name(f"{t.name}_{layout}")
        self.tensors[name] = QTensor(name, Layouts.shape_in(t, layout), t.dtype, t.scale, t.zero_point, t.name)
        self.ops.append(Transpose(inputs=(src,), output=name, node=f"{t.name} ({layout})",
                                  perm=NCHW if layout == "nchw" else NHWC, rescale=_identity(t.zero_point),
                                  lo=_qmin(t), hi=_qmax(t)))  # fmt: skip
        return name

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> IntGraph:
        inputs = []
        for i in self.m.inputs:
            t = self.t(i)
            if t.dtype == "float32":
                inputs.append(self._float_input(t))
            elif self.io == "float":
                name = self._name(f"{t.name}_float")
                self.tensors[name] = QTensor(name, t.shape, "float32")
                inputs.append(name)
                self.define(i, lambda out, q, src=name, t=t: Quantize(
                    inputs=(src,), output=out, node=f"{t.name} (quantize)", scale=np.float32(t.scale),
                    zp=t.zero_point, lo=_qmin(t), hi=_qmax(t), rounding="half_away"), "plain")  # fmt: skip
            else:
                name = self._name(t.name)
                self.tensors[name] = self._qtensor(t, t.shape, name)
                self.layouts.set(i, "plain", name)
                inputs.append(name)
        for op in self.m.ops:
            handler = getattr(self, f"op_{op.name}", None)
            if op.name in _UNARY and self.t(op.inputs[0]).dtype != "float32":
                handler = self.unary
            if handler is None:
                raise UnsupportedModelError(
                    f"unsupported operator: {op.label} on the integer path (edgecomp compiles "
                    f"{', '.join(supported_tflite_ops())})"
                )
            handler(op)
        outputs = [self._output(i) for i in self.m.outputs]
        return IntGraph(self.tensors, tuple(self.ops), tuple(inputs), tuple(outputs))

    def _float_input(self, t: TflTensor) -> str:
        name = self._name(t.name)
        self.tensors[name] = QTensor(name, t.shape, "float32")
        self.layouts.set(t.index, "plain", name)
        return name

    def _output(self, i: int) -> str:
        t = self.t(i)
        if t.dtype == "float32":
            return self.layouts.get(i, "plain")
        src = self.get(i, "plain")
        if self.io != "float":
            return src
        name = self._name(f"{t.name}_float")
        self.tensors[name] = QTensor(name, t.shape, "float32")
        self.ops.append(Dequantize(inputs=(src,), output=name, node=f"{t.name} (dequantize)", scale=np.float32(t.scale),
                                   zp=t.zero_point, lo=_qmin(t), hi=_qmax(t)))  # fmt: skip
        return name

    # -- operators -------------------------------------------------------------------------------
    def _act_range(self, op: TflOp, y: TflTensor) -> tuple[int, int]:
        act = op.options.get("FusedActivationFunction", 0)
        if act not in _ACT:
            raise UnsupportedModelError(f"{op.label}: fused activation {act} is not compiled")
        return A.calculate_activation_range_quantized(_ACT[act], y.scale, y.zero_point, _qmin(y), _qmax(y))

    def op_CONV_2D(self, op: TflOp) -> None:
        self._conv(op, depthwise=False)

    def op_DEPTHWISE_CONV_2D(self, op: TflOp) -> None:
        self._conv(op, depthwise=True)

    def _conv(self, op: TflOp, depthwise: bool) -> None:
        x_t, w_t, y_t = self.t(op.inputs[0]), self.t(op.inputs[1]), self.t(op.outputs[0])
        x = self.get(op.inputs[0])
        w = _const(w_t, op, "filter")
        if np.any(w_t.zero_points != 0):
            raise UnsupportedModelError(f"{op.label}: asymmetric int8 weights (zero point != 0) are not compiled")
        if depthwise:  # [1, KH, KW, Cin * mult] -> [Cin * mult, 1, KH, KW], one group per input channel
            w_oihw = np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None])
            groups = x_t.shape[3]
        else:  # [O, KH, KW, I/g] -> [O, I/g, KH, KW]
            w_oihw = np.ascontiguousarray(w.transpose(0, 3, 1, 2))
            groups = x_t.shape[3] // w.shape[3]
        cout = w_oihw.shape[0]
        strides = (op.options.get("StrideH", 1), op.options.get("StrideW", 1))
        dil = (max(1, op.options.get("DilationHFactor", 1)), max(1, op.options.get("DilationWFactor", 1)))
        pads = tflite_padding(op.options, x_t.shape[1:3], w_oihw.shape[2:], strides, dil)
        scales = np.broadcast_to(w_t.scales, (cout,))
        mult, shift, rounding = self._linear_requant(op, x_t, scales, y_t)
        bias = self._bias(op, 2, cout, x_t)
        bias = bias - x_t.zero_point * w_oihw.astype(np.int64).reshape(cout, -1).sum(axis=1)
        lo, hi = self._act_range(op, y_t)
        self.define(op.outputs[0], lambda out, q: Conv(
            inputs=(x,), output=out, node=op.label, weight=int_array(w_oihw, np.int8), bias=_acc(bias, x_t),
            mult=int_array(mult, np.int64), shift=int_array(shift, np.int64), strides=strides, pads=pads,
            dilations=dil, groups=groups, pad_value=x_t.zero_point, out_zp=y_t.zero_point, lo=lo, hi=hi,
            rounding=rounding))  # fmt: skip

    def _bias(self, op: TflOp, idx: int, n: int, x_t: TflTensor) -> np.ndarray:
        if len(op.inputs) <= idx or op.inputs[idx] < 0:
            return np.zeros(n, np.int64)
        b = _const(self.t(op.inputs[idx]), op, "bias")
        want = np.int64 if x_t.dtype == "int16" else np.int32  # int16x8: TFLM's int64 accumulator path
        if b.dtype != want:
            raise UnsupportedModelError(f"{op.label}: bias of type {b.dtype} with {x_t.dtype} input "
                                        f"({np.dtype(want).name} expected)")  # fmt: skip
        return b.astype(np.int64).reshape(-1)

    def _linear_requant(self, op: TflOp, x_t: TflTensor, w_scales, y_t: TflTensor):
        """(mult, shift, rounding) of a conv / fully connected layer. int8: TFLM's double rounding.
        int16x8: TFLM's int64 MultiplyByQuantizedMultiplier, which reduces the multiplier to 15 bits
        and rounds once: exactly edgecomp's single rounding with (M >> 16 rounded, 15 - shift)."""
        if x_t.dtype != y_t.dtype:
            raise UnsupportedModelError(f"{op.label}: {x_t.dtype} input with {y_t.dtype} output is not compiled")
        mult, shift = _per_channel_multipliers(x_t.scale, w_scales, y_t.scale)
        if x_t.dtype == "int8":
            return mult, shift, "double"
        _int16_zero_points(op, x_t, y_t)
        reduced = np.array([A.reduce_multiplier_int64(int(m)) for m in mult], np.int64)
        return reduced, shift - 16, "single"

    def op_FULLY_CONNECTED(self, op: TflOp) -> None:
        x_t, w_t, y_t = self.t(op.inputs[0]), self.t(op.inputs[1]), self.t(op.outputs[0])
        w = _const(w_t, op, "weights")
        if w.ndim != 2:
            raise UnsupportedModelError(f"{op.label}: weights of rank {w.ndim} (2 expected)")
        if np.any(w_t.zero_points != 0):
            raise UnsupportedModelError(f"{op.label}: asymmetric int8 weights (zero point != 0) are not compiled")
        depth = w.shape[1]
        x = self.get(op.inputs[0], "plain")
        batch = int(np.prod(x_t.shape)) // depth
        if x_t.shape != (batch, depth):  # TFLite flattens the input to [batch, depth]
            x = self._reshape_to(x, x_t, (batch, depth))
        mult, shift, rounding = self._linear_requant(op, x_t, np.broadcast_to(w_t.scales, (w.shape[0],)), y_t)
        bias = self._bias(op, 2, w.shape[0], x_t) - x_t.zero_point * w.astype(np.int64).sum(axis=1)
        lo, hi = self._act_range(op, y_t)
        out_shape = (batch, w.shape[0])
        make = lambda out, q: Dense(  # noqa: E731
            inputs=(x,), output=out, node=op.label, weight=int_array(w, np.int8), bias=_acc(bias, x_t),
            mult=int_array(mult, np.int64), shift=int_array(shift, np.int64), out_zp=y_t.zero_point, lo=lo, hi=hi,
            rounding=rounding)  # fmt: skip
        if y_t.shape == out_shape:
            self.define(op.outputs[0], make, "plain")
        else:  # keep_num_dims
            flat = self._name(f"{y_t.name}_2d")
            self.tensors[flat] = QTensor(flat, out_shape, y_t.dtype, y_t.scale, y_t.zero_point, y_t.name)
            self.ops.append(make(flat, self.tensors[flat]))
            self.define(op.outputs[0], lambda out, q: Reshape(inputs=(flat,), output=out, node=op.label,
                                                               rescale=_identity(y_t.zero_point), lo=_qmin(y_t),
                                                               hi=_qmax(y_t)), "plain")  # fmt: skip

    def _reshape_to(self, src: str, t: TflTensor, shape: tuple[int, ...]) -> str:
        name = self._name(f"{t.name}_{'x'.join(map(str, shape))}")
        self.tensors[name] = QTensor(name, shape, t.dtype, t.scale, t.zero_point, t.name)
        self.ops.append(Reshape(inputs=(src,), output=name, node=f"{t.name} (reshape)",
                                rescale=_identity(t.zero_point), lo=_qmin(t), hi=_qmax(t)))  # fmt: skip
        return name

    def _same_layout(self, op: TflOp) -> tuple[list[str], str]:
        """Operands of an element-wise op in one layout: NCHW when the output is 4-D."""
        y_t = self.t(op.outputs[0])
        layout = "nchw" if len(y_t.shape) == 4 else "plain"
        names = []
        for i in op.inputs[:2]:
            t = self.t(i)
            if len(t.shape) not in (len(y_t.shape), 0) and layout == "nchw":
                raise UnsupportedModelError(f"{op.label}: operands of rank {len(t.shape)} and {len(y_t.shape)}")
            names.append(self.get(i, layout))
        return names, layout

    def op_ADD(self, op: TflOp) -> None:
        self._add(op, subtract=False)

    def op_SUB(self, op: TflOp) -> None:
        self._add(op, subtract=True)

    def _add(self, op: TflOp, subtract: bool) -> None:
        a_t, b_t, y_t = self.t(op.inputs[0]), self.t(op.inputs[1]), self.t(op.outputs[0])
        (a, b), layout = self._same_layout(op)
        if not a_t.dtype == b_t.dtype == y_t.dtype:
            raise UnsupportedModelError(f"{op.label}: operands of types {a_t.dtype}, {b_t.dtype} -> {y_t.dtype}")
        if y_t.dtype == "int16" and op.options.get("PotScaleInt16", False):
            raise UnsupportedModelError(f"{op.label}: int16 with power-of-two scales (pot_scale_int16) is not compiled")
        left_shift = 20 if y_t.dtype == "int8" else 15  # TFLM's add/sub_common.cc
        twice_max = 2.0 * float(max(np.float32(a_t.scale), np.float32(b_t.scale)))
        ma, sa = A.quantize_multiplier_smaller_than_one_exp(float(np.float32(a_t.scale)) / twice_max)
        mb, sb = A.quantize_multiplier_smaller_than_one_exp(float(np.float32(b_t.scale)) / twice_max)
        mo, so = A.quantize_multiplier_smaller_than_one_exp(twice_max / (float(1 << left_shift) * float(np.float32(y_t.scale))))
        lo, hi = self._act_range(op, y_t)
        self.define(op.outputs[0], lambda out, q: Add(
            inputs=(a, b), output=out, node=op.label, a_zp=a_t.zero_point, b_zp=b_t.zero_point, a_mult=ma,
            a_shift=_n(sa), b_mult=mb, b_shift=_n(sb), mult=mo, shift=_n(so), left_shift=left_shift,
            out_zp=y_t.zero_point, lo=lo, hi=hi, rounding="double", subtract=subtract), layout)  # fmt: skip

    def op_MUL(self, op: TflOp) -> None:
        a_t, b_t, y_t = self.t(op.inputs[0]), self.t(op.inputs[1]), self.t(op.outputs[0])
        (a, b), layout = self._same_layout(op)
        m, s = A.quantize_multiplier(float(np.float32(a_t.scale)) * float(np.float32(b_t.scale)) / float(np.float32(y_t.scale)))
        lo, hi = self._act_range(op, y_t)
        self.define(op.outputs[0], lambda out, q: Mul(
            inputs=(a, b), output=out, node=op.label, a_zp=a_t.zero_point, b_zp=b_t.zero_point, mult=m, shift=_n(s),
            out_zp=y_t.zero_point, lo=lo, hi=hi, rounding="double"), layout)  # fmt: skip

    def _pool(self, op: TflOp):
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        _same_quant(op, x_t, y_t)
        kernel = (op.options.get("FilterHeight", 1), op.options.get("FilterWidth", 1))
        strides = (op.options.get("StrideH", 1), op.options.get("StrideW", 1))
        pads = tflite_padding(op.options, x_t.shape[1:3], kernel, strides, (1, 1))
        return self.get(op.inputs[0]), x_t, y_t, kernel, strides, pads, self._act_range(op, y_t)

    def op_AVERAGE_POOL_2D(self, op: TflOp) -> None:
        x, x_t, y_t, kernel, strides, pads, (lo, hi) = self._pool(op)
        self.define(op.outputs[0], lambda out, q: TflAvgPool(
            inputs=(x,), output=out, node=op.label, kernel=kernel, strides=strides, pads=pads, lo=lo, hi=hi))

    def op_MAX_POOL_2D(self, op: TflOp) -> None:
        x, x_t, y_t, kernel, strides, pads, (lo, hi) = self._pool(op)
        self.define(op.outputs[0], lambda out, q: MaxPool(
            inputs=(x,), output=out, node=op.label, kernel=kernel, strides=strides, pads=pads,
            rescale=_identity(x_t.zero_point), lo=lo, hi=hi))

    def _copy(self, op: TflOp) -> None:
        """RESHAPE, SQUEEZE, EXPAND_DIMS: the same bytes in the output's shape (TFLite's order)."""
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        _same_quant(op, x_t, y_t)
        x = self.get(op.inputs[0], "plain")
        self.define(op.outputs[0], lambda out, q: Reshape(
            inputs=(x,), output=out, node=op.label, rescale=_identity(x_t.zero_point), lo=_qmin(y_t), hi=_qmax(y_t)),
            "plain")  # fmt: skip

    op_RESHAPE = op_SQUEEZE = op_EXPAND_DIMS = _copy

    def op_SOFTMAX(self, op: TflOp) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        if x_t.dtype == y_t.dtype == "int16":
            return self._softmax16(op, x_t, y_t)
        if x_t.dtype != "int8" or y_t.dtype != "int8":
            raise UnsupportedModelError(f"{op.label}: only int8 -> int8 and int16 -> int16 softmax are compiled")
        if y_t.zero_point != -128 or np.float32(y_t.scale) != np.float32(1 / 256):
            raise UnsupportedModelError(f"{op.label}: TFLite's int8 softmax needs output scale 1/256, zero point -128")
        p = A.prepare_softmax(x_t.scale, op.options.get("Beta", 1.0))
        exp, _ = A.softmax_exp_table(p)
        x = self.get(op.inputs[0], "plain")
        self.define(op.outputs[0], lambda out, q: TflSoftmax(
            inputs=(x,), output=out, node=op.label, exp=int_array(exp, np.int32),
            exp12=int_array(A.rdbpot(exp, 12), np.int32)), "plain")  # fmt: skip

    def _softmax16(self, op: TflOp, x_t: TflTensor, y_t: TflTensor) -> None:
        _int16_zero_points(op, x_t, y_t)
        if abs(float(np.float32(y_t.scale)) - 1 / 32768) > 0.001 / 32768:
            raise UnsupportedModelError(f"{op.label}: TFLite's int16 softmax needs output scale 1/32768")
        m, s = A.prepare_softmax_int16(x_t.scale, op.options.get("Beta", 1.0))
        exp_lut, recip_lut = A.softmax_int16_luts()
        x = self.get(op.inputs[0], "plain")
        self.define(op.outputs[0], lambda out, q: TflSoftmax16(
            inputs=(x,), output=out, node=op.label, mult=m, shift=s, exp_lut=int_array(exp_lut, np.int16),
            recip_lut=int_array(recip_lut, np.int16)), "plain")  # fmt: skip

    def unary(self, op: TflOp) -> None:
        """Element-wise int8 functions as 256-entry tables of TFLM's own results."""
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        if "int16" in (x_t.dtype, y_t.dtype):
            return self._unary16(op, x_t, y_t)
        if x_t.dtype != "int8" or y_t.dtype != "int8":
            raise UnsupportedModelError(f"{op.label}: only int8 -> int8 is compiled on the integer path")
        q = np.arange(-128, 128, dtype=np.int64).astype(np.int8)
        name = op.name
        if name == "LOGISTIC":
            table = A.logistic_int8(q, A.prepare_logistic(x_t.scale, x_t.zero_point))
        elif name == "TANH":
            table = A.tanh_int8(q, A.prepare_tanh(x_t.scale, x_t.zero_point))
        elif name == "RELU":
            table = A.relu_int8(q, x_t.zero_point, y_t.zero_point, A.prepare_relu(x_t.scale, y_t.scale, y_t.zero_point))
        elif name == "RELU6":
            table = A.relu6_int8(q, x_t.scale, x_t.zero_point)
        elif name == "RELU_N1_TO_1":
            lo, hi = A.calculate_activation_range_quantized(A.ACT_RELU_N1_TO_1, x_t.scale, x_t.zero_point)
            table = np.clip(q, lo, hi).astype(np.int8)
        elif name == "LEAKY_RELU":
            table = A.leaky_relu_int8(q, A.prepare_leaky_relu(x_t.scale, x_t.zero_point, y_t.scale, y_t.zero_point,
                                                              op.options.get("Alpha", 0.2)))  # fmt: skip
        elif name == "HARD_SWISH":
            table = A.hard_swish_int8(q, A.prepare_hard_swish(x_t.scale, x_t.zero_point, y_t.scale, y_t.zero_point))
        else:  # QUANTIZE int8 -> int8: a requantization
            m, s = A.prepare_requantize(x_t.scale, y_t.scale)
            table = A.requantize_int8(q, x_t.zero_point, y_t.zero_point, m, s)
        x = self.get(op.inputs[0])
        layout = "nchw" if len(x_t.shape) == 4 else "plain"
        self.define(op.outputs[0], lambda out, qt: Lut(inputs=(x,), output=out, node=op.label,
                                                        table=int_array(table, np.int8)), layout)  # fmt: skip

    def _unary16(self, op: TflOp, x_t: TflTensor, y_t: TflTensor) -> None:
        """Element-wise functions with an int16 side (a 64K-entry table is too big): QUANTIZE as
        TFLM's Requantize (MultiplyByQuantizedMultiplier, double rounding), RELU/RELU6/RELU_N1_TO_1
        on int16 as clamps (TFLM's int16 ReLUs keep the input's quantization)."""
        x = self.get(op.inputs[0])
        layout = "nchw" if len(x_t.shape) == 4 else "plain"
        name = op.name
        if name == "QUANTIZE":
            m, s = A.prepare_requantize(x_t.scale, y_t.scale)
            rescale = Rescale(m, _n(s), x_t.zero_point, y_t.zero_point, "double")
            lo, hi = _qmin(y_t), _qmax(y_t)
        elif name in ("RELU", "RELU6", "RELU_N1_TO_1") and x_t.dtype == y_t.dtype == "int16":
            _same_quant(op, x_t, y_t)
            act = {"RELU": A.ACT_RELU, "RELU6": A.ACT_RELU6, "RELU_N1_TO_1": A.ACT_RELU_N1_TO_1}[name]
            rescale = _identity(x_t.zero_point)
            lo, hi = A.calculate_activation_range_quantized(act, x_t.scale, x_t.zero_point, _qmin(y_t), _qmax(y_t))
        elif name in ("LOGISTIC", "TANH") and x_t.dtype == y_t.dtype == "int16":
            _int16_zero_points(op, x_t, y_t)
            pot, log2 = A.checked_log2(y_t.scale)
            if not pot or log2 != -15:
                raise UnsupportedModelError(f"{op.label}: TFLite's int16 {name} needs output scale 2^-15")
            try:
                m, s = A.prepare_sigmoid_int16(x_t.scale, tanh=name == "TANH")
            except ValueError as exc:
                raise UnsupportedModelError(f"{op.label}: {exc}") from None
            self.define(op.outputs[0], lambda out, q: TflSigmoid16(inputs=(x,), output=out, node=op.label, mult=m,
                                                                    shift=s, tanh=name == "TANH"), layout)  # fmt: skip
            return
        else:
            raise UnsupportedModelError(f"{op.label}: {x_t.dtype} -> {y_t.dtype} is not compiled on the integer path")
        self.define(op.outputs[0], lambda out, q: Reshape(inputs=(x,), output=out, node=op.label, rescale=rescale,
                                                           lo=lo, hi=hi), layout)  # fmt: skip

    def op_QUANTIZE(self, op: TflOp) -> None:
        """float -> int8 (an int8 -> int8 QUANTIZE is a table, see unary)."""
        y_t = self.t(op.outputs[0])
        x = self.get(op.inputs[0], "plain")
        self.define(op.outputs[0], lambda out, q: Quantize(
            inputs=(x,), output=out, node=op.label, scale=np.float32(y_t.scale), zp=y_t.zero_point,
            lo=_qmin(y_t), hi=_qmax(y_t), rounding="half_away"), "plain")  # fmt: skip

    def op_DEQUANTIZE(self, op: TflOp) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        x = self.get(op.inputs[0], "plain")
        name = self._name(y_t.name)
        self.tensors[name] = QTensor(name, y_t.shape, "float32")
        self.ops.append(Dequantize(inputs=(x,), output=name, node=op.label, scale=np.float32(x_t.scale),
                                   zp=x_t.zero_point, lo=_qmin(x_t), hi=_qmax(x_t)))  # fmt: skip
        self.layouts.set(op.outputs[0], "plain", name)

    def op_MEAN(self, op: TflOp) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        axes = sorted({int(a) % len(x_t.shape) for a in _const(self.t(op.inputs[1]), op, "axes").reshape(-1)})
        keep = bool(op.options.get("KeepDims", False))
        n = int(np.prod([x_t.shape[a] for a in axes]))
        m, s = A.prepare_mean(x_t.scale, y_t.scale)
        k = min(n.bit_length() - 1, 32, 31 + s)
        m2, s2 = int(A.wrap32((m << k) // n)), s - k
        if len(x_t.shape) == 4:  # reduce in NCHW: NHWC axis a is NCHW axis NCHW.index(a)
            x = self.get(op.inputs[0])
            axes_here = sorted(NCHW.index(a) for a in axes)
            layout = "nchw" if keep else "plain"
            if not keep and any(a not in (1, 2) for a in axes):
                x, axes_here, layout = self.get(op.inputs[0], "plain"), axes, "plain"
        else:
            x, axes_here, layout = self.get(op.inputs[0], "plain"), axes, "plain"
        self.define(op.outputs[0], lambda out, q: TflMean(
            inputs=(x,), output=out, node=op.label, axes=tuple(axes_here), count=n, mult=m2, shift=_n(s2),
            in_zp=x_t.zero_point, out_zp=y_t.zero_point, lo=_qmin(y_t), hi=_qmax(y_t)), layout)  # fmt: skip

    def op_CONCATENATION(self, op: TflOp) -> None:
        y_t = self.t(op.outputs[0])
        for i in op.inputs:
            _same_quant(op, self.t(i), y_t)
        rank = len(y_t.shape)
        axis = op.options.get("Axis", 0) % rank
        layout = "nchw" if rank == 4 else "plain"
        if layout == "nchw":
            axis = NCHW.index(axis)
        xs = tuple(self.get(i, layout) for i in op.inputs)
        lo, hi = self._act_range(op, y_t)
        self.define(op.outputs[0], lambda out, q: Concat(
            inputs=xs, output=out, node=op.label, axis=axis, rescales=tuple(_identity(y_t.zero_point) for _ in xs),
            lo=lo, hi=hi), layout)  # fmt: skip

    def _pad(self, op: TflOp, value: int) -> None:
        x_t = self.t(op.inputs[0])
        pads = _const(self.t(op.inputs[1]), op, "paddings").astype(np.int64).reshape(-1, 2)
        if len(x_t.shape) == 4:
            x, pads, layout = self.get(op.inputs[0]), pads[list(NCHW)], "nchw"
        else:
            x, layout = self.get(op.inputs[0], "plain"), "plain"
        self.define(op.outputs[0], lambda out, q: Pad(
            inputs=(x,), output=out, node=op.label, pads=tuple((int(a), int(b)) for a, b in pads), value=value),
            layout)  # fmt: skip

    def op_PAD(self, op: TflOp) -> None:
        self._pad(op, self.t(op.outputs[0]).zero_point)

    def op_PADV2(self, op: TflOp) -> None:
        value = int(_const(self.t(op.inputs[2]), op, "pad value").reshape(-1)[0]) if len(op.inputs) > 2 else \
            self.t(op.outputs[0]).zero_point  # fmt: skip
        self._pad(op, value)

    def op_STRIDED_SLICE(self, op: TflOp) -> None:
        """Constant begin/end/strides with begin, end and shrink-axis masks, in TFLite's order."""
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        _same_quant(op, x_t, y_t)
        o = op.options
        if o.get("EllipsisMask", 0) or o.get("NewAxisMask", 0) or o.get("Offset", False):
            raise UnsupportedModelError(f"{op.label}: ellipsis or new-axis masks and offset are not compiled")
        begin, end, strides = (_const(self.t(op.inputs[k]), op, what).astype(np.int64).reshape(-1)
                               for k, what in ((1, "begin"), (2, "end"), (3, "strides")))  # fmt: skip
        rank = len(x_t.shape)
        if not len(begin) == len(end) == len(strides) == rank:
            raise UnsupportedModelError(f"{op.label}: begin/end/strides of length {len(begin)} for rank {rank}")
        starts, steps, sizes = [], [], []
        for ax, dim in enumerate(x_t.shape):
            bit = 1 << ax
            if o.get("ShrinkAxisMask", 0) & bit:
                idx = range(dim)[int(begin[ax]) : int(begin[ax]) + 1 or None]  # one index (negative from the end)
            else:
                b = None if o.get("BeginMask", 0) & bit else int(begin[ax])
                e = None if o.get("EndMask", 0) & bit else int(end[ax])
                idx = range(dim)[b:e:int(strides[ax])]
            if len(idx) == 0:
                raise UnsupportedModelError(f"{op.label}: an empty slice on axis {ax}")
            starts.append(idx.start)
            steps.append(idx.step)
            sizes.append(len(idx))
        x = self.get(op.inputs[0], "plain")  # shrunk axes: Slice lays the taken block out in y's shape
        self.define(op.outputs[0], lambda out, q: Slice(inputs=(x,), output=out, node=op.label, starts=tuple(starts),
                                                         steps=tuple(steps), counts=tuple(sizes),
                                                         shape=tuple(y_t.shape), rescale=_identity(y_t.zero_point),
                                                         lo=_qmin(y_t), hi=_qmax(y_t)), "plain")  # fmt: skip

    def op_TRANSPOSE(self, op: TflOp) -> None:
        x_t, y_t = self.t(op.inputs[0]), self.t(op.outputs[0])
        perm = tuple(int(p) for p in _const(self.t(op.inputs[1]), op, "perm").reshape(-1))
        x = self.get(op.inputs[0], "plain")
        self.define(op.outputs[0], lambda out, q: Transpose(
            inputs=(x,), output=out, node=op.label, perm=perm, rescale=_identity(x_t.zero_point), lo=_qmin(y_t),
            hi=_qmax(y_t)), "plain")  # fmt: skip


def _qmin(t: TflTensor) -> int:
    return int(np.iinfo(t.dtype).min)


def _qmax(t: TflTensor) -> int:
    return int(np.iinfo(t.dtype).max)


def _acc(bias: np.ndarray, x_t: TflTensor) -> np.ndarray:
    """The bias in the accumulator's type: int32 for int8 inputs, int64 for int16 (TFLM's int64 path)."""
    return int_array(bias, np.int64 if x_t.dtype == "int16" else np.int32)


def _int16_zero_points(op: TflOp, *ts: TflTensor) -> None:
    """TFLM's int16 kernels require symmetric activations (it checks zero point 0 in Prepare)."""
    for t in ts:
        if t.dtype == "int16" and t.zero_point != 0:
            raise UnsupportedModelError(f"{op.label}: int16 tensor '{t.name}' has zero point {t.zero_point} "
                                        "(TFLite Micro's int16 kernels need 0)")  # fmt: skip


def _const(t: TflTensor, op: TflOp, what: str) -> np.ndarray:
    if t.data is None:
        raise UnsupportedModelError(f"{op.label}: its {what} '{t.name}' must be a constant")
    return t.data


def _same_quant(op: TflOp, x: TflTensor, y: TflTensor) -> None:
    """TFLM copies these ops' values as they are: it requires the same scale and zero point."""
    if abs(x.scale - y.scale) > 1e-6 or x.zero_point != y.zero_point:
        raise UnsupportedModelError(
            f"{op.label}: input and output are quantized differently ({x.scale:g}/{x.zero_point} vs "
            f"{y.scale:g}/{y.zero_point}), which TFLite Micro does not run either"
        )


def _per_channel_multipliers(s_in: float, s_w: np.ndarray, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """TFLM's PopulateConvolutionQuantizationParams: per channel QuantizeMultiplier of
    (double)s_in * (double)s_w[c] / (double)s_out; as (M, n) with n = 31 - shift."""
    pairs = [A.quantize_multiplier(float(np.float32(s_in)) * float(s) / float(np.float32(s_out))) for s in
             np.asarray(s_w, np.float32)]  # fmt: skip
    return np.array([m for m, _ in pairs], np.int64), np.array([_n(s) for _, s in pairs], np.int64)


def supported_tflite_ops() -> list[str]:
    return sorted({n[3:] for n in dir(_Importer) if n.startswith("op_")} | set(_UNARY))


def tflite_int_graph(model: TflModel, io: str | None = None) -> IntGraph:
    """The IntGraph of an integer TFLite model; io None or "int8": the model's own I/O types,
    "float": quantize/dequantize added at integer edges."""
    return _Importer(model, "float" if io == "float" else "model").run()
