"""LSTM, GRU and RNN -> MatMul, Add, Mul, activations, Split, Slice and Concat, unrolled over the
(static) sequence: TVM's ONNX importer has none of the three, and an unrolled cell is a static
call sequence with a planned arena, which is what a microcontroller build needs anyway.

The input projection X·Wᵀ (plus every bias that is not gated) is one MatMul per gate over the
whole sequence, hoisted out of the time loop and split into time steps by one Split; each step
then adds H·Rᵀ (one MatMul per gate, which TVM fuses with the add and the gate's activation)
and updates the state. States are kept as [1, B, H] (layout 1: [B, 1, H]), the shape of a time
step, so that no step needs a reshape or gather kernel: a step costs about one kernel call per
gate. A state that is not given starts at zero, so the first step skips its recurrent MatMuls.

Streaming audio models run these one step at a time with the state as model inputs and
outputs (initial_h/initial_c in, Y_h/Y_c out): sequence length 1, the same rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.frontend.ops import recurrent_limit

if TYPE_CHECKING:
    from edgecomp.lower.legalize import _Graph

# ONNX's gate order in W, R and B, per op.
GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


@dataclass(frozen=True)
class _Direction:
    """One direction's constants, split per gate: input weights Wᵀ [I, H], recurrent weights
    Rᵀ [H, H], the bias folded into the input projection, the recurrent bias kept apart (GRU's
    h gate with linear_before_reset), peepholes, and its activations."""

    reverse: bool
    w: dict[str, np.ndarray]
    r: dict[str, np.ndarray]
    x_bias: dict[str, np.ndarray]
    h_bias: dict[str, np.ndarray]
    peephole: dict[str, np.ndarray]
    activations: tuple[str, ...]


@dataclass(frozen=True)
class _Shape:
    seq: int
    batch: int
    hidden: int
    layout: int  # 0: time-major [S, B, .]; 1: batch-major [B, S, .]

    @property
    def time_axis(self) -> int:
        return self.layout


def recurrent(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """LSTM / GRU / RNN -> the unrolled cell, every output (Y, Y_h, Y_c) that is used."""
    why = recurrent_limit(node)
    if why is not None:
        raise UnsupportedModelError(f"{node.op_type} node '{node.name}': {why}")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    elem, xshape = g.types[node.input[0]]
    if len(xshape) != 3 or min(xshape) < 0:
        raise UnsupportedModelError(f"{node.op_type} node '{node.name}': X needs a static 3-D shape, not {xshape}")
    layout = attrs.get("layout", 0)
    seq, batch = (xshape[0], xshape[1]) if layout == 0 else (xshape[1], xshape[0])
    _check_sequence_lens(g, node, seq)
    directions = _directions(g, node, attrs, elem)
    shape = _Shape(seq, batch, directions[0].r[GATES[node.op_type][0]].shape[0], layout)
    e = _Emitter(g, helper.tensor_dtype_to_np_dtype(elem), attrs.get("clip"))
    inputs = list(node.input) + [""] * (8 - len(node.input))
    h0_name = inputs[5]
    c0_name = inputs[6] if node.op_type == "LSTM" else ""
    step = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[node.op_type]
    ys, hs, cs = [], [], []
    for d, direction in enumerate(directions):
        h0 = e.state(h0_name, d, layout)
        c0 = e.state(c0_name, d, layout)
        xw = {k: e.time_steps(e.input_projection(node.input[0], direction, k), shape)
              for k in GATES[node.op_type]}  # fmt: skip
        per_time, h, c = _unroll(e, step, direction, xw, h0, c0, shape, attrs)
        ys.append(per_time)
        hs.append(h)
        cs.append(c)
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if outputs[0]:
        e.sequence_output(ys, shape, outputs[0])
    if outputs[1]:
        e.state_output(hs, shape, outputs[1])
    if node.op_type == "LSTM" and outputs[2]:
        e.state_output(cs, shape, outputs[2])
    return e.nodes


def _check_sequence_lens(g: _Graph, node: onnx.NodeProto, seq: int) -> None:
    """sequence_lens, when given, must be a constant saying every sequence is full length
    (shorter ones make the outputs depend on per-batch lengths: not compiled)."""
    lens = g.constant_input(node, 4)
    if lens is None:
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': sequence_lens must be a constant (the full length {seq})"
        )
    if lens.size and np.any(lens != seq):
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': sequence_lens {lens.tolist()} shorter than the "
            f"sequence ({seq}) are not compiled"
        )


def _directions(g: _Graph, node: onnx.NodeProto, attrs: dict, elem: int) -> list[_Direction]:
    """W, R, B and P split per direction and gate, biases folded where the cell allows."""
    op = node.op_type
    consts = _weights(g, node)
    gates = GATES[op]
    n_gates, hidden = len(gates), consts["R"].shape[-1]
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    direction = attrs.get("direction", b"forward").decode()
    names = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    defaults = DEFAULT_ACTIVATIONS[op]
    acts = [a.decode() for a in attrs.get("activations", [])] or list(defaults) * len(names)
    out = []
    for d, name in enumerate(names):
        w, r = consts["W"][d], consts["R"][d]
        b = consts["B"][d] if consts["B"].size else np.zeros(2 * n_gates * hidden, dtype)
        p = consts["P"][d] if consts["P"].size else None
        part = {k: slice(j * hidden, (j + 1) * hidden) for j, k in enumerate(gates)}
        wb = {k: b[s] for k, s in part.items()}
        rb = {k: b[n_gates * hidden + s.start : n_gates * hidden + s.stop] for k, s in part.items()}
        # With linear_before_reset, GRU's h gate multiplies its recurrent bias by the reset
        # gate: it stays out of the input projection. Every other bias is a plain sum.
        gated = {"h"} if op == "GRU" and attrs.get("linear_before_reset", 0) else set()
        out.append(
            _Direction(
                reverse=name == "reverse",
                w={k: np.ascontiguousarray(w[s].T).astype(dtype) for k, s in part.items()},
                r={k: np.ascontiguousarray(r[s].T).astype(dtype) for k, s in part.items()},
                x_bias={k: (wb[k] + (0 if k in gated else rb[k])).astype(dtype) for k in gates},
                h_bias={k: rb[k].astype(dtype) for k in gated},
                peephole={} if p is None else {k: p[j * hidden : (j + 1) * hidden].astype(dtype)
                                                 for j, k in enumerate("iof")},  # fmt: skip
                activations=tuple(acts[d * len(defaults) : (d + 1) * len(defaults)]),
            )
        )
    return out


def _weights(g: _Graph, node: onnx.NodeProto) -> dict[str, np.ndarray]:
    """W, R, B, P as arrays (empty when omitted); they must be constants: the rewrite splits and
    transposes them at compile time."""
    consts = {}
    for i, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        value = g.constant_input(node, i)
        if value is None:
            raise UnsupportedModelError(f"{node.op_type} node '{node.name}': its weights {what} must be constants")
        consts[what] = value
    return consts


def _unroll(e: _Emitter, step, direction: _Direction, xw: dict[str, list[str]], h: str | None,
            c: str | None, shape: _Shape, attrs: dict) -> tuple[list[str], str, str | None]:  # fmt: skip
    """Run `step` over the sequence in the direction's order (`xw`: each gate's projected input
    per time step); the hidden state of every time index (in time order), and the final hidden
    and cell states."""
    per_time: list[str] = [""] * shape.seq
    order = range(shape.seq - 1, -1, -1) if direction.reverse else range(shape.seq)
    for t in order:
        x_t = {k: parts[t] for k, parts in xw.items()}
        h, c = step(e, direction, x_t, h, c, attrs)
        per_time[t] = h
    return per_time, h, c


def _lstm_step(e: _Emitter, d: _Direction, x: dict[str, str], h: str | None, c: str | None,
               attrs: dict) -> tuple[str, str]:  # fmt: skip
    """One LSTM step: i, f, o = f(.), c̃ = g(.), C = f⊙C₋₁ + i⊙c̃, H = o⊙h(C)."""
    f_act, g_act, h_act = d.activations
    pre = {k: e.recurrent_sum(x[k], h, d.r[k]) for k in "iofc"}
    for k in "if":
        if k in d.peephole and c is not None:
            pre[k] = e.add(pre[k], e.mul(c, e.const("peephole", d.peephole[k])))
    i, f, cc = e.act(f_act, pre["i"]), e.act(f_act, pre["f"]), e.act(g_act, pre["c"])
    new_c = e.mul(i, cc) if c is None else e.add(e.mul(f, c), e.mul(i, cc))
    if "o" in d.peephole:
        pre["o"] = e.add(pre["o"], e.mul(new_c, e.const("peephole", d.peephole["o"])))
    o = e.act(f_act, pre["o"])
    return e.mul(o, e.act(h_act, new_c, clip=False)), new_c


def _gru_step(e: _Emitter, d: _Direction, x: dict[str, str], h: str | None, c: None,
              attrs: dict) -> tuple[str, None]:  # fmt: skip
    """One GRU step: z, r = f(.), h̃ = g(x·Whᵀ + (r⊙H₋₁)·Rhᵀ + b) or, linear_before_reset,
    g(x·Whᵀ + r⊙(H₋₁·Rhᵀ + Rbh) + Wbh); H = (1 - z)⊙h̃ + z⊙H₋₁."""
    f_act, g_act = d.activations
    z = e.act(f_act, e.recurrent_sum(x["z"], h, d.r["z"]))
    r = e.act(f_act, e.recurrent_sum(x["r"], h, d.r["r"]))
    if attrs.get("linear_before_reset", 0):
        rb = e.const("rbias", d.h_bias["h"])
        hr = rb if h is None else e.add(e.matmul(h, d.r["h"]), rb)
        pre_h = e.add(x["h"], e.mul(r, hr))
    else:
        pre_h = x["h"] if h is None else e.add(x["h"], e.matmul(e.mul(r, h), d.r["h"]))
    cand = e.act(g_act, pre_h)
    # (1 - z)⊙h̃ + z⊙H₋₁ = h̃ - z⊙(h̃ - H₋₁)
    if h is None:
        return e.sub(cand, e.mul(z, cand)), None
    return e.sub(cand, e.mul(z, e.sub(cand, h))), None


def _rnn_step(e: _Emitter, d: _Direction, x: dict[str, str], h: str | None, c: None,
              attrs: dict) -> tuple[str, None]:  # fmt: skip
    """One RNN step: H = f(x·Wᵀ + H₋₁·Rᵀ + Wb + Rb)."""
    return e.act(d.activations[0], e.recurrent_sum(x["i"], h, d.r["i"])), None


class _Emitter:
    """Appends ONNX nodes for the unrolled cell, with fresh names and shared constants."""

    def __init__(self, g: _Graph, dtype: np.dtype, clip: float | None) -> None:
        self.g = g
        self.dtype = dtype
        self.clip = clip
        self.nodes: list[onnx.NodeProto] = []
        self._consts: dict[tuple, str] = {}

    def const(self, hint: str, value) -> str:
        """A constant, one initializer per distinct value (indices, shapes and biases repeat)."""
        arr = np.ascontiguousarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.g.const(hint, arr)
        return self._consts[key]

    def _op(self, op: str, inputs: list[str], hint: str, out: str | None = None, **attrs) -> str:
        out = out or self.g.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def add(self, a: str, b: str) -> str:
        return self._op("Add", [a, b], "add")

    def sub(self, a: str, b: str) -> str:
        return self._op("Sub", [a, b], "sub")

    def mul(self, a: str, b: str) -> str:
        return self._op("Mul", [a, b], "mul")

    def matmul(self, a: str, weight: np.ndarray) -> str:
        return self._op("MatMul", [a, self.const("w", weight)], "mm")

    def recurrent_sum(self, x_t: str, h: str | None, r: np.ndarray) -> str:
        """x_t + H₋₁·Rᵀ; just x_t while the state is still zero."""
        return x_t if h is None else self.add(x_t, self.matmul(h, r))

    def act(self, name: str, x: str, clip: bool = True) -> str:
        """An activation, after the cell clip (ONNX clips the gates' pre-activations)."""
        if clip and self.clip is not None:
            bound = self.dtype.type(self.clip)
            x = self._op("Clip", [x, self.const("lo", -bound), self.const("hi", bound)], "clip")
        return self._op(name, [x], name.lower())

    def input_projection(self, x: str, d: _Direction, gate: str) -> str:
        """X·Wᵀ + bias for one gate over the whole sequence ([S, B, H], or [B, S, H] in layout 1)."""
        return self.add(self.matmul(x, d.w[gate]), self.const("bias", d.x_bias[gate]))

    def time_steps(self, xw: str, shape: _Shape) -> list[str]:
        """A projected sequence split into its time steps ([1, B, H], layout 1: [B, 1, H]): one
        Split kernel for the whole sequence."""
        if shape.seq == 1:
            return [xw]
        outs = [self.g.name("x_t") for _ in range(shape.seq)]
        ones = np.ones(shape.seq, np.int64)
        if self.g.opset >= 13:  # split sizes became an input in opset 13
            node = helper.make_node("Split", [xw, self.const("split", ones)], outs, axis=shape.time_axis)
        else:
            node = helper.make_node("Split", [xw], outs, axis=shape.time_axis, split=ones.tolist())
        self.nodes.append(node)
        return outs

    def state(self, name: str, d: int, layout: int) -> str | None:
        """Direction d's initial state from initial_h/initial_c, in the shape of a time step
        ([1, B, H], layout 1: [B, 1, H]); None (zeros) if not given."""
        if not name:
            return None
        bounds = [self.const("d", np.array([d], np.int64)), self.const("d", np.array([d + 1], np.int64))]
        axis = self.const("axis", np.array([layout], np.int64))
        return self._op("Slice", [name, *bounds, axis], "state")

    def reshape(self, x: str, shape: tuple[int, ...], out: str | None = None) -> str:
        return self._op("Reshape", [x, self.const("shape", np.array(shape, np.int64))], "rs", out)

    def concat(self, parts: list[str], axis: int, out: str | None = None) -> str:
        if len(parts) == 1:
            return self._op("Identity", parts, "id", out)
        return self._op("Concat", parts, "cat", out, axis=axis)

    def sequence_output(self, ys: list[list[str]], s: _Shape, out: str) -> None:
        """Y: [S, D, B, H] (layout 0) or [B, S, D, H] (layout 1): each direction's states
        concatenated over time, then the directions side by side."""
        if s.layout == 0:
            one_direction, direction_axis = (s.seq, 1, s.batch, s.hidden), 1
        else:
            one_direction, direction_axis = (s.batch, s.seq, 1, s.hidden), 2
        if len(ys) == 1:
            self.reshape(self.concat(ys[0], axis=s.time_axis), one_direction, out)
            return
        parts = [self.reshape(self.concat(per_time, axis=s.time_axis), one_direction) for per_time in ys]
        self.concat(parts, axis=direction_axis, out=out)

    def state_output(self, finals: list[str], s: _Shape, out: str) -> None:
        """Y_h / Y_c: [D, B, H] (layout 0) or [B, D, H] (layout 1): the final states, which
        already have a direction axis of 1, side by side."""
        self.concat(finals, axis=s.layout, out=out)
