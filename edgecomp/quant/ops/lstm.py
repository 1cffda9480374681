"""Integer LSTM (ONNX LSTM, forward, batch 1), after TFLite's / CMSIS-NN's 8x8->16 design.

int8 input x and hidden state h (asymmetric), int8 weights W, R (symmetric, per gate row or per
tensor), int16 cell state c (symmetric, scale 2**-cell_shift). Per step t, gate rows in ONNX's order
i, o, f, c (g):

    pre   = sat16(requant(W x_t + bias_x, Mx, nx) + requant(R h + bias_h, Mh, nh))   Q3.12 (2**-12)
    i, o, f = sigmoid16(pre_i, pre_o, pre_f);  g = tanh16(pre_g)                       Q0.15
    c     = sat16(rs(f * c, 15) + rs(i * g, 30 - cell_shift))                          2**-cell_shift
    h     = clamp(requant(o * tanhc16(c), Mo, no) + h_zp, -128, 127)                   int8, h's scale

with rs(v, n) = (v + 2**(n-1)) >> n, requant quant/fixedpoint.py's single rounding, the zero points
of x and h folded into the biases (bias_x also holds ONNX's Wb + Rb). sigmoid16/tanh16/tanhc16 are
513-point tables interpolated as the int16 LUTs (fixedpoint.interp_table): exact integer
definitions, within a few LSB of Q0.15 of the real functions. Y (all h), Y_h (last h) and Y_c (last
c) are one op when the model reads one of them; when it reads several, one op writes every step's h
and the last c into one int16 tensor and Crop ops take them out of it (one recurrence).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.quant.extract import Extractor, handles
from edgecomp.quant.fixedpoint import interp_table, qrange, quantize_multiplier, quantize_multipliers, requant
from edgecomp.quant.ir import IntOp, QTensor, int_array, register
from edgecomp.quant.ops.layout import Reshape
from edgecomp.quant.ops.patch import Crop
from edgecomp.quant.ops.pool import rescale_of

GATE_BITS = 12  # gate pre-activations are Q3.12
TABLE_POINTS = 513  # one point every 128 int16 steps (as quant/ops/lut.py's Lut16)
RESULTS = ("y", "h", "c", "all")


def rshift_round(v: np.ndarray, n: int) -> np.ndarray:
    """(v + 2**(n-1)) >> n on int64: a rounding shift, half towards +infinity."""
    return (v + (np.int64(1) << (n - 1))) >> n


def table16(fn, in_scale: float) -> np.ndarray:
    """fn on the int16 grid of scale `in_scale`, in Q0.15, at every 128th input (513 points)."""
    q = np.arange(-32768, 32769, 128, dtype=np.float64)
    return np.clip(np.rint(fn(q * in_scale) * 32768.0), -32768, 32767).astype(np.int16)


def lookup16(table: np.ndarray, v: np.ndarray) -> np.ndarray:
    return interp_table(table, v.astype(np.int64) + 32768)


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Lstm(IntOp):
    """inputs: (x [seq, 1, in], then h0 [1, 1, hidden] if has_h0, then c0 [1, 1, hidden] if has_c0)."""

    kind = "lstm"
    # "y": every step's h [seq, D, 1, hidden]; "h": the final h [D, 1, hidden]; "c": the final c
    # (int16); "all": int16 [1, 1, seq + 2, D * hidden], every step's h, the final h, the final c
    # (Crop ops take Y, Y_h, Y_c out of it). D directions: `reverse` says which run backwards.
    result: str
    reverse: tuple[bool, ...]  # per direction: (False,) forward, (True,) reverse, (False, True) both
    has_h0: bool
    has_c0: bool
    w: np.ndarray  # int8 [D * 4 hidden, in], rows i, o, f, g of each direction
    r: np.ndarray  # int8 [D * 4 hidden, hidden]
    bias_x: np.ndarray  # int32 [D * 4 hidden]: biases and -x_zp * sum(w row)
    bias_h: np.ndarray  # int32 [D * 4 hidden]: -h_zp * sum(r row)
    mult_x: np.ndarray  # int64 [D * 4 hidden]: x_scale * w_scale / 2**-12
    shift_x: np.ndarray
    mult_h: np.ndarray  # h_scale * r_scale / 2**-12
    shift_h: np.ndarray
    out_mult: int  # 2**-30 / h_scale
    out_shift: int
    h_zp: int
    cell_shift: int  # the cell state's scale is 2**-cell_shift
    sigmoid: np.ndarray  # int16 [513]: Q3.12 -> Q0.15
    tanh: np.ndarray  # int16 [513]: Q3.12 -> Q0.15
    tanh_cell: np.ndarray  # int16 [513]: cell scale -> Q0.15

    @property
    def hidden(self) -> int:
        return self.r.shape[1]

    def validate(self) -> None:
        rows = self.w.shape[0]
        self._require(self.result in RESULTS, f"result must be one of {RESULTS}")
        self._require(self.w.dtype == np.int8 and self.r.dtype == np.int8, "weights must be int8")
        dirs = len(self.reverse)
        self._require(dirs in (1, 2), "one or two directions")
        self._require(self.w.ndim == 2 and rows % (4 * dirs) == 0 and self.r.shape == (rows, rows // (4 * dirs)),
                      "w must be [D * 4 hidden, in] and r [D * 4 hidden, hidden]")  # fmt: skip
        for name in ("bias_x", "bias_h", "mult_x", "shift_x", "mult_h", "shift_h"):
            self._require(
                getattr(self, name).shape == (rows,), f"{name} needs one value per gate row ({rows})"
            )
        self._require(self.bias_x.dtype == np.int32 and self.bias_h.dtype == np.int32, "biases must be int32")
        self._require(bool(np.all(self.shift_x >= 1) and np.all(self.shift_h >= 1)) and self.out_shift >= 1,
                      "shifts must be >= 1")  # fmt: skip
        self._require(1 <= self.cell_shift <= 29, f"cell scale 2**-{self.cell_shift} outside 2**-29 .. 2**-1")
        for name in ("sigmoid", "tanh", "tanh_cell"):
            self._require(getattr(self, name).shape == (TABLE_POINTS,) and getattr(self, name).dtype == np.int16,
                          f"{name} must be {TABLE_POINTS} int16 points")  # fmt: skip
        self._require(len(self.inputs) == 1 + self.has_h0 + self.has_c0, "inputs: x, then h0, c0 if given")

    def reference(self, xs, dtype):
        hidden, dirs = self.hidden, len(self.reverse)
        x = xs[0].astype(np.int64).reshape(-1, self.w.shape[1])
        seq, k = x.shape[0], 1
        h0 = np.full((dirs, hidden), self.h_zp, np.int64)
        c0 = np.zeros((dirs, hidden), np.int64)
        if self.has_h0:
            h0, k = xs[k].astype(np.int64).reshape(dirs, hidden), k + 1
        if self.has_c0:
            c0 = xs[k].astype(np.int64).reshape(dirs, hidden)
        ys = np.zeros((seq, dirs, hidden), np.int64)
        hs, cs = np.zeros((dirs, hidden), np.int64), np.zeros((dirs, hidden), np.int64)
        for d, rev in enumerate(self.reverse):
            rows = slice(d * 4 * hidden, (d + 1) * 4 * hidden)
            h, c = h0[d], c0[d]
            for t in reversed(range(seq)) if rev else range(seq):
                h, c = self._step(x[t], h, c, rows)
                ys[t, d] = h
            hs[d], cs[d] = h, c
        if self.result == "all":
            return (
                np.concatenate([ys.reshape(seq, -1), hs.reshape(1, -1), cs.reshape(1, -1)])
                .reshape(1, 1, seq + 2, dirs * hidden)
                .astype(dtype)
            )
        out = {"y": ys.reshape(seq, dirs, 1, hidden), "h": hs.reshape(dirs, 1, hidden),
               "c": cs.reshape(dirs, 1, hidden)}[self.result]  # fmt: skip
        return out.astype(dtype)

    def _step(self, x, h, c, rows: slice):
        """One step of one direction (gate rows `rows` of the weights): the new (h, c)."""
        hidden = self.hidden
        w, r = self.w[rows].astype(np.int64), self.r[rows].astype(np.int64)
        gx = requant(w @ x + self.bias_x[rows], self.mult_x[rows], self.shift_x[rows])
        gh = requant(r @ h + self.bias_h[rows], self.mult_h[rows], self.shift_h[rows])
        pre = np.clip(gx + gh, -32768, 32767)
        i, o, f, g = (pre[j * hidden : (j + 1) * hidden] for j in range(4))
        i, o, f = lookup16(self.sigmoid, i), lookup16(self.sigmoid, o), lookup16(self.sigmoid, f)
        g = lookup16(self.tanh, g)
        c = np.clip(rshift_round(f * c, 15) + rshift_round(i * g, 30 - self.cell_shift), -32768, 32767)
        h = np.clip(
            requant(o * lookup16(self.tanh_cell, c), self.out_mult, self.out_shift) + self.h_zp, -128, 127
        )
        return h, c


DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


def lstm_refusal(node: onnx.NodeProto, attrs: dict, inputs: list[str]) -> str | None:
    """Why the integer LSTM does not take this node (None: it does). Shared with the quantizer."""
    if attrs.get("layout", 0) != 0:
        return "layout 1 (layout 0 only)"
    if "clip" in attrs:
        return "a cell clip"
    if attrs.get("input_forget", 0):
        return "input_forget=1"
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if acts and acts != ["Sigmoid", "Tanh", "Tanh"]:
        return f"activations {acts} (Sigmoid, Tanh, Tanh only)"
    if len(inputs) > 4 and inputs[4]:
        return "sequence_lens"
    if len(inputs) > 7 and inputs[7]:
        return "peepholes"
    return None


def refusal(kind: str, node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    """The one-line refusal of an integer recurrent op (`kind`: LSTM, GRU)."""
    return UnsupportedModelError(
        f"node '{node.name}' ({kind}): the integer {kind} does not support {why}; compile the model in float"
    )


_refuse = partial(refusal, "LSTM")


def _state_out(ex: Extractor, node: onnx.NodeProto, name: str) -> tuple[QTensor | None, bool]:
    """The int tensor an LSTM output is quantized to (None: no QuantizeLinear reads it), and whether
    the model reads it (through the DequantizeLinear of that tensor)."""
    users = ex.consumers.get(name, []) if name else []
    qs = [u for u in users if u.op_type == "QuantizeLinear"]
    if not qs:
        return None, False
    if len(qs) != len(users) or len(qs) > 1:
        raise UnsupportedModelError(
            f"node '{node.name}' (LSTM): its output '{name}' is used in float or quantized twice; edgecomp needs "
            "it quantized once (QuantizeLinear) to compile an integer LSTM"
        )
    q = qs[0]
    scale, zp, _ = ex.qparams(q)
    dqs = ex.consumers.get(q.output[0], [])
    # The float tensor it quantizes (per-layer reports): the LSTM output's own name, which edgecomp's
    # quantizer gives the first DequantizeLinear after it (a model output is reported as an output).
    float_name = name
    if dqs and dqs[0].op_type == "DequantizeLinear" and dqs[0].output[0] not in ex.graph_outputs:
        float_name = dqs[0].output[0]
    t = QTensor(
        q.output[0], ex.shape(q.output[0]), ex._act_dtype(zp, q), ex._scale(scale, q), int(zp), float_name
    )
    ex.tensors[t.name] = t
    live = any(ex.consumers.get(d.output[0]) or d.output[0] in ex.graph_outputs for d in dqs)
    return t, live or q.output[0] in ex.graph_outputs


def _row_scales(scale: np.ndarray, dirs: int, hidden: int, gates: int = 4) -> np.ndarray:
    """A weight's scales, one per gate row of every direction (the quantizer's DequantizeLinear on
    axis 1 has one per row, shared by the directions; or one per tensor)."""
    scale = np.asarray(scale, np.float64).reshape(-1)
    return np.tile(np.broadcast_to(scale, (gates * hidden,)), dirs)


def _const_state(ex: Extractor, name: str) -> tuple[np.ndarray, float, int] | None:
    """(int values, scale, zero point) of an initial state that is a constant through its
    DequantizeLinear; None for a computed one."""
    dq = ex.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in ex.consts:
        return None
    scale, zp, _ = ex.qparams(dq)
    if scale.size != 1:
        return None
    return ex.consts[dq.input[0]].astype(np.int64), float(scale.reshape(-1)[0]), int(zp)


def _state_params(ex: Extractor, node: onnx.NodeProto, name: str, shape: tuple[int, ...]) -> QTensor | None:
    """The quantization of a state, from the DequantizeLinear of its initial value (when no output
    of the LSTM that holds the state is quantized: dead-code removal drops unread ones)."""
    dq = ex.producer.get(name) if name else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    scale, zp, _ = ex.qparams(dq)
    return QTensor(name, shape, str(zp.dtype), float(scale.reshape(-1)[0]), int(zp))


def recurrent_weights(ex: Extractor, node: onnx.NodeProto, kind: str, gates: int, refuse, refusal) -> tuple:
    """What LSTM and GRU read alike: the form's refusal (`refusal(node, attrs, inputs)`, a reason or
    None), a check that the quantizer wrapped the node, then the int8
    [seq, 1, in] input, the weights W and R as [rows, k] with their scales, hidden size, directions
    (`reverse` per direction) and the float bias B as [dirs, 2 * gates * hidden] (zeros if absent)."""
    a = ex.attrs(node)
    inputs = list(node.input)
    why = refusal(node, a, inputs)
    if why:
        raise refuse(node, why)
    if not any(u.op_type == "QuantizeLinear" for o in node.output if o for u in ex.consumers.get(o, [])):
        raise refuse(node, f"a{'n' if kind == 'LSTM' else ''} {kind} left in float (edgecomp's quantizer quantizes "
                           f"{kind}s with --quantize int8 and w4a8)")  # fmt: skip
    x = ex.act_in(inputs[0], node)
    if x.dtype != "int8" or len(x.shape) != 3 or x.shape[1] != 1:
        raise refuse(node, f"input {x.shape} {x.dtype} (int8 [seq, 1, in]: batch 1)")
    w, w_scale, _ = ex.weight(inputs[1], node)
    r, r_scale, _ = ex.weight(inputs[2], node)
    hidden = int(a["hidden_size"])
    direction = a.get("direction", b"forward")
    reverse = DIRECTIONS[direction.decode() if isinstance(direction, bytes) else direction]
    dirs = len(reverse)
    rows = dirs * gates * hidden
    w, r = w.reshape(rows, -1), r.reshape(rows, hidden)
    b = ex.real_const(inputs[3], node).reshape(dirs, 2 * gates * hidden) if len(inputs) > 3 and inputs[3] else \
        np.zeros((dirs, 2 * gates * hidden))  # fmt: skip
    return a, inputs, x, w, w_scale, r, r_scale, hidden, reverse, dirs, rows, b


def initial_state(ex: Extractor, node: onnx.NodeProto, name: str, want: QTensor, refuse) -> str | None:
    """The run-time initial state `name` if it is one (None for a constant start: edgecomp's
    quantizer adds a zero state that holds the scale), checked to be quantized as the state it starts."""
    const = _const_state(ex, name)
    if const is not None:
        value, scale, zp = const
        if scale != want.scale or zp != want.zero_point or np.any(value != zp):
            raise refuse(node, f"a constant initial state '{name}' other than zero in the state's scale")
        return None
    st = ex.act_in(name, node)
    if (st.dtype, st.scale, st.zero_point) != (want.dtype, want.scale, want.zero_point):
        raise refuse(node, f"an initial state '{name}' quantized unlike the state it starts")
    return st.name


@handles("LSTM")
def lstm_from_onnx(ex: Extractor, node: onnx.NodeProto) -> None:
    a, inputs, x, w, w_scale, r, r_scale, hidden, reverse, dirs, rows, b = recurrent_weights(
        ex, node, "LSTM", 4, _refuse, lstm_refusal)
    b = (b[:, : 4 * hidden] + b[:, 4 * hidden :]).reshape(rows)  # Wb + Rb, per direction
    outs = list(node.output) + [""] * (3 - len(node.output))
    (y, y_live), (yh, yh_live), (yc, yc_live) = (_state_out(ex, node, n) for n in outs[:3])
    h0 = inputs[5] if len(inputs) > 5 and inputs[5] else ""
    c0 = inputs[6] if len(inputs) > 6 and inputs[6] else ""
    h = yh or y or _state_params(ex, node, h0, (dirs, 1, hidden))
    c = yc or _state_params(ex, node, c0, (dirs, 1, hidden))
    if h is None or c is None:
        raise _refuse(
            node, "h or c left in float (edgecomp's quantizer quantizes them: pass --quantize int8)"
        )
    if h.dtype != "int8" or c.dtype != "int16" or c.zero_point != 0:
        raise _refuse(node, "states other than int8 h and int16 c with zero point 0")
    cell_shift = -int(round(np.log2(c.scale)))
    if 2.0**-cell_shift != c.scale:
        raise _refuse(node, f"a cell state scale {c.scale} that is not a power of two")
    if any(
        t is not None and (t.dtype, t.scale, t.zero_point) != (h.dtype, h.scale, h.zero_point)
        for t in (y, yh)
    ):
        raise _refuse(node, "Y and Y_h quantized differently (they are the same h)")
    states = []
    for name, want in ((h0, h), (c0, c)):
        st = initial_state(ex, node, name, want, _refuse) if name else None
        if st is not None:
            states.append(st)
    has_h0 = bool(h0) and _const_state(ex, h0) is None
    has_c0 = bool(c0) and _const_state(ex, c0) is None
    w_scale = _row_scales(w_scale, dirs, hidden)
    r_scale = _row_scales(r_scale, dirs, hidden)
    bias_x = np.round(b / (x.scale * w_scale)) - x.zero_point * w.astype(np.int64).sum(1)
    bias_h = -h.zero_point * r.astype(np.int64).sum(1)
    for name, bias, k in (("input", bias_x, w.shape[1]), ("recurrent", bias_h, hidden)):
        if np.abs(bias).max(initial=0) + k * 128 * 128 >= 2**31:
            raise _refuse(
                node, f"a {name} bias that leaves int32 (the input's scale is too small for the bias)"
            )
    mult_x, shift_x = quantize_multipliers(x.scale * w_scale * 2**GATE_BITS)
    mult_h, shift_h = quantize_multipliers(h.scale * r_scale * 2**GATE_BITS)
    out_mult, out_shift = quantize_multiplier(2.0**-30 / h.scale)
    common = dict(reverse=reverse, has_h0=has_h0, has_c0=has_c0,
                  w=int_array(w, np.int8), r=int_array(r, np.int8), bias_x=int_array(bias_x, np.int32),
                  bias_h=int_array(bias_h, np.int32), mult_x=int_array(mult_x, np.int64),
                  shift_x=int_array(shift_x, np.int64), mult_h=int_array(mult_h, np.int64),
                  shift_h=int_array(shift_h, np.int64), out_mult=out_mult, out_shift=out_shift,
                  h_zp=h.zero_point, cell_shift=cell_shift,
                  sigmoid=int_array(table16(lambda v: 1 / (1 + np.exp(-v)), 2.0**-GATE_BITS), np.int16),
                  tanh=int_array(table16(np.tanh, 2.0**-GATE_BITS), np.int16),
                  tanh_cell=int_array(table16(np.tanh, c.scale), np.int16))  # fmt: skip
    wanted = [
        (k, t)
        for k, (t, live) in enumerate(((y, y_live), (yh, yh_live), (yc, yc_live)))
        if t is not None and live
    ]
    if len(wanted) == 1:
        k, t = wanted[0]
        ex.emit(Lstm(inputs=(x.name, *states), output=t.name, node=node.name, result=RESULTS[k], **common))
        return
    # Several outputs: one recurrence into an int16 tensor, each output cropped out of it.
    seq = x.shape[0]
    both = QTensor(f"{node.name}__lstm_all", (1, 1, seq + 2, dirs * hidden), "int16")
    ex.tensors[both.name] = both
    ex.emit(Lstm(inputs=(x.name, *states), output=both.name, node=node.name, result="all", **common))
    for k, t in wanted:
        r0, r1 = ((0, seq), (seq, seq + 1), (seq + 1, seq + 2))[k]
        part = QTensor(f"{both.name}_{k}", (1, 1, r1 - r0, dirs * hidden), t.dtype, t.scale, t.zero_point)
        ex.tensors[part.name] = part
        ex.emit(Crop(inputs=(both.name,), output=part.name, node=node.name, box=(r0, r1, 0, dirs * hidden)))
        lo, hi = qrange(t.dtype)
        ex.emit(
            Reshape(
                inputs=(part.name,), output=t.name, node=node.name, rescale=rescale_of(part, t), lo=lo, hi=hi
            )
        )
