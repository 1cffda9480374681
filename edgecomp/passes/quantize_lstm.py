"""Quantize the LSTMs and GRUs onnxruntime's quantize_static leaves in float (QDQ has no pattern
for them), in the form the integer LSTM and GRU (quant/ops/lstm.py, gru.py) compile.

Preserves: the model's interface and every other node; an LSTM the integer kernel does not take
(peepholes, cell clip...: lstm_refusal, gru_refusal) stays float, and the extractor names it. Adds
around each LSTM: int8 per-row symmetric weights W and R (DequantizeLinear, axis 1), the float
input quantized to int8 (unless it already comes from a DequantizeLinear), Y and Y_h int8 with one
scale (h), an LSTM's Y_c int16 with zero point 0 and a power-of-two scale (c), the initial states quantized
as the states they start. The ranges of h and c are every step's, from a float run of the LSTM in
numpy on its inputs as onnxruntime computes them for the calibration samples (min/max: the LSTM
is quantized by min/max whatever --calib-method says).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.quant.ops.gru import gru_refusal
from edgecomp.quant.ops.lstm import lstm_refusal

RECURRENT = ("LSTM", "GRU")
STATE_LAYOUT = ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Identity")
GATES = {"LSTM": 4, "GRU": 3}


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def float_lstm(x, w, r, b, h, c) -> tuple[np.ndarray, np.ndarray]:
    """ONNX's forward LSTM (gates i, o, f, c), batch rows kept: every step's h and c, [seq, B, H]."""
    hidden = r.shape[1]
    hs, cs = [], []
    for t in range(x.shape[0]):
        g = x[t] @ w.T + h @ r.T + b[: 4 * hidden] + b[4 * hidden :]
        i, o, f, z = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(z)
        h = _sigmoid(o) * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return np.stack(hs), np.stack(cs)


def _direction(node: onnx.NodeProto) -> str:
    value = next((a.s for a in node.attribute if a.name == "direction"), b"forward")
    return value.decode()


def float_gru(x, w, r, b, h, linear_before_reset: bool) -> np.ndarray:
    """ONNX's forward GRU (gates z, r, h), batch rows kept: every step's h, [seq, B, H]."""
    hidden = r.shape[1]
    wb, rb = b[: 3 * hidden], b[3 * hidden :]
    hs = []
    for t in range(x.shape[0]):
        gx, gh = x[t] @ w.T + wb, h @ r.T + rb
        z = _sigmoid(gx[:, :hidden] + gh[:, :hidden])
        rg = _sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
        if linear_before_reset:
            n = np.tanh(gx[:, 2 * hidden :] + rg * gh[:, 2 * hidden :])
        else:
            n = np.tanh(gx[:, 2 * hidden :] + (rg * h) @ r[2 * hidden :].T + rb[2 * hidden :])
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs)


def _candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    consts = {t.name for t in model.graph.initializer}
    result = []
    for n in model.graph.node:
        if n.op_type not in RECURRENT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        refusal = (lstm_refusal if n.op_type == "LSTM" else gru_refusal)(n, attrs, list(n.input))
        if refusal is None and all(i in consts for i in n.input[1:4] if i):
            result.append(n)
    return result


def _calibrate(float_model: onnx.ModelProto, samples: list[list[np.ndarray]], nodes: list[onnx.NodeProto]):
    """Per LSTM/GRU (by position among the model's): (x min, x max, h min, h max, max |c|)."""
    import onnxruntime as ort

    g = float_model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in consts]
    wanted = []
    for n in nodes:
        wanted += [i for i in (n.input[0], *(n.input[5:7])) if i and i not in inputs and i not in wanted]
    m = onnx.ModelProto()
    m.CopyFrom(float_model)
    m.graph.output.extend([helper.make_empty_tensor_value_info(name) for name in wanted])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    stats = [[np.inf, -np.inf, 0.0, 0.0, 0.0] for _ in nodes]
    for sample in samples:
        feed = dict(zip(inputs, sample, strict=True))
        values = {**feed, **dict(zip(wanted, sess.run(wanted, feed), strict=True))} if wanted else feed
        for s, n in zip(stats, nodes, strict=True):
            hidden = next(a.i for a in n.attribute if a.name == "hidden_size")
            w_all, r_all = consts[n.input[1]], consts[n.input[2]]
            dirs = w_all.shape[0]
            x = values[n.input[0]].astype(np.float64)
            state = (dirs, x.shape[1], hidden)
            h0 = values[n.input[5]] if len(n.input) > 5 and n.input[5] else np.zeros(state)
            c0 = values[n.input[6]] if len(n.input) > 6 and n.input[6] else np.zeros(state)
            gates = GATES[n.op_type]
            b = (
                consts[n.input[3]].reshape(dirs, -1)
                if len(n.input) > 3 and n.input[3]
                else np.zeros((dirs, 2 * gates * hidden))
            )
            xs = [x[::-1] if d == 1 or _direction(n) == "reverse" else x for d in range(dirs)]
            if n.op_type == "GRU":
                lbr = bool(next((a.i for a in n.attribute if a.name == "linear_before_reset"), 0))
                hs = np.stack([float_gru(xs[d], w_all[d], r_all[d], b[d].astype(np.float64),
                                         h0[d].astype(np.float64), lbr) for d in range(dirs)])  # fmt: skip
                cs = np.zeros(1)
            else:
                runs = [float_lstm(xs[d], w_all[d], r_all[d], b[d].astype(np.float64), h0[d].astype(np.float64),
                                   c0[d].astype(np.float64)) for d in range(dirs)]  # fmt: skip
                hs, cs = np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs])
            h_all = np.concatenate([hs.reshape(-1), h0.reshape(-1)])
            s[0], s[1] = min(s[0], float(x.min())), max(s[1], float(x.max()))
            s[2], s[3] = min(s[2], float(h_all.min())), max(s[3], float(h_all.max()))
            s[4] = max(s[4], float(np.abs(cs).max()), float(np.abs(c0).max()))
    return stats


