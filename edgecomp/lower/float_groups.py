"""Float layers to micro-kernels: in the Relax function the ONNX importer made, each conv2d or
matmul with constant weights, together with the element-wise ops that follow it alone — a constant
per-channel Add (the bias), an Add of another tensor of its shape (a residual), then ReLU or a
Clip with constant bounds — becomes one call of a float micro-kernel (lower/kernels/float32.py)
when a variant for the target's features covers it.

The group's last binding keeps its variable and now binds the kernel call (so what it computes
for `edgecomp validate` stays known); the group's other bindings go. Everything else is left to
TVM's kernels, as are all layers when no variant applies.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst as _CONST

from edgecomp.lower import kernels
from edgecomp.lower.kernels.float32 import FloatConv, FloatDense
from edgecomp.lower.model import MicroKernel

_F32 = "float32"


def _op_name(value) -> str | None:
    op = getattr(value, "op", None)
    return op.name if isinstance(op, tvm.ir.Op) else None


def _vars_in(expr) -> list:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _vars_in(f)]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _vars_in(a)]
    return []


def _shape(expr) -> tuple[int, ...] | None:
    """The static shape of a float32 tensor expression, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None or str(ty.dtype) != _F32:
        return None
    try:
        return tuple(int(v) for v in ty.shape.values)
    except (TypeError, AttributeError):
        return None


class _Main:
    """The bindings of main, what binds each variable, who reads it."""

    def __init__(self, main: relax.Function) -> None:
        self.main = main
        self.bindings = [b for block in main.body.blocks for b in block.bindings]
        self.index = {b.var: i for i, b in enumerate(self.bindings)}
        self.readers: dict = {}
        for i, b in enumerate(self.bindings):
            for v in _vars_in(b.value):
                self.readers.setdefault(v, []).append(i)
        self.escapes = set(_vars_in(main.body.body))  # read by the function's result

    def const(self, expr) -> np.ndarray | None:
        """The value of a constant float32 expression: a constant, or a reshape / permute_dims of one."""
        if isinstance(expr, relax.Var) and expr in self.index:
            expr = self.bindings[self.index[expr]].value
        if isinstance(expr, _CONST):
            data = expr.value.numpy()
            return data if data.dtype == np.float32 else None
        name = _op_name(expr)
        if name == "relax.reshape":
            inner = self.const(expr.args[0])
            shape = _shape(expr)
            return None if inner is None or shape is None else inner.reshape(shape)
        if name == "relax.permute_dims":
            inner = self.const(expr.args[0])
            axes = expr.attrs.axes
            if inner is None:
                return None
            return np.transpose(inner, None if axes is None else [int(a) for a in axes])
        return None

    def sole_reader(self, var) -> int | None:
        """The binding that alone reads `var` (and reads it once), if `var` is read by nothing else."""
        readers = self.readers.get(var, [])
        if var in self.escapes or len(readers) != 1:
            return None
        return readers[0]


def _epilogue(m: _Main, start: int, channels: int, channel_axis: int, taken) -> tuple[list[int], dict]:
    """The element-wise ops that follow binding `start` alone (none of them `taken` by another
    kernel), as far as a kernel can apply them: a bias, a residual Add, then ReLU and clamps
    (ONNX's Clip comes as a maximum and a minimum with constants); (their binding indices,
    FloatLayer fields)."""
    chain: list[int] = []
    var = m.bindings[start].var
    out_shape = _shape(var)
    fields: dict = {"bias": np.zeros(channels, np.float32)}
    lo = hi = None  # the clamp so far (None: unbounded)
    while True:
        j = m.sole_reader(var)
        if j is None or j in taken or _shape(m.bindings[j].var) != out_shape:
            break
        value = m.bindings[j].value
        name = _op_name(value)
        args = list(value.args)
        other = None
        if name in ("relax.add", "relax.maximum", "relax.minimum") and len(args) == 2:
            other = args[1] if args[0].same_as(var) else args[0]
            if other.same_as(var):
                break
        c = m.const(other) if other is not None else None
        if name == "relax.add" and lo is None and hi is None and "residual" not in fields:
            if c is not None:
                per_channel = _per_channel(c, out_shape, channel_axis)
                if per_channel is None or chain:  # a bias only right after the sum
                    break
                fields["bias"] = per_channel
            elif isinstance(other, relax.Var) and _shape(other) == out_shape:
                fields.update(residual=True, residual_var=other)
            else:
                break
        elif name == "relax.nn.relu" and hi is None:
            lo = 0.0 if lo is None else max(lo, 0.0)
        elif name == "relax.maximum" and hi is None and c is not None and c.size == 1:
            lo = float(c.reshape(-1)[0]) if lo is None else max(lo, float(c.reshape(-1)[0]))
        elif name == "relax.minimum" and c is not None and c.size == 1:
            hi = float(c.reshape(-1)[0]) if hi is None else min(hi, float(c.reshape(-1)[0]))
        elif name == "relax.clip" and hi is None and len(args) == 3:
            bounds = [_prim(a) for a in args[1:]]
            if False in bounds:
                break
            lo = bounds[0] if lo is None else max(lo, bounds[0])
            hi = bounds[1]
        else:
            break
        chain.append(j)
        var = m.bindings[j].var
    lo = None if lo is None or lo == -np.inf else lo
    hi = None if hi is None or hi == np.inf else hi
    if lo is not None or hi is not None:
        fields.update(act="relu" if lo == 0.0 and hi is None else "clip", lo=lo, hi=hi)
    return chain, fields


