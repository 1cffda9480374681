"""Inline the taken branch of If nodes whose condition is a constant.

Preserves: the model's outputs for every input (the branch that runs is the one kept), its inputs,
outputs and their names. Removes: each If whose condition is an initializer, replaced by the nodes
of the branch its value selects; a nested If comes up to the outer graph with them and is inlined in
a later round once its own condition has folded (passes/fold_constants.py, frontend/settle.py).

Exporters (torch.onnx's scripted models, spox) branch on configuration inputs such as a sample
rate; once --freeze makes that input a constant, the branch not taken is dead code.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.passes.base import PassResult


def inline_constant_ifs(model: onnx.ModelProto) -> PassResult:
    """A copy of `model` with every top-level If on a constant condition replaced by the taken
    branch's nodes; report: how many were inlined."""
    consts = {t.name: t for t in model.graph.initializer}
    if not any(n.op_type == "If" and n.input[0] in consts for n in model.graph.node):
        return PassResult(model, {"inlined": 0})
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    inlined = 0
    for index, node in enumerate(graph.node):
        if node.op_type != "If" or node.input[0] not in consts or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        cond = numpy_helper.to_array(consts[node.input[0]])
        branch = _attr_graph(node, "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch")
        # Names are unique across scopes (ONNX forbids shadowing): avoid every name defined
        # outside this If, nested graphs of the other nodes and the nodes already inlined included.
        taken = set(_all_names(graph, skip=index)) | {o for n in nodes for o in _node_names(n)}
        nodes.extend(_branch_nodes(node, branch, graph, taken))
        inlined += 1
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # re-inferred by the caller
    return PassResult(model, {"inlined": inlined})


def _attr_graph(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _branch_nodes(node: onnx.NodeProto, branch: onnx.GraphProto, graph: onnx.GraphProto,
                  taken: set[str]) -> list[onnx.NodeProto]:  # fmt: skip
    """The branch's nodes for the outer graph: its own names made unique there, its initializers
    moved out, its outputs written under the If's output names."""
    outputs = [o.name for o in branch.output]
    produced = {o for n in branch.node for o in n.output if o}
    local = produced | {t.name for t in branch.initializer} | {t.name for t in branch.sparse_initializer}
    rename: dict[str, str] = {}
    for name in sorted(local):
        new = name
        while new in taken:
            new = f"{node.name or node.output[0]}__{new}"
        taken.add(new)
        rename[name] = new
    # A branch output that one of its nodes writes (once) is written under the If's output name.
    direct: dict[str, str] = {}
    for inner, outer in zip(outputs, node.output, strict=True):
        if outer and inner in produced and inner not in direct:
            direct[inner] = outer
    rename.update(direct)
    for t in branch.initializer:
        t = onnx.TensorProto.FromString(t.SerializeToString())
        t.name = rename[t.name]
        graph.initializer.append(t)
    result = []
    for inner in branch.node:
        n = onnx.NodeProto.FromString(inner.SerializeToString())
        _rename_refs(n, rename)
        result.append(n)
    for inner, outer in zip(outputs, node.output, strict=True):
        if outer and direct.get(inner) != outer:  # an outer value, an initializer or a repeated output
            result.append(helper.make_node("Identity", [rename.get(inner, inner)], [outer],
                                           f"{node.name or outer}__output"))  # fmt: skip
    return result


def _rename_refs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Rename `node`'s inputs and outputs, and the outer-scope names its subgraphs read."""
    for i, name in enumerate(node.input):
        node.input[i] = rename.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = rename.get(name, name)
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            inner_local = set(_all_names(g))
            outer = {k: v for k, v in rename.items() if k not in inner_local}
            for n in g.node:
                _rename_refs(n, outer)
            for o in g.output:
                o.name = outer.get(o.name, o.name)


def _all_names(graph: onnx.GraphProto, skip: int = -1) -> list[str]:
    """Every tensor name a graph defines, its nodes' subgraphs included (but those of node `skip`)."""
    names = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    for i, n in enumerate(graph.node):
        names += [o for o in n.output if o] if i == skip else _node_names(n)
    return names


def _node_names(node: onnx.NodeProto) -> list[str]:
    """The names a node defines: its outputs and everything its subgraphs define."""
    names = [o for o in node.output if o]
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            names += _all_names(g)
    return names