def _requantize_at_source(
    g: onnx.GraphProto, producer: dict, dq: onnx.NodeProto | None, s: str, z: str
) -> bool:
    """When a state comes from onnxruntime's QuantizeLinear -> DequantizeLinear, give that pair (and
    every DequantizeLinear of that QuantizeLinear) the state's scale and zero point `s`, `z`; True
    if done. The op before it then writes the state in the state's own quantization."""
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
        return False
    q = producer[dq.input[0]]
    readers = [m for m in g.node if q.output[0] in m.input]
    if q.op_type != "QuantizeLinear" or not all(m.op_type == "DequantizeLinear" for m in readers):
        return False
    for m in (q, *readers):
        del m.input[1:]
        m.input.extend([s, z])
    return True


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where each comes after its inputs' producers (a state's layout op now
    reads a DequantizeLinear added just before its LSTM), otherwise keeping their order."""
    available = set(available) | {""}
    pending, result = list(nodes), []
    while pending:
        ready = next((k for k, n in enumerate(pending) if all(i in available for i in n.input)), 0)
        n = pending.pop(ready)
        result.append(n)
        available.update(n.output)
    return result


def _asym_int8(lo: float, hi: float) -> tuple[float, int]:
    """onnxruntime's asymmetric int8 parameters for a range (widened to hold 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def cell_scale(c_max: float) -> float:
    """The smallest power of two whose int16 grid holds +-c_max (2**-15 for a tiny cell)."""
    if c_max <= 0:
        return 2.0**-15
    return 2.0 ** min(-1, max(-29, math.ceil(math.log2(c_max / 32767.0))))


