"""Float micro-kernels for cores with a hardware FPU: register-blocked convolution (conv_f32),
depthwise convolution (dwconv_f32) and dense layer (dense_f32), each with its bias, an optional
residual Add and ReLU/Clip applied as its outputs are stored.

The float path has no integer graph: lower/float_groups.py finds these layers in the imported
Relax function (a conv2d or matmul with constant weights and the element-wise ops that follow it)
and describes each as a FloatConv or FloatDense; the variants of VARIANTS that take those choose
and prepare the kernel here. The sums are the same products as TVM's kernels in another order,
with fused multiply-adds where the FPU has them: within float rounding of onnxruntime, not
bit-exact with it (nor with the host build, which multiplies and adds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecomp.codegen.cnames import c_literals
from edgecomp.lower.model import MicroKernel

CONV_BLOCK = 4  # output channels x output pixels per block of conv_f32 (4 x 4 accumulators)


@dataclass(frozen=True, eq=False)
class FloatLayer:
    """What every float layer kernel applies after its sum: bias (zeros if none), then the
    residual Add (a tensor of the output's shape, the kernel's last input), then the activation."""

    bias: np.ndarray  # [channels] float32
    act: str = "none"  # "none", "relu" or "clip"
    lo: float | None = None  # Clip's bounds (None: unbounded on that side)
    hi: float | None = None
    residual: bool = False


@dataclass(frozen=True, eq=False)
class FloatConv(FloatLayer):
    x_shape: tuple[int, ...] = ()  # [n, cin, h, w]
    out_shape: tuple[int, ...] = ()  # [n, cout, oh, ow]
    weight: np.ndarray | None = None  # [cout, cin / groups, kh, kw]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1


@dataclass(frozen=True, eq=False)
class FloatDense(FloatLayer):
    x_shape: tuple[int, ...] = ()  # [n, k]
    weight: np.ndarray | None = None  # [o, k]


def _act_params(op: FloatLayer) -> dict:
    def lit(v: float | None) -> str:
        return "" if v is None else c_literals(np.array([v], np.float32))[0]

    return {"act": op.act, "lo": lit(op.lo), "hi": lit(op.hi), "residual": int(op.residual)}


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.float32)
    out[: values.size] = values.reshape(-1)
    return out


def is_dense_conv(op: FloatConv, graph=None) -> bool:
    return op.groups == 1


def is_depthwise(op: FloatConv, graph=None) -> bool:
    cin = op.x_shape[1]
    return op.groups == cin == op.weight.shape[0] and op.weight.shape[1] == 1


def _conv_params(op: FloatConv) -> dict:
    n, cin, h, w = op.x_shape
    _, cout, oh, ow = op.out_shape
    _, _, kh, kw = op.weight.shape
    t, left, _, _ = op.pads
    return {"n": n, "cin": cin, "h": h, "w": w, "cout": cout, "oh": oh, "ow": ow, "kh": kh, "kw": kw,
            "sh": op.strides[0], "sw": op.strides[1], "dh": op.dilations[0], "dw": op.dilations[1],
            "pt": t, "pl": left, **_act_params(op)}  # fmt: skip


def conv_f32(index: int, op: FloatConv, graph=None):
    """4 channels x 4 pixels per block; weights [ceil(cout/4)][K][4]."""
    p = _conv_params(op)
    k = p["cin"] * p["kh"] * p["kw"]
    pixels = p["oh"] * p["ow"]
    pointwise = p["kh"] == p["kw"] == 1 and p["sh"] == p["sw"] == 1 and (p["oh"], p["ow"]) == (p["h"], p["w"])
    p.update(k=k, direct=int(pointwise))
    blocks = -(-p["cout"] // CONV_BLOCK)
    w = np.zeros((blocks * CONV_BLOCK, k), np.float32)
    w[: p["cout"]] = op.weight.reshape(p["cout"], k)
    packed = np.ascontiguousarray(w.reshape(blocks, CONV_BLOCK, k).transpose(0, 2, 1))
    # im2col scratch: one block of columns, [K][4] floats (a pointwise layer reads its input in place
    # but for a last partial block of pixels).
    scratch = 0 if pointwise and pixels % CONV_BLOCK == 0 else 4 * CONV_BLOCK * k
    mk = MicroKernel(f"ec_mk{index}_conv_f32", "kernels/conv_f32.c.j2", tuple(sorted(p.items())), scratch,
                     p["n"] * p["cout"] * pixels * k, _inplace(op))  # fmt: skip
    return mk, [packed, _padded(op.bias, blocks * CONV_BLOCK)]


def dwconv_f32(index: int, op: FloatConv, graph=None):
    """Four outputs of a row at a time; weights [c][kh * kw] as they are."""
    p = _conv_params(op)
    padded = any(op.pads)
    hp = p["pt"] + p["h"] + op.pads[2]
    wp = p["pl"] + p["w"] + op.pads[3]
    p.update(c=p["cin"], hp=hp, wp=wp, pb=op.pads[2], pr=op.pads[3], padded=int(padded))
    taps = p["kh"] * p["kw"]
    mk = MicroKernel(f"ec_mk{index}_dwconv_f32", "kernels/dwconv_f32.c.j2", tuple(sorted(p.items())),
                     4 * hp * wp if padded else 0, p["n"] * p["c"] * p["oh"] * p["ow"] * taps, _inplace(op))  # fmt: skip
    return mk, [np.ascontiguousarray(op.weight.reshape(p["c"], taps).astype(np.float32)),
                op.bias.astype(np.float32).reshape(-1)]  # fmt: skip


def dense_f32(index: int, op: FloatDense, graph=None):
    """8 (4 for a layer of fewer than 8 outputs) rows at a time; weights [ceil(o/rows)][k][rows]."""
    n, k = op.x_shape
    o = op.weight.shape[0]
    rows = 8 if o >= 8 else 4
    blocks = -(-o // rows)
    w = np.zeros((blocks * rows, k), np.float32)
    w[:o] = op.weight
    packed = np.ascontiguousarray(w.reshape(blocks, rows, k).transpose(0, 2, 1))
    p = {"n": n, "k": k, "o": o, "rows": rows, **_act_params(op)}
    mk = MicroKernel(f"ec_mk{index}_dense_f32", "kernels/dense_f32.c.j2", tuple(sorted(p.items())), 0,
                     n * o * k, _inplace(op))  # fmt: skip
    return mk, [packed, _padded(op.bias, blocks * rows)]


def _inplace(op: FloatLayer) -> tuple[int, ...]:
    """The residual (input 3: after x, weights, bias) may give its buffer to the output: each output
    reads its own residual value just before it is written, and nothing else reads the residual."""
    return (3,) if op.residual else ()
