"""Channel analysis of Conv/Gemm models: which output channels form a group that must be kept or
removed together (structured pruning, dead-channel removal).

The analysis assigns each tensor's channel axis (axis 1) a *space*; Conv/Gemm/MatMul start a new
space, channel-wise ops carry it through, Add unites spaces, Concat composes them and Flatten
expands one channel into H*W features. A space that reaches a graph output, comes from a graph
input, or is read by an op the analysis does not know is frozen (never pruned).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Ops whose output has the same channels as their first input, and that read no per-channel data.
CHANNELWISE = frozenset({
    "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout", "Abs", "Neg", "Exp",
    "Sqrt", "Floor", "Ceil", "Round",
})  # fmt: skip
NONZERO_AT_ZERO = frozenset({"Sigmoid", "HardSigmoid", "Exp", "Softplus"})  # f(0) != 0


@dataclass
class Space:
    """A set of channels that is pruned as one: `size` channels, kept ones chosen once."""

    size: int
    producers: list = field(default_factory=list)  # (node, weight axis of the out channels)
    followers: list = field(default_factory=list)  # (node, input index, axis): per-channel constants
    frozen: bool = False
    zero_safe: bool = True  # an all-zero channel stays zero through every op that reads it
    parent: Space | None = None
    keep: np.ndarray | None = None

    def root(self) -> Space:
        s = self
        while s.parent is not None:
            s = s.parent
        return s


@dataclass
class Concat:
    parts: list  # Space | Concat | Flat, in order

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass
class Flat:
    base: object  # Space | Concat
    inner: int  # features per channel (H*W)

    @property
    def size(self) -> int:
        return self.base.size * self.inner


def kept_indices(s) -> np.ndarray:
    """Kept indices of a channel axis described by `s`, after the decisions were made."""
    if isinstance(s, Space):
        r = s.root()
        return r.keep if r.keep is not None else np.arange(r.size)
    if isinstance(s, Concat):
        out, off = [], 0
        for p in s.parts:
            out.append(kept_indices(p) + off)
            off += p.size
        return np.concatenate(out)
    base = kept_indices(s.base)
    return (base[:, None] * s.inner + np.arange(s.inner)[None, :]).reshape(-1)


def _freeze(s) -> None:
    if isinstance(s, Space):
        s.root().frozen = True
    elif isinstance(s, Concat):
        for p in s.parts:
            _freeze(p)
    elif isinstance(s, Flat):
        _freeze(s.base)


def _mark_unsafe(s) -> None:
    if isinstance(s, Space):
        s.root().zero_safe = False
    elif isinstance(s, Concat):
        for p in s.parts:
            _mark_unsafe(p)
    elif isinstance(s, Flat):
        _mark_unsafe(s.base)


def _unite(a, b) -> object:
    if isinstance(a, Space) and isinstance(b, Space):
        ra, rb = a.root(), b.root()
        if ra is not rb:
            if ra.size != rb.size:
                _freeze(ra)
                _freeze(rb)
                return a
            rb.parent = ra
            ra.frozen |= rb.frozen
            ra.zero_safe &= rb.zero_safe
            ra.producers += rb.producers
            ra.followers += rb.followers
        return a
    _freeze(a)  # unite a composite with anything: keep both whole
    _freeze(b)
    return a


def shape_of(model: onnx.ModelProto, name: str) -> list[int] | None:
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            return dims
    return None


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def analyse(model: onnx.ModelProto):
    """Channel spaces of every tensor; returns (leaf spaces, consumers to slice)."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    space: dict[str, object] = {}
    leaves: list[Space] = []
    consumers: list[tuple[onnx.NodeProto, int, int, object]] = []  # (node, input idx, axis, space of it)

    def new(size: int) -> Space:
        s = Space(size)
        leaves.append(s)
        return s

    for inp in graph.input:
        if inp.name in inits:
            continue
        shape = shape_of(model, inp.name)
        if shape and len(shape) >= 2:
            s = new(shape[1])
            s.frozen = True
            space[inp.name] = s

    for node in graph.node:
        op = node.op_type
        x = node.input[0] if node.input else ""
        xs = space.get(x)
        out = node.output[0] if node.output else ""
        if op == "Conv" and node.input[1] in inits:
            w = inits[node.input[1]]
            group = attr(node, "group", 1)
            if group == 1:
                if xs is not None:
                    consumers.append((node, 1, 1, xs))
                s = new(w.shape[0])
                s.producers.append((node, 0))
                if len(node.input) > 2 and node.input[2]:
                    s.followers.append((node, 2, 0))
                space[out] = s
            elif (
                xs is not None
                and group == w.shape[0] == xs.size
                and w.shape[1] == 1
                and isinstance(xs, Space)
            ):
                xs.root().followers.append((node, 1, 0))  # depthwise: weight rows, bias, group
                if len(node.input) > 2 and node.input[2]:
                    xs.root().followers.append((node, 2, 0))
                space[out] = xs
            else:
                if xs is not None:
                    _freeze(xs)
                space[out] = _frozen(new, w.shape[0])
        elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            trans_b = attr(node, "transB", 0) if op == "Gemm" else 0
            if w.ndim != 2 or (op == "Gemm" and attr(node, "transA", 0)) or rank_of(model, x) != 2:
                if xs is not None:
                    _freeze(xs)
                space[out] = _frozen(new, w.shape[0 if trans_b else -1])
                continue
            if xs is not None:
                consumers.append((node, 1, 1 if trans_b else 0, xs))
            s = new(w.shape[0] if trans_b else w.shape[1])
            s.producers.append((node, 0 if trans_b else 1))
            if op == "Gemm" and len(node.input) > 2 and node.input[2] and inits.get(node.input[2]) is not None \
                    and inits[node.input[2]].size == s.size:  # fmt: skip
                s.followers.append((node, 2, 0))
            elif op == "Gemm" and len(node.input) > 2 and node.input[2]:
                s.frozen = True  # a broadcast bias we would not slice
            space[out] = s
        elif op == "BatchNormalization" and xs is not None and isinstance(xs, Space):
            for i in range(1, 5):
                xs.root().followers.append((node, i, 0))
            space[out] = xs
        elif op in CHANNELWISE and xs is not None:
            if op in ("MaxPool", "AveragePool") and rank_of(model, x) != 4:
                _freeze(xs)
            space[out] = xs
            lo = inits.get(node.input[1]) if op == "Clip" and len(node.input) > 1 and node.input[1] else None
            hi = inits.get(node.input[2]) if op == "Clip" and len(node.input) > 2 and node.input[2] else None
            if op in NONZERO_AT_ZERO or (lo is not None and lo > 0) or (hi is not None and hi < 0):
                _mark_unsafe(xs)
        elif op in ("Add", "Mul", "Sub", "Div") and len(node.input) == 2:
            spaces_in = [space.get(i) for i in node.input]
            consts = [i for i in node.input if i in inits]
            if all(s is not None for s in spaces_in) and shape_of(model, node.input[0]) == shape_of(
                model, node.input[1]
            ):
                space[out] = _unite(spaces_in[0], spaces_in[1])
            elif len(consts) == 1 and any(s is not None for s in spaces_in):
                s = next(s for s in spaces_in if s is not None)
                c = inits[consts[0]]
                idx = list(node.input).index(consts[0])
                rank = rank_of(model, out)
                if c.size == 1:
                    space[out] = s
                elif isinstance(s, Space) and rank and c.ndim >= rank - 1 and c.shape[c.ndim - rank + 1] == s.size \
                        and c.size == s.size:  # fmt: skip
                    s.root().followers.append((node, idx, c.ndim - rank + 1))  # per-channel constant
                    space[out] = s
                else:
                    _freeze(s)
            else:
                for s in spaces_in:
                    if s is not None:
                        _freeze(s)
        elif op == "Concat" and attr(node, "axis", 0) % max(rank_of(model, out) or 1, 1) == 1:
            parts = [space.get(i) for i in node.input]
            if all(p is not None for p in parts):
                space[out] = Concat(parts)
            else:
                for p in parts:
                    if p is not None:
                        _freeze(p)
        elif op in ("Flatten", "Reshape") and xs is not None:
            shape_in, shape_out = shape_of(model, x), shape_of(model, out)
            if (shape_in and shape_out and len(shape_in) == 4 and len(shape_out) == 2 and shape_in[0] == shape_out[0]
                    and (op == "Flatten" and attr(node, "axis", 1) == 1 or op == "Reshape")):  # fmt: skip
                space[out] = Flat(xs, shape_in[2] * shape_in[3])
                if op == "Reshape":
                    consumers.append((node, 1, -1, None))  # its shape constant becomes [N, -1]
            elif shape_in == shape_out:
                space[out] = xs
            else:
                _freeze(xs)
        else:
            for i in node.input:
                if i in space:
                    _freeze(space[i])
    for o in graph.output:
        if o.name in space:
            _freeze(space[o.name])
    return leaves, consumers


