"""Integer 2-D convolution (any groups: dense, depthwise, grouped), NCHW, weights [O, I/g, KH, KW].
A 1-D convolution (NCL, weights [O, I/g, K]; an STFT front end, a temporal conv) is the 2-D one of
height 1, between two reshapes, so the same kernels (and micro-kernels) run it. A BatchNormalization
left unfolded (no convolution before it to fold into) is a depthwise 1x1 convolution: per channel,
x * scale / sqrt(var + eps) + (B - mean * that). A ConvTranspose is a convolution of its input with
zeros (the zero point) put between neighbours (stride - 1 of them), padded by dilation * (k - 1) -
pads, with the kernel flipped and its in/out channels swapped (TFLite's TRANSPOSE_CONV, exactly)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.ir import LinearOp, QTensor, int_array, register
from edgecomp.quant.ops.pool import explicit_pads, windows


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Conv(LinearOp):
    kind = "conv"
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    groups: int
    pad_value: int  # the input's zero point: padding is a real 0

    def validate(self) -> None:
        super().validate()
        self._require(self.weight.ndim == 4, "weights must be [O, I/groups, KH, KW]")
        self._require(self.weight.shape[0] % self.groups == 0, "output channels must divide into groups")

    def reference(self, xs, dtype):
        w = self.weight.astype(np.int64)
        t, left, b, r = self.pads
        xp = np.pad(xs[0].astype(np.int64), ((0, 0), (0, 0), (t, b), (left, r)), constant_values=self.pad_value)
        cout, cin_g, kh, kw = w.shape
        win = windows(xp, (kh, kw), self.strides, self.dilations)  # N, Cin, OH, OW, KH, KW
        n, _, oh, ow = win.shape[:4]
        acc = np.empty((n, cout, oh, ow), np.int64)
        cout_g = cout // self.groups
        for gi in range(self.groups):
            x_g = win[:, gi * cin_g : (gi + 1) * cin_g]
            w_g = w[gi * cout_g : (gi + 1) * cout_g]
            acc[:, gi * cout_g : (gi + 1) * cout_g] = np.einsum("ncyxhw,ochw->noyx", x_g, w_g, optimize=True)
        return self.requantize(acc, (1, -1, 1, 1), dtype)


def acc_bias(bias: np.ndarray, x: QTensor) -> np.ndarray:
    """The bias in the accumulator's type: int32 for int8 inputs, int64 for int16 (whose folded zero
    point term alone can exceed int32)."""
    if x.dtype == "int16":
        return bias.astype(np.int64)
    if np.abs(bias).max(initial=0) >= 1 << 31:
        raise UnsupportedModelError("an int32 bias overflows after folding the input zero point")
    return bias.astype(np.int32)


@handles("Conv")
def conv_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    x = ex.act_in(node.input[0], node)
    w, w_scale, _ = ex.weight(node.input[1], node)
    a = ex.attrs(node)
    final = None
    if w.ndim == 3 and len(x.shape) == 3:  # 1-D: height 1
        a = {**a, "dilations": (1, *a.get("dilations", (1,))), "strides": (1, *a.get("strides", (1,))),
             "kernel_shape": (1, *a.get("kernel_shape", w.shape[2:]))}  # fmt: skip
        if "pads" in a:
            a["pads"] = (0, a["pads"][0], 0, a["pads"][1])
        x2 = ex.derived(x, (*x.shape[:2], 1, x.shape[2]), "h1")
        ex.reshape(x, x2, node)
        x, w = x2, w.reshape(*w.shape[:2], 1, w.shape[2])
    if w.ndim != 4 or len(x.shape) != 4:
        raise UnsupportedModelError(f"node '{node.name}': only 1-D and 2-D convolutions have an integer kernel")
    dil = tuple(a.get("dilations", (1, 1)))
    strides = tuple(a.get("strides", (1, 1)))
    pads = explicit_pads(a, x.shape[2:], w.shape[2:], strides, dil, node)
    out, (lo, hi) = ex.out(node)
    if len(out.shape) == 3:
        final, out = out, ex.derived(out, (*out.shape[:2], 1, out.shape[2]), "h1")
    cout = w.shape[0]
    bias = ex.bias(node, 2, x, w_scale, cout)
    w64 = w.astype(np.int64)
    bias = bias - x.zero_point * w64.reshape(cout, -1).sum(axis=1)  # the input zero point, folded
    mult, shift = ex.requant_params(x, w_scale, out, w64.reshape(cout, -1), bias)
    bias = acc_bias(bias, x)
    ex.emit(Conv(inputs=(x.name,), output=out.name, node=node.name, weight=int_array(w, np.int8),
                 bias=int_array(bias, bias.dtype), mult=int_array(mult, np.int64),
                 shift=int_array(shift, np.int64), strides=strides, pads=pads, dilations=dil,
                 groups=int(a.get("group", 1)), pad_value=x.zero_point, out_zp=out.zero_point, lo=lo, hi=hi,
                 weight_bits=ex.weight_bits(node.input[1])))  # fmt: skip
    if final is not None:
        ex.reshape(out, final, node)


@handles("BatchNormalization")
def batchnorm_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    """Inference BatchNormalization as a depthwise 1x1 convolution: its per-channel factor quantized
    here symmetric per channel (one int8 weight of +-127 each), its offset an int32 bias."""
    x = ex.act_in(node.input[0], node)
    a = ex.attrs(node)
    if a.get("training_mode", 0) or len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedModelError(f"node '{node.name}': a training-mode BatchNormalization has no integer kernel")
    gamma, beta, mean, var = (ex.real_const(n, node).reshape(-1) for n in node.input[1:5])
    factor = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    offset = beta - mean * factor
    c = factor.size
    if len(x.shape) not in (3, 4) or x.shape[1] != c:
        raise UnsupportedModelError(f"node '{node.name}': integer BatchNormalization needs NCHW or NCL input")
    out, (lo, hi) = ex.out(node)
    final = None
    if len(x.shape) == 3:
        x2 = ex.derived(x, (*x.shape[:2], 1, x.shape[2]), "h1")
        ex.reshape(x, x2, node)
        x, final, out = x2, out, ex.derived(out, (*out.shape[:2], 1, out.shape[2]), "h1")
    w_scale = np.where(factor != 0, np.abs(factor) / 127.0, 1.0)
    w = np.rint(factor / w_scale).astype(np.int64).reshape(c, 1, 1, 1)
    bias = np.rint(offset / (x.scale * w_scale)).astype(np.int64) - x.zero_point * w.reshape(c)
    mult, shift = ex.requant_params(x, w_scale, out, w.reshape(c, 1), bias)
    bias = acc_bias(bias, x)
    ex.emit(Conv(inputs=(x.name,), output=out.name, node=node.name, weight=int_array(w, np.int8),
                 bias=int_array(bias, bias.dtype), mult=int_array(mult, np.int64), shift=int_array(shift, np.int64),
                 strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=c, pad_value=x.zero_point,
                 out_zp=out.zero_point, lo=lo, hi=hi))  # fmt: skip
    if final is not None:
        ex.reshape(out, final, node)


@handles("ConvTranspose")
def conv_transpose_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    from edgecomp.quant.ops.pad import Pad

    x = ex.act_in(node.input[0], node)
    w, w_scale, axis = ex.weight(node.input[1], node)  # [Cin, Cout, KH, KW]
    a = ex.attrs(node)
    auto_pad = a.get("auto_pad", b"NOTSET")
    if w.ndim != 4 or len(x.shape) != 4 or int(a.get("group", 1)) != 1 or "output_shape" in a or \
            (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":  # fmt: skip
        raise UnsupportedModelError(
            f"node '{node.name}': integer ConvTranspose is 2-D, group 1, with explicit pads (no output_shape)"
        )
    if w_scale.size > 1 and axis % 4 != 1:
        raise UnsupportedModelError(f"node '{node.name}': ConvTranspose weights scaled per input channel")
    strides = tuple(a.get("strides", (1, 1)))
    dil = tuple(a.get("dilations", (1, 1)))
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    extra = tuple(a.get("output_padding", (0, 0)))
    k = w.shape[2:]
    begin = [d * (kk - 1) - p for d, kk, p in zip(dil, k, pads[:2], strict=True)]
    end = [d * (kk - 1) - p + e for d, kk, p, e in zip(dil, k, pads[2:], extra, strict=True)]
    if min(begin + end) < 0:
        raise UnsupportedModelError(f"node '{node.name}': ConvTranspose pads larger than dilation * (kernel - 1)")
    out, (lo, hi) = ex.out(node)
    if any(s > 1 for s in strides):  # the zero point between neighbours: real zeros
        up = ex.derived(x, (*x.shape[:2], *((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides, strict=True))), "up")
        ex.emit(Pad(inputs=(x.name,), output=up.name, node=node.name, pads=((0, 0),) * 4, value=x.zero_point,
                    interior=(0, 0, strides[0] - 1, strides[1] - 1)))  # fmt: skip
        x = up
    wc = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])  # [Cout, Cin, KH, KW], flipped
    cout = wc.shape[0]
    bias = ex.bias(node, 2, x, w_scale, cout)
    w64 = wc.astype(np.int64)
    bias = bias - x.zero_point * w64.reshape(cout, -1).sum(axis=1)
    mult, shift = ex.requant_params(x, w_scale, out, w64.reshape(cout, -1), bias)
    bias = acc_bias(bias, x)
    ex.emit(Conv(inputs=(x.name,), output=out.name, node=node.name, weight=int_array(wc, np.int8),
                 bias=int_array(bias, bias.dtype), mult=int_array(mult, np.int64), shift=int_array(shift, np.int64),
                 strides=(1, 1), pads=(begin[0], begin[1], end[0], end[1]), dilations=dil, groups=1,
                 pad_value=x.zero_point, out_zp=out.zero_point, lo=lo, hi=hi,
                 weight_bits=ex.weight_bits(node.input[1])))  # fmt: skip
