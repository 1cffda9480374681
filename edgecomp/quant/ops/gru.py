"""Integer GRU (ONNX GRU, batch 1, forward / reverse / bidirectional), in the integer LSTM's
arithmetic (quant/ops/lstm.py: int8 x and h, int8 weights per gate row, Q3.12 gates, Q0.15
sigmoid/tanh tables). TFLite and CMSIS-NN have no integer GRU; this one is edgecomp's. Per step,
gate rows in ONNX's order z, r, h:

    gx = sat32(requant(W x + bias_x, Mx, nx));  gh = requant(R h + bias_h, Mh, nh)
    z, r = sigmoid16(sat16(gx + gh))                                                        Q0.15
    linear_before_reset=1:  n = tanh16(sat16(gx_h + rs(r * sat16(gh_h), 15)))
    linear_before_reset=0:  n = tanh16(sat16(gx_h + requant(R_h rs(r * (h - h_zp), 15) + b_h)))
    hq = requant(h - h_zp, Mq, nq)                       h in 2**-15 units
    h  = clamp(requant(rs((32768 - z) * n + z * hq, 15), Mo, no) + h_zp, -128, 127)

with rs(v, n) = (v + 2**(n-1)) >> n and requant edgecomp's single rounding (quant/fixedpoint.py).
The bias of the h row's recurrent part (Rb_h) stays with it (it is inside the reset product).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import qrange, quantize_multiplier, quantize_multipliers, requant
from edgecomp.quant.ir import IntOp, QTensor, int_array, register
from edgecomp.quant.ops.layout import Reshape
from edgecomp.quant.ops.lstm import (
    GATE_BITS,
    TABLE_POINTS,
    _row_scales,
    _state_out,
    _state_params,
    initial_state,
    lookup16,
    recurrent_weights,
    refusal,
    rshift_round,
    table16,
)
from edgecomp.quant.ops.patch import Crop
from edgecomp.quant.ops.pool import rescale_of

RESULTS = ("y", "h", "all")


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Gru(IntOp):
    """inputs: (x [seq, 1, in], then h0 [D, 1, hidden] if has_h0)."""

    kind = "gru"
    # "y": every step's h [seq, D, 1, hidden]; "h": the final h [D, 1, hidden]; "all": int8
    # [1, 1, seq + 1, D * hidden], every step's h then the final h (Crop ops take Y, Y_h out of it).
    result: str
    reverse: tuple[bool, ...]  # per direction
    linear_before_reset: bool
    has_h0: bool
    w: np.ndarray  # int8 [D * 3 hidden, in], rows z, r, h of each direction
    r: np.ndarray  # int8 [D * 3 hidden, hidden]
    bias_x: np.ndarray  # int32 [D * 3 hidden]
    bias_h: np.ndarray  # int32 [D * 3 hidden]
    mult_x: np.ndarray  # int64 [D * 3 hidden]: x_scale * w_scale / 2**-12
    shift_x: np.ndarray
    mult_h: np.ndarray  # h_scale * r_scale / 2**-12
    shift_h: np.ndarray
    q_mult: int  # h_scale / 2**-15: h to 2**-15 units
    q_shift: int
    out_mult: int  # 2**-15 / h_scale
    out_shift: int
    h_zp: int
    sigmoid: np.ndarray  # int16 [513]
    tanh: np.ndarray  # int16 [513]

    @property
    def hidden(self) -> int:
        return self.r.shape[1]

    def validate(self) -> None:
        rows, dirs = self.w.shape[0], len(self.reverse)
        self._require(self.result in RESULTS, f"result must be one of {RESULTS}")
        self._require(dirs in (1, 2), "one or two directions")
        self._require(self.w.dtype == np.int8 and self.r.dtype == np.int8, "weights must be int8")
        self._require(self.w.ndim == 2 and rows % (3 * dirs) == 0 and self.r.shape == (rows, rows // (3 * dirs)),
                      "w must be [D * 3 hidden, in] and r [D * 3 hidden, hidden]")  # fmt: skip
        for name in ("bias_x", "bias_h", "mult_x", "shift_x", "mult_h", "shift_h"):
            self._require(
                getattr(self, name).shape == (rows,), f"{name} needs one value per gate row ({rows})"
            )
        self._require(bool(np.all(self.shift_x >= 1) and np.all(self.shift_h >= 1)), "shifts must be >= 1")
        for name in ("sigmoid", "tanh"):
            self._require(
                getattr(self, name).shape == (TABLE_POINTS,), f"{name} must be {TABLE_POINTS} points"
            )
        self._require(len(self.inputs) == 1 + self.has_h0, "inputs: x, then h0 if given")

    def reference(self, xs, dtype):
        hidden, dirs = self.hidden, len(self.reverse)
        x = xs[0].astype(np.int64).reshape(-1, self.w.shape[1])
        seq = x.shape[0]
        h0 = (
            xs[1].astype(np.int64).reshape(dirs, hidden)
            if self.has_h0
            else np.full((dirs, hidden), self.h_zp)
        )
        ys = np.zeros((seq, dirs, hidden), np.int64)
        hs = np.zeros((dirs, hidden), np.int64)
        for d, rev in enumerate(self.reverse):
            rows = slice(d * 3 * hidden, (d + 1) * 3 * hidden)
            h = h0[d]
            for t in reversed(range(seq)) if rev else range(seq):
                h = ys[t, d] = self._step(x[t], h, rows)
            hs[d] = h
        if self.result == "all":
            return (
                np.concatenate([ys.reshape(seq, -1), hs.reshape(1, -1)])
                .reshape(1, 1, seq + 1, -1)
                .astype(dtype)
            )
        return (
            ys.reshape(seq, dirs, 1, hidden) if self.result == "y" else hs.reshape(dirs, 1, hidden)
        ).astype(dtype)

    def _step(self, x, h, rows: slice):
        hidden = self.hidden
        w, r = self.w[rows].astype(np.int64), self.r[rows].astype(np.int64)
        bx, bh = self.bias_x[rows].astype(np.int64), self.bias_h[rows].astype(np.int64)
        mx, sx, mh, sh = self.mult_x[rows], self.shift_x[rows], self.mult_h[rows], self.shift_h[rows]
        zr, hrow = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
        gx = np.clip(requant(w @ x + bx, mx, sx), -(2**31), 2**31 - 1)  # held as int32
        gh_zr = requant(r[zr] @ h + bh[zr], mh[zr], sh[zr])
        zr_pre = np.clip(gx[zr] + gh_zr, -32768, 32767)
        z, rg = lookup16(self.sigmoid, zr_pre[:hidden]), lookup16(self.sigmoid, zr_pre[hidden:])
        if self.linear_before_reset:
            gh_h = np.clip(requant(r[hrow] @ h + bh[hrow], mh[hrow], sh[hrow]), -32768, 32767)
            n_pre = gx[hrow] + rshift_round(rg * gh_h, 15)
        else:
            rh = rshift_round(rg * (h - self.h_zp), 15)
            n_pre = gx[hrow] + requant(r[hrow] @ rh + bh[hrow], mh[hrow], sh[hrow])
        n = lookup16(self.tanh, np.clip(n_pre, -32768, 32767))
        hq = requant(h - self.h_zp, self.q_mult, self.q_shift)
        new = rshift_round((32768 - z) * n + z * hq, 15)
        return np.clip(requant(new, self.out_mult, self.out_shift) + self.h_zp, -128, 127)


def gru_refusal(node: onnx.NodeProto, attrs: dict, inputs: list[str]) -> str | None:
    """Why the integer GRU does not take this node (None: it does). Shared with the quantizer."""
    if attrs.get("layout", 0) != 0:
        return "layout 1 (layout 0 only)"
    if "clip" in attrs:
        return "a clip"
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if acts and any(acts[i : i + 2] != ["Sigmoid", "Tanh"] for i in range(0, len(acts), 2)):
        return f"activations {acts} (Sigmoid, Tanh only)"
    if len(inputs) > 4 and inputs[4]:
        return "sequence_lens"
    return None


_refuse = partial(refusal, "GRU")


@handles("GRU")
def gru_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    a, inputs, x, w, w_scale, r, r_scale, hidden, reverse, dirs, rows, b = recurrent_weights(
        ex, node, "GRU", 3, _refuse, gru_refusal)
    lbr = bool(a.get("linear_before_reset", 0))
    wb, rb = b[:, : 3 * hidden].copy(), b[:, 3 * hidden :].copy()
    wb[:, : 2 * hidden] += rb[:, : 2 * hidden]  # z and r: both biases with the input part
    rb[:, : 2 * hidden] = 0.0  # the h row's recurrent bias stays inside the reset product
    outs = list(node.output) + [""] * (2 - len(node.output))
    (y, y_live), (yh, yh_live) = (_state_out(ex, node, n) for n in outs[:2])
    h0 = inputs[5] if len(inputs) > 5 and inputs[5] else ""
    h = yh or y or _state_params(ex, node, h0, (dirs, 1, hidden))
    if h is None or h.dtype != "int8":
        raise _refuse(node, "h left in float or not int8")
    if any(t is not None and (t.scale, t.zero_point) != (h.scale, h.zero_point) for t in (y, yh)):
        raise _refuse(node, "Y and Y_h quantized differently (they are the same h)")
    states = []
    st = initial_state(ex, node, h0, h, _refuse) if h0 else None
    if st is not None:
        states.append(st)
    w_scale = _row_scales(w_scale, dirs, hidden, 3)
    r_scale = _row_scales(r_scale, dirs, hidden, 3)
    r_sum = r.astype(np.int64).sum(1)
    h_row = np.tile(np.arange(3 * hidden) >= 2 * hidden, dirs)
    bias_x = np.round(wb.reshape(rows) / (x.scale * w_scale)) - x.zero_point * w.astype(np.int64).sum(1)
    # z, r rows (and the h row with linear_before_reset): R (h - zp); the h row without it: R rh.
    bias_h = np.round(rb.reshape(rows) / (h.scale * r_scale)) - np.where(
        h_row & (not lbr), 0, h.zero_point * r_sum
    )
    for name, bias, k in (("input", bias_x, w.shape[1]), ("recurrent", bias_h, hidden)):
        if np.abs(bias).max(initial=0) + k * 256 * 128 >= 2**31:
            raise _refuse(
                node, f"a {name} bias that leaves int32 (the input's scale is too small for the bias)"
            )
    mult_x, shift_x = quantize_multipliers(x.scale * w_scale * 2**GATE_BITS)
    mult_h, shift_h = quantize_multipliers(h.scale * r_scale * 2**GATE_BITS)
    q_mult, q_shift = quantize_multiplier(h.scale * 2**15)
    out_mult, out_shift = quantize_multiplier(2.0**-15 / h.scale)
    common = dict(reverse=reverse, linear_before_reset=lbr, has_h0=bool(states), w=int_array(w, np.int8),
                  r=int_array(r, np.int8), bias_x=int_array(bias_x, np.int32), bias_h=int_array(bias_h, np.int32),
                  mult_x=int_array(mult_x, np.int64), shift_x=int_array(shift_x, np.int64),
                  mult_h=int_array(mult_h, np.int64), shift_h=int_array(shift_h, np.int64), q_mult=q_mult,
                  q_shift=q_shift, out_mult=out_mult, out_shift=out_shift, h_zp=h.zero_point,
                  sigmoid=int_array(table16(lambda v: 1 / (1 + np.exp(-v)), 2.0**-GATE_BITS), np.int16),
                  tanh=int_array(table16(np.tanh, 2.0**-GATE_BITS), np.int16))  # fmt: skip
    wanted = [(k, t) for k, (t, live) in enumerate(((y, y_live), (yh, yh_live))) if t is not None and live]
    if len(wanted) == 1:
        k, t = wanted[0]
        ex.emit(Gru(inputs=(x.name, *states), output=t.name, node=node.name, result=RESULTS[k], **common))
        return
    seq = x.shape[0]
    both = QTensor(f"{node.name}__gru_all", (1, 1, seq + 1, dirs * hidden), "int8", h.scale, h.zero_point)
    ex.tensors[both.name] = both
    ex.emit(Gru(inputs=(x.name, *states), output=both.name, node=node.name, result="all", **common))
    for k, t in wanted:
        r0, r1 = ((0, seq), (seq, seq + 1))[k]
        part = QTensor(f"{both.name}_{k}", (1, 1, r1 - r0, dirs * hidden), "int8", h.scale, h.zero_point)
        ex.tensors[part.name] = part
        ex.emit(Crop(inputs=(both.name,), output=part.name, node=node.name, box=(r0, r1, 0, dirs * hidden)))
        lo, hi = qrange("int8")
        ex.emit(
            Reshape(
                inputs=(part.name,), output=t.name, node=node.name, rescale=rescale_of(part, t), lo=lo, hi=hi
            )
        )