def _prim(expr):
    """A constant PrimValue's float value, False if it is not one."""
    if isinstance(expr, relax.PrimValue):
        value = expr.value
        if isinstance(value, tvm.tirx.FloatImm | tvm.tirx.IntImm):
            return float(np.float32(value.value))
    return False


def _per_channel(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """A constant addend as one value per channel (axis `axis` of the output), if it is that."""
    channels = out_shape[axis]
    if c.size == 1:
        return np.full(channels, c.reshape(-1)[0], np.float32)
    if c.size != channels or c.ndim > len(out_shape):
        return None
    shape = (1,) * (len(out_shape) - c.ndim) + c.shape
    if shape[axis] != channels:
        return None
    return np.ascontiguousarray(c.reshape(-1).astype(np.float32))


def _conv_layer(m: _Main, i: int, taken) -> tuple[FloatConv, list[int], relax.Expr] | None:
    call = m.bindings[i].value
    attrs = call.attrs
    x, w = call.args
    x_shape, out_shape, weight = _shape(x), _shape(m.bindings[i].var), m.const(w)
    if x_shape is None or out_shape is None or weight is None or len(x_shape) != 4 or weight.ndim != 4:
        return None
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW"):
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", _F32):
        return None
    pads = tuple(int(v) for v in attrs.padding)
    if len(pads) == 2:
        pads = pads * 2
    chain, fields = _epilogue(m, i, out_shape[1], 1, taken)
    res = fields.pop("residual_var", None)
    layer = FloatConv(x_shape=x_shape, out_shape=out_shape, weight=weight,
                      strides=tuple(int(v) for v in attrs.strides), pads=pads,
                      dilations=tuple(int(v) for v in attrs.dilation), groups=int(attrs.groups), **fields)  # fmt: skip
    return layer, chain, res


def _dense_layer(m: _Main, i: int, taken) -> tuple[FloatDense, list[int], relax.Expr] | None:
    call = m.bindings[i].value
    x, w = call.args
    if call.attrs is not None and call.attrs.out_dtype is not None and str(call.attrs.out_dtype) not in ("", _F32):
        return None
    x_shape, out_shape, weight = _shape(x), _shape(m.bindings[i].var), m.const(w)
    if x_shape is None or out_shape is None or weight is None or len(x_shape) != 2 or weight.ndim != 2:
        return None
    chain, fields = _epilogue(m, i, out_shape[1], 1, taken)
    res = fields.pop("residual_var", None)
    return FloatDense(x_shape=x_shape, weight=np.ascontiguousarray(weight.T), **fields), chain, res


_LAYERS = {"relax.nn.conv2d": _conv_layer, "relax.matmul": _dense_layer}


def replace_float_layers(mod: tvm.IRModule, features: frozenset[str]) -> tuple[tvm.IRModule, dict[str, MicroKernel]]:
    """`mod` with every float layer a kernel variant covers on `features` replaced by a
    call_dps_packed to that kernel, and the kernels by symbol (numbered in the order they run)."""
    main = mod["main"]
    if not isinstance(main.body, relax.SeqExpr):
        return mod, {}
    m = _Main(main)
    taken: set[int] = set()  # bindings a kernel computes
    groups = []  # (binding the kernel replaces, its input, variant, kernel, constants, residual)
    for i, b in enumerate(m.bindings):
        make = _LAYERS.get(_op_name(b.value))
        found = make(m, i, taken) if make is not None and i not in taken else None
        if found is None:
            continue
        layer, chain, residual = found
        made = kernels.select_float(layer, len(groups), features)
        if made is None:
            continue
        taken.update([i, *chain])
        # The kernel runs where the group's last op did: everything it reads is computed by then.
        groups.append((chain[-1] if chain else i, b.value.args[0], *made, residual))
    if not groups:
        return mod, {}
    replaced: dict[int, relax.Binding] = {}
    chosen: dict[str, MicroKernel] = {}
    for k, (last, x, variant, mk, consts, residual) in enumerate(sorted(groups, key=lambda g: g[0])):
        mk = replace(mk, symbol=re.sub(r"^ec_mk\d+_", f"ec_mk{k}_", mk.symbol), variant=variant.name)
        args = [x, *(relax.const(c, str(c.dtype)) for c in consts), *([residual] if residual is not None else [])]
        out = m.bindings[last].var
        call = relax.call_dps_packed(mk.symbol, relax.Tuple(args), relax.TensorType(_shape(out), _F32))
        replaced[last] = relax.VarBinding(out, call)
        chosen[mk.symbol] = mk
    blocks, k = [], 0
    for block in main.body.blocks:
        bindings = []
        for b in block.bindings:
            if k in replaced:
                bindings.append(replaced[k])
            elif k not in taken:
                bindings.append(b)
            k += 1
        blocks.append(type(block)(bindings))
    new_main = relax.Function(main.params, relax.SeqExpr(blocks, main.body.body), main.ret_ty, main.is_pure,
                              main.attrs)  # fmt: skip
    mod = mod.clone()
    mod["main"] = new_main
    return mod, chosen
