"""Lossless graph simplification, always applied before pruning and quantization.

Preserves: the model's inputs, outputs (names and shapes) and its function — up to float rounding
where BatchNormalization is folded into a convolution's weights. Removes: Identity and Dropout
(inference), BatchNormalization after a Conv or Gemm (folded into its weights and bias), chains
of Reshape (the last one's shape wins) and of Transpose (permutations composed; an identity
permutation disappears), nodes whose outputs nothing reads, and initializers nothing reads.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.passes.base import PassResult


def simplify(model: onnx.ModelProto) -> PassResult:
    """A simplified copy of `model` and how many of each simplification were made."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    stats: Counter[str] = Counter()
    _remove_passthrough(model, stats)
    _fold_batchnorm(model, stats)
    _merge_chains(model, stats, "Reshape")
    _merge_chains(model, stats, "Transpose")
    _remove_dead(model, stats)
    del model.graph.value_info[:]  # shapes are re-inferred by the caller
    return PassResult(model, dict(sorted(stats.items())))


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _bypass(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Drop a node whose output equals its first input; False if that would rename a graph output
    onto a graph input (the node then stays)."""
    src, dst = node.input[0], node.output[0]
    outputs = {o.name for o in graph.output}
    if dst in outputs:
        producer = next((n for n in graph.node if src in n.output), None)
        if producer is None or src in outputs:
            return False  # src is a graph input or already an output: keep the copy
        # The producer writes the graph output directly.
        producer.output[list(producer.output).index(src)] = dst
        _rename_input(graph, src, dst)
    else:
        _rename_input(graph, dst, src)
    graph.node.remove(node)
    return True


def _remove_passthrough(model: onnx.ModelProto, stats: Counter) -> None:
    graph = model.graph
    for node in list(graph.node):
        if node.op_type not in ("Identity", "Dropout") or _training_dropout(graph, node):
            continue
        mask_unused = len(node.output) == 1 or not consumers(graph).get(node.output[1])
        if mask_unused and _bypass(graph, node):
            stats[f"{node.op_type.lower()}_removed"] += 1


def _training_dropout(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A Dropout whose training_mode is given and not a constant false: random, not a
    passthrough (kept, so that lowering refuses it by name)."""
    if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
        return False
    init = _init_map(graph).get(node.input[2])
    return init is None or bool(numpy_helper.to_array(init).reshape(-1)[0])


def _init_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in graph.initializer}


def _set_init(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


def _fold_batchnorm(model: onnx.ModelProto, stats: Counter) -> None:
    graph = model.graph
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        inits = _init_map(graph)
        if not all(n in inits for n in bn.input[1:5]):
            continue
        producer = next((n for n in graph.node if bn.input[0] in n.output), None)
        if (producer is None or producer.op_type not in ("Conv", "Gemm") or len(consumers(graph)[bn.input[0]]) != 1
                or bn.input[0] in {o.name for o in graph.output} or producer.input[1] not in inits):  # fmt: skip
            continue
        if producer.op_type == "Gemm" and not _gemm_foldable(producer, inits):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[producer.input[1]]).astype(np.float64)
        if producer.op_type == "Conv":
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        else:  # Gemm: the output features are w's rows with transB=1, its columns otherwise
            trans_b = next((a.i for a in producer.attribute if a.name == "transB"), 0)
            w = w * (scale[:, None] if trans_b else scale[None, :])
        has_bias = len(producer.input) > 2 and producer.input[2] in inits
        b = (
            numpy_helper.to_array(inits[producer.input[2]]).astype(np.float64)
            if has_bias
            else np.zeros_like(mean)
        )
        b = (b - mean) * scale + beta
        w_name, b_name = producer.input[1] + "_bnfold", f"{producer.name or producer.output[0]}_bias_bnfold"
        _set_init(graph, w_name, w.astype(np.float32))
        _set_init(graph, b_name, b.astype(np.float32))
        producer.input[1] = w_name
        if len(producer.input) > 2:
            producer.input[2] = b_name
        else:
            producer.input.append(b_name)
        # The producer now computes BN's output.
        old = producer.output[0]
        producer.output[0] = bn.output[0]
        graph.node.remove(bn)
        _rename_input(graph, old, bn.output[0])
        stats["batchnorm_folded"] += 1


def _gemm_foldable(gemm: onnx.NodeProto, inits: dict) -> bool:
    attrs = {a.name: a for a in gemm.attribute}
    alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
    beta = attrs["beta"].f if "beta" in attrs else 1.0
    return alpha == 1.0 and beta == 1.0 and not (attrs["transA"].i if "transA" in attrs else 0)


def _merge_chains(model: onnx.ModelProto, stats: Counter, op: str) -> None:
    """X -> op -> op -> Y becomes X -> op -> Y when the first op's output has no other reader."""
    graph = model.graph
    changed = True
    while changed:
        changed = False
        users = consumers(graph)
        outputs = {o.name for o in graph.output}
        for first in list(graph.node):
            if first.op_type != op or first.output[0] in outputs:
                continue
            readers = users.get(first.output[0], [])
            if len(readers) != 1 or readers[0].op_type != op or readers[0].input[0] != first.output[0]:
                continue
            second = readers[0]
            if op == "Transpose":
                p1 = next((list(a.ints) for a in first.attribute if a.name == "perm"), None)
                p2 = next((list(a.ints) for a in second.attribute if a.name == "perm"), None)
                if p1 is None or p2 is None:
                    continue
                composed = [p1[i] for i in p2]
                second.input[0] = first.input[0]
                del second.attribute[:]
                second.attribute.append(helper.make_attribute("perm", composed))
                graph.node.remove(first)
                stats["transpose_merged"] += 1
                if composed == list(range(len(composed))) and _bypass(graph, second):
                    stats["transpose_removed"] += 1
            else:  # Reshape: only the last target shape matters (it has no 0 / allowzero subtleties
                # relative to the first one's input when it holds no 0)
                inits = _init_map(graph)
                if len(second.input) < 2 or second.input[1] not in inits:
                    continue
                if 0 in numpy_helper.to_array(inits[second.input[1]]).tolist():
                    continue
                second.input[0] = first.input[0]
                graph.node.remove(first)
                stats["reshape_merged"] += 1
            changed = True
            break


def _remove_dead(model: onnx.ModelProto, stats: Counter) -> None:
    graph = model.graph
    changed = True
    while changed:
        changed = False
        live = {o.name for o in graph.output} | {n for node in graph.node for n in node.input}
        for node in list(graph.node):
            if not any(o in live for o in node.output if o):
                graph.node.remove(node)
                stats["dead_nodes_removed"] += 1
                changed = True
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
            stats["unused_initializers_removed"] += 1
    inits = {i.name for i in graph.initializer}
    for inp in list(graph.input):
        if inp.name in inits and inp.name not in used:
            graph.input.remove(inp)
