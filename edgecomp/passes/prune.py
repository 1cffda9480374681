"""Structured channel pruning: remove whole output channels of Conv/Gemm layers and everything
that reads them, so the graph itself gets smaller (fewer MACs, weights and activation bytes).

Preserves: a valid ONNX model with the same inputs and outputs (names, shapes) that onnxruntime
runs; it computes a different (approximate) function. Channels that must stay together are pruned
together (passes/channels.py): the branches of a residual Add, a depthwise convolution and its
input, BatchNorm and per-channel constants, Concat parts (each pruned on its own, the consumer
sliced accordingly) and Flatten -> Gemm (the Gemm's input columns of a removed channel go too).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.errors import UserError
from edgecomp.passes.base import PassResult
from edgecomp.passes.channels import Space, analyse, kept_indices

IMPORTANCE = ("l1", "l2", "activation")

def prune_channels(model: onnx.ModelProto, ratio: float = 0.0, per_layer: dict[str, float] | None = None,
                   importance: str = "l1", samples: list[list[np.ndarray]] | None = None,
                   keep_masks: dict[str, np.ndarray] | None = None) -> PassResult:  # fmt: skip
    """Prune `ratio` of the output channels of every prunable Conv/Gemm/MatMul group (or the
    ratio `per_layer` gives for a group's first producer, by node name), the least important first.

    importance: "l1"/"l2" norm of each channel's weights (summed over a group's producers), or
    "activation": mean |output| of the producers on `samples`. `keep_masks` (producer name ->
    bool mask) overrides the choice, e.g. to drop provably dead channels only.
    """
    if importance not in IMPORTANCE:
        raise UserError(f"pruning importance must be one of {', '.join(IMPORTANCE)}, not '{importance}'")
    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    spaces, consumers = analyse(model)
    acts = _activations(model, spaces, samples) if importance == "activation" else {}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = []
    for space in spaces:
        if space.parent is not None or space.frozen or not space.producers:
            continue
        first = space.producers[0][0].name or space.producers[0][0].output[0]
        r = (per_layer or {}).get(first, ratio)
        mask = None
        for node, _ in space.producers:
            name = node.name or node.output[0]
            if keep_masks and name in keep_masks:
                m = np.asarray(keep_masks[name], bool)
                mask = m if mask is None else (mask | m)
        if mask is not None:
            keep = np.flatnonzero(mask)
            if keep.size == 0:
                keep = np.array([0])
        elif r > 0:
            score = _importance(space, inits, importance, acts)
            n_keep = max(1, int(round(space.size * (1.0 - r))))
            keep = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        else:
            continue
        if keep.size == space.size:
            continue
        space.keep = keep
        layers.append({"producers": [n.name or n.output[0] for n, _ in space.producers], "channels": space.size,
                       "kept": int(keep.size)})  # fmt: skip
    _apply(model, spaces, consumers, inits)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    # report: per pruned group its producers and channels before/after.
    return PassResult(model, {"ratio": ratio, "importance": importance, "layers": layers})


def _importance(space: Space, inits: dict, kind: str, acts: dict) -> np.ndarray:
    score = np.zeros(space.size)
    for node, axis in space.producers:
        if kind == "activation":
            a = acts.get(node.output[0])
            if a is not None:
                score += a / (a.mean() + 1e-12)
            continue
        w = np.moveaxis(inits[node.input[1]].astype(np.float64), axis, 0).reshape(space.size, -1)
        s = np.abs(w).sum(axis=1) if kind == "l1" else np.sqrt((w**2).sum(axis=1))
        score += s / (s.mean() + 1e-12)  # each producer counts equally in a residual group
    return score


def _activations(model: onnx.ModelProto, spaces: list[Space], samples) -> dict[str, np.ndarray]:
    """Mean |output| per channel of every producer on `samples`."""
    if not samples:
        raise UserError("--prune-importance activation needs calibration data (--calib)")
    import onnxruntime as ort

    names = sorted({n.output[0] for s in spaces for n, _ in s.producers})
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    sums: dict[str, np.ndarray] = {}
    for sample in samples:
        outs = sess.run(names, dict(zip(inputs, sample, strict=True)))
        for name, value in zip(names, outs, strict=True):
            v = np.abs(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)).mean(axis=1)
            sums[name] = sums.get(name, 0) + v
    return {k: v / len(samples) for k, v in sums.items()}


def _apply(model: onnx.ModelProto, spaces: list[Space], consumers: list, inits: dict) -> None:
    """Slice every tensor the decisions touch."""
    graph = model.graph
    new_values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        return new_values.get(name, inits[name])

    for s in spaces:
        if s.parent is not None or s.keep is None:
            continue
        for node, axis in s.producers:
            new_values[node.input[1]] = np.take(value(node.input[1]), s.keep, axis=axis)
        for node, idx, axis in s.followers:
            new_values[node.input[idx]] = np.take(value(node.input[idx]), s.keep, axis=axis)
            if node.op_type == "Conv" and idx == 1:  # depthwise: one group per channel
                for a in node.attribute:
                    if a.name == "group":
                        a.i = int(s.keep.size)
    for node, idx, axis, sp in consumers:
        if sp is None:  # Reshape feeding a pruned Gemm: let it infer the feature count
            shape = value(node.input[idx]).copy()
            shape[-1] = -1
            new_values[node.input[idx]] = shape
            continue
        kept = kept_indices(sp)
        if kept.size != sp.size:
            new_values[node.input[idx]] = np.take(value(node.input[idx]), kept, axis=axis)
    # Tensors shared by several nodes get one consistent slice: a shared constant sliced twice
    # differently would be an error in the analysis, so the model checker will catch it.
    for i, init in enumerate(graph.initializer):
        if init.name in new_values:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(new_values[init.name]), init.name)
            )