def quantize_lstms(qmodel: onnx.ModelProto, float_model: onnx.ModelProto,
                   samples: list[list[np.ndarray]]) -> onnx.ModelProto:  # fmt: skip
    """`qmodel` (onnxruntime's QDQ model of `float_model`) with its supported LSTMs and GRUs quantized."""
    nodes = _candidates(qmodel)
    if not nodes:
        return qmodel
    float_lstms = [n for n in float_model.graph.node if n.op_type in RECURRENT]
    q_lstms = [n for n in qmodel.graph.node if n.op_type in RECURRENT]
    if len(float_lstms) != len(q_lstms):
        return qmodel
    stats = _calibrate(float_model, samples, [float_lstms[q_lstms.index(n)] for n in nodes])
    f_consts = {t.name for t in float_model.graph.initializer}
    f_inputs = [i.name for i in float_model.graph.input if i.name not in f_consts]
    model_inputs = {
        name: np.stack([np.asarray(smp[k], np.float64) for smp in samples]) for k, name in enumerate(f_inputs)
    }
    input_q: dict[
        str, str
    ] = {}  # float model input -> its DequantizeLinear output (states through a layout op)
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    g = out.graph
    consts = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    new_nodes: dict[int, tuple[list, list]] = {}  # position of an LSTM -> (nodes before, nodes after)
    removed: set[str] = set()  # output names of onnxruntime's Q nodes replaced by ours

    def qparams(prefix: str, scale, zp, dtype) -> tuple[str, str]:
        s, z = f"{prefix}_scale", f"{prefix}_zero_point"
        g.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), s))
        g.initializer.append(numpy_helper.from_array(np.asarray(zp, dtype), z))
        return s, z

    positions = [i for i, n in enumerate(g.node) if n.op_type in RECURRENT]
    for k, (n, st) in enumerate(zip(nodes, stats, strict=True)):
        pos = positions[q_lstms.index(n)]
        node = g.node[pos]
        tag = f"{node.name or 'lstm'}_{k}_q"
        before, after = [], []
        hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
        dirs = consts[node.input[1]].dims[0]
        lstm = node.op_type == "LSTM"
        # Weights: int8, symmetric per gate row.
        for idx in (1, 2):
            w = numpy_helper.to_array(consts[node.input[idx]]).astype(np.float64)  # [1, 4H, K]
            scale = np.abs(w).max(axis=(0, 2)) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / scale[None, :, None]), -127, 127).astype(np.int8)
            name = f"{tag}_w{idx}"
            g.initializer.append(numpy_helper.from_array(q, name))
            s, z = qparams(name, scale, np.zeros(w.shape[1]), np.int8)
            before.append(
                helper.make_node("DequantizeLinear", [name, s, z], [name + "_dq"], f"{name}_dq", axis=1)
            )
            node.input[idx] = name + "_dq"
        h_scale, h_zp = _asym_int8(st[2], st[3])
        c_scale = cell_scale(st[4])
        # The input, unless it is quantized already.
        x_prod = producer.get(node.input[0])
        if x_prod is None or x_prod.op_type != "DequantizeLinear":
            s, z = qparams(f"{tag}_x", *_asym_int8(st[0], st[1]), np.int8)
            before += [
                helper.make_node("QuantizeLinear", [node.input[0], s, z], [f"{tag}_x_q"], f"{tag}_x_q"),
                helper.make_node("DequantizeLinear", [f"{tag}_x_q", s, z], [f"{tag}_x_dq"], f"{tag}_x_dq"),
            ]
            node.input[0] = f"{tag}_x_dq"
        hs, hz = qparams(f"{tag}_h", h_scale, h_zp, np.int8)
        cs, cz = qparams(f"{tag}_c", c_scale, 0, np.int16) if lstm else ("", "")
        for idx, (s, z) in ((5, (hs, hz)), (6, (cs, cz)))[: 2 if lstm else 1]:
            if len(node.input) > idx and node.input[idx] in consts:  # a constant start: quantized here
                value = numpy_helper.to_array(consts[node.input[idx]]).astype(np.float64)
                scale = float(numpy_helper.to_array(next(t for t in g.initializer if t.name == s)))
                zp = int(numpy_helper.to_array(next(t for t in g.initializer if t.name == z)))
                dtype = np.int8 if idx == 5 else np.int16
                info = np.iinfo(dtype)
                g.initializer.append(
                    numpy_helper.from_array(
                        np.clip(np.rint(value / scale) + zp, info.min, info.max).astype(dtype),
                        f"{tag}_s{idx}",
                    )
                )
                before.append(helper.make_node("DequantizeLinear", [f"{tag}_s{idx}", s, z], [f"{tag}_s{idx}_dq"],
                                               f"{tag}_s{idx}_dq"))  # fmt: skip
                node.input[idx] = f"{tag}_s{idx}_dq"
            elif len(node.input) > idx and node.input[idx]:
                src = node.input[idx]
                prod = producer.get(src)
                if _requantize_at_source(g, producer, prod, s, z):
                    continue  # a state onnxruntime quantized (e.g. a Slice of a model input): now in ours
                if prod is not None and prod.op_type in STATE_LAYOUT and prod.input[0] in model_inputs:
                    # A state taken out of a model input (a Slice of a [layers, 1, H] state): the input
                    # quantized too (once, on its own range), so the layout op runs in integer.
                    inp = prod.input[0]
                    if inp not in input_q:
                        v = model_inputs[inp]
                        if idx == 5:
                            iq = qparams(
                                f"{inp}_state_q", *_asym_int8(float(v.min()), float(v.max())), np.int8
                            )
                        else:
                            iq = qparams(f"{inp}_state_q", cell_scale(float(np.abs(v).max())), 0, np.int16)
                        input_q[inp] = f"{inp}_state_q_dq"
                        before += [
                            helper.make_node("QuantizeLinear", [inp, *iq], [f"{inp}_state_q_q"], f"{inp}_state_q_q"),
                            helper.make_node("DequantizeLinear", [f"{inp}_state_q_q", *iq], [input_q[inp]],
                                             f"{inp}_state_q_dq"),
                        ]  # fmt: skip
                    prod.input[0] = input_q[inp]
                before += [helper.make_node("QuantizeLinear", [src, s, z], [f"{tag}_s{idx}_q"], f"{tag}_s{idx}_q"),
                           helper.make_node("DequantizeLinear", [f"{tag}_s{idx}_q", s, z], [f"{tag}_s{idx}_dq"],
                                            f"{tag}_s{idx}_dq")]  # fmt: skip
                node.input[idx] = f"{tag}_s{idx}_dq"
        if lstm and (len(node.input) < 7 or not node.input[6]):
            # A zero initial cell state as an int16 constant: its DequantizeLinear keeps the cell's
            # scale when Y_c is not read (and dead-code removal drops Y_c's QuantizeLinear).
            while len(node.input) < 7:
                node.input.append("")
            g.initializer.append(numpy_helper.from_array(np.zeros((dirs, 1, hidden), np.int16), f"{tag}_c0"))
            before.append(
                helper.make_node("DequantizeLinear", [f"{tag}_c0", cs, cz], [f"{tag}_c0_dq"], f"{tag}_c0_dq")
            )
            node.input[6] = f"{tag}_c0_dq"
        # Outputs Y, Y_h (h) and Y_c (c); Y_h and Y_c always, for their scales.
        while len(node.output) < (3 if lstm else 2):
            node.output.append("")
        for idx, (s, z) in ((0, (hs, hz)), (1, (hs, hz)), (2, (cs, cz)))[: 3 if lstm else 2]:
            name = node.output[idx]
            if not name and idx == 0:
                continue
            name = name or f"{tag}_out{idx}"
            raw, q_out = f"{tag}_out{idx}_raw", f"{tag}_out{idx}_q"
            node.output[idx] = raw
            after += [
                helper.make_node("QuantizeLinear", [raw, s, z], [q_out], f"{tag}_out{idx}_q"),
                helper.make_node("DequantizeLinear", [q_out, s, z], [name], f"{tag}_out{idx}_dq"),
            ]
            # onnxruntime's own QuantizeLinear of this output (for a quantized reader): ours instead.
            for qn in [m for m in g.node if m.op_type == "QuantizeLinear" and m.input[0] == name]:
                readers = [m for m in g.node if qn.output[0] in m.input]
                if readers and all(m.op_type == "DequantizeLinear" for m in readers):
                    for m in readers:
                        m.input[:] = [q_out, s, z]
                    removed.add(qn.output[0])
        new_nodes[pos] = (before, after)
    ordered = []
    for pos, n in enumerate(g.node):
        if n.op_type == "QuantizeLinear" and n.output[0] in removed:
            continue
        before, after = new_nodes.get(pos, ([], []))
        ordered += [*before, n, *after]
    del g.node[:]
    g.node.extend(_topological(ordered, {i.name for i in g.input} | {t.name for t in g.initializer}))
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(out)