def prunable_groups(model: onnx.ModelProto) -> list[dict]:
    """The channel groups `prune_channels` may prune: {"name": first producer (the key for
    per-layer ratios), "producers": [...], "channels": n}, in graph order."""
    spaces, _ = analyse(onnx.shape_inference.infer_shapes(model))
    return [
        {"name": s.producers[0][0].name or s.producers[0][0].output[0],
         "producers": [n.name or n.output[0] for n, _ in s.producers], "channels": s.size}
        for s in spaces if s.parent is None and not s.frozen and s.producers
    ]  # fmt: skip


def dead_channel_masks(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Keep-masks (producer name -> bool per channel) that drop only provably dead channels:
    all-zero weights and zero bias in every producer of the group, and nothing downstream that
    turns a zero into something else (BatchNorm, a nonzero per-channel offset, Sigmoid, ...).
    Removing them does not change the model's outputs. Empty when there are none."""
    model = onnx.shape_inference.infer_shapes(model)
    spaces, _ = analyse(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    masks: dict[str, np.ndarray] = {}
    for space in spaces:
        if space.parent is not None or space.frozen or not space.zero_safe or not space.producers:
            continue
        live = np.zeros(space.size, bool)
        for node, axis in space.producers:
            w = np.moveaxis(inits[node.input[1]], axis, 0).reshape(space.size, -1)
            live |= np.any(w != 0, axis=1)
        for node, idx, axis in space.followers:
            c = np.moveaxis(inits[node.input[idx]], axis, 0).reshape(space.size, -1)
            if node.op_type == "BatchNormalization":
                live[:] = True
            elif node.op_type in ("Add", "Sub") or (node.op_type in ("Conv", "Gemm") and idx == 2):
                live |= np.any(c != 0, axis=1)  # an offset: the channel is dead only where it is 0
        if not live.all():
            for node, _ in space.producers:
                masks[node.name or node.output[0]] = live
    return masks


def _frozen(new, size: int) -> Space:
    s = new(size)
    s.frozen = True
    return s


def rank_of(model: onnx.ModelProto, name: str) -> int | None:
    shape = shape_of(model, name)
    return len(shape) if shape is not None else None
