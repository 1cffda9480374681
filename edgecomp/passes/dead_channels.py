"""Channels that are zero after their ReLU for every input: found by interval arithmetic over the
quantized model's input range (a proof), or observed on calibration data (not a proof). Their
weights and bias are zeroed, so that `dead_channel_masks` + `prune_channels` remove them like
all-zero channels.

A Conv/Gemm output channel qualifies when its only consumer is a Relu (or a Clip with min 0) and
its largest value is <= 0: the ReLU then gives 0, exactly what zero weights and bias give.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.passes.base import PassResult
from edgecomp.passes.channels import attr as _attr

Bounds = tuple[np.ndarray, np.ndarray]  # per-channel (lowest, highest) value of a tensor


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _candidates(model: onnx.ModelProto, inits: dict[str, np.ndarray]) -> list[tuple[onnx.NodeProto, int]]:
    """(Conv/Gemm node, output-channel axis of its weight) whose output feeds only a ReLU-like op."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        after = readers.get(node.output[0], [])
        if node.output[0] in outputs or len(after) != 1 or not _zero_below(after[0], inits):
            continue
        w = inits[node.input[1]]
        axis = 1 if node.op_type == "Gemm" and not _attr(node, "transB", 0) else 0
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias and (node.input[2] not in inits or inits[node.input[2]].shape != (w.shape[axis],)):
            continue  # a computed or broadcast bias: leave the channel alone
        # Weights or bias another node also reads (a module called twice): zeroing would reach it.
        if any(len(readers[name]) > 1 for name in node.input[1:] if name) or w.ndim < 2:
            continue
        found.append((node, axis))
    return found


def _zero_below(node: onnx.NodeProto, inits: dict) -> bool:
    """Whether `node` maps every value <= 0 to exactly 0 (Relu, Clip with min 0)."""
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip":
        lo = inits.get(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "min", None)
        return lo is not None and float(np.asarray(lo)) == 0.0
    return False


def interval_upper_bounds(model: onnx.ModelProto, lo: float, hi: float) -> dict[str, np.ndarray]:
    """For each candidate's output: per-channel upper bounds valid for every input in [lo, hi],
    by interval arithmetic through Conv, Gemm, ReLU-like ops, pools, Add and Concat (a tensor
    reached through any other op gets no bounds, and its consumers none either: sound, not tight)."""
    inits = _inits(model)
    graph = model.graph
    first = next(i for i in graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    if len(dims) < 2 or dims[1].dim_value <= 0:
        return {}
    bounds: dict[str, Bounds] = {first.name: (np.full(dims[1].dim_value, lo), np.full(dims[1].dim_value, hi))}
    for node in graph.node:
        b = _propagate(node, [bounds.get(i) for i in node.input], inits)
        if b is not None:
            bounds[node.output[0]] = b
    # A margin of 1 % of each channel's interval: the proof is over the float model, and the int8
    # model's rounding of weights and inputs must not lift a channel that is only just below 0.
    upper = {}
    for n, _ in _candidates(model, inits):
        if n.output[0] in bounds:
            lo_b, hi_b = bounds[n.output[0]]
            upper[n.output[0]] = hi_b + 0.01 * (hi_b - lo_b) + 1e-6 * (np.abs(lo_b) + np.abs(hi_b))
    return upper


def _pads_zeros(node: onnx.NodeProto) -> bool:
    """Whether a Conv/AveragePool window may cover padding (explicit pads or auto_pad SAME_*)."""
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return any(_attr(node, "pads", [0])) or auto not in ("NOTSET", "VALID")


def _propagate(node: onnx.NodeProto, ins: list[Bounds | None], inits: dict) -> Bounds | None:
    op, x = node.op_type, ins[0] if ins else None
    if x is None:
        return None
    lo, hi = x
    if op == "Conv" and node.input[1] in inits:
        if _pads_zeros(node):
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)  # padding reads zeros
        w = inits[node.input[1]].astype(np.float64)
        groups, (cout, cin_g) = _attr(node, "group", 1), w.shape[:2]
        if lo.size != groups * cin_g or cout % groups:
            return None
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return None
        bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(cout)
        g = np.arange(cout) // (cout // groups)
        idx = g[:, None] * cin_g + np.arange(cin_g)[None, :]  # input channels of each output channel
        wsum_p = np.maximum(w, 0).reshape(cout, cin_g, -1).sum(axis=2)
        wsum_n = np.minimum(w, 0).reshape(cout, cin_g, -1).sum(axis=2)
        return (bias + (wsum_p * lo[idx] + wsum_n * hi[idx]).sum(axis=1),
                bias + (wsum_p * hi[idx] + wsum_n * lo[idx]).sum(axis=1))  # fmt: skip
    if op == "Gemm" and node.input[1] in inits and not _attr(node, "transA", 0):
        w = inits[node.input[1]].astype(np.float64)
        w = w if _attr(node, "transB", 0) else w.T  # [out, in]
        if w.shape[1] != lo.size:
            return None
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return None
        bias = np.asarray(inits[node.input[2]] if len(node.input) > 2 and node.input[2] else 0.0, np.float64)
        if bias.size not in (1, w.shape[0]):
            return None
        bias = bias.reshape(-1) if bias.size > 1 else bias.reshape(())
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        low, high = alpha * (wp @ lo + wn @ hi), alpha * (wp @ hi + wn @ lo)
        if alpha < 0:
            low, high = high, low
        return low + beta * bias, high + beta * bias
    if op == "Relu":
        return np.maximum(lo, 0), np.maximum(hi, 0)
    if op == "Clip":
        if any(name and name not in inits for name in node.input[1:]):
            return None  # a computed bound
        mn = inits[node.input[1]] if len(node.input) > 1 and node.input[1] else _attr(node, "min", -np.inf)
        mx = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else _attr(node, "max", np.inf)
        return np.clip(lo, mn, mx), np.clip(hi, mn, mx)
    if op in ("MaxPool", "GlobalMaxPool", "GlobalAveragePool", "Identity", "Dropout"):
        return lo, hi
    if op == "AveragePool":
        if _pads_zeros(node) and _attr(node, "count_include_pad", 0):
            return np.minimum(lo, 0), np.maximum(hi, 0)
        return lo, hi
    if op == "Add" and len(ins) == 2 and ins[1] is not None and ins[1][0].shape == lo.shape:
        return lo + ins[1][0], hi + ins[1][1]
    if op == "Concat" and _attr(node, "axis", 0) == 1 and all(i is not None for i in ins):
        return np.concatenate([i[0] for i in ins]), np.concatenate([i[1] for i in ins])
    return None


def observed_upper_bounds(model: onnx.ModelProto, samples: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    """For each candidate's output: the per-channel maximum over `samples` (onnxruntime)."""
    import onnxruntime as ort

    names = [n.output[0] for n, _ in _candidates(model, _inits(model))]
    if not names or not samples:
        return {}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    top: dict[str, np.ndarray] = {}
    for sample in samples:
        for name, value in zip(names, sess.run(names, dict(zip(inputs, sample, strict=True))), strict=True):
            m = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1).max(axis=1)
            top[name] = np.maximum(top[name], m) if name in top else m
    return top


def zero_dead_channels(model: onnx.ModelProto, upper: dict[str, np.ndarray]) -> PassResult:
    """Zeroes the weights and bias of each candidate channel whose upper bound is <= 0: the same
    outputs wherever the bounds hold. Report: the number of channels zeroed."""
    inits = _inits(model)
    new_values: dict[str, np.ndarray] = {}
    zeroed = 0
    for node, axis in _candidates(model, inits):
        if node.output[0] not in upper:
            continue
        dead = upper[node.output[0]] <= 0
        if not dead.any():
            continue
        w = new_values.get(node.input[1], inits[node.input[1]]).copy()
        np.moveaxis(w, axis, 0)[dead] = 0
        new_values[node.input[1]] = w
        if len(node.input) > 2 and node.input[2]:
            b = new_values.get(node.input[2], inits[node.input[2]]).copy()
            b[dead] = 0
            new_values[node.input[2]] = b
        zeroed += int(dead.sum())
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for t in out.graph.initializer:
        if t.name in new_values:
            t.CopyFrom(
                numpy_helper.from_array(new_values[t.name].astype(numpy_helper.to_array(t).dtype), t.name)
            )
    return PassResult(out, {"zeroed": zeroed})
